"""Re-create the files in blend/assets/ and weights/toy_photos/ from scikit-image's sample photographs.

    pip install scikit-image==0.26.*  &&  python blend/assets/make_assets.py

Not needed at run time: the outputs are committed. Sources and licences: SOURCES.md.
"""
from pathlib import Path

from PIL import Image, ImageDraw
from skimage import data

HERE = Path(__file__).resolve().parent
TOY_PHOTOS = HERE.parent.parent / "weights" / "toy_photos"   # the toy model's data set
TOY_SIZE = 128  # side of each toy data-set image, pixels

# class caption -> [(scikit-image function, crop box (left, top, right, bottom)), ...]
TOY_DATA = {
    "cat": [("chelsea", (0, 0, 300, 300)), ("chelsea", (90, 0, 390, 300))],
    "coffee": [("coffee", (100, 0, 500, 400)), ("coffee", (150, 0, 450, 300))],
    "astronaut": [("astronaut", (0, 0, 512, 512)), ("astronaut", (40, 0, 360, 320))],
    "rocket": [("rocket", (107, 0, 534, 427)), ("rocket", (170, 40, 470, 340))],
    "brick": [("brick", (0, 0, 256, 256)), ("brick", (256, 256, 512, 512))],
    "grass": [("grass", (0, 0, 256, 256)), ("grass", (256, 256, 512, 512))],
}


def photo(name: str) -> Image.Image:
    """The photograph as an RGB or (for the grey texture photographs) an L image."""
    return Image.fromarray(getattr(data, name)())


# The shipped example: the coffee photograph's central square, its cup masked (white = edit).
EXAMPLE_CROP = ("coffee", (100, 0, 500, 400))
EXAMPLE_MASK_ELLIPSE = (88, 12, 338, 325)  # left, top, right, bottom in the 400x400 crop


def main():
    name, box = EXAMPLE_CROP
    photo(name).crop(box).save(HERE / "example.jpg", quality=90)
    mask = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
    ImageDraw.Draw(mask).ellipse(EXAMPLE_MASK_ELLIPSE, fill=255)
    mask.convert("1").save(HERE / "example_mask.png", optimize=True)
    for caption, crops in TOY_DATA.items():
        for index, (name, box) in enumerate(crops):
            crop = photo(name).crop(box).resize((TOY_SIZE, TOY_SIZE), Image.LANCZOS)
            crop.save(TOY_PHOTOS / f"{caption}_{index}.png", optimize=True)


if __name__ == "__main__":
    main()
