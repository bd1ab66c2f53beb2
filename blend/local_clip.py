"""Local CLIP-guided diffusion, Algorithm 1 of Blended Diffusion (Avrahami, Lischinski & Fried, CVPR 2022).

The paper's baseline: CLIP-guided diffusion whose loss looks only inside the mask, with no blending, so
the background is kept (if at all) by a loss term. In the paper's notation (paraphrased):

    x_k ~ N(√ᾱ_k·x_0, (1 − ᾱ_k)·I)
    for all t from k to 1 do
        μ, Σ ← μ_θ(x_t), Σ_θ(x_t);  x̂_0 ← x̂_0(x_t)
        L ← D_CLIP(x̂_0, d, m) + λ·D_bg(x_0, x̂_0, m)
        x_{t−1} ~ N(μ + Σ·g, Σ),  g = −∇L
    end for;  return x_0

As the official script runs it (`--local_clip_guided_diffusion`): the loop of blend.blended_diffusion with
`postprocess_fn=None`, so no background is blended in and none is pasted at the end; what comes out is the
last step's x̂_0. D_bg is optional (`--background_preservation_loss`: LPIPS-VGG × 1000 + MSE × 10000 on
x_in ⊙ (1 − m)); it lives in the guidance (blend.clip_guidance.CLIPGuidance with `lpips`), not here.
Draw order (all from `generator`): the start noise (B, 3, H, W); then in each step the DDPM noise
(B, 3, H, W) and the guidance's warps (with ddim=True: the warps, then the step's noise, times σ = 0).
"""
import torch

from .blended_diffusion import guided_steps, last_x0
from .interfaces import StepCallback


def local_clip_guided_diffusion(model, diffusion, source: torch.Tensor, mask: torch.Tensor, guidance, *,
                                num_samples: int = 4, skip_timesteps: int = 25,
                                generator: torch.Generator | None = None, ddim: bool = False,
                                callback: StepCallback | None = None) -> torch.Tensor:
    """Algorithm 1: CLIP-guided diffusion from the noised `source` (1, 3, H, W), steered inside `mask` (1, 1, H, W).

    Arguments as blend.blended_diffusion.blended_diffusion (`mask` reaches the loop only through `guidance`,
    which built it in; it is passed on in each StepRecord). Returns the last x̂_0, (num_samples, 3, H, W),
    background and all. In each StepRecord z_bg is None (nothing is blended) and z = z_fg.
    """
    return last_x0(guided_steps(model, diffusion, source, mask, guidance, num_samples=num_samples,
                                skip_timesteps=skip_timesteps, generator=generator, ddim=ddim, blend=False), callback)
