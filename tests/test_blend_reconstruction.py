"""blend/reconstruction.py (paper §4.2) on the tiny preset's autoencoder with random weights.

The "edit" is the tiny VAE's own reconstruction D(E(x)) of a photograph; each mode must bring its
background closer to the source x, and the loaded decoder must come out unchanged.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from blend.cli import EXAMPLE_IMAGE
from blend.reconstruction import background_loss, finetune_decoder, optimise_latent, paste_background
from ldm import AutoencoderKL
from weights import fill_random_, presets


@pytest.fixture(scope="module")
def scene():
    vae = fill_random_(AutoencoderKL(presets.get("tiny").vae), seed=0).eval()
    photo = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((16, 16), Image.LANCZOS)
    source = torch.from_numpy(np.array(photo, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 5:13] = 1
    with torch.no_grad():
        z = vae.encode(source).mean                     # (1, 4, 2, 2), unscaled
        edited = vae.decode(z)
    return vae, source, mask, z, edited


def background_error(images, source, mask) -> float:
    return (((images - source) * (1 - mask)) ** 2).sum().item() / (1 - mask).sum().item() / 3


def test_background_loss_is_paper_formula():
    decoded, edited, source = torch.full((1, 3, 2, 2), 0.5), torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # inside: 1 of 4 pixels off by 0.5 -> mean 0.0625; outside: 3 of 4 pixels off by 0.5 -> 0.1875, times 100
    assert background_loss(decoded, edited, source, mask).item() == pytest.approx(0.0625 + 100 * 0.1875)


def test_pixel_paste_restores_background_exactly(scene):
    vae, source, mask, z, edited = scene
    pasted = paste_background(edited, source, mask)
    assert background_error(pasted, source, mask) == 0 < background_error(edited, source, mask)
    assert torch.equal(pasted * mask, edited * mask)


def test_latent_optimisation_lowers_background_error(scene):
    vae, source, mask, z, edited = scene
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    result = optimise_latent(vae, z, edited, source, mask)
    assert background_error(result, source, mask) < 0.8 * background_error(edited, source, mask)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert all(p.requires_grad for p in vae.parameters())  # gradients switched back on as they were


def test_decoder_finetuning_lowers_background_error_and_leaves_decoder_untouched(scene):
    vae, source, mask, z, edited = scene
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    result = finetune_decoder(vae, z, edited, source, mask)   # 75 Adam steps at lr 1e-4
    assert background_error(result, source, mask) < 0.8 * background_error(edited, source, mask)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    with torch.no_grad():
        assert torch.equal(vae.decode(z), edited)
