"""blend/sdedit.py: SDEdit as Algorithm 1 with a full mask, as diffusers' img2img loop and pipeline, and on the toy.

The network is the tiny preset's UNet with the deterministic random weights of seed 0, as in
tests/test_blend_algorithm.py.
"""
import pytest
import torch
from golden.precision import float32_draws, float32_error, golden_bound
from helpers import in_float64, schedule_in_float64

import weights
from blend import blended_latent_diffusion
from blend.sdedit import DEFAULT_STRENGTH, sdedit, sdedit_timesteps
from ldm import UNetModel
from samplers import DDIMSampler, DPMSolverSampler, EulerSampler, NoiseSchedule
from weights import fill_random_, presets

GUIDANCE = 7.5


@pytest.fixture(scope="module")
def unet():
    return fill_random_(UNetModel(presets.get("tiny").unet), seed=0).eval()


def inputs(dtype=torch.float32) -> dict:
    """z_init (2, 4, 8, 8) and random (1, 77, 32) contexts."""
    generator = torch.Generator().manual_seed(0)
    values = dict(z_init=torch.randn(2, 4, 8, 8, generator=generator), cond=torch.randn(1, 77, 32, generator=generator),
                  uncond=torch.randn(1, 77, 32, generator=generator))
    return {k: v.to(dtype) for k, v in values.items()}


def run_sdedit(unet, sampler, values, strength, seed=0, **options):
    with torch.no_grad():
        return sdedit(unet, sampler, values["z_init"], values["cond"], values["uncond"], guidance_scale=GUIDANCE,
                      strength=strength, generator=torch.Generator().manual_seed(seed), **options)


SAMPLERS = {"ddim": lambda s: DDIMSampler(s, 6), "dpm-solver": lambda s: DPMSolverSampler(s, 6),
            "euler": lambda s: EulerSampler(s, 6)}


@pytest.mark.precision
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sdedit_equals_algorithm_1_with_a_full_mask(unet, name):
    """Bit for bit by construction: with m = 1 line 7 hands z_fg on (z_fg·1 + z_bg·0), and both loops draw the
    first noise first and step with the same sampler; the paper variant's later z_bg draws are multiplied by 0.
    The start index is the same: start = 1 − ⌊6·0.5⌋/6 = 0.5 skips ⌊6·0.5⌋ = 3 steps."""
    values, schedule = inputs(), NoiseSchedule.scaled_linear()
    ours, records = [], []
    result = run_sdedit(unet, SAMPLERS[name](schedule), values, 0.5, seed=3, callback=ours.append)
    with torch.no_grad():
        expected = blended_latent_diffusion(unet, SAMPLERS[name](schedule), values["z_init"], torch.ones(1, 1, 8, 8),
                                            values["cond"], values["uncond"], guidance_scale=GUIDANCE, start=0.5,
                                            generator=torch.Generator().manual_seed(3), callback=records.append)
    assert torch.equal(result, expected)
    assert [r.t for r in ours] == [r.t for r in records] and len(ours) == 3
    for mine, theirs in zip(ours, records, strict=True):
        assert torch.equal(mine.z_t, theirs.z_t) and torch.equal(mine.x0_fg, theirs.x0_fg)
        assert torch.equal(mine.z, mine.z_fg * mine.mask + mine.z_bg * (1 - mine.mask))  # nothing blended


def img2img_loop(unet, values, strength, steps, eta, seed):
    """StableDiffusionImg2ImgPipeline's loop from latents, written as it is, with diffusers' DDIMScheduler doing every
    schedule step: get_timesteps (⌊S·strength⌋ steps from t_start), one noise draw and add_noise at timesteps[:1],
    then guided steps with `eta` and the generator (extra_step_kwargs)."""
    from parity import diffusers_ddim, guided_noise
    scheduler = diffusers_ddim(steps_offset=1, steps=steps, dtype=values["z_init"].dtype)  # SD's scheduler config
    generator = torch.Generator().manual_seed(seed)
    init_timestep = min(int(steps * strength), steps)
    timesteps = scheduler.timesteps[max(steps - init_timestep, 0):]
    noise = torch.randn(values["z_init"].shape, generator=generator, dtype=values["z_init"].dtype)
    latents = scheduler.add_noise(values["z_init"], noise, timesteps[:1])
    for t in timesteps:
        noise_pred = guided_noise(unet, scheduler.scale_model_input(latents, t), t, values["cond"], values["uncond"],
                                  GUIDANCE)
        latents = scheduler.step(noise_pred, t, latents, eta=eta, generator=generator).prev_sample
    return latents


@pytest.mark.precision
@pytest.mark.reference
@pytest.mark.parametrize("strength, eta", [(0.5, 0.0), (1.0, 0.5)])
def test_sdedit_reproduces_diffusers_img2img_loop_bit_for_bit(unet, strength, eta):
    """Bit for bit by construction: the same network, and DDIMSampler.step and q_sample are the same torch operations
    as DDIMScheduler.step and add_noise (test_samplers_ddim, test_samplers_schedule), drawing in the same order."""
    pytest.importorskip("diffusers")
    values = inputs()
    with torch.no_grad():
        expected = img2img_loop(unet, values, strength, 4, eta, seed=5)
    assert torch.equal(run_sdedit(unet, DDIMSampler(NoiseSchedule.scaled_linear(), 4, eta=eta), values, strength,
                                  seed=5), expected)


