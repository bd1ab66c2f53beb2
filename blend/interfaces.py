"""What the loops of Algorithm 1 take and give: a denoiser, and the record of one step for a callback."""
from dataclasses import dataclass
from typing import Callable, Protocol

import torch


class Denoiser(Protocol):
    """A denoising network: takes z_t (B, C, h, w), the timesteps (B,) and the conditioning (a text
    context, or SDXL's (context, y)), and returns ε or v, shaped like z_t."""

    def __call__(self, z_t: torch.Tensor, timesteps: torch.Tensor, *conditioning: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepRecord:
    """One step of a loop, as `callback` receives it (k-diffusion's samplers pass the same kind of record).

    index: the step's number among the `num_steps` run (0 first); t → t_prev its timesteps;
    z_t the latent it started from; z_fg (line 5) and x0_fg, the denoised estimate x̂0 that the
    step predicted from z_t; z_bg (line 6); mask, the step's latent mask (1 = edit); z, the latent
    the step hands on (the blend of line 7 in the paper's loop).
    """
    index: int
    num_steps: int
    t: int
    t_prev: int
    z_t: torch.Tensor
    z_fg: torch.Tensor
    x0_fg: torch.Tensor
    z_bg: torch.Tensor
    mask: torch.Tensor
    z: torch.Tensor


StepCallback = Callable[[StepRecord], None]
