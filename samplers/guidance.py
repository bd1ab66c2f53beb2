"""Classifier-free guidance (Ho & Salimans 2022, eq. 6)."""
import torch


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """ε̃ = ε_u + w·(ε_c − ε_u): w = 1 is the conditional model, w = 0 the unconditional one.

    Our w is 1 + w' of Ho & Salimans' eq. 6, ε̃ = (1 + w')·ε_c − w'·ε_u, the convention of
    Stable Diffusion's scripts ("scale 7.5" is w' = 6.5). Works on any prediction that is linear
    in the model's output (ε or v).
    """
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def as_conditioning(conditioning) -> tuple:
    """The conditioning as a tuple of tensors: a lone tensor (a text context) becomes a 1-tuple."""
    return (conditioning,) if isinstance(conditioning, torch.Tensor) else tuple(conditioning)


def guided_model_output(unet, z_t: torch.Tensor, t, cond, uncond, guidance_scale: float) -> torch.Tensor:
    """One network call on the pair [uncond; cond] (batch 2B, as diffusers orders it), then CFG.

    z_t: (B, C, h, w). cond, uncond: what the network takes after (z, t), a tensor or a tuple of
    tensors (SDXL: (context, y)), each with B rows or one row broadcast to B; every element is
    concatenated [uncond; cond] along dim 0, so the call is unet(cat[z, z], t, *elements).
    """
    batch = z_t.shape[0]
    cond, uncond = as_conditioning(cond), as_conditioning(uncond)
    if len(cond) != len(uncond):
        raise ValueError(f"cond and uncond must have the same number of tensors, got {len(cond)} and {len(uncond)}")
    pairs = [torch.cat([u.expand(batch, *u.shape[1:]), c.expand(batch, *c.shape[1:])])
             for u, c in zip(uncond, cond, strict=True)]
    timesteps = torch.full((2 * batch,), int(t), device=z_t.device, dtype=torch.long)
    output = unet(torch.cat([z_t, z_t]), timesteps, *pairs)  # (2B, C, h, w)
    eps_uncond, eps_cond = output.chunk(2)
    return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)
