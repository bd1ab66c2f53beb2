"""The loop of the official `scripts/text_editing_SDXL.py` (Blended Latent Diffusion with SDXL base 1.0).

The script runs diffusers' EulerDiscreteScheduler, whose latents have the form x = z₀ + σ·ε
(`samplers.EulerSampler`), and blends in that form:

    k = ⌊S · start⌋                          (int(50 · 0.25) = 12: t_k = timesteps[12] = 741)
    x = z_init + σ_{t_k}·ε                   (noise draw 1, B rows: the source noised to t_k)
    for t in timesteps[k:]:
        x    = Euler step of x from σ_t to the next σ, with guided ε̂(x / √(σ_t² + 1), t)
        x_bg = z_init + σ_t·ε'               (a fresh draw, B rows, at the *current* t)
        x    = x ⊙ m + x_bg ⊙ (1 − m)

so the background is noised one level above the latent it joins (as in the official SD 2 loop), and
the last blend leaves the background at σ_1 ≈ 0.041 rather than at z_init. `cond` and `uncond` are
SDXL's (context, y) tuples (the script's zero negative prompt: all zeros, same time ids).
"""
import torch

from samplers import EulerSampler, guided_model_output

from .interfaces import Denoiser, StepCallback, StepRecord
from .masks import masks_for_steps, step_kernel_sizes


def official_sdxl_loop(unet: Denoiser, sampler: EulerSampler, z_init: torch.Tensor, mask: torch.Tensor,
                       cond, uncond, *, guidance_scale: float, start: float = 0.25,
                       generator: torch.Generator | None = None, shrink: bool = False,
                       kernel_sizes: list[int] | None = None,
                       callback: StepCallback | None = None) -> torch.Tensor:
    """The official SDXL editing loop (module docstring); z_init (B, C, h, w), mask (1, 1, h, w) of 0/1.

    Draw order: the initial noise (B rows, z_init's shape), then one background noise per step.
    `sampler` must be an `EulerSampler` (the script's scheduler: `EulerSampler(schedule, 50)`);
    shrink / kernel_sizes dilate the mask per step as in `blended_latent_diffusion`.
    """
    if not isinstance(sampler, EulerSampler):
        raise TypeError(f"variant 'official-sdxl' runs the SDXL script's Euler scheduler: pass "
                        f"samplers.EulerSampler(schedule, steps), not {type(sampler).__name__}")
    timesteps = [int(t) for t in sampler.timesteps[int(len(sampler.timesteps) * start):]]
    masks = masks_for_steps(mask.to(z_init.dtype), step_kernel_sizes(shrink, kernel_sizes, len(timesteps)))

    def draw_noise() -> torch.Tensor:  # ε ~ N(0, I), shaped like z_init, from the caller's generator
        return torch.randn(z_init.shape, generator=generator, device=z_init.device, dtype=z_init.dtype)

    x = sampler.add_noise(z_init, timesteps[0], draw_noise())            # the source noised to t_k
    for i, (t, m) in enumerate(zip(timesteps, masks, strict=True)):
        x_t = x
        eps = guided_model_output(unet, sampler.scale_model_input(x_t, t), t, cond, uncond, guidance_scale)
        x_fg, x0_fg = sampler.step(eps, t, x_t)                          # Euler step to the next σ
        x_bg = sampler.add_noise(z_init, t, draw_noise())                # background at the current t
        x = x_fg * m + x_bg * (1 - m)
        if callback is not None:
            callback(StepRecord(i, len(timesteps), t, sampler.previous_timestep(t), x_t, x_fg, x0_fg, x_bg, m, x))
    return x                                                             # σ = 0 inside the mask: z_0
