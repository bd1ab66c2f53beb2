"""The KL autoencoder: golden parity with diffusers' AutoencoderKL, the published key layout, padding, fp16 decode."""
import copy

import pytest
import torch
from helpers import assert_matches_golden, in_float64, load_golden, max_relative_error, random_model, run_in_float64
from torch import nn

from ldm import AutoencoderKL, DiagonalGaussian
from ldm.autoencoder import Downsample
from weights import presets


def check_golden_vae(name: str):
    """Encode, sample and decode against diffusers' stored outputs, each within the float32 bound of
    helpers.assert_matches_golden (ours measured against the same autoencoder in float64)."""
    golden = load_golden(name)
    model = random_model(AutoencoderKL, presets.get(golden["preset"]).vae, golden["seed"])

    def encode_sample_decode(autoencoder, image, z):
        posterior = autoencoder.encode(image)
        sample = posterior.sample(torch.Generator().manual_seed(golden["sample_seed"]))
        return {"mean": posterior.mean, "logvar": posterior.logvar, "sample": sample, "decoded": autoencoder.decode(z)}

    with torch.no_grad():
        ours = encode_sample_decode(model, golden["image"].float(), golden["z"].float())
        ours64 = run_in_float64(lambda image, z: encode_sample_decode(in_float64(model), image, z),
                                golden["image"].float(), golden["z"].float())
    for name in ("mean", "logvar", "sample", "decoded"):
        assert_matches_golden(golden, name, ours[name], ours64[name])


@pytest.mark.precision
def test_vae_parity_tiny_fp32():
    check_golden_vae("ldm_vae_tiny")


@pytest.mark.slow
def test_vae_parity_sd_full_fp32():
    check_golden_vae("ldm_vae_sd")


def test_vae_state_dict_matches_published_layout():
    """Key set and shapes equal the published single-file layout (read off diffusers, see fixtures_ldm.py)."""
    published = load_golden("ldm_vae_sd")["published_keys"]
    with torch.device("meta"):
        model = AutoencoderKL(presets.get("sd-1.5").vae)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(published) - set(ours)) == [] and sorted(set(ours) - set(published)) == []
    assert {k: v for k, v in ours.items() if published[k] != v} == {}
    assert len(ours) == 248 and ours["encoder.mid.attn_1.q.weight"] == [512, 512, 1, 1]


def test_vae_downsample_pads_asymmetrically():
    """Pad (0, 1, 0, 1), then stride 2 with no padding: a kernel that picks its centre samples the odd
    pixels x[1::2, 1::2]; a symmetric padding of 1 would sample the even ones, half a latent pixel away."""
    down = Downsample(1)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 1, 1] = 1.0
        down.conv.bias.zero_()
        x = torch.arange(10 * 14, dtype=torch.float32).reshape(1, 1, 10, 14)
        assert torch.equal(down(x), x[:, :, 1::2, 1::2])
        x = torch.arange(9 * 7, dtype=torch.float32).reshape(1, 1, 9, 7)   # odd sides: ⌊H/2⌋ × ⌊W/2⌋
        assert torch.equal(down(x), x[:, :, 1::2, 1::2])


def test_vae_encode_decode_keep_8x_for_sizes_that_are_not_powers_of_two():
    model = random_model(AutoencoderKL, presets.get("tiny").vae, seed=0)
    with torch.no_grad():
        posterior = model.encode(torch.rand(2, 3, 40, 56) * 2 - 1)
        assert posterior.mean.shape == posterior.logvar.shape == (2, 4, 5, 7)
        assert model.decode(posterior.mean).shape == (2, 3, 40, 56)


def test_posterior_sample_is_mean_plus_std_times_the_generators_noise():
    moments = torch.randn(2, 8, 3, 5)
    moments[:, 4:] = moments[:, 4:] * 100              # logvar beyond the clamp on both sides
    posterior = DiagonalGaussian(moments)
    logvar = moments[:, 4:].clamp(-30, 20)
    noise = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(posterior.mean, moments[:, :4]) and torch.equal(posterior.logvar, logvar)
    torch.testing.assert_close(posterior.sample(torch.Generator().manual_seed(7)),
                               moments[:, :4] + torch.exp(0.5 * logvar) * noise)


def test_vae_fp16_decode_stays_finite_when_activations_pass_the_fp16_range():
    """SD's decoder carries large activations (the stream between GroupNorms) that can pass fp16's
    largest value, 65504. Here conv_in is scaled so the stream reaches ~1e5: run naively in fp16 the
    decode turns inf/NaN, while `decode` (fp32 inside) must give the fp32 result of the same fp16 weights,
    off only by the final rounding to fp16 (at most 2^-11 relative to the largest value)."""
    model = random_model(AutoencoderKL, presets.get("tiny").vae, seed=3)
    with torch.no_grad():
        model.decoder.conv_in.weight.mul_(3e4)
    model = model.half()
    z = (torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(0)) / 0.18215).half()
    with torch.no_grad():
        expected = copy.deepcopy(model).float().decode(z.float())
        naive = model.decode(z, upcast_fp16=False)
        guarded = model.decode(z)
    assert torch.isfinite(expected).all() and not torch.isfinite(naive).all()
    assert guarded.dtype == torch.float16 and torch.isfinite(guarded).all()
    assert max_relative_error(guarded, expected) <= 2**-11
    assert model.decoder.conv_in.weight.dtype == torch.float16      # the module itself stays fp16


@pytest.mark.parametrize("preset", ["tiny", "sd-1.5"])
def test_vae_group_norms_use_eps_1e_6(preset):
    """(An eps off by 10x moves the golden outputs by only ~1e-6, so parity alone cannot see it.)"""
    with torch.device("meta"):
        vae = presets.get(preset).build_vae()
    found = {n: m.eps for n, m in vae.named_modules() if isinstance(m, nn.GroupNorm)}
    assert len(found) > 10 and {n: e for n, e in found.items() if e != 1e-6} == {}
