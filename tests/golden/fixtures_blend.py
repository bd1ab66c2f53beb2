"""Golden fixtures for `blend/`: the two loops of Algorithm 1, re-created with diffusers' DDIMScheduler.

The network is our tiny UNet with `weights.fill_random_(unet, seed=0)`: the fixtures pin the loops'
arithmetic and their generator draw order, not the network. Each loop is written here as the
reference script writes it, with diffusers doing every schedule step (`set_timesteps`, `step`,
`add_noise`); only the noise draws follow our documented order (every draw from one generator).
The official loop, its scheduler and its guidance are tests/parity.py's (the benchmarks time that loop too).

  blend_official_loop  scripts/text_editing_SD2.py of omriav/blended-latent-diffusion: its scheduler
                       (no steps_offset, so timesteps [980, 960, …, 0]), a pure-noise start at
                       timesteps[int(50·0.25)], the background noised to the current t after each step.
                       The script draws that noise with torch.randn_like (the global generator); here
                       it comes from the same generator as the first draw.
  blend_paper_loop     the paper variant: SD's scheduler config (steps_offset=1), the noised source as
                       the start, the background noised to the previous timestep, z_init after the last.
"""
import torch
from parity import diffusers_ddim, guided_noise, run_official_loop

from ldm import UNetModel
from weights import fill_random_, presets

BATCH, SEED, STEPS, GUIDANCE, START = 2, 1234, 50, 7.5, 0.25


def tiny_unet() -> UNetModel:
    """The tiny preset's UNet with the deterministic random weights of seed 0 (the tests build the same)."""
    return fill_random_(UNetModel(presets.get("tiny").unet), seed=0).eval()


def inputs() -> dict:
    """z_init (B, 4, 8, 8), a block mask (1, 1, 8, 8) with 1 = edit, and random (1, 77, 32) contexts."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 1:5] = 1
    return dict(z_init=torch.randn(BATCH, 4, 8, 8, generator=generator), mask=mask,
                cond=torch.randn(1, 77, 32, generator=generator), uncond=torch.randn(1, 77, 32, generator=generator))


def official_loop(dtype=torch.float32) -> dict:
    values = inputs()
    z_init, mask, cond, uncond = (values[k].to(dtype) for k in ("z_init", "mask", "cond", "uncond"))
    generator = torch.Generator().manual_seed(SEED)
    latents, timesteps = run_official_loop(tiny_unet().to(dtype), z_init, mask, cond, uncond, generator,
                                           guidance_scale=GUIDANCE, start=START, steps=STEPS)
    return dict(values, output=latents, seed=SEED, steps=STEPS, guidance_scale=GUIDANCE, start=START,
                timesteps=[int(t) for t in timesteps])


def paper_loop(dtype=torch.float32) -> dict:
    values = inputs()
    z_init, mask, cond, uncond = (values[k].to(dtype) for k in ("z_init", "mask", "cond", "uncond"))
    unet = tiny_unet().to(dtype)
    scheduler = diffusers_ddim(steps_offset=1, steps=STEPS, dtype=dtype)  # SD's published config
    generator = torch.Generator().manual_seed(SEED)
    timesteps = scheduler.timesteps[int(len(scheduler.timesteps) * START):]
    latents = scheduler.add_noise(z_init, torch.randn(z_init.shape, generator=generator), timesteps[:1])
    for t in timesteps:
        noise_pred = guided_noise(unet, scheduler.scale_model_input(latents, t), t, cond, uncond, GUIDANCE)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
        t_prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        if t_prev >= 0:
            background = scheduler.add_noise(z_init, torch.randn(latents.shape, generator=generator), t_prev)
        else:
            background = z_init
        latents = latents * mask + background * (1 - mask)
    return dict(values, output=latents, seed=SEED, steps=STEPS, guidance_scale=GUIDANCE, start=START,
                timesteps=[int(t) for t in timesteps])


FIXTURES = {"blend_official_loop": official_loop, "blend_paper_loop": paper_loop}
