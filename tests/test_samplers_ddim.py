"""DDIM (Song et al. 2021): timesteps, eq. 12, η, and parity with diffusers' DDIMScheduler."""
import pytest
import torch
from golden.fixtures_samplers import CASES
from helpers import load_golden

from samplers import DDIMSampler, NoiseSchedule, ddim_sample, ddim_sigma, ddim_timesteps

SCHEDULE = NoiseSchedule.scaled_linear()


def test_leading_timesteps_with_offset_1_are_stable_diffusions():
    timesteps = DDIMSampler(SCHEDULE, 50).timesteps
    assert timesteps.tolist() == list(range(981, 0, -20))


def test_leading_timesteps_with_offset_0_are_the_official_bld_scripts():
    assert DDIMSampler(SCHEDULE, 50, offset=0).timesteps.tolist() == list(range(980, -1, -20))


def test_uniform_timesteps_for_50_steps_are_compvis():
    """CompVis make_ddim_timesteps('uniform', 50, 1000) = range(0, 1000, 20) + 1 = [1, 21, …, 981]."""
    timesteps = ddim_timesteps(1000, 50, spacing="uniform", offset=1)
    assert timesteps.tolist()[::-1] == [1 + 20 * i for i in range(50)]


def test_uniform_spacing_keeps_compvis_extra_step_when_steps_do_not_divide_T():
    """CompVis: range(0, 1000, 1000 // 30 = 33) has 31 entries, so 30 requested steps become 31."""
    assert len(ddim_timesteps(1000, 30, spacing="uniform")) == 31
    assert len(ddim_timesteps(1000, 30, spacing="leading")) == 30


@pytest.mark.precision
@pytest.mark.parametrize("name", CASES)
def test_timesteps_match_diffusers(name):
    prediction_type, eta, num_steps, offset = CASES[name]
    golden = load_golden("samplers_ddim")
    assert torch.equal(DDIMSampler(SCHEDULE, num_steps, offset=offset).timesteps, golden[f"{name}.timesteps"])


# --------------------------------------------------------------------------- float32 rounding along a trajectory
# Every elementary float32 operation (a product, a sum, a quotient, 1 − ᾱ, a square root or a power 0.5)
# rounds its result with a relative error of at most u = 2^-24 when correctly rounded, and of at most
# 2u for the 1-ulp vector approximations some CPUs use for pow. No formula of one step has more than
# ROUNDINGS such operations on any path from an input to the result. So a formula Σ_k c_k·y_k computed
# in float32 lies within 2·ROUNDINGS·u·Σ_k |c_k·y_k| of its exact value, plus its inputs' errors carried
# through it. Along a trajectory, for ε-prediction (a = √ᾱ, b = √(1−ᾱ), a' = √ᾱ_prev,
# c' = √(1 − ᾱ_prev − σ²)):
#     δx̂0    ≤ δx / a + 2Ru·(|x| + b·|ε|) / a                    x̂0 = (x − b·ε) / a
#     δx_prev ≤ a'·δx̂0 + 2Ru·(a'·|x̂0| + c'·|ε| + σ·|z|)         x_prev = a'·x̂0 + c'·ε + σ·z
# and for v-prediction (x̂0 = a·x − b·v, ε = a·v + b·x):
#     δx̂0 ≤ a·δx + 2Ru·(a·|x| + b·|v|),   δε ≤ b·δx + 2Ru·(a·|v| + b·|x|),
#     δx_prev ≤ a'·δx̂0 + c'·δε + 2Ru·(a'·|x̂0| + c'·|ε| + σ·|z|).
# δx starts at 0 (x_T is stored). Both our float32 trajectory and the stored one lie within these
# bounds of the exact trajectory, so they lie within twice the bounds of each other, element by element.
# At t = 981 the 1/a ≈ 15 of x̂0 makes the first bound about 1e-4 for values of order 3; the two
# implementations measure 1e-6 to 6e-6 apart across CPUs; a wrong ᾱ, offset or formula moves them by 1e-3
# or more.
ROUNDINGS = 10
UNIT_ROUNDOFF = 2.0 ** -24


