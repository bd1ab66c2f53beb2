"""Blended Latent Diffusion (Avrahami, Fried & Lischinski, SIGGRAPH 2023), read top to bottom:

    algorithm.py       Algorithm 1: blended_latent_diffusion (the paper's variant and the official script's)
    interfaces.py      what the loops take and give: the Denoiser protocol, StepRecord for the per-step callback
    masks.py           pixel mask → latent mask, dilation, the progressive shrinking schedule (§4.3)
    reconstruction.py  background reconstruction (§4.2): decoder fine-tuning, latent optimisation, paste
    rank.py            ranking of the results by CLIP distance of the edited region to the prompt (§4.4)
    images.py          photographs and masks in (EXIF orientation, modes, bit depths, alpha), PIL <-> tensors
    errors.py          EditInputError: a bad image, mask or option
    editor.py          edit(image, mask, prompt, ...) -> PIL images
    cli.py             python -m blend
    batch.py           python -m blend.batch: a manifest of edits (manifest.py), data-parallel under torchrun
    app/               python -m blend.app: a local page to paint a mask, run Algorithm 1 and watch x̂0 step by step
    evaluate/          python -m blend.evaluate: Table 1's precision and diversity (LPIPS), and make-benchmark
"""
from .algorithm import VARIANTS, blended_latent_diffusion
from .editor import EditInputError, edit
from .interfaces import Denoiser, StepRecord
from .masks import dilate_mask, resize_mask, shrink_schedule
from .rank import rank

__all__ = ["blended_latent_diffusion", "VARIANTS", "Denoiser", "StepRecord", "edit", "EditInputError", "dilate_mask",
           "resize_mask", "shrink_schedule", "rank"]
