"""The benchmark protocol of the paper's Table 1: random images, random masks, prompts from ImageNet names.

`make_benchmark(images_dir, n, seed, out)` writes a manifest that `python -m blend.batch` runs as is:

    {"id": "0000-goldfish", "image": "<path of the photo>", "mask": "<out stem>_masks/0000-goldfish.png",
     "prompt": "goldfish"}

with paths relative to the manifest's folder. Everything is drawn from one `random.Random(seed)`,
in this order for each item: the photograph (a sample without replacement while there are enough,
then with replacement), the class name, then the mask. So a seed gives the same manifest and the
same masks on any machine.

A mask is an ellipse or a rectangle (equally likely), white = edit, at the photograph's size (as
displayed: EXIF orientation applied), with an area drawn uniformly from 10–40% of the image and
an aspect ratio log-uniform in [1/2, 2], placed uniformly where it fits. A draw is kept when the
drawn mask covers 10–40% of the pixels and, resized to the latent grid (1/8 of the size, nearest,
as Algorithm 1 does), still marks at least MIN_LATENT_PIXELS positions; otherwise it is drawn again.

The prompt is the class name itself, so that blend.evaluate reads the class back from the prompt.

Every drawn photograph is read whole before anything is written; one that cannot be read (truncated,
not an image) is refused, naming it, rather than skipped: skipping would make the seed's manifest
depend on which files a machine can decode, and python -m blend.batch would fail on it anyway.
"""
import json
import math
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import EditInputError
from ..images import read_image
from ..masks import resize_mask
from .report import output_file_problem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
COVERAGE = (0.10, 0.40)
ASPECT = (0.5, 2.0)
LATENT_FACTOR = 8
MIN_LATENT_PIXELS = 4
MAX_DRAWS = 1000


class BenchmarkError(ValueError):
    """A bad images folder, class list or output path for make-benchmark."""


def image_files(folder) -> list:
    """The photographs directly in `folder` (by suffix), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkError(f"{folder}: expected a folder of photographs, found "
                             f"{'a file' if folder.exists() else 'nothing'}")
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as error:
        raise BenchmarkError(f"cannot list the images folder {folder}: {error.strerror or error}; expected a "
                             f"readable folder of photographs") from None
    if not files:
        raise BenchmarkError(f"{folder} holds no photographs ({', '.join(IMAGE_SUFFIXES)}); point make-benchmark "
                             f"at a folder of images")
    return files


def latent_pixels(mask: np.ndarray) -> int:
    """How many positions the mask (H, W) of 0/1 marks on the latent grid of 1/8 its size."""
    height, width = mask.shape
    size = (max(1, height // LATENT_FACTOR), max(1, width // LATENT_FACTOR))
    return int(resize_mask(torch.from_numpy(mask.astype(np.float32))[None, None], size).sum().item())


def random_mask(width: int, height: int, rng: random.Random) -> tuple[Image.Image, str]:
    """A random ellipse or rectangle mask (module docstring) as an "L" image (255 = edit), and its shape."""
    for _ in range(MAX_DRAWS):
        shape = rng.choice(("ellipse", "rectangle"))
        area = rng.uniform(*COVERAGE) * width * height
        aspect = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))   # box width / box height
        box_area = area * (4 / math.pi if shape == "ellipse" else 1)               # an ellipse fills π/4 of its box
        box_width, box_height = math.sqrt(box_area * aspect), math.sqrt(box_area / aspect)
        if box_width > width or box_height > height:
            continue
        left, top = rng.uniform(0, width - box_width), rng.uniform(0, height - box_height)
        image = Image.new("L", (width, height), 0)
        corners = [left, top, left + box_width - 1, top + box_height - 1]
        (ImageDraw.Draw(image).ellipse if shape == "ellipse" else ImageDraw.Draw(image).rectangle)(corners, fill=255)
        mask = np.asarray(image) > 127
        if COVERAGE[0] <= mask.mean() <= COVERAGE[1] and latent_pixels(mask) >= MIN_LATENT_PIXELS:
            return image, shape
    raise BenchmarkError(f"no mask of {COVERAGE[0]:.0%}-{COVERAGE[1]:.0%} coverage with at least "
                         f"{MIN_LATENT_PIXELS} latent pixels fits a {width}x{height} image; use larger images")


def slug(name: str) -> str:
    """A class name as a piece of an id: lower case, runs of other characters as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "class"


