"""blend/repaint.py and samplers/repaint.py: RePaint on latents against diffusers' RePaintScheduler, its cost, its
defining properties, and on the toy.

The network is the tiny preset's UNet with the deterministic random weights of seed 0, as in
tests/test_blend_algorithm.py.
"""
import pytest
import torch

import weights
from blend.repaint import repaint, repaint_network_calls
from ldm import UNetModel
from samplers import NoiseSchedule, RePaintSampler, jump_schedule
from weights import fill_random_, presets

GUIDANCE = 7.5
# (N, j, r): the paper's and the community pipeline's defaults, a short one, and N, j that do not divide T or N.
SCHEDULES = [(250, 10, 10), (50, 10, 10), (50, 5, 2), (30, 7, 3), (10, 10, 10)]


@pytest.fixture(scope="module")
def unet():
    return fill_random_(UNetModel(presets.get("tiny").unet), seed=0).eval()


def inputs() -> dict:
    """z_init (2, 4, 8, 8), a block mask (1, 1, 8, 8) with 1 = edit, and random (1, 77, 32) contexts."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 1:5] = 1
    return dict(z_init=torch.randn(2, 4, 8, 8, generator=generator), mask=mask,
                cond=torch.randn(1, 77, 32, generator=generator), uncond=torch.randn(1, 77, 32, generator=generator))


def scheduler_for(num_steps, jump_length, jump_n_sample, eta=0.0):
    """RePaintScheduler.from_config of SD's scheduler config, as the community pipeline builds it (clip_sample off)."""
    from diffusers import RePaintScheduler
    scheduler = RePaintScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                 eta=eta)
    scheduler.set_timesteps(num_steps, jump_length, jump_n_sample)
    return scheduler


def run_repaint(unet, values, seed=0, **options):
    with torch.no_grad():
        return repaint(unet, NoiseSchedule.scaled_linear(), values["z_init"], values["mask"], values["cond"],
                       values["uncond"], guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(seed),
                       **options)


def test_repaint_network_calls_at_the_defaults_and_per_schedule():
    """N + (r − 1)·j·⌈(N − j)/j⌉ denoising steps; the schedule also holds (r − 1)·j undo entries per jump point."""
    assert [repaint_network_calls(*s) for s in SCHEDULES] == [2410, 410, 95, 30 + 2 * 7 * 4, 10]
    assert [len(jump_schedule(*s)) for s in SCHEDULES[:2]] == [4570, 770]
    with pytest.raises(ValueError, match="jump_length must be a whole number of at least 1"):
        repaint_network_calls(50, 0, 10)


@pytest.mark.reference
@pytest.mark.parametrize("num_steps, jump_length, jump_n_sample", SCHEDULES)
def test_repaint_jump_schedule_is_repaint_schedulers(num_steps, jump_length, jump_n_sample):
    pytest.importorskip("diffusers")
    expected = scheduler_for(num_steps, jump_length, jump_n_sample).timesteps
    sampler = RePaintSampler(NoiseSchedule.scaled_linear(), num_steps, jump_length, jump_n_sample)
    assert torch.equal(sampler.timesteps, expected)
    steps = sum(int(t) < int(before) for before, t in zip([expected[0] + 1, *expected[:-1]], expected, strict=True))
    assert sampler.network_calls == steps == repaint_network_calls(num_steps, jump_length, jump_n_sample)


@pytest.mark.precision
@pytest.mark.reference
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_repaint_step_and_undo_step_equal_repaint_schedulers_bit_for_bit(eta):
    """Bit for bit by construction: RePaintSampler.step is predict_x0_from_eps, ddim_sigma and ddim_update, the torch
    operations of RePaintScheduler.step in its order; the known region and the undo step are written as it writes
    them; each draws from the generator in its order. The scheduler's mask is 1 where known: ours is 1 − it."""
    pytest.importorskip("diffusers")
    scheduler, sampler = scheduler_for(50, 10, 10, eta), RePaintSampler(NoiseSchedule.scaled_linear(), 50, eta=eta)
    values = inputs()
    generator = torch.Generator().manual_seed(1)
    model_output, sample = (torch.randn(2, 4, 8, 8, generator=generator) for _ in range(2))
    for t in (980, 500, 20, 0):
        expected = scheduler.step(model_output, torch.tensor(t), sample, values["z_init"], 1 - values["mask"],
                                  generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(t))
        z_fg, _ = sampler.step(model_output, t, sample, noise)
        z_bg = sampler.noise_known(values["z_init"], t, noise)
        assert torch.equal(z_fg * values["mask"] + z_bg * (1 - values["mask"]), expected), t
        undone = scheduler.undo_step(sample, torch.tensor(t), torch.Generator().manual_seed(t))
        assert torch.equal(sampler.undo(sample, t, torch.Generator().manual_seed(t)), undone), t


