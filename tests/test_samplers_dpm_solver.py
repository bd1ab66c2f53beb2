"""samplers/dpm_solver.py: DPM-Solver++(2M) against diffusers, the paper's equations, a closed-form ODE, and in
Algorithm 1; and the toy benchmark's claim (benchmarks/sampler_error.py)."""
import pytest
import torch
from helpers import load_golden

import weights
from blend import blended_latent_diffusion
from ldm import UNetModel
from samplers import (
    DDIMSampler,
    DPMSolverSampler,
    EulerSampler,
    NoiseSchedule,
    ddim_sample,
    guided_model_output,
    predict_x0_from_v,
)
from weights import fill_random_, presets

SCHEDULE = NoiseSchedule.scaled_linear()
SCHEDULE64 = NoiseSchedule(SCHEDULE.betas.double())      # the same β, every quantity in float64


def diffusers_dpm_solver(prediction_type: str = "epsilon"):
    """diffusers' DPMSolverMultistepScheduler as SD's scheduler config and the brief set it (dpmsolver++, order 2)."""
    from diffusers import DPMSolverMultistepScheduler
    return DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                       lower_order_final=True, euler_at_final=False, final_sigmas_type="zero",
                                       timestep_spacing="leading", steps_offset=1,
                                       prediction_type={"epsilon": "epsilon", "v": "v_prediction"}[prediction_type])


@pytest.mark.reference
@pytest.mark.precision
@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
@pytest.mark.parametrize("first", [0, 5], ids=["from the first step", "from step 5 (start 0.25)"])
def test_dpm_solver_equals_diffusers_dpmsolver_multistep_bit_for_bit(prediction_type, first):
    """20 steps of the SD schedule, leading spacing, offset 1, the fake network tanh(z), in-process against diffusers'
    DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2). Bit for bit by construction, on every
    CPU: diffusers' σ̃ table is ((1 − ᾱ)/ᾱ) ** 0.5 in torch over the float32 ᾱ (its np.interp at integer timesteps
    returns the table's values, and float32 → float64 → float32 is exact), and each step takes α, σ, λ, e^{−h} and
    the update in torch on the same tensors in the same order; DPMSolverSampler does the same. Every operation is
    torch's on both sides, so the claim also holds under BLD_TORCH_ROUNDING=one-ulp-off.

    diffusers' own "leading" spacing for this scheduler is ratio T // (S + 1) (941, 894, …, 48), not DDIM's, so it
    is handed our timesteps (DDIM's: 951, 901, …, 1). Starting at step 5 is Algorithm 1's start 0.25: diffusers'
    img2img pipelines start there with set_begin_index, and both take a first-order first step."""
    reference = diffusers_dpm_solver(prediction_type)
    reference.set_timesteps(20)
    assert reference.timesteps[:3].tolist() == [941, 894, 847]            # why it is handed our timesteps
    schedule = NoiseSchedule.scaled_linear()                              # here, under the same rounding as diffusers'
    ours = DPMSolverSampler(schedule, 20, prediction_type=prediction_type)
    assert ours.timesteps.tolist() == DDIMSampler(schedule, 20).timesteps.tolist()
    reference = diffusers_dpm_solver(prediction_type)
    reference.set_timesteps(timesteps=ours.timesteps.tolist())
    reference.set_begin_index(first)
    assert torch.equal(ours.sigmas, reference.sigmas)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps[first:]:
        output = torch.tanh(x)
        expected = reference.step(output, t, x).prev_sample
        actual, x0_pred = ours.step(output, int(t), x)
        assert torch.equal(x0_pred, reference.model_outputs[-1]), int(t)
        if t > 1:
            assert torch.equal(actual, expected), int(t)
        x = expected
    # The last step, to σ = 0: ours is x̂0 itself; diffusers' is 0·z + x̂0 computed through λ = +∞, the same numbers.
    assert torch.equal(actual, x0_pred) and torch.equal(actual, expected)


