"""Full-size UNet and VAE in fp16/bf16 on CUDA, against diffusers run in the same precision on the same GPU.

Tolerance. No fixed number: a half-precision forward differs from the fp32 result by rounding that
depends on the kernels, the GPU and the dtype (unit roundoff 2^-11 for fp16, 2^-8 for bf16, compounded
over ~70 layers). The fair yardstick is the reference implementation's own error in that precision, so
each test measures both against the stored fp32 golden output (diffusers, CPU) and requires ours to be
finite and at most 2× diffusers' error (plus 1e-3 of slack for cases where diffusers' error is tiny).
Equal work in another rounding order moves a max error by tens of percent (a CPU dry run of these tests
measured ours/diffusers: UNet sd-1.5 bf16 1.54e-2/1.54e-2, VAE encode bf16 1.71e-2/1.37e-2, VAE decode bf16
1.10e-2/1.11e-2); a genuine mistake
(e.g. the timestep embedding computed in bf16: 3× on the tiny model) costs several times the rounding error.
Our fp16 VAE decode runs in fp32 inside, so its error is below diffusers' fp16 decode (dry run:
7.8e-4/1.7e-3; what remains is the weights rounded to fp16).
"""

import pytest
import torch
from helpers import load_golden, max_relative_error, random_model

from ldm import AutoencoderKL, UNetModel
from weights import presets

pytestmark = [pytest.mark.gpu, pytest.mark.reference, pytest.mark.slow]
DEVICE = "cuda"


def reference_helpers():
    """tests/parity.py, for `reference_unet` and `reference_vae` (they import diffusers when called)."""
    import parity
    return parity


def assert_as_close_as_diffusers(ours: torch.Tensor, reference: torch.Tensor, expected: torch.Tensor, what: str):
    ours_error = max_relative_error(ours.float().cpu(), expected)
    reference_error = max_relative_error(reference.float().cpu(), expected)
    print(f"{what}: ours {ours_error:.2e}, diffusers {reference_error:.2e}")
    assert torch.isfinite(ours).all(), f"{what}: non-finite values"
    assert ours_error <= 2 * reference_error + 1e-3, \
        f"{what}: max relative error {ours_error:.2e} against fp32, diffusers in the same precision " \
        f"{reference_error:.2e}"


