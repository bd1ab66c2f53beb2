"""DPM-Solver++(2M): the multistep second-order solver of the probability-flow ODE in data prediction
(Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++", Algorithm 2).

Write a latent of the schedule as z_t = α_t·x₀ + σ_t·ε with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) (DDPM eq. 4), and
its log signal-to-noise ratio λ_t = log(α_t / σ_t). In λ the probability-flow ODE has the exact solution
(DPM-Solver++, §4: the diffusion ODE solved with the data prediction model)

    z_prev = (σ_prev / σ_t)·z_t + σ_prev·∫_{λ_t}^{λ_prev} e^λ·x̂₀(z_λ) dλ,

so only the data prediction x̂₀ has to be approximated. Holding it constant over the step gives the
first-order DPM-Solver++, which is DDIM with η = 0 (with h = λ_prev − λ_t):

    z_prev = (σ_prev / σ_t)·z_t − α_prev·(e^{−h} − 1)·x̂₀_t.

The 2M solver (Algorithm 2) takes x̂₀ linear in λ through the current estimate and the one of the step
before, x̂₀_{t_last} at λ_{t_last}, using one network call per step like DDIM:

    r      = h_last / h,   h_last = λ_t − λ_{t_last}
    D      = (1 + 1/(2r))·x̂₀_t − 1/(2r)·x̂₀_{t_last}
    z_prev = (σ_prev / σ_t)·z_t − α_prev·(e^{−h} − 1)·D.

`DPMSolverSampler.step` computes the last line expanded, −α_prev(e^{−h} − 1)·x̂₀_t − ½·α_prev(e^{−h} − 1)·
(1/r)(x̂₀_t − x̂₀_{t_last}), which is D term by term. This is diffusers' DPMSolverMultistepScheduler with
`algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", final_sigmas_type="zero"`, and every
coefficient is taken as it takes it, in the same torch operations and order, so the two agree bit for bit
(tests/test_samplers_dpm_solver.py): the variance-exploding σ̃_t = √((1 − ᾱ_t)/ᾱ_t) of every training timestep
as one float32 table, then per step α = 1/√(σ̃² + 1), σ = σ̃·α, λ = log α − log σ on 0-dim tensors (the last
step, whose result is x̂₀ itself, is taken as x̂₀ rather than through diffusers' λ = +∞: the same numbers).

Its order schedule, as diffusers runs it for two orders:
  * the first step of a run is first order (there is no x̂₀ before it);
  * every later step is second order, except
  * the last, which goes to σ = 0 (α = 1, λ = +∞, e^{−h} = 0) and is first order: z_prev = x̂₀_t, the
    denoised estimate itself (diffusers' `final_sigmas_type="zero"` forces first order there whatever the
    number of steps; its `lower_order_final` for fewer than 15 steps changes nothing more for order 2, and
    `euler_at_final` is off).
The timesteps are DDIM's (`ddim_timesteps`: "leading", offset 1 gives 951, 901, …, 1 for 20 steps), so DDIM
and DPM-Solver++ visit the same t; diffusers' own "leading" spacing for this scheduler differs
(ratio T // (S + 1): 941, 894, …, 48), and the parity test hands it these timesteps. Past the last timestep
`previous_timestep` is negative and stands for σ = 0, where the latent is x̂₀.
"""
import torch

from .ddim import ddim_timesteps, timestep_position
from .schedule import NoiseSchedule


def alpha_sigma_lambda(sigma_ve: torch.Tensor):
    """(α, σ, λ) of the latent z = α·x₀ + σ·ε whose variance-exploding noise level is σ̃ = σ/α > 0:

        α = 1/√(σ̃² + 1),   σ = σ̃·α,   λ = log α − log σ   (= log(α/σ), the half log-SNR)

    in diffusers' operations (`_sigma_to_alpha_sigma_t`, then the λ of its updates).
    """
    alpha = 1 / ((sigma_ve**2 + 1) ** 0.5)
    sigma = sigma_ve * alpha
    return alpha, sigma, torch.log(alpha) - torch.log(sigma)


