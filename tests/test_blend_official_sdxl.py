"""variant="official-sdxl": the loop of the official scripts/text_editing_SDXL.py, re-created here with the script's
scheduler (diffusers' EulerDiscreteScheduler, SDXL's config) on a small SDXL-shaped UNet, against
blend.blended_latent_diffusion with an EulerSampler and the same UNet."""
from types import SimpleNamespace

import pytest
import torch
from helpers import SMALL_SDXL, max_relative_error, random_small_sdxl

from blend import StepRecord, blended_latent_diffusion
from blend.algorithm import VARIANTS
from ldm.unet import vector_conditioning
from samplers import DDIMSampler, EulerSampler, NoiseSchedule

SCHEDULE = NoiseSchedule.scaled_linear()
BATCH, GUIDANCE, START = 2, 5.0, 0.25
PARITY_STEPS = 12          # 9 steps run (k = 3): the same code path as the script's 50, within this file's time


def cheap_denoiser(z, timesteps, context, y):
    """A stand-in for the UNet where only the loop is under test: any ε̂(z, t, context, y) of the right shape."""
    return torch.tanh(z + timesteps[:, None, None, None] / 1000 + context.mean() + y[:, :1, None, None])


def inputs(seed: int = 0):
    """Source latent (B rows), latent mask, text context and pooled text of a small SDXL-shaped model."""
    generator = torch.Generator().manual_seed(seed)
    source = torch.randn(1, 4, 16, 16, generator=generator).expand(BATCH, -1, -1, -1)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 2:10] = 1
    context = torch.randn(1, 7, SMALL_SDXL.context_dim, generator=generator)
    pooled = torch.randn(1, 32, generator=generator)
    time_ids = torch.tensor([[128., 128., 0., 0., 128., 128.]])   # original = target = the working size, crop 0
    return source, mask, context, pooled, time_ids


def ours_official_sdxl(unet, source, mask, context, pooled, time_ids, seed=1, steps=50, **options):
    """SDXL's conditioning: cond = (context, y), uncond = zeros for both context and pooled, the same time ids."""
    cond = (context, vector_conditioning(pooled, time_ids))
    uncond = (torch.zeros_like(context), vector_conditioning(torch.zeros_like(pooled), time_ids))
    return blended_latent_diffusion(unet, EulerSampler(SCHEDULE, steps), source, mask, cond, uncond,
                                    guidance_scale=GUIDANCE, start=START, generator=torch.Generator().manual_seed(seed),
                                    variant="official-sdxl", **options)


def script_loop(unet, scheduler, source, mask, context, pooled, time_ids, generator):
    """BlendedLatentDiffusionSDXL.edit_image's loop, with its zero negative prompt (force_zeros_for_empty_prompt)."""
    scheduler.set_timesteps(PARITY_STEPS)
    timesteps = scheduler.timesteps
    k = int(len(timesteps) * START)
    latents = scheduler.add_noise(source, torch.randn(source.shape, generator=generator), timesteps[k].unsqueeze(0))
    prompt_embeds = torch.cat([torch.zeros_like(context), context]).repeat_interleave(BATCH, 0)
    text_embeds = torch.cat([torch.zeros_like(pooled), pooled]).repeat_interleave(BATCH, 0)
    add_time_ids = time_ids.repeat(2 * BATCH, 1)
    for t in timesteps[k:]:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_pred = unet(model_input, t, encoder_hidden_states=prompt_embeds,
                          added_cond_kwargs={"text_embeds": text_embeds, "time_ids": add_time_ids}).sample
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + GUIDANCE * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
        noise_source_latents = scheduler.add_noise(source, torch.randn(latents.shape, generator=generator),
                                                   t.unsqueeze(0))
        latents = latents * mask + noise_source_latents * (1 - mask)
    return latents