@pytest.mark.parametrize("fixture, preset, dtype", [
    ("ldm_unet_sd15", "sd-1.5", torch.float16),
    ("ldm_unet_sd15", "sd-1.5", torch.bfloat16),
    ("ldm_unet_sd21_base", "sd-2.1-base", torch.bfloat16),
    ("ldm_unet_sd21_base", "sd-2.1", torch.float16),      # 768 config: upcast attention; same fp32 output as base
])
def test_unet_half_precision_on_gpu_is_as_close_to_fp32_as_diffusers(fixture, preset, dtype):
    golden = load_golden(fixture)
    config = presets.get(preset).unet
    ours = random_model(UNetModel, config, golden["seed"])
    reference = reference_helpers().reference_unet(ours)
    if config.upcast_attention:
        from diffusers.models.attention_processor import AttnProcessor
        reference.set_attn_processor(AttnProcessor())     # diffusers' SDPA processor ignores upcast_attention
    x, context = golden["x"].to(DEVICE, dtype), golden["context"].to(DEVICE, dtype)
    timesteps = golden["timesteps"].to(DEVICE)
    with torch.no_grad():
        reference = reference.to(DEVICE, dtype)
        reference_output = reference(x, timesteps, encoder_hidden_states=context).sample.cpu()
        del reference
        output = ours.to(DEVICE, dtype)(x, timesteps, context)
    assert output.dtype == dtype
    assert_as_close_as_diffusers(output, reference_output, golden["output"], f"{preset} UNet {dtype}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_vae_half_precision_on_gpu_is_as_close_to_fp32_as_diffusers(dtype):
    golden = load_golden("ldm_vae_sd")
    ours = random_model(AutoencoderKL, presets.get(golden["preset"]).vae, golden["seed"])
    reference = reference_helpers().reference_vae(ours)
    image, z = golden["image"].to(DEVICE, dtype), golden["z"].to(DEVICE, dtype)
    with torch.no_grad():
        reference = reference.to(DEVICE, dtype)
        reference_mean = reference.encode(image).latent_dist.mean.cpu()
        reference_decoded = reference.decode(z).sample.cpu()
        del reference
        ours = ours.to(DEVICE, dtype)
        mean, decoded = ours.encode(image).mean, ours.decode(z)
    assert decoded.dtype == dtype
    assert_as_close_as_diffusers(mean, reference_mean, golden["mean"], f"VAE encode {dtype}")
    assert_as_close_as_diffusers(decoded, reference_decoded, golden["decoded"], f"VAE decode {dtype}")


def test_sdxl_full_unet_fp16_on_gpu_is_finite_and_as_close_to_fp32_as_diffusers():
    """SDXL base's full UNet (2.6 B parameters, random weights) in fp16: ours and diffusers' text_time UNet holding
    the same weights, each against diffusers' fp32 output on the same GPU (TF32 off), with pooled text and time ids."""
    from diffusers import UNet2DConditionModel
    from helpers import converted, diffusers_sdxl_config

    from ldm.unet import vector_conditioning
    config = presets.get("sdxl-base-1.0").unet
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ours = random_model(UNetModel, config, seed=11).to(DEVICE)
    with torch.device("meta"):
        reference = UNet2DConditionModel(**diffusers_sdxl_config(config))
    reference.load_state_dict(converted(ours.state_dict(), config), strict=True, assign=True)
    reference = reference.eval().to(DEVICE)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=generator).to(DEVICE)
    context = torch.randn(2, 77, 2048, generator=generator).to(DEVICE)
    pooled = torch.randn(2, 1280, generator=generator).to(DEVICE)
    time_ids = torch.tensor([[512., 512., 0., 0., 512., 512.]] * 2, device=DEVICE)
    timesteps = torch.tensor([981, 21], device=DEVICE)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        expected = reference(x, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample.cpu()
        reference = reference.half()
        half = {k: v.half() for k, v in added.items()}
        reference_output = reference(x.half(), timesteps, encoder_hidden_states=context.half(),
                                     added_cond_kwargs=half).sample.cpu()
        del reference
        ours = ours.half()
        output = ours(x.half(), timesteps, context.half(), vector_conditioning(pooled, time_ids).half())
    assert output.dtype == torch.float16
    assert_as_close_as_diffusers(output, reference_output, expected, "SDXL UNet float16")


def test_sdxl_vae_fp16_decode_on_gpu_is_finite_and_as_close_to_fp32_as_diffusers():
    """SDXL's autoencoder (the SD architecture) decoding a 128x128 latent (1024² image) in fp16: finite, and as
    close to the fp32 decode as diffusers' fp16 decode is (ours runs the fp16 decoder in fp32 inside)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ours = random_model(AutoencoderKL, presets.get("sdxl-base-1.0").vae, seed=12).to(DEVICE)
    reference = reference_helpers().reference_vae(ours).to(DEVICE)
    z = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(0)).to(DEVICE) / 0.13025
    with torch.no_grad():
        expected = reference.decode(z).sample.cpu()
        reference = reference.half()
        reference_decoded = reference.decode(z.half()).sample.cpu()
        del reference
        decoded = ours.half().decode(z.half())
    assert decoded.dtype == torch.float16 and torch.isfinite(decoded).all()
    if torch.isfinite(reference_decoded).all():
        assert_as_close_as_diffusers(decoded, reference_decoded, expected, "SDXL VAE decode float16")
    else:   # diffusers' plain fp16 decode overflowed (why its SDXL pipelines upcast); ours holds fp16 rounding
        error = max_relative_error(decoded.float().cpu(), expected)
        print(f"SDXL VAE decode float16: ours {error:.2e}, diffusers non-finite")
        assert error <= 1e-2
