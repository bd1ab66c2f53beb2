"""Deterministic Euler sampling of the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn).

Karras et al. write diffusion as x = x₀ + σ·ε (the "variance exploding" form). A latent of the
SD schedule, z_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε (DDPM eq. 4), is the same point scaled by √ᾱ_t:

    x = z_t / √ᾱ_t,   σ_t = √((1 − ᾱ_t) / ᾱ_t),   so   z_t = x / √(σ_t² + 1).

The ODE dx/dσ = (x − D(x; σ)) / σ (Karras eq. 3 with σ(t) = t), with the denoiser
D(x; σ) = x − σ·ε̂(z_t, t) for an ε-predicting network fed z_t, is integrated by Euler steps
(Algorithm 2, lines 3–8 with γ = 0):

    d      = (x − D(x; σ_i)) / σ_i
    x_next = x + (σ_{i+1} − σ_i) · d

over the σ of the S "leading" timesteps (the DDIM ones), then a final σ = 0. This is diffusers'
EulerDiscreteScheduler (the SDXL pipelines' scheduler): `scale_model_input` is x / √(σ² + 1),
`add_noise` is x₀ + σ·ε. Substituting x = z/√ᾱ shows that each step is DDIM's η = 0 update
(DDIM eq. 12) in other coordinates, x_next = x̂₀ + σ_{i+1}·ε̂; only the last step differs: DDIM
ends at ᾱ_0 (σ_0 ≈ 0.029), Euler at σ = 0, i.e. at x̂₀ itself.
"""
import torch

from .ddim import ddim_timesteps, timestep_position
from .schedule import NoiseSchedule


class EulerSampler:
    """Euler over the σ of a `NoiseSchedule`'s leading timesteps; latents in the x = x₀ + σ·ε form.

    `timesteps` (S,) are DDIM's "leading" ones with `offset` (1 for SDXL's scheduler config);
    `sigmas` (S + 1,) are their σ_t followed by 0. The network is fed `scale_model_input(x, t)`.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int, offset: int = 1, prediction_type: str = "epsilon"):
        if prediction_type not in ("epsilon", "v"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v', got {prediction_type!r}")
        self.schedule = schedule
        self.num_steps = num_steps
        self.prediction_type = prediction_type
        self.timesteps = ddim_timesteps(schedule.num_train_timesteps, num_steps, "leading", offset)   # (S,)
        self.step_ratio = schedule.num_train_timesteps // num_steps
        alpha_bar = schedule.alphas_cumprod[self.timesteps].float()
        self.sigmas = torch.cat([((1 - alpha_bar) / alpha_bar) ** 0.5, torch.zeros(1)])              # (S + 1,)
        self._index = {int(t): i for i, t in enumerate(self.timesteps)}

    def index_of(self, t: int) -> int:
        """The position of timestep t in `timesteps`."""
        return timestep_position(self._index, t, self.timesteps)

    def sigma(self, t: int) -> torch.Tensor:
        """σ_t = √((1 − ᾱ_t) / ᾱ_t), float32."""
        return self.sigmas[self.index_of(t)]

    def next_sigma(self, t: int) -> torch.Tensor:
        """σ of the timestep after t, 0 after the last one."""
        return self.sigmas[self.index_of(t) + 1]

    def previous_timestep(self, t: int) -> int:
        """t − T//S: the next timestep visited (negative past the end, where σ = 0)."""
        return int(t) - self.step_ratio

    def scale_model_input(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """z_t = x / √(σ_t² + 1): the latent in the DDPM form that the network was trained on."""
        return x / (self.sigma(t) ** 2 + 1) ** 0.5

    def add_noise(self, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """x = x₀ + σ_t·ε: q(z_t | z_0) in the x form (z_t·√(σ_t² + 1))."""
        return x0 + noise * self.sigma(t).to(x0.device, x0.dtype)

    def denoised(self, model_output: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        """D(x; σ) = x − σ·ε̂ (ε-prediction); for v-prediction x̂₀ = x/(σ² + 1) − σ·v/√(σ² + 1)."""
        sigma = self.sigma(t).to(x.device, x.dtype)
        if self.prediction_type == "epsilon":
            return x - sigma * model_output
        return x / (sigma**2 + 1) - sigma / (sigma**2 + 1) ** 0.5 * model_output

    def step(self, model_output: torch.Tensor, t: int, x: torch.Tensor, generator: torch.Generator | None = None):
        """One Euler step from σ_t to the next σ (Karras et al. 2022, Algorithm 2, lines 4–8 with γ = 0).

        Returns (x_next, x̂₀), computed in at least float32 (diffusers upcasts half precision) and returned
        in model_output's dtype. `generator` is unused: the step is deterministic.
        """
        dtype = model_output.dtype
        work = torch.promote_types(dtype, torch.float32)
        x, model_output = x.to(work), model_output.to(work)
        sigma, sigma_next = self.sigma(t).to(x.device, work), self.next_sigma(t).to(x.device, work)
        x0_pred = self.denoised(model_output, t, x)
        derivative = (x - x0_pred) / sigma                     # d = (x − D(x; σ)) / σ        (line 5)
        x_next = x + derivative * (sigma_next - sigma)         # x_next = x + (σ_next − σ)·d  (line 6)
        return x_next.to(dtype), x0_pred.to(dtype)