def rounding_bounds(golden: dict, name: str, sampler: DDIMSampler) -> list:
    """[(bound on |x̂0 − exact|, bound on |x_prev − exact|)] for each step of the stored trajectory (float64)."""
    per_operation = 2 * ROUNDINGS * UNIT_ROUNDOFF
    bounds, x, dx = [], golden[f"{name}.x_T"].double(), torch.zeros(())
    for i, t in enumerate(sampler.timesteps.tolist()):
        alpha_bar = sampler.schedule.alphas_cumprod[t].double()
        alpha_bar_prev = sampler.alpha_bar_prev(t).double()
        a, b, a_prev = alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), alpha_bar_prev.sqrt()
        sigma = ddim_sigma(alpha_bar, alpha_bar_prev, sampler.eta)
        c_prev = (1 - alpha_bar_prev - sigma**2).sqrt()
        output = golden[f"{name}.{i}.model_output"].double()
        z = golden.get(f"{name}.{i}.noise", torch.zeros(())).double().abs()
        x0 = golden[f"{name}.{i}.x0_pred"].double()
        if sampler.prediction_type == "epsilon":
            eps, d_eps = output, torch.zeros(())
            dx0 = dx / a + per_operation * (x.abs() + b * eps.abs()) / a
        else:
            eps = a * output + b * x
            dx0 = a * dx + per_operation * (a * x.abs() + b * output.abs())
            d_eps = b * dx + per_operation * (a * output.abs() + b * x.abs())
        dx = a_prev * dx0 + c_prev * d_eps + per_operation * (a_prev * x0.abs() + c_prev * eps.abs() + sigma * z)
        bounds.append((dx0, dx))
        x = golden[f"{name}.{i}.x_prev"].double()
    return bounds


def sampler_for(name: str, schedule: NoiseSchedule = SCHEDULE) -> DDIMSampler:
    prediction_type, eta, num_steps, offset = CASES[name]
    return DDIMSampler(schedule, num_steps, eta=eta, prediction_type="v" if prediction_type == "v_prediction"
                       else "epsilon", offset=offset)


def replay(sampler: DDIMSampler, golden: dict, name: str) -> list:
    """Our (x_prev, x̂0) at every step, fed the stored network outputs (and noise) from the stored x_T."""
    x, steps = golden[f"{name}.x_T"], []
    for i, t in enumerate(sampler.timesteps.tolist()):
        x, x0_pred = sampler.step(golden[f"{name}.{i}.model_output"], t, x, noise=golden.get(f"{name}.{i}.noise"))
        steps.append((x, x0_pred))
    return steps


@pytest.mark.precision
@pytest.mark.parametrize("name", CASES)
def test_ddim_step_matches_eq12_and_diffusers(name):
    """A whole trajectory against diffusers' stored one, within twice the float32 rounding bound above."""
    golden, sampler = load_golden("samplers_ddim"), sampler_for(name)
    for i, ((x, x0_pred), (bound_x0, bound_x)) in enumerate(zip(replay(sampler, golden, name),
                                                                 rounding_bounds(golden, name, sampler), strict=True)):
        for ours, stored, bound in ((x0_pred, golden[f"{name}.{i}.x0_pred"], bound_x0),
                                    (x, golden[f"{name}.{i}.x_prev"], bound_x)):
            excess = (ours.double() - stored.double()).abs() - 2 * bound
            assert excess.max() <= 0, (name, i, f"exceeds twice the float32 rounding bound by {excess.max():.3g}")


@pytest.mark.precision
@pytest.mark.reference
@pytest.mark.parametrize("name", CASES)
def test_ddim_step_equals_installed_diffusers_bit_for_bit(name):
    """Every step agrees with DDIMScheduler.step exactly, in this process. Bit for bit by construction: the step
    runs DDIMScheduler.step's torch operations in its order (`** 0.5` of 0-d tensors of the same float32 ᾱ, σ from
    the same products), so the two agree whatever torch's roots round to on this CPU."""
    from golden.fixtures_samplers import _scheduler
    prediction_type, eta, num_steps, offset = CASES[name]
    golden, sampler = load_golden("samplers_ddim"), sampler_for(name)
    scheduler = _scheduler(prediction_type, offset)
    scheduler.set_timesteps(num_steps)
    assert torch.equal(scheduler.timesteps, sampler.timesteps)
    x = reference = golden[f"{name}.x_T"]
    for i, t in enumerate(sampler.timesteps.tolist()):
        output, noise = golden[f"{name}.{i}.model_output"], golden.get(f"{name}.{i}.noise")
        expected = scheduler.step(output, t, reference, eta=eta, variance_noise=noise)
        x, x0_pred = sampler.step(output, t, x, noise=noise)
        assert torch.equal(x0_pred, expected.pred_original_sample) and torch.equal(x, expected.prev_sample), (name, i)
        reference = expected.prev_sample


def test_previous_alpha_bar_past_the_end_is_alpha_bar_0():
    sampler = DDIMSampler(SCHEDULE, 50)
    assert sampler.previous_timestep(1) == -19
    assert sampler.alpha_bar_prev(1) == SCHEDULE.alphas_cumprod[0]
    assert sampler.alpha_bar_prev(21) == SCHEDULE.alphas_cumprod[1]


