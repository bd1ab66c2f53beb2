"""ε, x̂0 and v: each one, with z_t, gives the others (DDIM eq. 9; Salimans & Ho 2022 §4)."""
import pytest
import torch

from samplers import (
    NoiseSchedule,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    v_from_eps_and_x0,
    x0_and_eps,
)

SCHEDULE = NoiseSchedule.scaled_linear()
TIMESTEPS = [0, 1, 20, 500, 981, 999]


def _draw(t):
    generator = torch.Generator().manual_seed(t)
    z0 = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    alpha_bar = SCHEDULE.alphas_cumprod[t].double()
    z_t = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * eps
    return z0, eps, alpha_bar, z_t


@pytest.mark.parametrize("t", TIMESTEPS)
def test_x0_from_eps_recovers_z0_exactly_given_the_true_noise(t):
    z0, eps, alpha_bar, z_t = _draw(t)
    torch.testing.assert_close(predict_x0_from_eps(z_t, eps, alpha_bar), z0, rtol=0,
                               atol=1e-9 / alpha_bar.sqrt().item())


@pytest.mark.parametrize("t", TIMESTEPS)
def test_eps_from_x0_recovers_the_true_noise(t):
    z0, eps, alpha_bar, z_t = _draw(t)
    torch.testing.assert_close(predict_eps_from_x0(z_t, z0, alpha_bar), eps, rtol=0,
                               atol=1e-9 / (1 - alpha_bar).sqrt().item())


@pytest.mark.parametrize("t", TIMESTEPS)
def test_v_round_trips_to_x0_and_eps(t):
    z0, eps, alpha_bar, z_t = _draw(t)
    v = v_from_eps_and_x0(eps, z0, alpha_bar)
    torch.testing.assert_close(predict_x0_from_v(z_t, v, alpha_bar), z0, rtol=0, atol=1e-12)
    torch.testing.assert_close(predict_eps_from_v(z_t, v, alpha_bar), eps, rtol=0, atol=1e-12)


def test_v_is_the_rotation_of_eps_and_x0():
    """(z_t, v) is (ε, z_0) rotated by φ with cos φ = √ᾱ: the norm of the pair is kept."""
    z0, eps, alpha_bar, z_t = _draw(500)
    v = v_from_eps_and_x0(eps, z0, alpha_bar)
    torch.testing.assert_close(z_t**2 + v**2, z0**2 + eps**2)


def test_x0_and_eps_follows_the_prediction_type():
    z0, eps, alpha_bar, z_t = _draw(300)
    v = v_from_eps_and_x0(eps, z0, alpha_bar)
    for output, kind in ((eps, "epsilon"), (v, "v")):
        x0_pred, eps_pred = x0_and_eps(output, z_t, alpha_bar, kind)
        torch.testing.assert_close(x0_pred, z0)
        torch.testing.assert_close(eps_pred, eps)
    with pytest.raises(ValueError, match="prediction_type"):
        x0_and_eps(eps, z_t, alpha_bar, "sample")
