"""DiffEdit (Couairon, Verbeek, Schwenk & Cord, ICLR 2023): a mask from two prompts, then DDIM encode and decode.

The paper's three steps (§3, Figure 2), in its notation, and where each lives:

    1  x_t = noise(x_0, 50 %) for n = 10 noises;                                   estimate_mask
       M = binarize_0.5(rescale_[0,1](clip(mean_{n, channels} |ε_θ(x_t, Q) − ε_θ(x_t, R)|)))
    2  x_r = E_r(x_0): DDIM encoding to the encoding ratio r, with the empty text ∅   ddim_invert
    3  y_r = x_r;  y_{t−1} = DDIM step of ỹ_t towards Q;  ỹ_{t−1} = M·y_{t−1} + (1 − M)·x_{t−1}   diffedit

Q is the query text, R the reference text (the source's caption, or ∅). Everything runs on latents
z = scale_factor·E(x) with the mask at latent resolution, 1 = edit; the editor encodes, upsamples the mask and
decodes. The parity reference is diffusers' `StableDiffusionDiffEditPipeline` (deprecated, still shipped):
`generate_mask`, `invert` and the loop of `__call__`, reproduced bit for bit on the same network, latents and
generator (tests/test_blend_diffedit.py).

Where it differs from BLD (blend.algorithm): the mask comes from the network, not the user; the loop starts
from the encoded latent x_r, not from z_init freshly noised; and the background x_t is the deterministic
DDIM-encoding trajectory of step 2, not q(z_init, t) with a fresh draw (Algorithm 1, line 6). The background
level is diffusers', not the paper's x_{t−1}: after the step t → t_prev the blend takes x_t, the encoded latent
one step noisier than the latent it joins (the off-by-one of BLD's official SD script, reproduced here as
there), and the last blend takes the latent encoded to the first timestep (t = 1 for SD), not z_init, so the
unedited region comes back up to the inversion's error.
"""
import torch

from samplers import DDIMSampler, as_conditioning, classifier_free_guidance, guided_model_output

from .interfaces import Denoiser, StepCallback, StepRecord