def test_ddim_step_with_the_true_noise_lands_on_the_forward_process():
    """If ε̂ is the ε that made z_t = q(z_0, t), eq. 12 (η = 0) gives exactly q(z_0, t_prev) with that ε."""
    generator = torch.Generator().manual_seed(1)
    z0, eps = torch.randn(2, 1, 4, 4, 4, generator=generator, dtype=torch.float64)
    schedule = NoiseSchedule(SCHEDULE.betas.double())
    sampler = DDIMSampler(schedule, 50)
    for t in (981, 501, 21):
        x_prev, x0_pred = sampler.step(eps, t, schedule.q_sample(z0, t, eps))
        torch.testing.assert_close(x0_pred, z0, rtol=0, atol=1e-10)
        torch.testing.assert_close(x_prev, schedule.q_sample(z0, t - 20, eps), rtol=0, atol=1e-10)


def test_ddim_eta0_is_deterministic_and_ignores_noise():
    sampler = DDIMSampler(SCHEDULE, 10, eta=0.0)
    x, output = torch.randn(2, 1, 4, 8, 8)
    first, _ = sampler.step(output, 901, x)
    second, _ = sampler.step(output, 901, x, noise=torch.randn_like(x))
    assert torch.equal(first, second)


def test_ddim_eta1_sigma_is_the_ddpm_posterior_variance():
    """η = 1 with every timestep visited: σ_t² = β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t (DDPM eq. 7)."""
    schedule = NoiseSchedule(SCHEDULE.betas.double())
    alphas_cumprod, betas = schedule.alphas_cumprod, schedule.betas
    for t in (1, 10, 500, 999):
        sigma = ddim_sigma(alphas_cumprod[t], alphas_cumprod[t - 1], eta=1.0)
        posterior_variance = (1 - alphas_cumprod[t - 1]) / (1 - alphas_cumprod[t]) * betas[t]
        assert sigma.item() ** 2 == pytest.approx(posterior_variance.item(), rel=1e-9)


def test_ddim_eta_positive_draws_its_noise_from_the_generator():
    sampler = DDIMSampler(SCHEDULE, 10, eta=0.7)
    x, output = torch.randn(2, 1, 4, 8, 8)
    a, _ = sampler.step(output, 501, x, generator=torch.Generator().manual_seed(5))
    b, _ = sampler.step(output, 501, x, generator=torch.Generator().manual_seed(5))
    c, _ = sampler.step(output, 501, x, generator=torch.Generator().manual_seed(6))
    deterministic, _ = DDIMSampler(SCHEDULE, 10, eta=0.0).step(output, 501, x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - deterministic).abs().max() > 1e-3


def _gaussian_data_denoiser(data_std: float):
    """The exact ε-prediction for data z_0 ~ N(0, s²I): E[ε | z_t] = √(1−ᾱ) z_t / (ᾱ s² + 1 − ᾱ)."""
    def model(z, t):
        alpha_bar = SCHEDULE.alphas_cumprod[max(int(t), 0)].double()
        return (1 - alpha_bar).sqrt() * z / (alpha_bar * data_std**2 + 1 - alpha_bar)
    return model


def _inversion_round_trip_error(num_steps: int) -> float:
    model = _gaussian_data_denoiser(0.5)
    sampler = DDIMSampler(NoiseSchedule(SCHEDULE.betas.double()), num_steps)
    z0 = 0.5 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = z0
    for t in sampler.timesteps.flip(0).tolist():
        z = sampler.invert_step(model(z, sampler.previous_timestep(t)), t, z)
    return (ddim_sample(model, sampler, z) - z0).abs().max().item()


def test_ddim_eta0_is_invertible_in_the_limit_of_small_steps():
    """Inversion then sampling returns to z_0 with an error that falls like 1/S (a first-order scheme)."""
    errors = [_inversion_round_trip_error(n) for n in (10, 50, 250)]
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3, errors


def test_ddim_rejects_unknown_prediction_type_and_step_counts():
    with pytest.raises(ValueError, match="prediction_type"):
        DDIMSampler(SCHEDULE, 50, prediction_type="sample")
    with pytest.raises(ValueError, match="num_steps"):
        DDIMSampler(SCHEDULE, 0)
    with pytest.raises(ValueError, match="past T"):
        DDIMSampler(SCHEDULE, 1000, offset=1)
    with pytest.raises(ValueError, match="spacing"):
        ddim_timesteps(1000, 50, spacing="quadratic")