def make_benchmark(images_dir, n: int = 50, seed: int = 0, out="benchmark.jsonl", class_names=None) -> list:
    """Write the manifest `out` and its masks (in `<out stem>_masks/` beside it); returns the manifest's entries.

    class_names: the prompts' classes (default: the 1000 ImageNet names; a name appears once even if
    two classes share it). Nothing is overwritten: an existing manifest or mask folder is refused, and
    both are written under temporary names and renamed when complete.
    """
    from .judges import imagenet_class_names

    if not isinstance(n, int) or n < 1:
        raise BenchmarkError(f"--n: expected a number of edits of at least 1, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise BenchmarkError(f"--seed: expected a non-negative integer, got {seed!r}")
    names = list(dict.fromkeys(class_names or imagenet_class_names()))      # unique, in order
    if not names or not all(isinstance(c, str) and c.strip() for c in names):
        raise BenchmarkError(f"expected a list of class names, got {class_names!r}")
    out = Path(out)
    masks_dir = out.parent / f"{out.stem}_masks"
    staging, temporary = out.parent / f".{masks_dir.name}.incomplete", out.parent / f".{out.name}.incomplete"
    problem = output_file_problem(out)
    if problem:
        raise BenchmarkError(problem)
    finish_interrupted(out, masks_dir, staging, temporary)
    for path in (out, masks_dir):
        if path.exists() or path.is_symlink():
            raise BenchmarkError(f"{path} already exists; make-benchmark never overwrites: choose another --out")
    photos = image_files(images_dir)
    rng = random.Random(seed)
    chosen = rng.sample(photos, n) if n <= len(photos) else [rng.choice(photos) for _ in range(n)]
    sizes = photo_sizes(chosen)
    staging.mkdir()
    entries = []
    try:
        for index, photo in enumerate(chosen):
            name = rng.choice(names)
            item_id = f"{index:04d}-{slug(name)}"
            width, height = sizes[photo]
            mask, _ = random_mask(width, height, rng)
            mask.save(staging / f"{item_id}.png")
            entries.append({"id": item_id, "image": os.path.relpath(photo.resolve(), out.parent.resolve()),
                            "mask": f"{masks_dir.name}/{item_id}.png", "prompt": name})
        temporary.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        temporary.unlink(missing_ok=True)
        raise
    staging.rename(masks_dir)     # a run stopped between these two renames is finished by the next one
    temporary.rename(out)
    return entries


def photo_sizes(photos: list) -> dict:
    """{photo: (width, height) as displayed} for each photograph, each read whole; BenchmarkError names
    every one that cannot be read."""
    sizes, problems = {}, []
    for photo in dict.fromkeys(photos):
        try:
            sizes[photo] = read_image(photo).size
        except EditInputError as error:
            problems.append(f"{error} make-benchmark draws from every image in the folder, so replace or remove "
                            f"{photo.name}; nothing was written")
    if problems:
        raise BenchmarkError("\n".join(problems))
    return sizes


def finish_interrupted(out: Path, masks_dir: Path, staging: Path, temporary: Path) -> None:
    """Tidy what a killed make-benchmark left beside `out`: a run stopped between its two renames left the
    masks in place and the whole manifest under its hidden name, which is renamed now; any other hidden
    file or folder of a killed run is removed."""
    if masks_dir.is_dir() and not out.exists() and temporary.is_file() and not staging.exists():
        temporary.rename(out)
    shutil.rmtree(staging, ignore_errors=True)
    temporary.unlink(missing_ok=True)
