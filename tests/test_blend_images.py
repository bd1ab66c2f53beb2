"""blend/images.py: how photographs and masks are read (orientation, modes, bit depths, alpha, labels)
and how PIL images become tensors and back.

Every file is made here with Pillow (or, for a 16-bit RGB PNG, written byte by byte), so each test
knows the answer: the region a mask marks, the level a pixel must have.
"""
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from blend.errors import EditInputError
from blend.images import image_to_tensor, images_to_tensor, mask_to_image, read_image, read_mask, tensor_to_image

W, H = 12, 8
ORIENTATION = 0x0112
# The stored pixels of a photograph with an EXIF Orientation tag, from the pixels as displayed:
# tag 6 is displayed turned 90° clockwise (Pillow's ROTATE_270), tag 8 turned 90° anticlockwise.
TO_STORED = {6: Image.ROTATE_90, 8: Image.ROTATE_270}
TO_DISPLAYED = {6: Image.ROTATE_270, 8: Image.ROTATE_90}


def box(size=(W, H), rows=(2, 6), columns=(3, 9)) -> np.ndarray:
    """(H, W) float32 of 0/1 at size = (W, H): 1 in rows × columns."""
    mask = np.zeros(size[::-1], dtype=np.float32)
    mask[rows[0]:rows[1], columns[0]:columns[1]] = 1
    return mask