class AsDiffusersUNet(torch.nn.Module):
    """Our UNet called as the script calls diffusers' UNet2DConditionModel: (x, t, encoder_hidden_states=,
    added_cond_kwargs={"text_embeds", "time_ids"}) -> an object whose .sample is ε̂."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, encoder_hidden_states, added_cond_kwargs):
        y = vector_conditioning(added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"])
        timesteps = torch.full((x.shape[0],), int(t), dtype=torch.long)
        return SimpleNamespace(sample=self.unet(x, timesteps, encoder_hidden_states, y))


@pytest.mark.reference
@pytest.mark.precision
@torch.no_grad()
def test_official_sdxl_variant_equals_the_script_loop_on_diffusers_euler_bit_for_bit():
    """The script's loop on diffusers' EulerDiscreteScheduler against ours, both calling our small SDXL-shaped UNet.
    Bit for bit by construction: the same network, and the scheduler's σ, add_noise, scale_model_input and step
    are the same torch operations as EulerSampler's (test_samplers_euler). Our UNet against diffusers' is
    test_ldm_unet_sdxl.py::test_unet_parity_sdxl_small_fp32."""
    from diffusers import EulerDiscreteScheduler
    unet = random_small_sdxl(seed=4)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1, interpolation_type="linear",
                                       use_karras_sigmas=False, prediction_type="epsilon")
    source, mask, context, pooled, time_ids = inputs()
    expected = script_loop(AsDiffusersUNet(unet), scheduler, source, mask, context, pooled, time_ids,
                           torch.Generator().manual_seed(1))
    actual = ours_official_sdxl(unet, source, mask, context, pooled, time_ids, seed=1, steps=PARITY_STEPS)
    print(f"official SDXL loop vs the script's loop on diffusers' scheduler: max |difference| "
          f"{(actual - expected).abs().max().item():.3g}")
    assert torch.equal(actual, expected)
    other_seed = ours_official_sdxl(unet, source, mask, context, pooled, time_ids, seed=2, steps=PARITY_STEPS)
    assert max_relative_error(other_seed, expected) > 1e-3


def test_official_sdxl_starts_at_timesteps_12_blends_at_the_current_t_and_draws_in_order():
    unet = cheap_denoiser
    source, mask, context, pooled, time_ids = inputs()
    records = []
    z = ours_official_sdxl(unet, source, mask, context, pooled, time_ids, seed=7, callback=records.append)
    sampler = EulerSampler(SCHEDULE, 50)
    assert [r.t for r in records] == list(range(741, 0, -20)) and records[0].num_steps == 38
    generator = torch.Generator().manual_seed(7)
    first = torch.randn(source.shape, generator=generator)
    torch.testing.assert_close(records[0].z_t, source + sampler.sigma(741) * first, rtol=0, atol=0)
    for record in records:                                 # one background draw per step, at the current t
        background = sampler.add_noise(source, record.t, torch.randn(source.shape, generator=generator))
        assert torch.equal(record.z_bg, background)
        assert torch.equal(record.z, record.z_fg * record.mask + background * (1 - record.mask))
    assert isinstance(records[-1], StepRecord) and torch.equal(z, records[-1].z)
    assert max_relative_error(records[-1].z_fg, records[-1].x0_fg) < 1e-6   # the last Euler step ends at σ = 0
    assert (z - source)[..., mask[0, 0] == 0].abs().max() > 0        # the background keeps σ_1 of noise


def test_official_sdxl_with_shrinking_uses_the_dilated_masks_and_refuses_a_ddim_sampler():
    unet = cheap_denoiser
    source, mask, context, pooled, time_ids = inputs()
    records = []
    ours_official_sdxl(unet, source, mask, context, pooled, time_ids, shrink=True, callback=records.append)
    areas = [int(r.mask.sum()) for r in records]
    assert areas[0] > areas[-1] == int(mask.sum()) and areas == sorted(areas, reverse=True)
    assert "official-sdxl" in VARIANTS
    with pytest.raises(TypeError, match="EulerSampler"):
        blended_latent_diffusion(unet, DDIMSampler(SCHEDULE, 50), source, mask, (context,), (context,),
                                 guidance_scale=5.0, variant="official-sdxl")


# ----------------------------------------------------------------------------- the editor with SDXL
@pytest.fixture
def small_sdxl_components(tmp_path, monkeypatch):
    """A small SDXL-shaped model loaded from a file in the published single-file layout."""
    from helpers import SMALL_SDXL_SPEC, sdxl_file_tensors
    from safetensors.torch import save_file

    import weights
    monkeypatch.setitem(weights.presets._PRESETS, "sdxl-base-1.0", SMALL_SDXL_SPEC)
    path = tmp_path / "sd_xl_base_1.0.safetensors"
    save_file(sdxl_file_tensors(), str(path))
    return weights.load(path, dtype=torch.float32)


def test_sdxl_conditioning_is_two_towers_pooled_time_ids_and_zero_uncond(small_sdxl_components):
    from weights.conditioning import sdxl_conditioning
    components = small_sdxl_components
    (context, y), (context_u, y_u) = sdxl_conditioning(components, "a cat", (64, 128), "cpu")
    ids, ids_2 = components.tokenizer(["a cat"]), components.tokenizer_2(["a cat"])
    with torch.no_grad():
        expected = torch.cat([components.text_encoder(ids), components.text_encoder_2(ids_2)], dim=-1)
        pooled = components.text_encoder_2.pooled_embedding(ids_2)
    assert torch.equal(context, expected) and context.shape == (1, 77, 48)
    time_ids = torch.tensor([[64, 128, 0, 0, 64, 128]])                # (H, W) of the working image, crop (0, 0)
    assert torch.equal(y, vector_conditioning(pooled, time_ids))
    assert torch.equal(context_u, torch.zeros_like(context))
    assert torch.equal(y_u, vector_conditioning(torch.zeros_like(pooled), time_ids))


@pytest.mark.parametrize("variant, options", [("official-sdxl", {}), ("paper", {"shrink": True}),
                                              ("official-sdxl", {"reconstruction": "latent", "rank": "tiny"})])
def test_edit_runs_sdxl_with_each_variant(small_sdxl_components, variant, options):
    import numpy as np
    from PIL import Image

    from blend import edit
    image = Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8))
    mask = np.zeros((48, 80), dtype=np.uint8)
    mask[8:40, 16:56] = 255
    records = []
    results = edit(image, Image.fromarray(mask), "a cat", model=small_sdxl_components, steps=8, num_samples=2,
                   variant=variant, size=64, device="cpu", callback=records.append, **options)
    assert len(results) == 2 and all(result.size == (80, 48) for result in results)
    assert len(records) == 6                                            # 8 steps, the first quarter skipped
    assert records[0].z_t.shape == (2, 4, 4, 8)                          # 64x32 (sides multiples of 8·4): 4x8 latents


def test_sdxl_runs_in_bfloat16_by_default_on_a_cpu_with_native_bf16_and_says_so(tmp_path, monkeypatch, capsys):
    from helpers import SMALL_SDXL_SPEC, sdxl_file_tensors
    from safetensors.torch import save_file

    import blend.editor as editor
    import weights
    from weights import precision
    monkeypatch.setitem(weights.presets._PRESETS, "sdxl-base-1.0", SMALL_SDXL_SPEC)
    path = tmp_path / "some_sdxl_finetune.safetensors"
    save_file(sdxl_file_tensors(), str(path))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    loaded = editor.load_model(str(path), device="cpu")
    assert loaded.unet.out[2].weight.dtype == torch.bfloat16
    assert "dtype: bfloat16 (this CPU computes bfloat16 natively" in capsys.readouterr().err
    assert editor.load_model(str(path), dtype=torch.float32, device="cpu").unet.out[2].weight.dtype == torch.float32
    assert capsys.readouterr().err.strip() == "dtype: float32"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert editor.load_model(str(path), device="cpu").unet.out[2].weight.dtype == torch.float32
    assert precision.default_dtype(str(path), "cuda") is None


def test_cli_edits_with_an_sdxl_file_and_the_official_sdxl_variant(tmp_path, monkeypatch, capsys):
    from helpers import SMALL_SDXL_SPEC, sdxl_file_tensors
    from safetensors.torch import save_file

    import weights
    from blend.cli import main
    monkeypatch.setitem(weights.presets._PRESETS, "sdxl-base-1.0", SMALL_SDXL_SPEC)
    path = tmp_path / "sd_xl_base_1.0.safetensors"
    save_file(sdxl_file_tensors(), str(path))
    out = tmp_path / "out"
    assert main(["--model", str(path), "--variant", "official-sdxl", "--steps", "4", "--samples", "1",
                 "--size", "64", "--dtype", "float32", "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) >= 2                            # the result and grid.png
    assert main(["--model", "sd-1.5", "--variant", "official-sdxl", "--out", str(tmp_path / "other")]) == 2
    assert "needs an SDXL model (--model sdxl-base-1.0" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    assert main(["--model", "tiny", "--vae", str(tmp_path / "no-vae"), "--out", str(tmp_path / "other")]) == 2
    assert "--vae" in capsys.readouterr().err and not (tmp_path / "other").exists()
