"""Photographs and masks in, tensors out and back: the one place where Pillow meets the pipeline.

Inside blend/ an image is an NCHW float tensor in [−1, 1] and a mask an (H, W) array of 0/1 with
1 = edit (docs/CONVENTIONS.md, "Tensors and masks"). These are the rules by which files, PIL images and arrays become
those, and results become PIL images again.

Orientation. A photograph or a mask that carries an EXIF Orientation tag (phone photos do) is
turned to its display orientation when it is read, so the mask is laid on the photograph as a
viewer shows it, and the results, computed from upright pixels, are upright and need no tag.
A mask is drawn on the photograph as displayed; it carries a tag of its own only if it was
exported with one, and then that tag is applied too.

Photographs (read_image: a path or a PIL image → an 8-bit RGB PIL image):
  * 8-bit modes (1, L, P, RGB, RGBA, LA, CMYK, YCbCr, …): Pillow's conversion to RGB; an alpha
    channel is dropped (the colour as stored).
  * 16-bit grey (I;16, I;16B, …): level / 65535.
  * 32-bit integers (I, as Pillow reads some 16-bit files): taken as 16-bit, level / 65535;
    values outside [0, 65535] are refused.
  * floats (F, e.g. a float TIFF): values in [0, 1] are taken as they are (0 black, 1 white); any
    other range, or NaN, is refused. There is no normalisation: stretching min..max to 0..1 would
    change the photograph's brightness without saying so.
  * 16-bit RGB and RGBA PNGs: Pillow reads them as 8-bit RGB(A) (their high bytes), and so are they.
  The result has 8 bits per channel, like the results written.

Masks (read_mask: a path, a PIL image, an array or a tensor → (H, W) float32 of 0/1 at the
photograph's size). Each pixel becomes a value in [0, 1], which is thresholded at 0.5 (the
official script's rule):
  * grey and colour images: the grey level / 255 (colour: Pillow's L = 0.299 R + 0.587 G + 0.114 B);
    mode 1: 0 or 1.
  * 16-bit and 32-bit integer grey images: the level / 65535, as photographs; floats (F): values in
    [0, 1] as they are, any other range refused.
  * label maps: a grey image (L, I;16, I) whose levels are only 0 and 1 is read as labels, 1 = edit
    (as grey levels it would be an invisible, empty mask).
  * palette images (P) are read by their palette colours, as grey levels, except a label map: an
    image that uses exactly the indices 0 and 1 whose two palette colours are both dark or both light
    (so that, as colours, they could not mark a region: a segmentation export with class colours);
    then index 1 = edit.
  * masks with transparency (RGBA, LA, PA, P with a transparent index):
      - alpha uniform → the colour is the mask (the rules above);
      - colour uniform over the visible (alpha > 0) pixels, alpha varying → the alpha is the mask:
        **opaque = edit**, transparent = keep, with a warning that says so. This reads alpha like any
        channel (high = 1 = edit) and is what a region painted on a transparent layer exports. Tools
        that erase the region to edit (OpenAI's image edit API: transparent = edit) mean the opposite:
        pass `ImageOps.invert(mask.getchannel("A"))` for those;
      - both varying (e.g. a photograph with the region erased) → refused as ambiguous; the message
        says how to pass the channel that is meant.
  * arrays and tensors, (H, W) or that with axes of length 1 before it (1, 1, H, W) or one after it
    (H, W, 1), so a 1-pixel-high mask stays (1, W): bool as 0/1; uint16 as 16-bit levels (/ 65535, or labels
    when only 0 and 1); any other type: values in [0, 1] as they are, values up to 255 as 0–255;
    negative, larger or non-finite values are refused.
  A mask of another size than the photograph is resized to it (nearest) with a warning. An empty
  mask (no value reaches 0.5) is refused: there is nothing to edit.

Tensors: image_to_tensor (RGB PIL → (1, 3, H, W) float32 in [−1, 1]), images_to_tensor (a list →
(N, 3, H, W)), tensor_to_image ((3, H, W) in [−1, 1] → RGB PIL) and mask_to_image (0/1 → white = edit).
Errors are EditInputError, naming the file.
"""
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import EditInputError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")


# ----------------------------------------------------------------------------- reading
def read_image(image) -> Image.Image:
    """The photograph `image` (a path or a PIL image) as an upright 8-bit RGB PIL image (module docstring)."""
    name = describe(image, "image")
    if isinstance(image, (str, Path)):
        image = open_image(image, "image")
    if not isinstance(image, Image.Image):
        raise EditInputError(f"the image must be a PIL image or a path to an image file, got "
                             f"{type(image).__name__}. Pass the photograph's path or Image.open(path).")
    return to_rgb(upright(image), name)


