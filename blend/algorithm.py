"""Algorithm 1 of Blended Latent Diffusion (Avrahami, Fried & Lischinski, SIGGRAPH 2023).

Algorithm 1 in the paper's notation (paraphrased, lines numbered here), and where each line lives:

    1  m_latent = downsample(m)                              blend.masks.resize_mask (the editor)
    2  z_init ~ E(x)                                         the editor: scale_factor · E(x).mean
    3  z_k ~ noise(z_init, k)                                below
    4  for all t from k to 0 do                              below
    5      z_fg ~ denoise(z_t, d, t)                         below: one guided DDIM step
    6      z_bg ~ noise(z_init, t)                           below
    7      z_{t−1} = z_fg ⊙ m_latent + z_bg ⊙ (1 − m_latent)  below
    8  end for
    9  x̂ = D(z_0)                                            the editor, then optional §4.2 reconstruction

noise(z, t) is q(z_t | z_0) (`NoiseSchedule.q_sample`), denoise(z_t, d, t) one DDIM step with
classifier-free guidance towards the prompt d, ⊙ the elementwise product; m_latent is 1 where the
image is edited. This function is lines 3–8: it takes z_init and m_latent at latent resolution and
returns z_0. Lines 1, 2 and 9 are in `blend.editor`.
"""
import torch

from samplers import DDIMSampler, guided_model_output

from .interfaces import Denoiser, StepCallback, StepRecord
from .masks import masks_for_steps, step_kernel_sizes
from .official_ldm import official_ldm_loop
from .official_sdxl import official_sdxl_loop


def blended_latent_diffusion(unet: Denoiser, sampler: DDIMSampler, z_init: torch.Tensor, mask: torch.Tensor,
                             cond, uncond, *, guidance_scale: float, start: float = 0.25,
                             generator: torch.Generator | None = None, variant: str = "paper", shrink: bool = False,
                             kernel_sizes: list[int] | None = None,
                             callback: StepCallback | None = None) -> torch.Tensor:
    """Algorithm 1, lines 3–8: edit z_init inside `mask` (1 = edit) towards the prompt of `cond`.

    unet(z, timesteps, *cond) -> ε (or v, per `sampler.prediction_type`); z_init: (B, C, h, w),
    one row per sample (expand the source latent to B rows first); mask: (1, 1, h, w) of 0/1;
    cond, uncond: what the network takes after (z, t) for the prompt and for "" (a context tensor,
    or a tuple of tensors), for classifier-free guidance with scale w (samplers.guided_model_output).

    k (line 3) is t_k = timesteps[⌊S·start⌋]: the first `start` fraction of the S DDIM steps
    is skipped, and the loop runs over timesteps[⌊S·start⌋:].

    variant="paper" (default), Algorithm 1 with each z_bg at the noise level of the z_fg it joins:
        z_k  = q(z_init, t_k)                      (line 3; noise draw 1)
        z_fg = DDIM step of z_t to t_prev          (line 5)
        z_bg = q(z_init, t_prev)                   (line 6; one noise draw a step; z_init itself
                                                    after the last step, with no draw)
    so an empty mask returns z_init exactly and a full mask is plain guided DDIM from z_k.
    (Line 6 as printed, and the official scripts, noise z_bg to t, one level above z_fg;
    diffusers fixed that in PR #3749.)

    variant="official", the loop of the official `scripts/text_editing_SD2.py`:
        z    = pure noise                          (noise draw 1; not the noised source)
        z_fg = DDIM step of z_t to t_prev          (line 5)
        z_bg = q(z_init, t)                        (line 6 as printed: the current t; a draw a step)
    It is reproduced bit for bit given the same generator, with the sampler built as the script
    builds its scheduler: `DDIMSampler(schedule, 50, offset=0)`. The script draws z_bg's noise
    with `torch.randn_like` from the global generator; here every draw comes from `generator`.
    The other official loops are in their own modules (`LOOPS` lists them).

    Draw order, part of the contract: the first noise (z_init's shape), then in each step the
    DDIM noise if sampler.eta > 0, then z_bg's noise (z_init's shape).

    shrink: progressive mask shrinking (paper §4.3: `shrink_schedule`, kernels 7, 5, 3, 1 over
    four quarters of the steps run); kernel_sizes: an explicit list of odd dilation kernels, one
    per step run, instead. callback(StepRecord) is called after every step.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not 0.0 <= start < 1.0:
        raise ValueError(f"start is the fraction of steps to skip, in [0, 1); got {start}")
    if shrink and kernel_sizes is not None:
        raise ValueError("give shrink=True (the default schedule) or kernel_sizes (an explicit one), not both")
    if variant not in ("paper", "official"):
        return LOOPS[variant](unet, sampler, z_init, mask, cond, uncond, guidance_scale=guidance_scale, start=start,
                              generator=generator, shrink=shrink, kernel_sizes=kernel_sizes, callback=callback)
    schedule = sampler.schedule
    timesteps = [int(t) for t in sampler.timesteps[int(len(sampler.timesteps) * start):]]
    masks = masks_for_steps(mask.to(z_init.dtype), step_kernel_sizes(shrink, kernel_sizes, len(timesteps)))

    def draw_noise() -> torch.Tensor:  # ε ~ N(0, I), shaped like z_init, from the caller's generator
        return torch.randn(z_init.shape, generator=generator, device=z_init.device, dtype=z_init.dtype)

    if variant == "paper":
        z = schedule.q_sample(z_init, timesteps[0], draw_noise())       # line 3: z_k ~ noise(z_init, k)
    else:
        z = draw_noise()                                                 # official: start from pure noise
    for i, (t, m) in enumerate(zip(timesteps, masks, strict=True)):     # line 4
        z_t = z
        model_output = guided_model_output(unet, z_t, t, cond, uncond, guidance_scale)
        z_fg, x0_fg = sampler.step(model_output, t, z_t, generator=generator)  # line 5: z_fg ~ denoise(z_t, d, t)
        t_prev = sampler.previous_timestep(t)
        if variant == "official":
            z_bg = schedule.q_sample(z_init, t, draw_noise())            # line 6 as printed: level t
        elif t_prev >= 0:
            z_bg = schedule.q_sample(z_init, t_prev, draw_noise())       # line 6 at z_fg's level t_prev
        else:
            z_bg = z_init                                                # line 6 after the last step: z_0
        z = z_fg * m + z_bg * (1 - m)                                    # line 7: blend in latent space
        if callback is not None:
            callback(StepRecord(i, len(timesteps), t, t_prev, z_t, z_fg, x0_fg, z_bg, m, z))
    return z                                                             # z_0, for line 9: x̂ = D(z_0)


# The official loops of other models, each in its own module: variant name -> a function with
# blended_latent_diffusion's signature less `variant`.
LOOPS: dict = {"official-ldm": official_ldm_loop, "official-sdxl": official_sdxl_loop}
VARIANTS = ("paper", "official", *LOOPS)
