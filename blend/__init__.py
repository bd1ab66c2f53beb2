"""Blended Latent Diffusion (Avrahami, Fried & Lischinski, SIGGRAPH 2023), read top to bottom:

    algorithm.py       Algorithm 1: blended_latent_diffusion (the paper's variant and the official script's)
    interfaces.py      what the loops take and give: the Denoiser protocol, StepRecord for the per-step callback
    masks.py           pixel mask → latent mask, dilation, the progressive shrinking schedule (§4.3)
    reconstruction.py  background reconstruction (§4.2): decoder fine-tuning, latent optimisation, paste
    rank.py            ranking of the results by CLIP distance of the edited region to the prompt (§4.4)
    images.py          photographs and masks in (EXIF orientation, modes, bit depths, alpha), PIL <-> tensors
    errors.py          EditInputError: a bad image, mask or option
    editor.py          edit(image, mask, prompt, method=...) -> PIL images

  The methods a user would pick instead, on the same latent networks (edit(method=...)):
    sdedit.py          SDEdit (Meng et al. 2022): the whole image noised to t0 and denoised; no mask
    repaint.py         RePaint (Lugmayr et al. 2022) on latents: the jump schedule, resampling by undo steps
    diffedit.py        DiffEdit (Couairon et al. 2023): the mask from two prompts, DDIM inversion, decoding
    inpaint.py         the inpainting checkpoints: a UNet reading [z_t | mask | masked-image latent]

  The method the paper improves on, Blended Diffusion (Avrahami, Lischinski & Fried, CVPR 2022), in pixel space:
    clip_guidance.py   its CLIP loss (masked views, spherical distance), range loss, background loss, the gradient
    blended_diffusion.py  its Algorithm 2 (blended), as the official script runs it
    local_clip.py      its Algorithm 1, Local CLIP-guided diffusion (no blending)
    pixel_editor.py    edit_pixels(image, mask, prompt, method=...) -> PIL images, ranked

    cli.py             python -m blend
    batch.py           python -m blend.batch: a manifest of edits (manifest.py), data-parallel under torchrun
    app/               python -m blend.app: a local page to paint a mask, run Algorithm 1 and watch x̂0 step by step
    evaluate/          python -m blend.evaluate: Table 1's precision and diversity (LPIPS), and make-benchmark
"""
from .algorithm import VARIANTS, blended_latent_diffusion
from .blended_diffusion import blended_diffusion
from .diffedit import ddim_invert, diffedit, estimate_mask
from .editor import EditInputError, edit, mask_from_prompt
from .inpaint import inpaint
from .interfaces import Denoiser, StepRecord
from .local_clip import local_clip_guided_diffusion
from .masks import dilate_mask, resize_mask, shrink_schedule
from .pixel_editor import edit_pixels
from .rank import rank
from .repaint import repaint, repaint_network_calls
from .sdedit import sdedit

__all__ = ["blended_latent_diffusion", "VARIANTS", "Denoiser", "StepRecord", "edit", "EditInputError",
           "mask_from_prompt",
           "dilate_mask", "resize_mask", "shrink_schedule", "rank", "blended_diffusion", "local_clip_guided_diffusion",
           "edit_pixels", "sdedit", "repaint", "repaint_network_calls", "estimate_mask", "ddim_invert", "diffedit",
           "inpaint"]