def estimate_mask(unet: Denoiser, sampler, z_init: torch.Tensor, query_cond, reference_cond, *, uncond=None,
                  guidance_scale: float = 7.5, num_maps: int = 10, strength: float = 0.5, threshold: float = 0.5,
                  clamp_ratio: float = 3.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Step 1: the (1, 1, h, w) 0/1 mask (1 = edit) where the query and the reference predict different noise.

    D = noise_difference(...) (same arguments), then, as diffusers' `generate_mask`:
        M = [clamp(D, 0, clamp_ratio·mean D) / (clamp_ratio·mean D) > threshold]
    i.e. M = [D > threshold·clamp_ratio·mean D], 1.5× the mean at the defaults ("remove extreme values",
    "rescaled to [0, 1]", "binarized with a threshold 0.5"). Scaling D changes nothing, so guidance
    (ε̃_Q − ε̃_R = w·(ε_Q − ε_R) when both share uncond) and v-prediction (Δv = Δε/√ᾱ at a common z_t) give the
    same mask up to rounding. Mask resolution is the latent's: callers upsample.
    """
    difference = noise_difference(unet, sampler, z_init, query_cond, reference_cond, uncond=uncond,
                                  guidance_scale=guidance_scale, num_maps=num_maps, strength=strength,
                                  generator=generator)                            # (1, h, w)
    clip = difference.mean() * clamp_ratio                                        # remove extreme values
    rescaled = difference.clamp(0, clip) / clip                                   # to [0, 1]
    return (rescaled > threshold).to(z_init.dtype)[:, None]                       # (1, 1, h, w), 1 = edit


def noise_difference(unet: Denoiser, sampler, z_init: torch.Tensor, query_cond, reference_cond, *, uncond=None,
                     guidance_scale: float = 7.5, num_maps: int = 10, strength: float = 0.5,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """D = mean over n noises and the C channels of |ε̃_θ(z_t, Q) − ε̃_θ(z_t, R)|, (1, h, w): the map that
    estimate_mask thresholds.

    sampler: any of DDIM, DPM-Solver++ or Euler (only its timesteps and noise schedule are read). z_init:
    (1, C, h, w), copied n = num_maps times, or (n, C, h, w), n posterior draws of the source (diffusers
    encodes n copies with `latent_dist.sample`, drawn from the generator before this noise). The n copies are
    noised to t = timesteps[S − ⌊S·strength⌋] of the sampler's S steps (481 for SD's 50 steps at 0.5) and go
    through ONE network call, ordered [uncond; reference; uncond; query] with classifier-free guidance
    (guidance_scale ≠ 1; uncond required), else [reference; query]. (diffusers 0.42's `generate_mask` unpacks
    encode_prompt's (prompt, negative) as (negative, prompt), so its guided difference is (1 − w)·(ε_Q − ε_R), not
    w·(ε_Q − ε_R): the same mask up to rounding. Its unguided path fails; here it runs, the same mask again.)

    Draw order, part of the contract: one draw of shape (n, C, h, w) from `generator`, row k copy k's noise.
    """
    steps = len(sampler.timesteps)
    if not 0 < strength <= 1 or int(steps * strength) < 1:
        raise ValueError(f"strength is the fraction of the {steps} steps to noise by, in (0, 1] and at least one "
                         f"step; got {strength}")
    if z_init.shape[0] not in (1, num_maps):
        raise ValueError(f"z_init must have 1 row or num_maps = {num_maps} rows (posterior draws), got "
                         f"{z_init.shape[0]}; expand or draw num_maps copies")
    guided = guidance_scale != 1.0
    if guided and uncond is None:
        raise ValueError(f"guidance_scale {guidance_scale} needs uncond (the empty prompt's conditioning); pass it "
                         "or use guidance_scale=1.0 (the same mask up to rounding)")
    t = int(sampler.timesteps[steps - int(steps * strength)])
    z_0 = z_init.expand(num_maps, *z_init.shape[1:])
    noise = torch.randn(z_0.shape, generator=generator, device=z_0.device, dtype=z_0.dtype)
    z_t = sampler.schedule.q_sample(z_0, t, noise)                                # noised with strength 50 %
    parts = [uncond, reference_cond, uncond, query_cond] if guided else [reference_cond, query_cond]
    context = [torch.cat(rows) for rows in zip(*(rows_of(part, num_maps) for part in parts), strict=True)]
    timesteps = torch.full((len(parts) * num_maps,), t, device=z_t.device, dtype=torch.long)
    outputs = unet(torch.cat([z_t] * len(parts)), timesteps, *context).chunk(len(parts))
    if guided:
        eps_reference = classifier_free_guidance(outputs[0], outputs[1], guidance_scale)
        eps_query = classifier_free_guidance(outputs[2], outputs[3], guidance_scale)
    else:
        eps_reference, eps_query = outputs
    return (eps_query - eps_reference).abs().reshape(1, num_maps, *z_t.shape[1:]).mean([1, 2])   # (1, h, w)


def ddim_invert(unet: Denoiser, sampler: DDIMSampler, z_init: torch.Tensor, cond, *, encode_ratio: float = 0.8,
                guidance_scale: float = 1.0, uncond=None) -> list[torch.Tensor]:
    """Step 2: DDIM encoding of z_init over the first ⌊S·encode_ratio⌋ timesteps, ascending; the encoded
    latents [x_r, …, x_{t_1}], most noisy first (SD, 50 steps, r = 0.8: levels 781, 761, …, 1).

    Each step goes from the level before t (ᾱ_0 before the first, diffusers' `set_alpha_to_one=False` of SD's
    config) up to t with the network evaluated at the DESTINATION t, as diffusers' `DDIMInverseScheduler`:
        ε̂ = ε_θ(x_{t−Δ}, t),  x̂_0 = (x_{t−Δ} − √(1−ᾱ_{t−Δ})·ε̂)/√ᾱ_{t−Δ},  x_t = √ᾱ_t·x̂_0 + √(1−ᾱ_t)·ε̂
    (`DDIMSampler.invert_step`'s arithmetic, given that ε̂). The paper encodes with the empty text: pass its
    conditioning as `cond` with guidance_scale 1 (the default). diffusers' `invert` defaults to the source
    caption with guidance 7.5: pass that caption's `cond`, `uncond` and guidance_scale=7.5.
    """
    require_ddim(sampler)
    timesteps = [int(t) for t in sampler.timesteps.flip(0)[:encode_steps(sampler, encode_ratio)]]
    z, encoded = z_init, []
    for t in timesteps:
        z = sampler.invert_step(prediction(unet, z, t, cond, uncond, guidance_scale), t, z)
        encoded.append(z)
    return encoded[::-1]


def diffedit(unet: Denoiser, sampler: DDIMSampler, z_init: torch.Tensor, mask: torch.Tensor, cond, uncond, *,
             guidance_scale: float, encode_ratio: float = 0.8, inverted: list[torch.Tensor] | None = None,
             generator: torch.Generator | None = None, callback: StepCallback | None = None) -> torch.Tensor:
    """Steps 2–3: encode z_init with ∅ (or take `inverted`, ddim_invert's list), then decode towards `cond`.

    z_init: the source latent (B, C, h, w); with `inverted` given only its shape is read. mask: (1, 1, h, w) of
    0/1, 1 = edit (estimate_mask's, or any). With x the encoded latents, most noisy first,
    and t_0 > … > t_{k−1} the last k = ⌊S·encode_ratio⌋ of the sampler's timesteps:
        z = x[0]                                             (y_r = x_r)
        z_fg = guided DDIM step of z from t_i to t_{i+1}     (towards Q; a draw from `generator` if η > 0)
        z = z_fg·M + x[i]·(1 − M)                            (x[i] is at t_i: diffusers' level, module docstring)
    callback(StepRecord) after every step, with z_bg = x[i]. Returns z_0.
    """
    require_ddim(sampler)
    steps = len(sampler.timesteps)
    timesteps = [int(t) for t in sampler.timesteps[steps - encode_steps(sampler, encode_ratio):]]
    if inverted is None:
        inverted = ddim_invert(unet, sampler, z_init, uncond, encode_ratio=encode_ratio)   # with the empty text
    if len(inverted) != len(timesteps) or any(x.shape != z_init.shape for x in inverted):
        raise ValueError(f"inverted must hold {len(timesteps)} latents shaped {tuple(z_init.shape)} (ddim_invert "
                         f"with encode_ratio={encode_ratio}), got {len(inverted)} shaped "
                         f"{sorted({tuple(x.shape) for x in inverted})}")
    if mask.shape != (1, 1, *z_init.shape[-2:]):
        raise ValueError(f"mask must be (1, 1, {z_init.shape[-2]}, {z_init.shape[-1]}) at latent resolution, "
                         f"got {tuple(mask.shape)}; resize it first (blend.masks.resize_mask)")
    mask = mask.to(z_init.dtype)
    z = inverted[0]
    for i, t in enumerate(timesteps):
        z_t = z
        z_fg, x0_fg = sampler.step(prediction(unet, z_t, t, cond, uncond, guidance_scale), t, z_t,
                                   generator=generator)
        z = z_fg * mask + inverted[i] * (1 - mask)                               # ỹ = M·y + (1 − M)·x
        if callback is not None:
            callback(StepRecord(i, len(timesteps), t, sampler.previous_timestep(t), z_t, z_fg, x0_fg, inverted[i],
                                mask, z))
    return z


def prediction(unet: Denoiser, z: torch.Tensor, t: int, cond, uncond, guidance_scale: float) -> torch.Tensor:
    """The network's output at (z, t): guided (one call on [uncond; cond]) when guidance_scale ≠ 1, else
    conditional only, as diffusers (which guides when guidance_scale > 1)."""
    if guidance_scale != 1.0:
        if uncond is None:
            raise ValueError(f"guidance_scale {guidance_scale} needs uncond; pass it or use guidance_scale=1.0")
        return guided_model_output(unet, z, t, cond, uncond, guidance_scale)
    timesteps = torch.full((z.shape[0],), int(t), device=z.device, dtype=torch.long)
    return unet(z, timesteps, *rows_of(cond, z.shape[0]))


def rows_of(conditioning, rows: int) -> tuple:
    """Each tensor of the conditioning (a tensor or a tuple) with one row broadcast to `rows`."""
    return tuple(c.expand(rows, *c.shape[1:]) for c in as_conditioning(conditioning))


def encode_steps(sampler, encode_ratio: float) -> int:
    """⌊S·encode_ratio⌋, the number of DDIM steps encoded and decoded (diffusers' `int(S · strength)`)."""
    steps = int(len(sampler.timesteps) * encode_ratio)
    if not 0 < encode_ratio <= 1 or steps < 1:
        raise ValueError(f"encode_ratio is the fraction of the {len(sampler.timesteps)} steps to encode, in (0, 1] "
                         f"and at least one step; got {encode_ratio}")
    return steps


def require_ddim(sampler) -> None:
    if not isinstance(sampler, DDIMSampler):
        raise TypeError(f"DiffEdit encodes and decodes with DDIM (the paper's), so it takes a samplers.DDIMSampler, "
                        f"not {type(sampler).__name__}; build one with DDIMSampler(schedule, steps)")
