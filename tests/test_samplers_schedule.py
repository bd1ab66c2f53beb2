"""The noise schedule and the forward process q(z_t | z_0) (DDPM eqs. 2 and 4)."""
import pytest
import torch
from helpers import load_golden

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


UNIT_ROUNDOFF = 2.0 ** -24   # float32


def cumprod_rounding_bound(schedule: NoiseSchedule) -> torch.Tensor:
    """|ᾱ_t(float32) − ᾱ_t(exact)| ≤ 2(t+1)·u·ᾱ_t: t+1 roundings of 1 − β_s and t+1 of the running product,
    each at most u relative (correctly rounded), to first order."""
    steps = torch.arange(1, schedule.num_train_timesteps + 1, dtype=torch.float64)
    return 2 * steps * UNIT_ROUNDOFF * schedule.alphas_cumprod.double()


def test_alphas_cumprod_is_product_of_one_minus_betas(schedule):
    expected = torch.cumprod(1 - schedule.betas.double(), dim=0)
    assert ((schedule.alphas_cumprod.double() - expected).abs() <= cumprod_rounding_bound(schedule)).all()
    assert torch.all(schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1])
    assert 0.998 < schedule.alphas_cumprod[0] < 1 and schedule.alphas_cumprod[-1] < 0.005


@pytest.mark.precision
def test_alphas_cumprod_matches_stored_diffusers_schedule_within_float32_rounding(schedule):
    """Both float32 products lie within cumprod_rounding_bound of the exact one, so within twice it of each other."""
    stored = load_golden("samplers_ddim")["alphas_cumprod"]
    assert ((schedule.alphas_cumprod.double() - stored.double()).abs() <= 2 * cumprod_rounding_bound(schedule)).all()


@pytest.mark.precision
@pytest.mark.reference
def test_alphas_cumprod_equals_installed_diffusers_bit_for_bit(schedule):
    """Bit for bit by construction: both square a float32 torch.linspace of the roots and take torch's cumprod of
    1 − β, the same torch operations in the same order."""
    from golden.fixtures_samplers import _scheduler
    assert torch.equal(schedule.alphas_cumprod, _scheduler("epsilon", 1).alphas_cumprod)


@pytest.mark.precision
def test_q_sample_matches_diffusers_add_noise(schedule):
    """z_t = √ᾱ·z_0 + √(1−ᾱ)·ε takes six float32 operations (two roots, 1 − ᾱ, two products, a sum), each
    within 2u relative (u = 2^-24, 1-ulp powers allowed), so each implementation is within
    12u·(√ᾱ|z_0| + √(1−ᾱ)|ε|) of the exact value and the two within twice that of each other."""
    golden = load_golden("samplers_add_noise")
    z_t = schedule.q_sample(golden["z0"], golden["t"], golden["noise"])
    alpha_bar = schedule.alphas_cumprod.double()[golden["t"]].view(-1, 1, 1, 1)
    bound = 12 * UNIT_ROUNDOFF * (alpha_bar.sqrt() * golden["z0"].double().abs()
                                  + (1 - alpha_bar).sqrt() * golden["noise"].double().abs())
    assert ((z_t.double() - golden["z_t"].double()).abs() <= 2 * bound).all()


@pytest.mark.precision
@pytest.mark.reference
def test_q_sample_equals_installed_diffusers_add_noise_bit_for_bit(schedule):
    """Bit for bit by construction: q_sample takes √ᾱ and √(1 − ᾱ) with torch's `** 0.5` from the same float32 ᾱ,
    as add_noise does, so the two agree whatever torch's root rounds to on this CPU."""
    from golden.fixtures_samplers import _scheduler
    golden = load_golden("samplers_add_noise")
    expected = _scheduler("epsilon", 1).add_noise(golden["z0"], golden["noise"], golden["t"])
    assert torch.equal(schedule.q_sample(golden["z0"], golden["t"], golden["noise"]), expected)


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
