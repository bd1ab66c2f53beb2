"""blend/editor.py: the high-level edit() call, its input rules and its determinism.

Most tests use the tiny preset (random weights: its images are noise, its shapes and paths are real)
with few steps; the toy model checks that the edit means something.
"""
import warnings

import numpy as np
import pytest
from PIL import Image

import weights
from blend import EditInputError, edit
from blend.cli import EXAMPLE_IMAGE, EXAMPLE_MASK
from blend.editor import working_size
from weights.toy import TOY_PHOTOS


@pytest.fixture(scope="module")
def tiny():
    return weights.load("tiny")


@pytest.fixture(scope="module")
def photo():
    return Image.open(EXAMPLE_IMAGE).convert("RGB").resize((96, 96), Image.LANCZOS)


def box_mask(size, box=(0.25, 0.25, 0.75, 0.75)) -> np.ndarray:
    """A (H, W) 0/1 array at size = (W, H), 1 inside the box given in fractions of the sides."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.float32)
    mask[int(box[1] * height):int(box[3] * height), int(box[0] * width):int(box[2] * width)] = 1
    return mask


def quick(image, mask, model, **options):
    return edit(image, mask, options.pop("prompt", "a cat"), model=model, steps=options.pop("steps", 4),
                num_samples=options.pop("num_samples", 1), device="cpu", **options)


def test_edit_same_seed_same_output_other_seed_differs(tiny, photo):
    mask = box_mask(photo.size)
    first, again = quick(photo, mask, tiny, seed=7), quick(photo, mask, tiny, seed=7)
    other = quick(photo, mask, tiny, seed=8)
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(other[0]))


def test_edit_returns_num_samples_images_at_the_input_size(tiny, photo):
    results = quick(photo, box_mask(photo.size), tiny, num_samples=3)
    assert len(results) == 3 and all(r.size == photo.size and r.mode == "RGB" for r in results)


def test_edit_sides_not_multiples_of_64_are_restored_on_output(tiny, photo):
    odd = photo.resize((100, 70))
    assert working_size(odd.size, 64, multiple=16) == (64, 48)
    results = quick(odd, box_mask(odd.size), tiny)
    assert results[0].size == (100, 70)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_edit_converts_non_rgb_images(tiny, photo, mode):
    results = quick(photo.convert(mode), box_mask(photo.size), tiny)
    assert results[0].mode == "RGB" and results[0].size == photo.size


def test_edit_missing_image_or_mask_file_is_named(tiny, photo, tmp_path):
    with pytest.raises(EditInputError, match="image file not found: .*nowhere.png"):
        quick(tmp_path / "nowhere.png", box_mask(photo.size), tiny)
    with pytest.raises(EditInputError, match="mask file not found: .*nomask.png"):
        quick(photo, tmp_path / "nomask.png", tiny)


def test_edit_unreadable_image_file_is_named(tiny, photo, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(EditInputError, match="cannot read the image file .*broken.png"):
        quick(broken, box_mask(photo.size), tiny)


def test_mask_drawn_on_a_rotated_phone_photo_edits_the_displayed_region(tiny, tmp_path):
    displayed = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((48, 64), Image.LANCZOS)   # portrait on screen
    exif = Image.Exif()
    exif[0x0112] = 6                                     # stored turned 90° anticlockwise: display turns it back
    displayed.transpose(Image.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = np.asarray(Image.open(tmp_path / "phone.jpg").transpose(Image.ROTATE_270))   # the decoded JPEG
    mask = box_mask((48, 64), box=(0, 0, 0.5, 0.5))      # the top left quarter of the photo as displayed
    result = quick(tmp_path / "phone.jpg", mask, tiny, reconstruction="pixel")[0]
    assert result.size == (48, 64) and result.getexif().get(0x0112, 1) == 1     # written upright
    keep = mask == 0
    assert np.array_equal(np.asarray(result)[keep], upright[keep])             # the background is kept ...
    assert np.abs(np.asarray(result, dtype=np.float32) - upright)[~keep].mean() > 10   # ... the quarter is not


def test_alpha_channel_mask_from_an_editor_export_edits_only_the_painted_region(tiny, photo, tmp_path):
    painted = box_mask(photo.size)
    layer = np.zeros((*painted.shape, 4), dtype=np.uint8)   # black everywhere; the region painted in alpha
    layer[..., 3] = painted * 255
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    with pytest.warns(UserWarning, match="read from the alpha channel"):
        result = quick(photo, tmp_path / "layer.png", tiny, reconstruction="pixel")[0]
    keep = painted == 0
    assert np.array_equal(np.asarray(result)[keep], np.asarray(photo)[keep])
    assert not np.array_equal(np.asarray(result)[~keep], np.asarray(photo)[~keep])


def test_edit_mask_of_another_size_is_resized_with_a_warning(tiny, photo):
    small_mask = Image.fromarray((box_mask((24, 24)) * 255).astype(np.uint8))
    with pytest.warns(UserWarning, match="resizing the mask"):
        results = quick(photo, small_mask, tiny)
    assert results[0].size == photo.size


def test_edit_empty_mask_is_refused_as_nothing_to_edit(tiny, photo):
    with pytest.raises(EditInputError, match="empty: nothing to edit"):
        quick(photo, np.zeros((96, 96)), tiny)
    with pytest.raises(EditInputError, match="empty"):
        quick(photo, np.full((96, 96), 0.49), tiny)  # soft masks are thresholded at 0.5


def test_edit_mask_too_small_for_the_latent_is_refused(tiny, photo):
    speck = np.zeros((96, 96))
    speck[1, 1] = 1  # survives the pixel threshold, but no latent pixel samples it
    with pytest.raises(EditInputError, match="covers no pixel of the"):
        quick(photo, speck, tiny)


def test_edit_full_mask_is_allowed(tiny, photo):
    results = quick(photo, np.ones((96, 96)), tiny)
    assert results[0].size == photo.size


def test_edit_long_prompt_warns_and_is_truncated(tiny, photo):
    mask = box_mask(photo.size)
    with pytest.warns(UserWarning, match="120 tokens"):                # "a cat " * 60: 120 BPE tokens
        long = quick(photo, mask, tiny, prompt="a cat " * 60)
    kept = quick(photo, mask, tiny, prompt="a cat " * 37 + "a")        # its first 75 tokens
    assert np.array_equal(np.asarray(long[0]), np.asarray(kept[0]))


def test_edit_rejects_unknown_options(tiny, photo):
    with pytest.raises(EditInputError, match="reconstruction must be one of"):
        quick(photo, box_mask(photo.size), tiny, reconstruction="poisson")
    with pytest.raises(EditInputError, match="no weights to fine-tune"):
        quick(photo, box_mask(photo.size), "toy", reconstruction="decoder")
    with pytest.raises(EditInputError, match="knows only the classes"):
        quick(photo, box_mask(photo.size), "toy", prompt="a dog")


def test_edit_pixel_reconstruction_keeps_source_background_exactly(tiny):
    photo = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((100, 70))  # not a working size: resized inside
    mask = box_mask(photo.size)
    result = quick(photo, mask, tiny, reconstruction="pixel")[0]
    keep = mask == 0
    assert np.array_equal(np.asarray(result)[keep], np.asarray(photo)[keep])
    assert not np.array_equal(np.asarray(result)[~keep], np.asarray(photo)[~keep])


@pytest.mark.parametrize("mode", ["latent", "decoder"])
def test_edit_reconstruction_lowers_background_error(tiny, photo, mode):
    mask = box_mask(photo.size)
    keep = mask == 0
    plain = quick(photo, mask, tiny, size=16)[0]            # 16x16 working size: 75 optimiser steps stay quick
    reconstructed = quick(photo, mask, tiny, size=16, reconstruction=mode)[0]
    def error(result):
        return np.abs(np.asarray(result, dtype=np.float32) - np.asarray(photo))[keep].mean()
    assert error(reconstructed) < 0.9 * error(plain)


def test_edit_toy_example_paints_the_prompt_class_and_keeps_the_background():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped example must run without a warning
        results = edit(EXAMPLE_IMAGE, EXAMPLE_MASK, "a cat", model="toy", num_samples=1, device="cpu", size=64)
    source = Image.open(EXAMPLE_IMAGE).convert("RGB")
    mask = np.asarray(Image.open(EXAMPLE_MASK).convert("L").resize((64, 64), Image.NEAREST)) >= 128
    result = np.asarray(results[0].resize((64, 64), Image.LANCZOS), dtype=np.float32)
    toy_cats = [np.asarray(Image.open(p).convert("RGB").resize((64, 64), Image.LANCZOS), dtype=np.float32)
                for p in sorted(TOY_PHOTOS.glob("cat_*.png"))]
    coffee = np.asarray(source.resize((64, 64), Image.LANCZOS), dtype=np.float32)
    inside_to_cat = min(np.abs(result - cat)[mask].mean() for cat in toy_cats)
    assert inside_to_cat < 0.25 * np.abs(result - coffee)[mask].mean()   # the cup became a cat
    assert np.abs(result - coffee)[~mask].mean() < 3                    # on a 0–255 scale: resizing only


@pytest.mark.parametrize("options, message", [
    (dict(guidance_scale=float("nan")), "guidance_scale=nan: expected a finite number"),
    (dict(guidance_scale=float("inf")), "guidance_scale=inf: expected a finite number"),
    (dict(start=1.0), r"start=1.0: .*\[0, 1\)"),
    (dict(start=float("nan")), r"start=nan: .*\[0, 1\)"),
    (dict(steps=1000), r"steps=1000: expected 1 … 999 .*variant='official'"),
    (dict(steps=1001, variant="official"), "steps=1001: expected 1 … 1000"),
    (dict(steps=12.5), "steps=12.5: expected a whole number"),
    (dict(num_samples=0), "num_samples=0: expected at least 1"),
    (dict(seed=-1), r"seed=-1: .*2\*\*64 - 1"),
    (dict(seed=2**64), r"seed=18446744073709551616: expected at most 2\*\*64 - 1"),
    (dict(size=0), "size=0: expected a whole number of pixels of at least 64"),
    (dict(size=32), "size=32: expected a whole number of pixels of at least 64"),
    (dict(device="cuda:x"), "device='cuda:x': not a device name"),
    (dict(variant="fast"), "variant='fast': expected one of paper, official"),
    (dict(model="no-such-model"), "model='no-such-model': neither a model name"),
    (dict(rank="ViT-Z/99"), r"rank='ViT-Z/99': neither a CLIP model name \(ViT-B/16, ViT-L/14, tiny\)"),
], ids=lambda value: ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None)
def test_edit_refuses_out_of_range_options_before_loading_the_model(photo, monkeypatch, options, message):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")
    monkeypatch.setattr("blend.editor.load_model", forbidden)
    options = {"model": "sd-2.1-base", "steps": 4, "num_samples": 1, "device": "cpu", **options}
    with pytest.raises(EditInputError, match=message):
        edit(photo, box_mask(photo.size), "a cat", **options)


def test_edit_accepts_the_largest_seed_torch_takes(tiny, photo):
    results = quick(photo, box_mask(photo.size), tiny, seed=2**64 - 1)
    assert len(results) == 1


@pytest.mark.parametrize("model", ["toy", "tiny"])
@pytest.mark.parametrize("size", [(300, 1), (1, 300), (1, 1)])
def test_edit_a_photograph_one_pixel_high_or_wide_returns_results_of_its_size(tiny, model, size):
    # The working image is the photograph scaled to at least one size multiple per side, so any photograph of
    # 1x1 pixel or more runs; its mask, read as (H, W), must stay 2-D (a 300x1 mask is (1, 300), not (300,)).
    photo = Image.new("RGB", size, (200, 120, 40))
    mask = np.ones(size[::-1], dtype=np.float32)
    results = quick(photo, mask, tiny if model == "tiny" else "toy", steps=2, size=16 if model == "tiny" else None)
    assert [result.size for result in results] == [size]
