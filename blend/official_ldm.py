"""The loop of the official LDM editor (`scripts/text_editing_LDM.py` → `ldm/models/diffusion/ddim.py`).

This is how the paper's own results were made, with CompVis's text-to-image LDM (LDM-KL-8-G).
It differs from Algorithm 1 as printed (blend.algorithm, variant="paper") in three ways:

- the start: each sample i gets its own noise, z_k[i] = q(z_init, t_k);
- the order: the background is blended in *before* each DDIM step, at that step's own t,
      z ← q(z_init, t) ⊙ (1 − m) + m ⊙ z,    then    z ← DDIM step of z from t to t_prev,
  so there is no blend after the last step: the background of z_0 is denoised, not z_init;
- progressive shrinking (`--mask_dilation_iterations 3`): the masks dilated by 7, 5, 3 and the mask
  itself, where step i uses mask i // (S_run // 4 + 1), so 50 steps run 13, 13, 13 and 11 steps.

Draws, in the official order (all from `generator`, where the official code uses torch's global one):
the initial noise one sample at a time, B draws of (1, C, h, w); then in each step the background
noise, one (1, C, h, w) shared by the batch, and the DDIM noise (B, C, h, w), drawn even at η = 0,
where σ = 0 multiplies it away. With the sampler built as the official script builds it
(`DDIMSampler(NoiseSchedule.compvis_linear(), 50, spacing="uniform")`: timesteps 981, 961, …, 1)
the result equals a seeded run of the official code bit for bit.

That holds on every CPU because each coefficient is computed where the official code computes it: σ
and √(1 − ᾱ_t) in numpy (`make_ddim_sampling_parameters`, `make_schedule`), √ᾱ_t, √ᾱ_prev and
√(1 − ᾱ_prev − σ²) with torch's `sqrt` on (B, 1, 1, 1) tensors (`p_sample_ddim`). numpy's square root
is correctly rounded; torch's CPU one is not on every machine (one ulp off for about a fifth of float32
inputs on an AMD EPYC with torch 2.13), so computing a numpy root with torch, or the reverse, would
agree with the official code on one CPU and not on another.
"""
import numpy as np
import torch

from samplers import DDIMSampler, as_conditioning, guided_model_output

from .interfaces import Denoiser, StepCallback, StepRecord
from .masks import SHRINK_KERNEL_SIZES, masks_for_steps, step_kernel_sizes


