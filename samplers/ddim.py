"""DDIM sampling (Song, Meng & Ermon 2021), with Stable Diffusion's timestep conventions."""
import torch

from .parameterization import x0_and_eps
from .schedule import NoiseSchedule


def ddim_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading", offset: int = 1) -> torch.Tensor:
    """The S timesteps a DDIM run visits, largest first, as a (S,) LongTensor.

    "leading" (diffusers, SD's scheduler config): ratio = T // S, t_i = i·ratio + offset,
        i = S−1 … 0. SD uses offset 1: [981, 961, …, 1] for 50 steps; the official BLD SD2
        script uses offset 0: [980, 960, …, 0].
    "uniform" (CompVis `make_ddim_timesteps`): range(0, T, T // S) + offset. Equal to
        "leading" when S divides T; otherwise CompVis visits ceil(T / (T // S)) steps, not S.
    """
    if not 0 < num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in 1..{num_train_timesteps}, got {num_steps}")
    ratio = num_train_timesteps // num_steps
    if spacing == "leading":
        steps = torch.arange(num_steps, dtype=torch.long) * ratio
    elif spacing == "uniform":
        steps = torch.arange(0, num_train_timesteps, ratio, dtype=torch.long)
    else:
        raise ValueError(f"spacing must be 'leading' or 'uniform', got {spacing!r}")
    steps = steps + offset
    if steps[-1] >= num_train_timesteps:
        raise ValueError(f"{num_steps} steps with offset {offset} reach t = {steps[-1].item()}, past T − 1 = "
                         f"{num_train_timesteps - 1}; use fewer steps or offset 0")
    return steps.flip(0)


def timestep_position(positions: dict[int, int], t: int, timesteps: torch.Tensor) -> int:
    """positions[t]: where timestep t stands in `timesteps`; a ValueError naming the range when it is not one."""
    try:
        return positions[int(t)]
    except KeyError:
        raise ValueError(f"timestep {int(t)} is not one of this sampler's {len(timesteps)} timesteps "
                         f"({int(timesteps[0])} … {int(timesteps[-1])})") from None


def ddim_sigma(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t(η) = η · √((1−ᾱ_prev)/(1−ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)   (DDIM eq. 16).

    η = 0 is deterministic DDIM; η = 1 is DDPM's posterior standard deviation.
    """
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
    return eta * variance**0.5


def ddim_update(x0_pred: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: torch.Tensor, sigma,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM eq. 12: z_prev = √ᾱ_prev·ẑ_0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z.

    The three terms are the "predicted x_0", the "direction pointing to x_t" and the noise.
    """
    x_prev = alpha_bar_prev**0.5 * x0_pred + (1 - alpha_bar_prev - sigma**2) ** 0.5 * eps
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


class DDIMSampler:
    """DDIM over a `NoiseSchedule`: the timesteps to visit and one update per step.

    `prediction_type` says what the network outputs ("epsilon" or "v"); `offset` and
    `spacing` choose the timesteps (see `ddim_timesteps`). Past the last step the
    previous ᾱ is ᾱ_0 (diffusers' `set_alpha_to_one=False`, CompVis alike).
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int, eta: float = 0.0, prediction_type: str = "epsilon",
                 offset: int = 1, spacing: str = "leading"):
        if prediction_type not in ("epsilon", "v"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v', got {prediction_type!r}")
        self.timesteps = ddim_timesteps(schedule.num_train_timesteps, num_steps, spacing, offset)  # (S,)
        self.schedule = schedule
        self.eta = eta
        self.prediction_type = prediction_type
        self.step_ratio = schedule.num_train_timesteps // num_steps

    def previous_timestep(self, t: int) -> int:
        """t − T//S: the next timestep visited (negative past the end)."""
        return int(t) - self.step_ratio

    def alpha_bar_prev(self, t: int) -> torch.Tensor:
        """ᾱ at the previous timestep, ᾱ_0 past the end of the schedule."""
        t_prev = self.previous_timestep(t)
        return self.schedule.alphas_cumprod[max(t_prev, 0)]

    def step(self, model_output: torch.Tensor, t: int, x: torch.Tensor, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None):
        """One DDIM step from z_t to z_{t_prev} (DDIM eq. 12). Returns (x_prev, x0_pred).

        With η > 0 the step adds σ·z: `noise` is z if given, else it is drawn from `generator`.
        """
        alpha_bar = self.schedule.alphas_cumprod[int(t)]
        alpha_bar_prev = self.alpha_bar_prev(t)
        x0_pred, eps = x0_and_eps(model_output, x, alpha_bar, self.prediction_type)
        sigma = ddim_sigma(alpha_bar, alpha_bar_prev, self.eta)
        if self.eta > 0 and noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_prev = ddim_update(x0_pred, eps, alpha_bar_prev, sigma, noise if self.eta > 0 else None)
        return x_prev, x0_pred

    def invert_step(self, model_output: torch.Tensor, t: int, x: torch.Tensor):
        """DDIM inversion (η = 0 run backwards): from z at the timestep before t up to z_t.

        The ODE of DDIM (eq. 14) is integrated in the other direction, with the network
        evaluated at the *previous* point, so it is exact only in the limit of small steps.
        `model_output` is the network's output at (x, max(previous_timestep(t), 0)).
        """
        alpha_bar_from = self.alpha_bar_prev(t)
        alpha_bar_to = self.schedule.alphas_cumprod[int(t)]
        x0_pred, eps = x0_and_eps(model_output, x, alpha_bar_from, self.prediction_type)
        return ddim_update(x0_pred, eps, alpha_bar_to, 0.0)


def ddim_sample(model_fn, sampler: DDIMSampler, z: torch.Tensor, timesteps=None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Run `sampler` over `timesteps` (default: all of them) from z; model_fn(z, t) -> output."""
    for t in sampler.timesteps if timesteps is None else timesteps:
        z, _ = sampler.step(model_fn(z, int(t)), int(t), z, generator=generator)
    return z