class DPMSolverSampler:
    """DPM-Solver++(2M) over a `NoiseSchedule` (module docstring): the timesteps and one update per step.

    `timesteps` (S,) are DDIM's (`spacing`, `offset`: see `ddim_timesteps`); `sigmas` (S + 1,) are their
    variance-exploding σ̃_t = √((1 − ᾱ_t)/ᾱ_t) followed by 0. `prediction_type` says what the network outputs
    ("epsilon" or "v"); the latents are the DDPM form z_t, fed to the network as they are.

    The solver is multistep: `step` keeps the x̂₀ and λ of the step it just took, and uses them in the next
    step only when that step's t is the timestep right after it. Any other call, the first timestep again or
    a run that starts further in (Algorithm 1's `start`), starts afresh with a first-order step; `reset()`
    forgets the history explicitly (`blend.blended_latent_diffusion` calls it at the start of every run).
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int, prediction_type: str = "epsilon", offset: int = 1,
                 spacing: str = "leading"):
        if prediction_type not in ("epsilon", "v"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v', got {prediction_type!r}")
        self.schedule = schedule
        self.num_steps = num_steps
        self.prediction_type = prediction_type
        self.timesteps = ddim_timesteps(schedule.num_train_timesteps, num_steps, spacing, offset)  # (S,)
        self.step_ratio = schedule.num_train_timesteps // num_steps
        alpha_bar = schedule.alphas_cumprod.to(torch.promote_types(schedule.alphas_cumprod.dtype, torch.float32))
        sigmas = ((1 - alpha_bar) / alpha_bar) ** 0.5                                  # (T,) σ̃ of every t
        self.sigmas = torch.cat([sigmas[self.timesteps], sigmas.new_zeros(1)])       # (S + 1,): then σ̃ = 0
        self._index = {int(t): i for i, t in enumerate(self.timesteps)}
        self.reset()

    def reset(self) -> None:
        """Forget the previous step's x̂₀ and λ: the next step is first order, as at the start of a run."""
        self._history = None        # (index of the step, its x̂₀, its λ_t)

    def index_of(self, t: int) -> int:
        """The position of timestep t in `timesteps`."""
        return timestep_position(self._index, t, self.timesteps)

    def previous_timestep(self, t: int) -> int:
        """t − T//S: the next timestep visited (negative past the end, where σ = 0 and the latent is x̂₀)."""
        return int(t) - self.step_ratio

    def data_prediction(self, model_output: torch.Tensor, z_t: torch.Tensor, alpha: torch.Tensor,
                        sigma: torch.Tensor) -> torch.Tensor:
        """x̂₀ from the network's output, as samplers.parameterization writes it with α = √ᾱ, σ = √(1 − ᾱ):
        x̂₀ = (z_t − σ·ε̂)/α for ε-prediction (DDIM eq. 9), x̂₀ = α·z_t − σ·v for v (Salimans & Ho 2022, §4)."""
        if self.prediction_type == "epsilon":
            return (z_t - sigma * model_output) / alpha
        return alpha * z_t - sigma * model_output

    def step(self, model_output: torch.Tensor, t: int, x: torch.Tensor, generator: torch.Generator | None = None):
        """One DPM-Solver++(2M) step from z_t to the next timestep (module docstring). Returns (z_prev, x̂₀_t).

        First order at the start of a run and at the last step (to σ = 0: z_prev = x̂₀_t), second order
        otherwise. Computed in at least float32 (diffusers upcasts half precision) and returned in model_output's
        dtype. `generator` is unused: the solver is deterministic.
        """
        dtype = model_output.dtype
        work = torch.promote_types(dtype, torch.float32)
        x, model_output = x.to(work), model_output.to(work)
        index = self.index_of(t)
        history = self._history if self._history is not None and self._history[0] == index - 1 else None
        alpha_s, sigma_s, lambda_s = alpha_sigma_lambda(self.sigmas[index])           # at t
        x0_pred = self.data_prediction(model_output, x, alpha_s, sigma_s)
        if index == len(self.timesteps) - 1:
            # to σ = 0: α_prev = 1, λ_prev = +∞, e^{−h} = 0, so the first-order step gives z_prev = 0·z_t + x̂₀_t.
            # diffusers computes it through those infinities; the result is x̂₀_t, taken here as it is.
            x_prev = x0_pred
        else:
            alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(self.sigmas[index + 1])   # at t_prev
            h = lambda_t - lambda_s                                                   # h = λ_prev − λ_t
            # first order (DPM-Solver++'s first-order step, DDIM): z_prev = (σ_prev/σ_t)·z_t − α_prev(e^{−h} − 1)·x̂₀_t
            x_prev = (sigma_t / sigma_s) * x - (alpha_t * (torch.exp(-h) - 1.0)) * x0_pred
            if history is not None:
                # Algorithm 2: D = x̂₀_t + (1/(2r))(x̂₀_t − x̂₀_last) in the place of x̂₀_t, r = h_last / h
                _, x0_last, lambda_last = history
                r = (lambda_s - lambda_last) / h
                difference = (1.0 / r) * (x0_pred - x0_last)                          # (1/r)(x̂₀_t − x̂₀_last)
                x_prev = x_prev - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * difference
        self._history = (index, x0_pred, lambda_s)
        return x_prev.to(dtype), x0_pred.to(dtype)