def read_mask(mask, image_size: tuple) -> np.ndarray:
    """The mask (a path, PIL image, array or tensor) as (H, W) float32 of 0/1 at image_size = (W, H); 1 = edit.

    Values are read by the module docstring's rules, then thresholded at 0.5 (the official script's rule).
    """
    name = describe(mask, "mask")
    if isinstance(mask, (str, Path)):
        mask = open_image(mask, "mask")
    if isinstance(mask, Image.Image):
        values, reading = image_mask_values(upright(mask), name)
    else:
        values, reading = array_mask_values(mask, name, image_size)
    binary = (values >= 0.5).astype(np.float32)
    if not binary.any():
        low, high = float(values.min()), float(values.max())
        raise EditInputError(f"the mask is empty: nothing to edit. Expected the region to change white (1, at least "
                             f"0.5) and the background to keep black (0); {name}, read as {reading}, has values in "
                             f"[{low:.4g}, {high:.4g}] only. Paint the region to edit white.")
    if binary.shape[::-1] != tuple(image_size):
        turned = (" (the image's size turned by 90°: masks are read in display orientation, after any EXIF "
                  "orientation tag; draw the mask on the photograph as displayed)"
                  if binary.shape == tuple(image_size) else "")
        warnings.warn(f"the mask is {binary.shape[1]}x{binary.shape[0]} but the image is {image_size[0]}x"
                      f"{image_size[1]}{turned}; resizing the mask to the image (nearest neighbour)", stacklevel=2)
        binary = np.array(Image.fromarray(binary).resize(tuple(image_size), Image.NEAREST))
        if not binary.any():
            raise EditInputError(f"the mask is empty: nothing to edit: the region of {name} vanished when it was "
                                 f"resized to the image's {image_size[0]}x{image_size[1]}; expected a mask of the "
                                 f"image's size. Draw it on the image at its own size, or enlarge the region.")
    return binary


