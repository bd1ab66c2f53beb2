"""Stable Diffusion's inpainting checkpoints: a UNet that is given the mask and the kept pixels as input.

SD 1.5-inpainting and SD 2-inpainting (presets "sd-1.5-inpainting", "sd-2-inpainting") are SD's UNet
with 5 more input channels, zero-initialised and fine-tuned on random masks (the model cards): LDM's
concatenation conditioning (Rombach et al. 2022, §3.3 and §4.5) with c = [m, E(x ⊙ (1 − M))]. The loop,
as diffusers' StableDiffusionInpaintPipeline runs a 9-channel UNet and Stability's inpainting script does:

    1  m   = nearest(M ≥ ½) at the latent size                  inpainting_mask (1 = fill in)
    2  c_x = scale · E(x ⊙ (M < ½))                              masked_image, then the editor's encoder
    3  z_T = σ_init · ε             (strength 1, the default)    below
       z_t0 = q(z_init, t0)         (strength s < 1)
    4  for t from t0 to 0:
    5      ε̃ = ε_θ([z_t | m | c_x], t, ∅) + w·(ε_θ([z_t | m | c_x], t, d) − ε_θ([z_t | m | c_x], t, ∅))
    6      z_{t_prev} = sampler step of z_t with ε̃
    7  x̂ = D(z_0)                                                the editor

Where it differs from Blended Latent Diffusion (blend/algorithm.py): nothing is blended. Line 7 of
Algorithm 1 (z = z_fg ⊙ m + z_bg ⊙ (1 − m)) has no counterpart; the network sees the kept region through
c_x and the mask and was trained to continue it, so the region outside the mask is the network's
reconstruction, not the source latent (diffusers' 4-channel path blends; with 9 channels it does not). The
mask is taken with plain "nearest" (pixel (⌊i·H/h⌋, ⌊j·W/w⌋), as both reference implementations do, not
Algorithm 1's pixel-centre "nearest-exact"), and the start is pure noise: z_init is used only for s < 1.
"""
import torch
import torch.nn.functional as F

from samplers import DPMSolverSampler, EulerSampler, guided_model_output

from .interfaces import Denoiser, StepCallback, StepRecord

DEFAULT_STRENGTH = 1.0            # diffusers' StableDiffusionInpaintPipeline; the start is pure noise
INPAINTING_PRESETS = ("sd-1.5-inpainting", "sd-2-inpainting")