def community_loop(unet, values, num_steps, jump_length, jump_n_sample, eta, seed):
    """The denoising loop of diffusers' community `stable_diffusion_repaint.py`, written as it is, with
    RePaintScheduler doing every schedule step: latents = randn, undo_step when t ≥ t_last, else a guided network
    call and `step` with the known latent and the mask (1 = known), one generator throughout."""
    from parity import guided_noise
    scheduler = scheduler_for(num_steps, jump_length, jump_n_sample, eta)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(values["z_init"].shape, generator=generator)
    t_last = scheduler.timesteps[0] + 1
    for t in scheduler.timesteps:
        if t >= t_last:
            latents = scheduler.undo_step(latents, t_last, generator)
        else:
            noise_pred = guided_noise(unet, scheduler.scale_model_input(latents, t), t, values["cond"],
                                      values["uncond"], GUIDANCE)
            latents = scheduler.step(noise_pred, t, latents, values["z_init"], 1 - values["mask"],
                                     generator=generator).prev_sample
        t_last = t
    return latents


@pytest.mark.precision
@pytest.mark.reference
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_repaint_reproduces_the_community_pipelines_loop_bit_for_bit(unet, eta):
    """Bit for bit by construction (the previous test: the same operations and draws at every step), on a schedule
    with a jump at 0 (N = 6, j = 3, r = 2: 9 network calls, 3 undo steps of T//N = 166 draws each)."""
    pytest.importorskip("diffusers")
    values = inputs()
    with torch.no_grad():
        expected = community_loop(unet, values, 6, 3, 2, eta, seed=4)
    assert torch.equal(run_repaint(unet, values, seed=4, num_steps=6, jump_length=3, jump_n_sample=2, eta=eta),
                       expected)


@pytest.mark.precision
def test_repaint_empty_mask_returns_source_latent(unet):
    """The last step lands on ᾱ = 1, where the known region is √1·z_init + √0·ε = z_init exactly."""
    values = dict(inputs(), mask=torch.zeros(1, 1, 8, 8))
    assert torch.equal(run_repaint(unet, values, num_steps=4, jump_length=2, jump_n_sample=2), values["z_init"])


def test_repaint_callback_records_every_network_call_and_changes_nothing(unet):
    values, records = inputs(), []
    options = dict(num_steps=4, jump_length=2, jump_n_sample=2, seed=2)
    plain = run_repaint(unet, values, **options)
    recorded = run_repaint(unet, values, callback=records.append, **options)
    assert torch.equal(plain, recorded)
    assert [r.t for r in records] == [750, 500, 250, 0, 250, 0] and len(records) == repaint_network_calls(4, 2, 2)
    assert [r.index for r in records] == list(range(6)) and {r.num_steps for r in records} == {6}
    for record in records:
        assert record.t_prev == record.t - 250
        assert torch.equal(record.z, record.z_fg * record.mask + record.z_bg * (1 - record.mask))  # line 8
    assert torch.equal(records[-1].z, recorded) and torch.equal(records[-1].z_bg, values["z_init"])


def test_repaint_on_the_toy_fills_the_mask_with_the_prompt_class_and_keeps_the_rest():
    """The toy's exact denoiser, a coffee photograph with its centre masked and the prompt "cat": outside the mask the
    result is the source exactly (the last step lands on ᾱ = 1); inside, it is a cat photograph's centre. The last
    step also makes x^unknown the posterior mean itself, one-hot on a photograph at t = 0: the bound 0.01 on the
    mean leaves room only for the last weights' rounding."""
    toy, size = weights.load("toy"), 32
    data = toy.unet.data_at((size, size)).reshape(-1, 3, size, size)
    names, labels = toy.tokenizer.class_names, toy.unet.labels
    coffee = labels.tolist().index(names.index("coffee"))
    mask = torch.zeros(1, 1, size, size)
    mask[..., 8:24, 8:24] = 1
    cond, uncond = (toy.text_encoder(toy.tokenizer([text])) for text in ("a cat", ""))
    with torch.no_grad():
        result = repaint(toy.unet, toy.spec.build_schedule(), data[coffee:coffee + 1], mask, cond, uncond,
                         guidance_scale=1.0, num_steps=20, jump_length=5, jump_n_sample=2,
                         generator=torch.Generator().manual_seed(0))
    inside = mask[0, 0].bool()
    assert torch.equal(result[:, :, ~inside], data[coffee:coffee + 1][:, :, ~inside])
    errors = (result[:, :, inside] - data[:, :, inside]).abs().mean(dim=(1, 2))  # (N,): to each photograph's centre
    closest = int(errors.argmin())
    assert names[int(labels[closest])] == "cat" and errors[closest] < 0.01, errors