def img2img_pipeline(unet, values, strength, steps, eta, seed):
    """diffusers' StableDiffusionImg2ImgPipeline itself, given latents (a 4-channel `image` skips the VAE) and
    prompt embeddings, returning latents; `unet` is diffusers' UNet2DConditionModel."""
    import diffusers
    from parity import diffusers_ddim
    pipeline = diffusers.StableDiffusionImg2ImgPipeline(
        vae=None, text_encoder=None, tokenizer=None, unet=unet, safety_checker=None, feature_extractor=None,
        scheduler=diffusers_ddim(steps_offset=1, steps=steps, dtype=values["z_init"].dtype),
        requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    batch = values["z_init"].shape[0]
    with torch.no_grad():
        return pipeline(image=values["z_init"], prompt_embeds=values["cond"].expand(batch, -1, -1),
                        negative_prompt_embeds=values["uncond"].expand(batch, -1, -1), strength=strength,
                        num_inference_steps=steps, guidance_scale=GUIDANCE, eta=eta,
                        generator=torch.Generator().manual_seed(seed), output_type="latent").images


@pytest.mark.reference
def test_sdedit_matches_diffusers_img2img_pipeline(unet):
    """The pipeline runs diffusers' UNet (the same weights, parity.reference_unet), not the same torch operations as
    ours, so the claim is helpers' golden bound: |ours − pipeline| ≤ 2·(e_ours + e_ref) + u·max|pipeline|, where
    e_ours and e_ref are each side's float32 error, measured against the same computation in float64 (with the
    float32 noise, golden.precision.float32_draws). Measured here: 0 (the two UNets agree bit for bit on this CPU)."""
    pytest.importorskip("diffusers")
    from parity import reference_unet
    values, values64 = inputs(), inputs(torch.float64)
    sampler, sampler64 = (DDIMSampler(s, 4, eta=0.3) for s in (NoiseSchedule.scaled_linear(),
                                                               schedule_in_float64(NoiseSchedule.scaled_linear())))
    expected = img2img_pipeline(reference_unet(unet), values, 0.5, 4, 0.3, seed=7)
    ours = run_sdedit(unet, sampler, values, 0.5, seed=7)
    with float32_draws():
        expected64 = img2img_pipeline(reference_unet(in_float64(unet)), values64, 0.5, 4, 0.3, seed=7)
        ours64 = run_sdedit(in_float64(unet), sampler64, values64, 0.5, seed=7)
    difference = float32_error(ours, expected)
    bound = golden_bound(expected, float32_error(expected, expected64), float32_error(ours, ours64))
    print(f"SDEdit vs StableDiffusionImg2ImgPipeline: max|diff| {difference:.3g}, bound {bound:.3g}")
    assert difference <= bound


def test_sdedit_runs_the_last_floor_of_strength_times_steps():
    sampler = DDIMSampler(NoiseSchedule.scaled_linear(), 50)
    assert DEFAULT_STRENGTH == 0.4 and sdedit_timesteps(sampler, DEFAULT_STRENGTH) == list(range(381, 0, -20))
    assert len(sdedit_timesteps(sampler, 0.75)) == 37 and sdedit_timesteps(sampler, 1.0)[0] == 981
    for strength in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="fraction of the sampler's steps"):
            sdedit_timesteps(sampler, strength)
    with pytest.raises(ValueError, match="at least 0.02"):
        sdedit_timesteps(sampler, 0.01)


def test_sdedit_on_the_toy_returns_the_source_unprompted_and_a_photograph_of_the_prompt_class():
    """The toy's exact denoiser, from a coffee photograph at the default strength: with the empty prompt the result is
    the source photograph, with "a cat" a cat photograph. DDIM ends at ᾱ_0, so a pixel stays about √(1−ᾱ_0)·|ε|
    off the photograph it lands on (tests/test_blend_toy_model.py): the bound is 1.5·√(1−ᾱ_0) on the mean."""
    toy, size = weights.load("toy"), 32
    data = toy.unet.data_at((size, size)).reshape(-1, 3, size, size)
    names, labels = toy.tokenizer.class_names, toy.unet.labels
    coffee = labels.tolist().index(names.index("coffee"))
    schedule = toy.spec.build_schedule()
    bound = 1.5 * (1 - schedule.alphas_cumprod[0]).sqrt()
    for prompt, expected_class in (("", "coffee"), ("a cat", "cat")):
        cond, uncond = (toy.text_encoder(toy.tokenizer([text])) for text in (prompt, ""))
        with torch.no_grad():
            result = sdedit(toy.unet, DDIMSampler(schedule, 50), data[coffee:coffee + 1], cond, uncond,
                            guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
        errors = (result - data).abs().mean(dim=(1, 2, 3))                  # (N,): to each photograph
        closest = int(errors.argmin())
        assert names[int(labels[closest])] == expected_class and errors[closest] < bound, (prompt, errors)
        assert prompt or closest == coffee                                   # unprompted: the source itself
