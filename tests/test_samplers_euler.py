"""EulerSampler: σ_t, Karras et al.'s Algorithm 2 step, DDIM η = 0 in other coordinates, and diffusers'
EulerDiscreteScheduler (the SDXL pipelines' scheduler) in-process."""
import pytest
import torch
from helpers import max_relative_error

from samplers import DDIMSampler, EulerSampler, NoiseSchedule

SCHEDULE = NoiseSchedule.scaled_linear()


def test_euler_sigmas_are_sqrt_one_minus_alpha_bar_over_alpha_bar_then_zero():
    sampler = EulerSampler(SCHEDULE, 50)
    alpha_bar = SCHEDULE.alphas_cumprod.double()[sampler.timesteps]
    expected = ((1 - alpha_bar) / alpha_bar).sqrt()
    assert sampler.timesteps.tolist() == list(range(981, 0, -20))
    assert sampler.sigmas.shape == (51,) and sampler.sigmas[-1] == 0
    assert max_relative_error(sampler.sigmas[:-1], expected) < 1e-6
    assert sampler.sigma(741) == sampler.sigmas[12]


def test_euler_step_is_algorithm_2_of_karras_without_churn():
    """d = (x − D)/σ with D = x − σ·ε, x_next = x + (σ_next − σ)·d: in exact arithmetic x_next = x + (σ_next − σ)·ε."""
    sampler = EulerSampler(SCHEDULE, 50)
    x, eps = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    x_next, x0 = sampler.step(eps, 741, x)
    sigma, sigma_next = sampler.sigma(741).double(), sampler.next_sigma(741).double()
    torch.testing.assert_close(x0, x - sigma * eps, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_next, x + (sigma_next - sigma) * eps, rtol=1e-6, atol=1e-6)
    last_next, last_x0 = sampler.step(eps, 1, x)
    torch.testing.assert_close(last_next, last_x0, rtol=1e-12, atol=1e-12)   # the last step ends at σ = 0: x̂₀


def test_euler_scale_model_input_and_add_noise_map_x_form_to_ddpm_latents():
    sampler = EulerSampler(SCHEDULE, 50)
    z0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    z_t = SCHEDULE.q_sample(z0, 741, noise)                 # √ᾱ z0 + √(1−ᾱ) ε
    x = sampler.add_noise(z0, 741, noise)                   # z0 + σ ε
    assert max_relative_error(sampler.scale_model_input(x, 741), z_t) < 1e-6


def test_euler_equals_ddim_eta_0_on_the_same_timesteps_except_the_last_step():
    """Fed the same network, Euler's x / √(σ² + 1) follows DDIM's z step for step; the last Euler step goes to
    σ = 0, DDIM's to ᾱ_0 (σ_0 ≈ 0.029), so only that one differs."""
    torch.manual_seed(1)
    ddim, euler = DDIMSampler(SCHEDULE, 10), EulerSampler(SCHEDULE, 10)
    assert torch.equal(ddim.timesteps, euler.timesteps)
    weight = torch.randn(4, 4, dtype=torch.float64) / 2

    def network(z, t):                                     # any ε̂(z_t, t); fed the DDPM-form latent
        return torch.tanh(torch.einsum("oc,bchw->bohw", weight, z) * (1 + t / 1000))

    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    x = z * (euler.sigma(int(euler.timesteps[0])).double() ** 2 + 1) ** 0.5
    for i, t in enumerate(int(t) for t in euler.timesteps):
        z, _ = ddim.step(network(z, t), t, z)
        x, _ = euler.step(network(euler.scale_model_input(x, t), t), t, x)
        x_as_z = x / (euler.next_sigma(t).double() ** 2 + 1) ** 0.5
        if i < len(euler.timesteps) - 1:
            assert max_relative_error(x_as_z, z) < 1e-6, f"step {i} (t = {t})"
    assert max_relative_error(x_as_z, z) > 1e-3            # the last step: σ = 0 against ᾱ_0


@pytest.mark.reference
@pytest.mark.precision
def test_euler_equals_diffusers_euler_discrete_scheduler_of_sdxl_bit_for_bit():
    """Timesteps, σ, scale_model_input, add_noise and step against EulerDiscreteScheduler configured as SDXL base
    1.0's scheduler_config.json, in-process. Bit for bit by construction: both take σ = ((1 − ᾱ)/ᾱ) ** 0.5 with
    torch from the same float32 ᾱ (diffusers' np.interp at the integer timesteps returns the table's values), and
    each step is the same torch operations in the same order."""
    from diffusers import EulerDiscreteScheduler
    reference = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1, interpolation_type="linear",
                                       use_karras_sigmas=False, prediction_type="epsilon")
    reference.set_timesteps(50)
    ours = EulerSampler(SCHEDULE, 50)
    assert reference.timesteps.long().tolist() == ours.timesteps.tolist()
    assert torch.equal(ours.sigmas, reference.sigmas)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    x = reference.add_noise(x0, noise, reference.timesteps[12:13])
    assert torch.equal(ours.add_noise(x0, 741, noise), x)
    for t in reference.timesteps[12:]:
        eps = torch.tanh(reference.scale_model_input(x, t))
        assert torch.equal(ours.scale_model_input(x, int(t)), reference.scale_model_input(x, t)), int(t)
        expected = reference.step(eps, t, x).prev_sample
        actual, _ = ours.step(eps, int(t), x)
        assert torch.equal(actual, expected), int(t)
        x = expected


def test_euler_refuses_a_timestep_it_does_not_visit():
    with pytest.raises(ValueError, match="timestep 740 is not one of this sampler's 50 timesteps"):
        EulerSampler(SCHEDULE, 50).sigma(740)
