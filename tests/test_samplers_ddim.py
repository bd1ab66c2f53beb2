"""DDIM (Song et al. 2021): timesteps, eq. 12, η, and parity with diffusers' DDIMScheduler."""
import pytest
import torch

from conftest import load_golden
from samplers import DDIMSampler, NoiseSchedule, ddim_sample, ddim_sigma, ddim_timesteps
from golden.fixtures_samplers import CASES

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


@pytest.mark.parametrize("name", CASES)
def test_timesteps_match_diffusers(name):
    prediction_type, eta, num_steps, offset = CASES[name]
    golden = load_golden("samplers_ddim")
    assert torch.equal(DDIMSampler(SCHEDULE, num_steps, offset=offset).timesteps, golden[f"{name}.timesteps"])


@pytest.mark.parametrize("name", CASES)
def test_ddim_step_matches_eq12_and_diffusers(name):
    """A whole trajectory, replaying diffusers' network outputs: max abs diff ≤ 1e-6 in float32."""
    prediction_type, eta, num_steps, offset = CASES[name]
    golden = load_golden("samplers_ddim")
    sampler = DDIMSampler(SCHEDULE, num_steps, eta=eta, prediction_type="v" if prediction_type == "v_prediction"
                          else "epsilon", offset=offset)
    x = golden[f"{name}.x_T"]
    for i, t in enumerate(sampler.timesteps.tolist()):
        x, x0_pred = sampler.step(golden[f"{name}.{i}.model_output"], t, x, noise=golden.get(f"{name}.{i}.noise"))
        assert (x0_pred - golden[f"{name}.{i}.x0_pred"]).abs().max().item() <= 1e-6, (name, i, t)
        assert (x - golden[f"{name}.{i}.x_prev"]).abs().max().item() <= 1e-6, (name, i, t)


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