def corner_photo(size) -> Image.Image:
    """A smooth RGB photograph at size = (W, H) whose four corners have four different colours."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red, green = 255 * x / (width - 1), 255 * y / (height - 1)
    return Image.fromarray(np.stack([red, green, 255 - red], -1).round().astype(np.uint8))


def with_orientation(image: Image.Image, path, orientation: int, **options):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif, **options)
    return path


# ----------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("orientation", [6, 8])
def test_photo_with_an_exif_orientation_is_read_as_displayed(tmp_path, orientation):
    displayed = corner_photo((48, 64))                                            # portrait, as a viewer shows it
    path = with_orientation(displayed.transpose(TO_STORED[orientation]), tmp_path / "phone.jpg", orientation,
                            quality=95)
    stored = Image.open(path)
    assert stored.size == (64, 48)                                                # the file holds it sideways
    expected = np.asarray(stored.convert("RGB").transpose(TO_DISPLAYED[orientation]))
    for source in (path, Image.open(path)):                                        # a path or an opened image
        image = read_image(source)
        assert image.size == (48, 64) and np.array_equal(np.asarray(image), expected)
        assert image.getexif().get(ORIENTATION, 1) == 1                           # upright: no tag left to apply
    assert np.abs(expected.astype(int) - np.asarray(displayed)).mean() < 3        # JPEG noise only


def test_mask_with_its_own_exif_orientation_is_turned_to_display_orientation(tmp_path):
    displayed = box((W, H), rows=(0, 3), columns=(0, 5))                          # drawn upright: top left
    stored = Image.fromarray((displayed * 255).astype(np.uint8)).transpose(TO_STORED[8])
    path = with_orientation(stored, tmp_path / "mask.png", 8)
    assert Image.open(path).size == (H, W)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                            # it fits: nothing is resized
        assert np.array_equal(read_mask(path, (W, H)), displayed)


def test_mask_in_the_stored_orientation_of_a_turned_photo_warns_that_it_is_turned():
    sideways = np.ascontiguousarray(box((W, H)).T)                                # H x W the other way round
    with pytest.warns(UserWarning, match="turned by 90°.*display orientation"):
        read_mask(sideways, (W, H))


# ----------------------------------------------------------------------------- masks with transparency
def rgba_mask(colour, alpha, mode="RGBA") -> Image.Image:
    """An RGBA (or LA) image from colour (H, W, 3) or (H, W) and alpha (H, W), levels 0–255."""
    colour = np.asarray(colour, dtype=np.uint8)
    if mode == "LA":
        colour = colour[..., 0] if colour.ndim == 3 else colour
        return Image.fromarray(np.stack([colour, alpha.astype(np.uint8)], -1), "LA")
    return Image.fromarray(np.concatenate([colour, alpha.astype(np.uint8)[..., None]], -1), "RGBA")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_uniform_colour_mask_with_the_region_painted_in_alpha_edits_the_opaque_region(tmp_path, mode):
    painted = box()
    alpha = painted * 255
    alpha[2, 3] = 128                                                             # an anti-aliased edge pixel
    path = tmp_path / "export.png"
    rgba_mask(np.zeros((H, W, 3)), alpha, mode).save(path)                        # all black: colour says nothing
    with pytest.warns(UserWarning, match=r"export\.png: the region to edit was read from the alpha channel.*"
                                         r"opaque = edit.*ImageOps\.invert"):
        assert np.array_equal(read_mask(path, (W, H)), painted)


def test_colour_under_fully_transparent_pixels_is_ignored():
    painted = box()
    colour = np.full((H, W, 3), 255)                                              # white under the transparent part
    colour[painted == 1] = (0, 0, 0)                                              # black strokes, opaque
    with pytest.warns(UserWarning, match="alpha channel"):
        assert np.array_equal(read_mask(rgba_mask(colour, painted * 255), (W, H)), painted)


def test_palette_mask_with_a_transparent_index_reads_the_alpha_channel(tmp_path):
    painted = box()
    image = Image.fromarray(np.where(painted == 1, 0, 1).astype(np.uint8), "P")
    image.putpalette([0, 0, 0, 0, 0, 0])                                          # both indices black
    path = tmp_path / "palette.png"
    image.save(path, transparency=1)                                              # index 1 transparent
    with pytest.warns(UserWarning, match="alpha channel"):
        assert np.array_equal(read_mask(path, (W, H)), painted)


def test_rgba_mask_with_varying_colour_and_uniform_alpha_reads_the_colour():
    painted = box()
    colour = np.repeat(painted[..., None] * 255, 3, -1)
    assert np.array_equal(read_mask(rgba_mask(colour, np.full((H, W), 255)), (W, H)), painted)
    assert np.array_equal(read_mask(rgba_mask(colour, np.full((H, W), 255), "LA"), (W, H)), painted)


def test_photo_with_the_region_erased_to_transparent_is_refused_as_ambiguous_saying_which_to_pass(tmp_path):
    photo = np.asarray(corner_photo((W, H)))
    path = tmp_path / "erased.png"
    rgba_mask(photo, (1 - box()) * 255).save(path)                                # OpenAI's edit-API style mask
    with pytest.raises(EditInputError) as error:
        read_mask(path, (W, H))
    message = str(error.value)
    assert "erased.png is ambiguous" in message and "colour and its alpha channel vary" in message
    assert "mask.getchannel('A')" in message and "ImageOps.invert(mask.getchannel('A'))" in message
    assert "transparent = edit" in message and "mask.convert('L')" in message
    # and what the message proposes does what it says:
    assert np.array_equal(read_mask(ImageOps.invert(Image.open(path).getchannel("A")), (W, H)), box())


# ----------------------------------------------------------------------------- label maps and palettes
@pytest.mark.parametrize("mode", ["L", "I;16", "I"])
def test_grey_label_map_of_zeros_and_ones_edits_the_ones(mode):
    labels = box()
    image = Image.fromarray(labels.astype({"L": np.uint8, "I;16": np.uint16, "I": np.int32}[mode]))
    assert image.mode == mode
    assert np.array_equal(read_mask(image, (W, H)), labels)


def test_palette_label_map_with_class_colours_edits_index_one(tmp_path):
    labels = box()
    image = Image.fromarray(labels.astype(np.uint8), "P")
    image.putpalette([0, 0, 0, 128, 0, 0])                                        # PASCAL VOC's first two colours
    image.save(tmp_path / "segmentation.png")
    assert np.array_equal(read_mask(tmp_path / "segmentation.png", (W, H)), labels)


def test_palette_mask_is_read_by_its_colours_when_they_are_black_and_white(tmp_path):
    painted = box()
    image = Image.fromarray(np.where(painted == 1, 0, 1).astype(np.uint8), "P")  # index 0 inside the region
    image.putpalette([255, 255, 255, 0, 0, 0])                                    # index 0 white, 1 black
    image.save(tmp_path / "inverted_palette.png")
    assert np.array_equal(read_mask(tmp_path / "inverted_palette.png", (W, H)), painted)


# ----------------------------------------------------------------------------- bit depths
def test_sixteen_bit_grey_photo_is_scaled_by_65535_not_clipped_to_white(tmp_path):
    levels = np.linspace(0, 65535, W * H).round().astype(np.uint16).reshape(H, W)
    Image.fromarray(levels).save(tmp_path / "scan.png")
    assert Image.open(tmp_path / "scan.png").mode == "I;16"
    image = np.asarray(read_image(tmp_path / "scan.png"))
    expected = np.round(levels / 65535 * 255).astype(np.uint8)
    assert np.array_equal(image, np.repeat(expected[..., None], 3, -1))


def test_thirty_two_bit_integer_photo_is_taken_as_sixteen_bit_and_beyond_is_refused():
    levels = np.linspace(0, 65535, W * H).round().astype(np.int32).reshape(H, W)
    image = np.asarray(read_image(Image.fromarray(levels)))
    assert np.array_equal(image[..., 0], np.round(levels / 65535 * 255).astype(np.uint8))
    with pytest.raises(EditInputError, match=r"mode I\) with values in \[0, 70000\]; expected 16-bit levels"):
        read_image(Image.fromarray(np.where(levels > 0, 70000, 0).astype(np.int32)))


def test_float_tiff_photo_in_zero_one_is_taken_as_it_is(tmp_path):
    values = np.linspace(0, 1, W * H, dtype=np.float32).reshape(H, W)
    Image.fromarray(values).save(tmp_path / "render.tif")
    assert Image.open(tmp_path / "render.tif").mode == "F"
    image = np.asarray(read_image(tmp_path / "render.tif"))
    assert np.array_equal(image[..., 1], np.round(values * 255).astype(np.uint8))


@pytest.mark.parametrize("values, found", [(np.linspace(0, 255, W * H), r"values in \[0, 255\]"),
                                           (np.full(W * H, np.nan), "NaN or infinite values")])
def test_float_photo_outside_zero_one_is_refused_naming_the_file(tmp_path, values, found):
    Image.fromarray(values.astype(np.float32).reshape(H, W)).save(tmp_path / "hdr.tif")
    with pytest.raises(EditInputError, match=rf"hdr\.tif is a floating-point image \(mode F\) with {found}; "
                                             r"expected values in \[0, 1\].*Save it scaled to \[0, 1\]"):
        read_image(tmp_path / "hdr.tif")


def test_sixteen_bit_soft_mask_is_thresholded_at_half_of_65535(tmp_path):
    levels = np.where(box() == 1, 65535, 20000).astype(np.uint16)                # 20000 / 65535 = 0.31: keep
    Image.fromarray(levels).save(tmp_path / "soft16.png")
    assert np.array_equal(read_mask(tmp_path / "soft16.png", (W, H)), box())


def test_float_tiff_mask_is_read_as_values_in_zero_one(tmp_path):
    Image.fromarray(np.where(box() == 1, 0.7, 0.2).astype(np.float32)).save(tmp_path / "soft.tif")
    assert np.array_equal(read_mask(tmp_path / "soft.tif", (W, H)), box())


def png_16_bit_rgb(levels: np.ndarray) -> bytes:
    """A PNG file (colour type 2, bit depth 16) holding (H, W, 3) uint16 levels, written chunk by chunk."""
    height, width, _ = levels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in levels)    # filter 0 before each row
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_sixteen_bit_rgb_png_is_read_by_its_high_bytes_as_pillow_reads_it(tmp_path):
    levels = np.random.default_rng(0).integers(0, 65536, (H, W, 3)).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(png_16_bit_rgb(levels))
    assert np.array_equal(np.asarray(read_image(tmp_path / "deep.png")), (levels >> 8).astype(np.uint8))
    mask_levels = np.repeat((box() * 65535).astype(np.uint16)[..., None], 3, -1)
    (tmp_path / "deep_mask.png").write_bytes(png_16_bit_rgb(mask_levels))
    assert np.array_equal(read_mask(tmp_path / "deep_mask.png", (W, H)), box())


# ----------------------------------------------------------------------------- arrays and tensors as masks
def test_uint16_mask_array_is_read_as_sixteen_bit_levels():
    assert np.array_equal(read_mask(np.where(box() == 1, 65535, 20000).astype(np.uint16), (W, H)), box())
    assert np.array_equal(read_mask(box().astype(np.uint16), (W, H)), box())     # 0/1: labels
    assert np.array_equal(read_mask(torch.from_numpy(box()).bool()[None], (W, H)), box())


@pytest.mark.parametrize("values, found", [(box() * 1000, r"\[0, 1000\]"), (box() - 0.5, r"\[-0.5, 0.5\]"),
                                           (box() * np.nan, r"\[nan, nan\]")])
def test_mask_array_outside_zero_one_and_0_255_is_refused(values, found):
    with pytest.raises(EditInputError, match=rf"the mask array has values in {found}; expected values in \[0, 1\] "
                                             r"or 0–255"):
        read_mask(values, (W, H))


def test_empty_mask_message_names_the_file_the_reading_and_the_values_found(tmp_path):
    Image.fromarray(np.full((H, W), 100, dtype=np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(EditInputError, match=r"the mask is empty: nothing to edit\. Expected the region to change "
                                             r"white.*grey\.png, read as grey levels / 255, has values in "
                                             r"\[0\.3922, 0\.3922\] only"):
        read_mask(tmp_path / "grey.png", (W, H))


def test_mask_region_lost_in_resizing_to_the_image_is_refused_as_empty():
    speck = np.zeros((10 * H, 10 * W), dtype=np.float32)
    speck[1, 1] = 1                                                               # no nearest sample lands on it
    with pytest.warns(UserWarning, match="resizing the mask"), \
            pytest.raises(EditInputError, match=r"the mask is empty: nothing to edit: the region of the mask array "
                                                 r"vanished when it was resized to the image's 12x8"):
        read_mask(speck, (W, H))


# ----------------------------------------------------------------------------- PIL ↔ tensors
def test_image_to_tensor_and_back_is_exact_and_in_minus_one_one():
    photo = corner_photo((W, H))
    x = image_to_tensor(photo)
    assert x.shape == (1, 3, H, W) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1                                          # levels 0 and 255 present
    assert torch.equal(x[0, :, 0, 0], torch.tensor([0, 0, 255]) / 127.5 - 1)
    assert np.array_equal(np.asarray(tensor_to_image(x[0])), np.asarray(photo))
    assert tensor_to_image(torch.full((3, H, W), 5.0)).getextrema() == ((255, 255),) * 3   # clamped


def test_images_to_tensor_stacks_a_list_and_converts_other_modes():
    photos = [corner_photo((W, H)), corner_photo((W, H)).convert("L")]
    batch = images_to_tensor(photos)
    assert batch.shape == (2, 3, H, W)
    assert torch.equal(batch[1], image_to_tensor(photos[1].convert("RGB"))[0])


def test_mask_to_image_is_white_where_edited():
    image = mask_to_image(torch.from_numpy(box()))
    assert image.mode == "RGB" and np.array_equal(np.asarray(image)[..., 0], box() * 255)


def test_editor_and_package_still_export_the_readers_and_the_error():
    import blend
    import blend.editor
    import blend.images
    assert blend.editor.read_image is blend.images.read_image and blend.editor.read_mask is blend.images.read_mask
    assert blend.EditInputError is blend.editor.EditInputError is EditInputError


# ----------------------------------------------------------------------------- one-pixel sides, damaged files
@pytest.mark.parametrize("shape, size", [((1, 300), (300, 1)), ((300, 1), (1, 300)), ((1, 1), (1, 1)),
                                         ((1, 1, 1, 300), (300, 1)), ((1, 300, 1), (300, 1)),
                                         ((1, 1, 300, 1), (1, 300))])
def test_mask_one_pixel_high_or_wide_keeps_both_dimensions_as_array_tensor_and_image(shape, size):
    # (1, 300, 1) and (1, 1, 300, 1) each have two readings; the image's size decides.
    values = np.ones(shape, dtype=np.float32)
    for mask in (values, torch.from_numpy(values)):
        read = read_mask(mask, size)
        assert read.shape == size[::-1] and read.all()
        assert mask_to_image(read).size == size
        if values.ndim == 2:
            assert mask_to_image(mask).size == size


def test_image_path_that_is_a_folder_or_under_a_file_is_refused_naming_the_part_at_fault(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photo.png").write_bytes(b"")
    with pytest.raises(EditInputError, match=rf"the image file {tmp_path / 'photos'}: .*photos is a folder, not an "
                                             r"image file; expected a PNG or JPEG file"):
        read_image(tmp_path / "photos")
    under = tmp_path / "photo.png" / "cat.png"
    with pytest.raises(EditInputError, match=rf"{tmp_path / 'photo.png'} is a file, so {under} cannot be under it"):
        read_mask(under, (W, H))


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
@pytest.mark.parametrize("kept", [0, 0.5])
def test_truncated_or_empty_png_and_jpeg_are_refused_as_cut_short_naming_the_file(tmp_path, format, kept):
    whole = tmp_path / f"whole.{format.lower()}"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole, format)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{format.lower()}"
    cut.write_bytes(data[:int(kept * len(data))])
    with pytest.raises(EditInputError) as error:
        read_image(cut)
    assert str(error.value).startswith(f"cannot read the image file {cut} as an image: ")
    if kept == 0:
        assert "the file is empty (0 bytes). It was cut short" in str(error.value)
    else:
        assert "truncated" in str(error.value).lower() and "copy or export it again" in str(error.value)


def test_unreadable_image_file_is_refused_as_a_permission_problem_not_a_format_one(tmp_path, monkeypatch):
    # As root a mode-000 file is still readable, so the kernel's answer to everyone else is given by Image.open.
    photo = tmp_path / "locked.png"
    corner_photo((W, H)).save(photo)
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(EditInputError, match=rf"cannot read the image file {photo}: Permission denied; expected a "
                                             r"readable image file\. Check its permissions\."):
        read_image(photo)
