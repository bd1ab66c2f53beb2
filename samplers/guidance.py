"""Classifier-free guidance (Ho & Salimans 2022, eq. 6)."""
import torch


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """ε̃ = ε_u + w·(ε_c − ε_u): w = 1 is the conditional model, w = 0 the unconditional one.

    Works on any prediction that is linear in the model's output (ε or v).
    """
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guided_model_output(unet, z_t: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor,
                        guidance_scale: float) -> torch.Tensor:
    """One network call on the pair [uncond; cond] (batch 2B, as diffusers orders it), then CFG.

    z_t: (B, C, h, w); cond, uncond: (B, 77, D) or (1, 77, D) broadcast to B.
    """
    batch = z_t.shape[0]
    cond, uncond = cond.expand(batch, -1, -1), uncond.expand(batch, -1, -1)
    timesteps = torch.full((2 * batch,), int(t), device=z_t.device, dtype=torch.long)
    output = unet(torch.cat([z_t, z_t]), timesteps, torch.cat([uncond, cond]))  # (2B, C, h, w)
    eps_uncond, eps_cond = output.chunk(2)
    return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)
