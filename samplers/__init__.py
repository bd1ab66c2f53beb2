"""The noise schedule, q(z_t|z_0), the ε / x̂0 / v conversions, DDIM, Euler, DPM-Solver++(2M), classifier-free
guidance, RePaint's jump schedule and undo step, and ADM's diffusion (respaced, learned variance, gradient
guidance)."""
from .ddim import DDIMSampler, ddim_sample, ddim_sigma, ddim_timesteps, ddim_update
from .dpm_solver import DPMSolverSampler, alpha_sigma_lambda
from .euler import EulerSampler
from .gaussian_diffusion import GaussianDiffusion, MeanVariance, linear_betas, space_timesteps
from .guidance import as_conditioning, classifier_free_guidance, guided_model_output
from .parameterization import (
                               predict_eps_from_v,
                               predict_eps_from_x0,
                               predict_x0_from_eps,
                               predict_x0_from_v,
                               v_from_eps_and_x0,
                               x0_and_eps,
)
from .repaint import RePaintSampler, denoising_steps, jump_schedule
from .schedule import NoiseSchedule

__all__ = [
    "NoiseSchedule", "DDIMSampler", "EulerSampler", "DPMSolverSampler", "alpha_sigma_lambda",
    "ddim_sample", "ddim_sigma", "ddim_timesteps", "ddim_update",
    "predict_x0_from_eps", "predict_eps_from_x0", "predict_x0_from_v", "predict_eps_from_v",
    "v_from_eps_and_x0", "x0_and_eps", "as_conditioning", "classifier_free_guidance", "guided_model_output",
    "GaussianDiffusion", "MeanVariance", "linear_betas", "space_timesteps",
    "RePaintSampler", "denoising_steps", "jump_schedule",
]