def official_shrink_kernels(num_steps: int, kernel_sizes=SHRINK_KERNEL_SIZES) -> list[int]:
    """The official LDM code's step → mask rule: step i uses mask i // (num_steps // n + 1) of the n masks.

        official_shrink_kernels(50)  ->  [7] * 13 + [5] * 13 + [3] * 13 + [1] * 11
    """
    interval = num_steps // len(kernel_sizes) + 1
    return [kernel_sizes[i // interval] for i in range(num_steps)]


def compvis_sigma(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)) (DDIM eq. 16) as CompVis's `make_ddim_sampling_parameters`
    computes it, a numpy float64 array meeting torch float32 tensors: float64 from the float32 ᾱ, except
    that 1/(1 − ᾱ_t) is taken in float32 (torch's `__rtruediv__` is `reciprocal() * other`), and the root
    in numpy (`np.sqrt`)."""
    a, a_prev = alpha_bar.double(), alpha_bar_prev.double()
    reciprocal = (1 - alpha_bar.float()).reciprocal().double()
    return eta * torch.as_tensor(np.sqrt((reciprocal * (1 - a_prev) * (1 - a / a_prev)).numpy()))


def compvis_sqrt_one_minus_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """√(1 − ᾱ_t) as CompVis's `make_schedule` tabulates it: `np.sqrt(1. - ddim_alphas)`, the difference
    taken by torch in float32, the root by numpy in float32."""
    return torch.as_tensor(np.sqrt((1.0 - alpha_bar.float()).numpy()))


def compvis_ddim_step(z: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor,
                      sigma: torch.Tensor, sqrt_one_minus_alpha_bar: torch.Tensor, noise: torch.Tensor):
    """One DDIM step in the operations of CompVis's `p_sample_ddim`; returns (z_prev, ẑ_0).

        ẑ_0    = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t                          (DDIM eq. 9)
        z_prev = √ᾱ_prev·ẑ_0 + √(1 − ᾱ_prev − σ²)·ε̂ + σ·noise        (DDIM eq. 12)

    Every coefficient is a (B, 1, 1, 1) tensor, as `torch.full` makes them there; √(1−ᾱ_t) comes in
    already taken (`compvis_sqrt_one_minus_alpha_bar`), the other roots are torch's `sqrt`, as there.
    """
    x0_pred = (z - sqrt_one_minus_alpha_bar * eps) / alpha_bar.sqrt()
    direction = (1.0 - alpha_bar_prev - sigma**2).sqrt() * eps
    return alpha_bar_prev.sqrt() * x0_pred + direction + sigma * noise, x0_pred


def guided_eps(unet: Denoiser, z: torch.Tensor, t: int, cond, uncond, guidance_scale: float) -> torch.Tensor:
    """ε̃ = ε_u + w·(ε_c − ε_u) from one call on [uncond; cond]; at w = 1 the conditional call alone (as CompVis)."""
    batch = z.shape[0]
    cond, uncond = as_conditioning(cond), as_conditioning(uncond)
    if guidance_scale == 1.0:
        timesteps = torch.full((batch,), int(t), device=z.device, dtype=torch.long)
        return unet(z, timesteps, *[c.expand(batch, *c.shape[1:]) for c in cond])
    return guided_model_output(unet, z, t, cond, uncond, guidance_scale)


def official_ldm_loop(unet: Denoiser, sampler: DDIMSampler, z_init: torch.Tensor, mask: torch.Tensor, cond, uncond,
                      *, guidance_scale: float, start: float = 0.25, generator: torch.Generator | None = None,
                      shrink: bool = False, kernel_sizes: list[int] | None = None,
                      callback: StepCallback | None = None) -> torch.Tensor:
    """The official LDM editing loop (module docstring); arguments as `blend.blended_latent_diffusion`.

    z_init: (B, C, h, w), one row per sample; mask (1, 1, h, w), 1 = edit. `start` = k / S skips the
    k largest timesteps (the official `--skip_steps k`). The network predicts ε (CompVis's LDM does).
    """
    if sampler.prediction_type != "epsilon":
        raise ValueError("the official LDM loop is written for an ε-predicting network (CompVis's LDM)")
    if not isinstance(shrink, bool):
        raise TypeError(f"shrink is True or False, got {shrink!r}; give an explicit schedule as kernel_sizes")
    schedule = sampler.schedule
    timesteps = [int(t) for t in sampler.timesteps[int(len(sampler.timesteps) * start):]]
    if kernel_sizes is None and shrink:
        kernel_sizes = official_shrink_kernels(len(timesteps))
    masks = masks_for_steps(mask.to(z_init.dtype), step_kernel_sizes(False, kernel_sizes, len(timesteps)))
    batch, *latent_shape = z_init.shape

    def draw_noise(rows: int) -> torch.Tensor:
        return torch.randn((rows, *latent_shape), generator=generator, device=z_init.device, dtype=z_init.dtype)

    def per_sample(value) -> torch.Tensor:  # a float32 table value as CompVis holds it: (B, 1, 1, 1) on the device
        return torch.full((batch, 1, 1, 1), float(value), device=z_init.device, dtype=z_init.dtype)

    # z_k: each sample noised to the first timestep with its own draw.
    z = torch.cat([schedule.q_sample(z_init[i:i + 1], timesteps[0], draw_noise(1)) for i in range(batch)])
    for i, (t, m) in enumerate(zip(timesteps, masks, strict=True)):
        z_t = z
        z_bg = schedule.q_sample(z_init, t, draw_noise(1))               # line 6 at the current t, one shared draw
        z = z_bg * (1 - m) + m * z                                       # line 7, before the step
        eps = guided_eps(unet, z, t, cond, uncond, guidance_scale)
        alpha_bar, alpha_bar_prev = schedule.alphas_cumprod[t], sampler.alpha_bar_prev(t)
        coefficients = (alpha_bar, alpha_bar_prev, compvis_sigma(alpha_bar, alpha_bar_prev, sampler.eta),
                        compvis_sqrt_one_minus_alpha_bar(alpha_bar))
        z_fg, x0_fg = compvis_ddim_step(z, eps, *map(per_sample, coefficients), draw_noise(batch))  # line 5
        if callback is not None:
            callback(StepRecord(i, len(timesteps), t, sampler.previous_timestep(t), z_t, z_fg, x0_fg, z_bg, m, z_fg))
        z = z_fg
    return z
