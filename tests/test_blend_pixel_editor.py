"""blend/pixel_editor.py: edit_pixels, Blended Diffusion and Local CLIP-guided diffusion end to end on the toy.

The toy (weights.toy.load_toy_pixel: the posterior mean over its photographs as an unconditional ADM, and a
differentiable judge) at 128², respaced to 20 steps of which 16 are skipped, two samples, two views: fast.
"""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from blend import EditInputError
from blend.cli import EXAMPLE_IMAGE, EXAMPLE_MASK
from blend.pixel_editor import edit_pixels

QUICK = dict(model="toy", num_samples=2, respacing="20", skip_timesteps=16, num_views=2, device="cpu")


@pytest.fixture(scope="module")
def toy():
    import weights
    return weights.load_pixel_model("toy")


def quick(toy, **options):
    return edit_pixels(EXAMPLE_IMAGE, EXAMPLE_MASK, options.pop("prompt", "a cat"), **{**QUICK, "model": toy,
                                                                                         **options})


@pytest.mark.parametrize("method", ["blended-diffusion", "local-clip"])
def test_edit_pixels_returns_ranked_images_at_the_model_size_with_their_info(toy, method):
    steps = []
    results = quick(toy, method=method, callback=steps.append)
    assert len(results) == 2 and {result.size for result in results} == {(128, 128)}
    assert sorted(result.info["sample"] for result in results) == [0, 1]
    distances = [result.info["clip_distance"] for result in results]
    assert distances == sorted(distances) and all(math.isfinite(d) for d in distances)
    assert [record.t for record in steps] == [3, 2, 1, 0]


def test_edit_pixels_blended_keeps_the_background_same_seed_same_output(toy):
    """The toy's last x̂0 is nearly one photograph whatever the noise, so the seeds are told apart by the steps."""
    records = {3: [], 4: []}
    first, again = quick(toy, seed=3, callback=records[3].append), quick(toy, seed=3)
    quick(toy, seed=4, callback=records[4].append)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again, strict=True))
    assert not torch.equal(records[3][0].z, records[4][0].z)
    source = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB").resize((128, 128), Image.LANCZOS))
    keep = np.asarray(Image.open(EXAMPLE_MASK).convert("L").resize((128, 128), Image.NEAREST)) < 128
    assert np.abs(np.asarray(first[0], dtype=np.int16) - source)[keep].max() <= 1   # 8-bit rounding only


def test_edit_pixels_local_clip_with_background_loss_uses_the_given_lpips(toy):
    calls = []

    def lpips(x, y):                                              # a stand-in: no download in tests
        calls.append(x.shape)
        return ((x - y) ** 2).mean(dim=(1, 2, 3))

    results = quick(toy, method="local-clip", background_loss=True, lpips=lpips)
    assert len(results) == 2 and len(calls) == 4                  # once a step, on the batch
    assert calls[0] == (2, 3, 128, 128)


def test_edit_pixels_empty_prompt_runs_unguided_as_the_official_script(toy):
    results = quick(toy, prompt="")
    assert len(results) == 2 and all(math.isfinite(r.info["clip_distance"]) for r in results)


def test_edit_pixels_prompt_the_judge_cannot_read_is_refused(toy):
    with pytest.raises(EditInputError):
        quick(toy, prompt="a zebra")


@pytest.mark.parametrize("options, message", [
    (dict(method="sdedit"), "method='sdedit': expected one of blended-diffusion, local-clip"),
    (dict(num_samples=0), "num_samples=0: expected at least 1"),
    (dict(num_views=2.5), "num_views=2.5: expected a whole number"),
    (dict(seed=-1), "seed=-1: expected at least 0"),
    (dict(skip_timesteps=100), "skip_timesteps=100: expected fewer than the 100 steps of respacing='100'"),
    (dict(skip_timesteps=20, respacing="20"), "skip_timesteps=20: expected fewer than the 20 steps"),
    (dict(respacing="ddim999"), "respacing='ddim999': expected how many of the 1000 training steps to keep"),
    (dict(respacing="many"), "respacing='many': expected how many of the 1000 training steps to keep"),
    (dict(clip_guidance_scale=float("nan")), "clip_guidance_scale=nan: expected a loss weight, a finite number"),
    (dict(range_scale="50"), "range_scale='50': expected a loss weight, a finite number of at least 0"),
    (dict(background_loss=True), r"background-loss is an option of --method local-clip"),
    (dict(background_loss="yes", method="local-clip"), "background_loss='yes': expected True or False"),
    (dict(device="cuda:x"), "device='cuda:x': not a device name"),
    (dict(model="no-such-model"), r"model='no-such-model': neither a pixel model name \(adm-256-uncond, toy\)"),
], ids=lambda value: ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None)
def test_edit_pixels_refuses_bad_options_before_loading_a_model(monkeypatch, options, message):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")
    monkeypatch.setattr("blend.pixel_editor.load_pixel_components", forbidden)
    with pytest.raises(EditInputError, match=message):
        edit_pixels(EXAMPLE_IMAGE, EXAMPLE_MASK, "a cat", **{"model": "adm-256-uncond", "device": "cpu", **options})


def test_edit_pixels_empty_mask_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr("blend.pixel_editor.load_pixel_components", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(EditInputError, match="the mask is empty"):
        edit_pixels(EXAMPLE_IMAGE, np.zeros((8, 8), np.float32), "a cat", device="cpu")


def test_edit_pixels_draws_come_from_the_seeded_generator_not_torch_global_one(toy):
    records = {0: [], 1: []}
    for global_seed, kept in records.items():
        torch.manual_seed(global_seed)
        quick(toy, num_samples=1, callback=kept.append)
    assert all(torch.equal(a.z, b.z) for a, b in zip(records[0], records[1], strict=True))