def inpaint(unet: Denoiser, sampler, z_init: torch.Tensor, mask: torch.Tensor, masked_image_latent: torch.Tensor,
            cond, uncond, *, guidance_scale: float, strength: float = DEFAULT_STRENGTH,
            generator: torch.Generator | None = None, callback: StepCallback | None = None) -> torch.Tensor:
    """Lines 3–6: fill the region of `mask` (1 = fill in) from the prompt of `cond`. Returns z_0.

    unet: an inpainting UNet, taking 2C + 1 channels [z_t | mask | masked_image_latent]; z_init: (B, C, h, w),
    the source latent; mask: (1 or B, 1, h, w) of 0/1 at the latent size (`inpainting_mask`);
    masked_image_latent: (1 or B, C, h, w), scale · E(`masked_image`(x, M)); cond, uncond: the conditioning
    for the prompt and for "" (samplers.guided_model_output: one call on the pair, guidance scale w).

    strength s: the fraction of the sampler's S steps run, timesteps[S − ⌊S·s⌋:] as diffusers' get_timesteps
    takes them. s = 1 starts from pure noise times the sampler's initial σ (1 for DDIM and DPM-Solver++,
    √(σ_max² + 1) for Euler's x = z_0 + σ·ε form); s < 1 from q(z_init, t0).

    Draw order, part of the contract: the first noise (z_init's shape), then in each step the DDIM noise
    if sampler.eta > 0. callback(StepRecord) after every step; z_bg is z_fg and z the step's output, since
    nothing is blended.
    """
    batch, channels = z_init.shape[:2]
    problem = inpainting_unet_problem(getattr(getattr(unet, "config", None), "in_channels", 2 * channels + 1),
                                      channels)
    if problem:
        raise ValueError(problem)
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength is the fraction of the sampler's steps to run, in (0, 1]; got {strength}")
    steps = len(sampler.timesteps)
    run = min(int(steps * strength), steps)
    if run < 1:
        raise ValueError(f"strength {strength} runs int({steps}·{strength}) = 0 of the {steps} steps; "
                         f"give at least {1 / steps:.3g}, or more steps")
    if isinstance(sampler, DPMSolverSampler):
        sampler.reset()                              # a multistep solver: nothing of an earlier run is carried over
    timesteps = [int(t) for t in sampler.timesteps[steps - run:]]
    euler = isinstance(sampler, EulerSampler)        # its latents are x = z_0 + σ·ε: its own noising and input scale
    mask = mask.to(z_init).expand(batch, 1, *z_init.shape[2:])
    masked_image_latent = masked_image_latent.to(z_init).expand(batch, *z_init.shape[1:])

    noise = torch.randn(z_init.shape, generator=generator, device=z_init.device, dtype=z_init.dtype)
    if strength == 1.0:
        z = noise * initial_sigma(sampler, timesteps[0])                  # line 3: z_T = σ_init · ε
    else:
        z = sampler.add_noise(z_init, timesteps[0], noise) if euler else \
            sampler.schedule.q_sample(z_init, timesteps[0], noise)       # line 3: z_t0 = q(z_init, t0)
    for i, t in enumerate(timesteps):                                     # line 4
        z_t = z
        model_input = sampler.scale_model_input(z_t, t) if euler else z_t
        model_input = torch.cat([model_input, mask, masked_image_latent], dim=1)    # [z_t | m | c_x], (B, 2C+1)
        model_output = guided_model_output(unet, model_input, t, cond, uncond, guidance_scale)  # line 5
        z, x0 = sampler.step(model_output, t, z_t, generator=generator)  # line 6
        if callback is not None:
            callback(StepRecord(i, len(timesteps), t, sampler.previous_timestep(t), z_t, z, x0, z, mask, z))
    return z


def initial_sigma(sampler, t: int) -> float | torch.Tensor:
    """diffusers' `init_noise_sigma`: the scale of pure noise at the first timestep t. 1 for the samplers whose
    latents are z_t = √ᾱ·z_0 + √(1 − ᾱ)·ε; √(σ_t² + 1) for Euler's x = z_t·√(σ_t² + 1) (leading timesteps)."""
    if isinstance(sampler, EulerSampler):
        return (sampler.sigma(t) ** 2 + 1) ** 0.5
    return 1.0


def masked_image(x: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """x ⊙ (M < ½): the image in [−1, 1] with the pixels to fill in set to 0 (mid-grey), the input of line 2.

    x: (B, 3, H, W); pixel_mask: (1 or B, 1, H, W), 1 = fill in (diffusers: `init_image * (mask_condition < 0.5)`)."""
    return x * (pixel_mask < 0.5)


def inpainting_mask(pixel_mask: torch.Tensor, size: tuple) -> torch.Tensor:
    """Line 1: the (1, 1, H, W) pixel mask at 0.5, then `F.interpolate(·, size)` in its default "nearest" mode,
    as diffusers' `prepare_mask_latents` and Stability's inpainting script give the mask channel its size."""
    binary = (pixel_mask >= 0.5).to(pixel_mask.dtype)
    return F.interpolate(binary, size=tuple(size), mode="nearest")


def inpainting_unet_problem(in_channels: int, latent_channels: int = 4) -> str | None:
    """Why a UNet of `in_channels` input channels cannot run `inpaint`, in a sentence, or None."""
    expected = 2 * latent_channels + 1
    if in_channels == expected:
        return None
    kind = " (a text-to-image model)" if in_channels == latent_channels else ""
    return (f"the inpainting method needs an inpainting UNet, which takes {expected} input channels (the latent "
            f"{latent_channels}, the mask 1, the masked image's latent {latent_channels}); this model's UNet takes "
            f"{in_channels}{kind}. Load an inpainting checkpoint ({' or '.join(INPAINTING_PRESETS)}, or its file or "
            f"folder), or choose another method for this model (bld, sdedit, repaint, diffedit)")