def test_dpm_solver_first_step_is_ddim_and_the_last_lands_on_the_denoised_estimate():
    """DPM-Solver++'s first-order step is DDIM with η = 0 (in float64: equal to 1e-12, the two compute the
    same number through other roots); the last step goes to σ = 0, where z_prev = x̂0 exactly."""
    dpm, ddim = DPMSolverSampler(SCHEDULE64, 10), DDIMSampler(SCHEDULE64, 10)
    generator = torch.Generator().manual_seed(1)
    z, eps = (torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    first, _ = dpm.step(eps, 901, z)
    assert torch.allclose(first, ddim.step(eps, 901, z)[0], rtol=0, atol=1e-12)
    dpm.reset()
    last, x0_pred = dpm.step(eps, 1, z)
    assert torch.equal(last, x0_pred) and dpm.previous_timestep(1) < 0


def test_dpm_solver_second_order_step_is_algorithm_2_written_out():
    """Algorithm 2 from ᾱ alone, in float64: α = √ᾱ, σ = √(1 − ᾱ), λ = log(α/σ), h = λ_prev − λ_t, r = h_last/h,
    D = (1 + 1/(2r))·x̂0_t − 1/(2r)·x̂0_last, z_prev = (σ_prev/σ_t)·z_t − α_prev·(e^{−h} − 1)·D."""
    sampler = DPMSolverSampler(SCHEDULE64, 10)
    generator = torch.Generator().manual_seed(2)
    z_last, eps_last, eps = (torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    z_t, x0_last = sampler.step(eps_last, 801, z_last)
    z_prev, x0_t = sampler.step(eps, 701, z_t)

    def alpha_sigma_lambda(t):
        alpha_bar = SCHEDULE64.alphas_cumprod[t]
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        return alpha, sigma, torch.log(alpha / sigma)

    (_, _, lambda_last), (alpha_t, sigma_t, lambda_t), (alpha_p, sigma_p, lambda_p) = map(alpha_sigma_lambda,
                                                                                            (801, 701, 601))
    assert torch.allclose(x0_t, (z_t - sigma_t * eps) / alpha_t, rtol=1e-12, atol=0)       # x̂0 from ε
    h = lambda_p - lambda_t
    r = (lambda_t - lambda_last) / h
    D = (1 + 1 / (2 * r)) * x0_t - 1 / (2 * r) * x0_last
    expected = sigma_p / sigma_t * z_t - alpha_p * (torch.exp(-h) - 1) * D
    assert torch.allclose(z_prev, expected, rtol=1e-12, atol=1e-12)


def test_dpm_solver_v_prediction_gives_parameterizations_x0():
    sampler = DPMSolverSampler(SCHEDULE64, 10, prediction_type="v")
    generator = torch.Generator().manual_seed(3)
    z, v = (torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    _, x0_pred = sampler.step(v, 501, z)
    assert torch.allclose(x0_pred, predict_x0_from_v(z, v, SCHEDULE64.alphas_cumprod[501]), rtol=0, atol=1e-12)


def gaussian_data_problem():
    """Data x0 ~ N(μ, s²I): x̂0(z_t) = μ + α s²/(α² s² + σ²)·(z_t − α μ) exactly, and the probability-flow ODE's
    solution through ξ is z_t = α_t μ + √(α_t² s² + σ_t²)·ξ (it keeps each quantile): a true solution in closed form."""
    generator = torch.Generator().manual_seed(4)
    mu, xi = (torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    s = 0.5

    def exact(t):
        alpha_bar = SCHEDULE64.alphas_cumprod[t]
        return alpha_bar.sqrt() * mu + (alpha_bar * s**2 + 1 - alpha_bar).sqrt() * xi

    def eps(z, t):
        alpha_bar = SCHEDULE64.alphas_cumprod[t]
        x0 = mu + alpha_bar.sqrt() * s**2 / (alpha_bar * s**2 + 1 - alpha_bar) * (z - alpha_bar.sqrt() * mu)
        return (z - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()

    return exact, eps


def error_at_201(kind, steps: int) -> float:
    """max|z − z_exact| at t = 201 (a timestep of 10, 20 and 40 leading steps), from the exact z at the first t."""
    exact, eps = gaussian_data_problem()
    sampler = kind(SCHEDULE64, steps)
    timesteps = [int(t) for t in sampler.timesteps]
    z = exact(timesteps[0])
    for t in timesteps[:timesteps.index(201)]:
        z, _ = sampler.step(eps(z, t), t, z)
    return (z - exact(201)).abs().max().item()


def test_dpm_solver_error_falls_as_the_square_of_the_step_and_ddims_as_the_step_on_gaussian_data():
    """On Gaussian data the ODE is solved in closed form: doubling the steps (10 → 20 → 40) divides DDIM's error
    by about 2 (first order; measured 1.97 and 1.99) and DPM-Solver++(2M)'s by about 4 (second order; measured 4.3
    and 4.2)."""
    ddim = [error_at_201(DDIMSampler, steps) for steps in (10, 20, 40)]
    dpm = [error_at_201(DPMSolverSampler, steps) for steps in (10, 20, 40)]
    for coarse, fine in zip(ddim, ddim[1:], strict=False):
        assert 1.8 < coarse / fine < 2.2
    for coarse, fine in zip(dpm, dpm[1:], strict=False):
        assert 3.6 < coarse / fine < 4.6
    assert dpm[1] < ddim[1] / 5


def test_dpm_solver_starts_afresh_on_the_first_timestep_after_a_break_and_after_reset():
    """The history is used only by the step right after the one that left it: a second run from the first
    timestep, a jump, or reset() takes a first-order step, as a new sampler does."""
    generator = torch.Generator().manual_seed(5)
    z, eps = (torch.randn(1, 4, 8, 8, generator=generator) for _ in range(2))

    def full_run(sampler):
        x = z
        for t in sampler.timesteps:
            x, _ = sampler.step(torch.tanh(x) + eps, int(t), x)
        return x

    sampler = DPMSolverSampler(SCHEDULE, 10)
    first = full_run(sampler)
    assert torch.equal(full_run(sampler), first)                      # the first timestep again: afresh
    fresh = DPMSolverSampler(SCHEDULE, 10).step(eps, 501, z)[0]
    sampler.step(eps, 801, z)
    assert torch.equal(sampler.step(eps, 501, z)[0], fresh)           # 801 → 501 skips 701 and 601: afresh
    sampler.step(eps, 601, z)
    assert not torch.equal(sampler.step(eps, 501, z)[0], fresh)       # 601 → 501 follows: second order
    sampler.step(eps, 601, z)
    sampler.reset()
    assert torch.equal(sampler.step(eps, 501, z)[0], fresh)
    with pytest.raises(ValueError, match="not one of this sampler's 10 timesteps"):
        sampler.step(eps, 500, z)


# ----------------------------------------------------------------------------- in Algorithm 1
@pytest.fixture(scope="module")
def unet():
    return fill_random_(UNetModel(presets.get("tiny").unet), seed=0).eval()


def inputs(mask_value: float) -> dict:
    values = {k: v for k, v in load_golden("blend_paper_loop").items() if k in ("z_init", "mask", "cond", "uncond")}
    values["mask"] = torch.full_like(values["mask"], mask_value)
    return values


def blend(unet, values, sampler, seed=3, **options):
    with torch.no_grad():
        return blended_latent_diffusion(unet, sampler, values["z_init"], values["mask"], values["cond"],
                                        values["uncond"], guidance_scale=7.5, start=0.25,
                                        generator=torch.Generator().manual_seed(seed), **options)


@pytest.mark.precision
def test_blend_with_dpm_solver_empty_mask_returns_the_source_latent_exactly(unet):
    values = inputs(0.0)
    assert torch.equal(blend(unet, values, DPMSolverSampler(SCHEDULE, 10)), values["z_init"])


@pytest.mark.precision
def test_blend_with_dpm_solver_full_mask_is_plain_guided_dpm_solver_from_z_k(unet):
    """Bit for bit: the same code path, z_k = q(z_init, t_k) with the first draw, then guided DPM-Solver++ steps."""
    values = inputs(1.0)
    sampler = DPMSolverSampler(SCHEDULE, 10)
    timesteps = sampler.timesteps[int(10 * 0.25):]
    noise = torch.randn(values["z_init"].shape, generator=torch.Generator().manual_seed(3))
    z_k = SCHEDULE.q_sample(values["z_init"], int(timesteps[0]), noise)
    with torch.no_grad():
        expected = ddim_sample(lambda z, t: guided_model_output(unet, z, t, values["cond"], values["uncond"], 7.5),
                               DPMSolverSampler(SCHEDULE, 10), z_k, timesteps)
    assert torch.equal(blend(unet, values, sampler), expected)


def test_blend_resets_the_solvers_history_at_the_start_of_a_run(unet):
    """A history left at the step before t_k (an interrupted run, say) would make the first step second order;
    Algorithm 1 forgets it, so the run equals one with a new sampler."""
    values = inputs(1.0)
    sampler = DPMSolverSampler(SCHEDULE, 10)
    sampler.step(torch.ones_like(values["z_init"]), int(sampler.timesteps[1]), values["z_init"])  # t_k's predecessor
    assert torch.equal(blend(unet, values, sampler), blend(unet, values, DPMSolverSampler(SCHEDULE, 10)))


@pytest.mark.parametrize("variant", ["official", "official-ldm", "official-sdxl"])
def test_blend_refuses_dpm_solver_for_the_official_loops_naming_what_they_run(unet, variant):
    values = inputs(1.0)
    expected = "EulerSampler" if variant == "official-sdxl" else "DDIMSampler"
    with pytest.raises(TypeError, match=f"runs with samplers.{expected}, not DPMSolverSampler.*variant 'paper'"):
        blend(unet, values, DPMSolverSampler(SCHEDULE, 10), variant=variant)


@pytest.mark.precision
def test_blend_with_euler_empty_mask_returns_the_source_and_full_mask_is_plain_euler(unet):
    """The paper's loop in Euler's coordinates x = z_0 + σ·ε: z_k and z_bg by `add_noise`, the network fed
    `scale_model_input`, the last step to σ = 0, where z_bg = z_init."""
    values = inputs(0.0)
    assert torch.equal(blend(unet, values, EulerSampler(SCHEDULE, 10)), values["z_init"])
    values = inputs(1.0)
    sampler = EulerSampler(SCHEDULE, 10)
    timesteps = [int(t) for t in sampler.timesteps[int(10 * 0.25):]]
    noise = torch.randn(values["z_init"].shape, generator=torch.Generator().manual_seed(3))
    x = sampler.add_noise(values["z_init"], timesteps[0], noise)
    with torch.no_grad():
        for t in timesteps:
            eps = guided_model_output(unet, sampler.scale_model_input(x, t), t, values["cond"], values["uncond"], 7.5)
            x, _ = sampler.step(eps, t, x)
    assert torch.equal(blend(unet, values, EulerSampler(SCHEDULE, 10)), x)


# ----------------------------------------------------------------------------- the toy benchmark
def test_toy_benchmark_dpm_solver_at_20_steps_is_closer_to_the_exact_solution_than_ddim_at_20():
    """benchmarks/sampler_error.py on one of its cases (32×32, start 0.25, "brick", seed 0, 2 samples; a few
    seconds): the latent at t = 1 against DDIM over all 701 timesteps from the same z_k. The reference is itself
    off the solution, by about its difference from DPM-Solver++ over the same timesteps (8e-7 RMS here), so a
    solver's true error is at most its measured one plus that: DPM-Solver++(2M)'s (1.4e-6 measured, so at most
    2.3e-6) is still a tenth of DDIM's (4.4e-5), in RMS and in max."""
    from benchmarks.sampler_error import SAMPLERS, measure
    errors, reference_error = measure(weights.load("toy"), size=32, start=0.25, prompts=("brick",), seeds=(0,),
                                      samples=2, steps=(20,))
    ddim, dpm = errors["DDIM", 20], errors["DPM-Solver++(2M)", 20]
    assert set(SAMPLERS) == {"DDIM", "DPM-Solver++(2M)"} and ddim.other == dpm.other == 0
    assert dpm.rms + reference_error.rms < ddim.rms / 10
    assert dpm.largest + reference_error.largest < ddim.largest / 10