def open_image(path, what: str) -> Image.Image:
    """The image file at `path`, loaded into memory; `what` ("image", "mask") names it in errors.

    A path that is a folder, lies under a file, is missing, empty, unreadable, truncated or not an image is
    refused with an EditInputError naming the path at fault."""
    path = Path(path)
    if not path.is_file():
        above = next((parent for parent in path.parents if parent.exists()), None)
        if path.is_dir():
            found = f"{path} is a folder, not an image file"
        elif above is not None and not above.is_dir():
            found = f"{above} is a file, so {path} cannot be under it"
        else:
            raise EditInputError(f"{what} file not found: {path}. Check the path.")
        raise EditInputError(f"the {what} file {path}: {found}; expected a PNG or JPEG file. Check the path.")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except PermissionError as error:
        raise EditInputError(f"cannot read the {what} file {path}: {error.strerror}; expected a readable image "
                             f"file. Check its permissions.") from None
    except Image.DecompressionBombError as error:
        raise EditInputError(f"cannot read the {what} file {path} as an image: {error}; expected at most "
                             f"{2 * Image.MAX_IMAGE_PIXELS} pixels. Scale it down.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        empty = path.stat().st_size == 0
        cut_short = empty or "truncated" in str(error).lower()
        found = "the file is empty (0 bytes)" if empty else str(error)
        advice = ("It was cut short, e.g. by an interrupted download or copy: copy or export it again."
                  if cut_short else "Save it as PNG or JPEG.")
        raise EditInputError(f"cannot read the {what} file {path} as an image: {found}. {advice}") from None
    image.filename = str(path)  # copy() drops it; describe() names the file in later errors
    return image


def upright(image: Image.Image) -> Image.Image:
    """`image` turned to its display orientation by its EXIF Orientation tag (the tag then removed)."""
    orientation = image.getexif().get(0x0112, 1)
    if orientation == 1:
        return image
    turned = ImageOps.exif_transpose(image)
    turned.filename = getattr(image, "filename", "")
    return turned


def describe(source, what: str) -> str:
    """How errors name an input: 'the mask file x.png', 'the image (a PIL image, mode F)', 'the mask array'."""
    if isinstance(source, (str, Path)):
        return f"the {what} file {source}"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        return f"the {what} file {filename}" if filename else f"the {what} (a PIL image, mode {source.mode})"
    return f"the {what} array"


# ----------------------------------------------------------------------------- photographs: modes and bit depths
def to_rgb(image: Image.Image, name: str = "the image") -> Image.Image:
    """An 8-bit RGB copy of `image` in any Pillow mode, scaled by its real bit depth (module docstring)."""
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        grey = deep_grey_values(image, name)                                      # (H, W) in [0, 1]
        return Image.fromarray(np.round(grey * 255).astype(np.uint8), "L").convert("RGB")
    try:
        return (image.convert("LA") if image.mode == "La" else image).convert("RGB")  # Pillow has no La → RGB
    except ValueError as error:
        raise EditInputError(f"{name} is in Pillow mode {image.mode}, which cannot be converted to RGB ({error}). "
                             f"Save it as an 8-bit RGB PNG or JPEG.") from None


def deep_grey_values(image: Image.Image, name: str) -> np.ndarray:
    """(H, W) in [0, 1] from a 16-bit (I;16*), 32-bit integer (I) or float (F) grey image: level / 65535, or as is."""
    values = np.asarray(image)
    if image.mode == "F":
        finite = bool(np.isfinite(values).all())
        low, high = (float(values.min()), float(values.max())) if finite else (np.nan, np.nan)
        if not (finite and 0 <= low and high <= 1):
            found = f"values in [{low:.4g}, {high:.4g}]" if finite else "NaN or infinite values"
            raise EditInputError(f"{name} is a floating-point image (mode F) with {found}; expected values in "
                                 f"[0, 1] (0 black, 1 white). Save it scaled to [0, 1], or as an 8- or 16-bit image.")
        return values.astype(np.float32)
    if image.mode == "I" and (values.min() < 0 or values.max() > 65535):
        raise EditInputError(f"{name} is a 32-bit integer image (mode I) with values in [{values.min()}, "
                             f"{values.max()}]; expected 16-bit levels in [0, 65535]. "
                             f"Save it as an 8- or 16-bit image.")
    return values.astype(np.float32) / 65535


# ----------------------------------------------------------------------------- masks: values in [0, 1]
def image_mask_values(image: Image.Image, name: str) -> tuple[np.ndarray, str]:
    """(H, W) values in [0, 1] of a mask image, and how they were read (module docstring's rules)."""
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        with_alpha = image.convert("LA" if image.mode in ("LA", "La") else "RGBA")
        channels = np.asarray(with_alpha)
        colour, alpha = channels[..., :-1], channels[..., -1]
        if alpha.min() != alpha.max():
            visible = colour[alpha > 0]                                          # (number visible, channels)
            if (visible == visible[0]).all():
                warnings.warn(f"{name}: the region to edit was read from the alpha channel (its visible colour is "
                              f"uniform): opaque = edit, transparent = keep. If transparent means edit (as in "
                              f"OpenAI's image edit API), pass ImageOps.invert(mask.getchannel('A')) instead.",
                              stacklevel=3)
                return alpha.astype(np.float32) / 255, "its alpha channel / 255 (opaque = edit)"
            raise EditInputError(
                f"{name} is ambiguous: both its colour and its alpha channel vary, so either could mark the region "
                f"to edit. Expected a mask in one of them (white or opaque = edit). Pass the one meant: "
                f"mask.convert('L') for the colour, mask.getchannel('A') for opaque = edit, or "
                f"ImageOps.invert(mask.getchannel('A')) for transparent = edit (OpenAI's convention); or save that "
                f"as a greyscale PNG.")
        if image.mode != "P":  # alpha carries nothing: the colour is the mask
            image = with_alpha.convert("L") if with_alpha.mode == "LA" else with_alpha.convert("RGB")
    if image.mode == "1":
        return np.asarray(image, dtype=np.float32), "a 1-bit image (0 or 1)"
    if image.mode == "P":
        return palette_mask_values(image)
    if image.mode in ("L",) + SIXTEEN_BIT_MODES + ("I",):
        levels = np.asarray(image)
        if levels.min() >= 0 and levels.max() == 1:
            return levels.astype(np.float32), "a label map (levels 0 and 1 only: 1 = edit)"
        if image.mode == "L":
            return levels.astype(np.float32) / 255, "grey levels / 255"
    if image.mode in SIXTEEN_BIT_MODES + ("I",):
        return deep_grey_values(image, name), "16-bit levels / 65535"
    if image.mode == "F":
        return deep_grey_values(image, name), "floating-point values"
    return np.asarray(to_rgb(image, name).convert("L"), dtype=np.float32) / 255, "grey levels / 255 of its colours"


def palette_mask_values(image: Image.Image) -> tuple[np.ndarray, str]:
    """(H, W) values of a palette (P) mask: its colours as grey levels, or its indices if it is a 0/1 label map."""
    indices = np.asarray(image)
    greys = np.asarray(image.convert("L"), dtype=np.float32) / 255
    if set(np.unique(indices).tolist()) == {0, 1}:
        grey_of_0, grey_of_1 = greys[indices == 0][0], greys[indices == 1][0]
        if (grey_of_0 >= 0.5) == (grey_of_1 >= 0.5):   # as colours they cannot mark a region: labels
            return indices.astype(np.float32), "a palette label map (indices 0 and 1: index 1 = edit)"
    return greys, "its palette colours as grey levels / 255"


def array_mask_values(mask, name: str, image_size: tuple | None = None) -> tuple[np.ndarray, str]:
    """(H, W) values in [0, 1] of a mask array or tensor (module docstring's rules)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    try:
        values = np.asarray(mask)
    except (TypeError, ValueError):
        values = None
    if values is None or values.dtype == object or not (values.dtype == bool or np.issubdtype(values.dtype, np.number)):
        raise EditInputError(f"the mask must be a path, a PIL image, or a numeric array or tensor, got "
                             f"{type(mask).__name__}. Pass the mask's path or a (H, W) array with 1 = edit.")
    shape = values.shape
    values = mask_plane(values, image_size)
    if values.ndim != 2:
        raise EditInputError(f"a mask array must be 2-D (H, W), or that with axes of length 1 before it or one "
                             f"after it, got shape {shape}. Pass one channel, 1 = edit.")
    if values.dtype == bool:
        return values.astype(np.float32), "booleans"
    if values.dtype == np.uint16 and values.max() > 1:
        return values.astype(np.float32) / 65535, "16-bit levels / 65535"
    values = values.astype(np.float32)
    low, high = (float(values.min()), float(values.max())) if np.isfinite(values).all() else (np.nan, np.nan)
    if not low >= 0 or high > 255:
        raise EditInputError(f"{name} has values in [{low:.4g}, {high:.4g}]; expected values in [0, 1] or 0–255 "
                             f"(or a uint16 array of 16-bit levels), 1 or 255 = edit. Scale it to [0, 1].")
    return (values / 255, "values / 255 (0–255)") if high > 1 else (values, "values in [0, 1]")


def mask_plane(values: np.ndarray, image_size: tuple | None = None) -> np.ndarray:
    """(H, W) from (H, W, 1) or (1, …, 1, H, W); other shapes as they are. Unlike squeeze(), a side of 1 pixel
    stays: a 300x1 mask is (1, 300). Where both readings exist ((1, 300, 1): H = 1 with a channel, or W = 1
    after a batch axis), the one of the image's size = (W, H) wins, else the channel-last one."""
    readings = []
    for channel_last_first in (True, False):
        plane = values
        for last in (channel_last_first, not channel_last_first):
            while plane.ndim > 2 and plane.shape[-1 if last else 0] == 1:
                plane = plane[..., 0] if last else plane[0]
        readings.append(plane)
    fitting = [plane for plane in readings if image_size is not None and plane.shape == tuple(image_size)[::-1]]
    return (fitting or readings)[0]


# ----------------------------------------------------------------------------- PIL ↔ tensors
def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """x = level / 127.5 − 1: an RGB PIL image → (1, 3, H, W) float32 in [−1, 1] (other modes by to_rgb)."""
    array = np.asarray(to_rgb(image), dtype=np.float32)                          # (H, W, 3) in 0–255
    return torch.from_numpy(array / 127.5 - 1).permute(2, 0, 1)[None]


def images_to_tensor(images: list) -> torch.Tensor:
    """A list of PIL images of one size → (N, 3, H, W) float32 in [−1, 1]."""
    return torch.cat([image_to_tensor(image) for image in images])


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    """level = round((x + 1) · 127.5): (3, H, W) in [−1, 1] → an RGB PIL image (clamped, rounded)."""
    array = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def mask_to_image(mask) -> Image.Image:
    """An (H, W) mask of 0/1 (array or tensor) → an RGB PIL image, white = edit."""
    values = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return Image.fromarray((mask_plane(values) * 255).round().astype(np.uint8)).convert("RGB")
