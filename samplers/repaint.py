"""RePaint's resampling (Lugmayr et al., CVPR 2022): the jump schedule, its DDIM step and its undo step, as diffusers'
`RePaintScheduler` computes them (same torch operations in the same order, so the two agree bit for bit).

The paper harmonises the known and the generated regions by going back in time: after a step down, the latent
is noised up again and denoised once more (Algorithm 1, lines 9–10, and §4.2 "Resampling"). Its schedule
(§4.2 and Fig. 9, "jump length" j and "resampling" r) walks the N inference steps down; at every multiple of j
below N − j it jumps back up j steps, r − 1 times, each jump then walked down again one step at a time.
"""
import torch

from .ddim import ddim_sigma, ddim_update
from .parameterization import x0_and_eps
from .schedule import NoiseSchedule


def jump_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The step indices RePaint visits, in order: N−1 down to 0, with r − 1 jumps of j up at each jump point.

    An index below the one before it is a denoising step (a network call); one above it is an undo step.
    The denoising steps number N + (r − 1)·j·|{0, j, 2j, … < N − j}|: 410 at N = 50, j = r = 10.
    """
    for name, value in (("num_steps", num_steps), ("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    jumps_left = {n: jump_n_sample - 1 for n in range(0, num_steps - jump_length, jump_length)}
    schedule, n = [], num_steps
    while n >= 1:
        n -= 1
        schedule.append(n)                       # down one step: a network call
        if jumps_left.get(n, 0) > 0:
            jumps_left[n] -= 1
            for _ in range(jump_length):         # up j steps: undo steps, no network
                n += 1
                schedule.append(n)
    return schedule


def denoising_steps(schedule: list[int]) -> int:
    """How many entries of a jump schedule are denoising steps (each one below the entry before it)."""
    return sum(n < before for before, n in zip([schedule[0] + 1, *schedule[:-1]], schedule, strict=True))


class RePaintSampler:
    """DDIM with η on RePaint's jump schedule over a `NoiseSchedule`, and its undo step.

    `timesteps` are the schedule's indices times T // N (no offset: 980, 960, …, 0 at N = 50), as
    `RePaintScheduler.set_timesteps`. Past the last step ᾱ is 1 (the scheduler's `final_alpha_cumprod`), so the
    last step lands on ẑ_0 itself and the known region on z_init exactly; `DDIMSampler` ends at ᾱ_0 instead.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int, jump_length: int = 10, jump_n_sample: int = 10,
                 eta: float = 0.0, prediction_type: str = "epsilon"):
        if not 0 < num_steps <= schedule.num_train_timesteps:
            raise ValueError(f"num_steps must be in 1..{schedule.num_train_timesteps} (the schedule's T), "
                             f"got {num_steps}")
        self.schedule, self.eta, self.prediction_type = schedule, eta, prediction_type
        self.step_ratio = schedule.num_train_timesteps // num_steps
        self.timesteps = torch.tensor(jump_schedule(num_steps, jump_length, jump_n_sample)) * self.step_ratio
        self.network_calls = denoising_steps(self.timesteps.tolist())

    def previous_timestep(self, t: int) -> int:
        """t − T//N: where a denoising step from t lands (negative past the end)."""
        return int(t) - self.step_ratio

    def alpha_bar_prev(self, t: int) -> torch.Tensor:
        """ᾱ at the previous timestep; 1 past the end of the schedule."""
        t_prev = self.previous_timestep(t)
        table = self.schedule.alphas_cumprod
        return table[t_prev] if t_prev >= 0 else torch.ones((), dtype=table.dtype)

    def step(self, model_output: torch.Tensor, t: int, x: torch.Tensor, noise: torch.Tensor):
        """One DDIM step z_t → z_{t_prev} (DDIM eq. 12, σ_t(η) of eq. 16; the paper's line 7 at η = 1).

        Returns (x_prev, x0_pred). `noise` is the step's draw: σ·noise is added when η > 0 and t > 0.
        """
        alpha_bar, alpha_bar_prev = self.schedule.alphas_cumprod[int(t)], self.alpha_bar_prev(t)
        x0_pred, eps = x0_and_eps(model_output, x, alpha_bar, self.prediction_type)
        sigma = ddim_sigma(alpha_bar, alpha_bar_prev, self.eta)
        return ddim_update(x0_pred, eps, alpha_bar_prev, sigma, noise if self.eta > 0 and t > 0 else None), x0_pred

    def noise_known(self, z0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """The known region at the level the step from t lands on (line 5): √ᾱ_prev·z_0 + √(1−ᾱ_prev)·ε.

        z_0 itself after the last step (ᾱ_prev = 1)."""
        alpha_bar_prev = self.alpha_bar_prev(t)
        return alpha_bar_prev**0.5 * z0 + (1 - alpha_bar_prev) ** 0.5 * noise

    def undo(self, x: torch.Tensor, t_last: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """T//N forward steps x_t = √(1−β)·x_{t−1} + √β·ε (line 10, DDPM eq. 2), with β = betas[t_last + i]
        and a fresh ε each, as `RePaintScheduler.undo_step` indexes them."""
        for i in range(self.step_ratio):
            beta = self.schedule.betas[int(t_last) + i]
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = (1 - beta) ** 0.5 * x + beta**0.5 * noise
        return x
