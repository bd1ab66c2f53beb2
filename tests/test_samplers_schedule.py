"""The noise schedule and the forward process q(z_t | z_0) (DDPM eqs. 2 and 4)."""
import pytest
import torch

from conftest import load_golden
from samplers import NoiseSchedule


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.scaled_linear(0.00085, 0.012, 1000)


def test_scaled_linear_betas_are_squared_linspace_of_roots(schedule):
    roots = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64)
    assert schedule.betas.dtype == torch.float32
    torch.testing.assert_close(schedule.betas.double(), roots**2, rtol=1e-6, atol=0)
    assert schedule.betas[0].item() == pytest.approx(0.00085, rel=1e-6)
    assert schedule.betas[-1].item() == pytest.approx(0.012, rel=1e-6)


def test_alphas_cumprod_is_product_of_one_minus_betas(schedule):
    expected = torch.cumprod(1 - schedule.betas.double(), dim=0)
    torch.testing.assert_close(schedule.alphas_cumprod.double(), expected, rtol=1e-5, atol=0)
    assert torch.all(schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1])
    assert 0.998 < schedule.alphas_cumprod[0] < 1 and schedule.alphas_cumprod[-1] < 0.005


def test_alphas_cumprod_equals_diffusers_bitwise(schedule):
    assert torch.equal(schedule.alphas_cumprod, load_golden("samplers_ddim")["alphas_cumprod"])


def test_q_sample_matches_diffusers_add_noise(schedule):
    golden = load_golden("samplers_add_noise")
    z_t = schedule.q_sample(golden["z0"], golden["t"], golden["noise"])
    assert (z_t - golden["z_t"]).abs().max().item() <= 1e-6


def test_q_sample_mean_and_variance_match_closed_form(schedule):
    """z_t ~ N(√ᾱ_t z_0, (1 − ᾱ_t) I): checked on 200k draws with a fixed seed."""
    generator = torch.Generator().manual_seed(0)
    z0 = torch.full((200_000,), 0.7)
    for t in (10, 400, 900):
        z_t = schedule.q_sample(z0, t, torch.randn(z0.shape, generator=generator))
        alpha_bar = schedule.alphas_cumprod[t].item()
        # standard errors: σ/√n ≈ 2.2e-3 for the mean, σ²·√(2/n) ≈ 3.2e-3 for the variance
        assert z_t.mean().item() == pytest.approx(alpha_bar**0.5 * 0.7, abs=1e-2)
        assert z_t.var().item() == pytest.approx(1 - alpha_bar, abs=1.5e-2 * (1 - alpha_bar) + 1e-4)


def test_q_sample_closed_form_equals_iterated_one_step_noising(schedule):
    """DDPM eq. 2 applied t+1 times, z_s = √(1−β_s) z_{s−1} + √β_s ε_s, has mean √ᾱ_t z_0 and variance 1 − ᾱ_t."""
    mean_scale, variance = 1.0, 0.0
    betas = schedule.betas.double()
    for t in range(1000):
        mean_scale *= (1 - betas[t]).sqrt().item()
        variance = (1 - betas[t].item()) * variance + betas[t].item()
        if t in (0, 1, 250, 999):
            alpha_bar = schedule.alphas_cumprod[t].double().item()
            assert mean_scale == pytest.approx(alpha_bar**0.5, rel=1e-5)
            assert variance == pytest.approx(1 - alpha_bar, rel=1e-4, abs=1e-7)


def test_alpha_bar_broadcasts_one_timestep_per_sample(schedule):
    z = torch.zeros(3, 4, 2, 2)
    alpha_bar = schedule.alpha_bar(torch.tensor([0, 500, 999]), like=z)
    assert alpha_bar.shape == (3, 1, 1, 1)
    assert alpha_bar[1, 0, 0, 0] == schedule.alphas_cumprod[500]
    noisy = schedule.q_sample(torch.ones_like(z), torch.tensor([0, 500, 999]), torch.zeros_like(z))
    torch.testing.assert_close(noisy[:, 0, 0, 0], schedule.alphas_cumprod[[0, 500, 999]].sqrt())


def test_snr_is_alpha_bar_over_one_minus_alpha_bar_and_falls(schedule):
    t = torch.arange(1000)
    snr = schedule.snr(t)
    torch.testing.assert_close(snr, schedule.alphas_cumprod / (1 - schedule.alphas_cumprod))
    assert torch.all(snr[1:] < snr[:-1])
    assert snr[0] > 1000 and snr[-1] < 0.01
