"""Algorithm 1 of Blended Latent Diffusion (Avrahami, Fried & Lischinski, SIGGRAPH 2023).

Algorithm 1 in the paper's notation (paraphrased, lines numbered here), and where each line lives:

    1  m_latent = downsample(m)                              blend.masks.resize_mask (the editor)
    2  z_init ~ E(x)                                         the editor: scale_factor · E(x).mean
    3  z_k ~ noise(z_init, k)                                below
    4  for all t from k to 0 do                              below
    5      z_fg ~ denoise(z_t, d, t)                         below: one guided step of the sampler
    6      z_bg ~ noise(z_init, t)                           below
    7      z_{t−1} = z_fg ⊙ m_latent + z_bg ⊙ (1 − m_latent)  below
    8  end for
    9  x̂ = D(z_0)                                            the editor, then optional §4.2 reconstruction

noise(z, t) is q(z_t | z_0) (`NoiseSchedule.q_sample`), denoise(z_t, d, t) one step of the sampler (DDIM,
as the paper's, or DPM-Solver++(2M) or Euler) with classifier-free guidance towards the prompt d, ⊙ the
elementwise product; m_latent is 1 where the image is edited. This function is lines 3–8: it takes z_init
and m_latent at latent resolution and returns z_0. Lines 1, 2 and 9 are in `blend.editor`.
"""
import torch

from samplers import DDIMSampler, DPMSolverSampler, EulerSampler, guided_model_output

from .interfaces import Denoiser, StepCallback, StepRecord
from .masks import masks_for_steps, step_kernel_sizes
from .official_ldm import official_ldm_loop
from .official_sdxl import official_sdxl_loop

Sampler = DDIMSampler | DPMSolverSampler | EulerSampler   # line 5's solvers (VARIANT_SAMPLERS: which loop takes which)


def blended_latent_diffusion(unet: Denoiser, sampler: Sampler, z_init: torch.Tensor, mask: torch.Tensor,
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
    diffusers fixed that in PR #3749.) The paper's variant takes any of the three samplers as line 5:
      DDIMSampler        DDIM, η = 0 by default; its last step ends at ᾱ_0;
      DPMSolverSampler   DPM-Solver++(2M), second order from its second step; its history is reset at the
                         start of the run, and its last step ends at σ = 0 (z_fg = x̂0), where z_bg = z_init;
      EulerSampler       Karras' Euler, in its own coordinates x = z_t·√(σ_t² + 1) = z_0 + σ_t·ε: z_k and
                         z_bg are `sampler.add_noise(z_init, ·)`, the network sees `scale_model_input(x, t)`,
                         and the last step ends at σ = 0, where x is z_0 again.
    With each, the background is noised to the level the sampler moves the latent to, and an empty mask
    returns z_init exactly.

    variant="official", the loop of the official `scripts/text_editing_SD2.py`:
        z    = pure noise                          (noise draw 1; not the noised source)
        z_fg = DDIM step of z_t to t_prev          (line 5)
        z_bg = q(z_init, t)                        (line 6 as printed: the current t; a draw a step)
    It is reproduced bit for bit given the same generator, with the sampler built as the script
    builds its scheduler: `DDIMSampler(schedule, 50, offset=0)`; it takes no other sampler (TypeError).
    Nor does "official-ldm" (CompVis's DDIM); "official-sdxl" takes only an EulerSampler. The script draws z_bg's noise
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
    problem = sampler_problem(variant, sampler)
    if problem:
        raise TypeError(problem)
    if variant not in ("paper", "official"):
        return LOOPS[variant](unet, sampler, z_init, mask, cond, uncond, guidance_scale=guidance_scale, start=start,
                              generator=generator, shrink=shrink, kernel_sizes=kernel_sizes, callback=callback)
    if isinstance(sampler, DPMSolverSampler):
        sampler.reset()                        # a multistep solver: nothing of an earlier run is carried over
    schedule = sampler.schedule
    timesteps = [int(t) for t in sampler.timesteps[int(len(sampler.timesteps) * start):]]
    masks = masks_for_steps(mask.to(z_init.dtype), step_kernel_sizes(shrink, kernel_sizes, len(timesteps)))
    euler = isinstance(sampler, EulerSampler)  # its latents are x = z_0 + σ·ε: its own noising, its own input scale
    noise = sampler.add_noise if euler else schedule.q_sample

    def draw_noise() -> torch.Tensor:  # ε ~ N(0, I), shaped like z_init, from the caller's generator
        return torch.randn(z_init.shape, generator=generator, device=z_init.device, dtype=z_init.dtype)

    if variant == "paper":
        z = noise(z_init, timesteps[0], draw_noise())                    # line 3: z_k ~ noise(z_init, k)
    else:
        z = draw_noise()                                                 # official: start from pure noise
    for i, (t, m) in enumerate(zip(timesteps, masks, strict=True)):     # line 4
        z_t = z
        model_input = sampler.scale_model_input(z_t, t) if euler else z_t
        model_output = guided_model_output(unet, model_input, t, cond, uncond, guidance_scale)
        z_fg, x0_fg = sampler.step(model_output, t, z_t, generator=generator)  # line 5: z_fg ~ denoise(z_t, d, t)
        t_prev = sampler.previous_timestep(t)
        if variant == "official":
            z_bg = schedule.q_sample(z_init, t, draw_noise())            # line 6 as printed: level t
        elif t_prev >= 0:
            z_bg = noise(z_init, t_prev, draw_noise())                   # line 6 at z_fg's level t_prev
        else:
            z_bg = z_init                                                # line 6 after the last step: z_0
        z = z_fg * m + z_bg * (1 - m)                                    # line 7: blend in latent space
        if callback is not None:
            callback(StepRecord(i, len(timesteps), t, t_prev, z_t, z_fg, x0_fg, z_bg, m, z))
    return z                                                             # z_0, for line 9: x̂ = D(z_0)


def sampler_problem(variant: str, sampler) -> str | None:
    """Why `variant` cannot run with `sampler` (an instance), in one sentence, or None (VARIANT_SAMPLERS)."""
    accepted = VARIANT_SAMPLERS.get(variant, ())
    if isinstance(sampler, accepted):
        return None
    names = " or ".join(f"samplers.{kind.__name__}" for kind in accepted)
    return (f"variant {variant!r} runs with {names}, not {type(sampler).__name__}: "
            + ("the official scripts' loops are reproduced with their own schedulers; use variant 'paper' for "
               "another sampler" if variant != "paper" else "pass one of those"))


# The official loops of other models, each in its own module: variant name -> a function with
# blended_latent_diffusion's signature less `variant`.
LOOPS: dict = {"official-ldm": official_ldm_loop, "official-sdxl": official_sdxl_loop}
VARIANTS = ("paper", "official", *LOOPS)
# The sampler classes each variant runs: the paper's loop takes any; each official loop its script's scheduler.
VARIANT_SAMPLERS = {"paper": (DDIMSampler, DPMSolverSampler, EulerSampler), "official": (DDIMSampler,),
                    "official-ldm": (DDIMSampler,), "official-sdxl": (EulerSampler,)}
