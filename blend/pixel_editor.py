"""The pixel-space editor: Blended Diffusion and Local CLIP-guided diffusion, end to end, as the official script.

    from blend.pixel_editor import edit_pixels
    results = edit_pixels("photo.jpg", "mask.png", "a cat", model="toy")   # -> PIL images, best first

What `optimization/image_editor.py` of Blended Diffusion does, here:
  - the photograph is resized to the model's square size (256² for ADM) with Lanczos, the mask with nearest
    neighbour (read by blend.images: white / 1 = edit, thresholded at 0.5), x in [−1, 1];
  - the prompt's CLIP text embedding, the respaced diffusion ("100"), and the CLIP guidance (blend.clip_guidance:
    8 views, × 1000, range loss × 50; with background_loss, LPIPS × 1000 + MSE × 10000 outside the mask);
  - `num_samples` samples in one batch by blend.blended_diffusion (Algorithm 2) or blend.local_clip
    (Algorithm 1), every draw from one torch.Generator seeded with `seed` on the device;
  - the results ranked by the CLIP distance of the masked result (`clip_ranking_distance`), best first. They come
    back at the model's size, rounded to 8 bits (the official script truncates, by `to_pil_image`).
Every option is checked before any model is loaded (`pixel_option_problem`).
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import weights

from .blended_diffusion import blended_diffusion
from .clip_guidance import CLIPGuidance, clip_ranking_distance
from .errors import EditInputError
from .images import image_to_tensor, read_image, read_mask, tensor_to_image
from .interfaces import StepCallback
from .local_clip import local_clip_guided_diffusion
from .options import pixel_option_problem

METHODS = {"blended-diffusion": blended_diffusion, "local-clip": local_clip_guided_diffusion}


def edit_pixels(image, mask, prompt: str, *, method: str = "blended-diffusion", model="adm-256-uncond",
                num_samples: int = 4, seed: int = 42, skip_timesteps: int = 25, respacing: str = "100",
                clip_guidance_scale: float = 1000.0, range_scale: float = 50.0, num_views: int = 8,
                background_loss: bool = False, ddim: bool = False, device: str | None = None,
                dtype: torch.dtype | None = None, callback: StepCallback | None = None,
                lpips=None) -> list[Image.Image]:
    """Edit `image` inside `mask` towards `prompt` in pixel space; returns `num_samples` PIL images, best first.

    method: "blended-diffusion" (Algorithm 2, the default) or "local-clip" (Algorithm 1). model: "adm-256-uncond"
    (OpenAI's 256² unconditional ADM, with CLIP ViT-B/16 as the judge), "toy" (offline: weights/toy.py), a .pt or
    .safetensors file of ADM's weights, or loaded weights.PixelComponents. skip_timesteps of the `respacing`
    steps are skipped (75 of 100 run by default). background_loss (local-clip only) needs LPIPS: `lpips`, a
    callable (x, y) -> (B,) distances, or None for blend.evaluate's LPIPS-VGG (its backbone comes from the Hub).
    Each result has info["sample"] (its index in the batch) and info["clip_distance"] (the ranking distance).
    prompt "": no guidance, as the official script (the noised photograph denoised, and blended). callback(blend.
    StepRecord) after every step. A judge with `set_mask` (the toy's) is told the mask. Same seed, same output on
    the same device.
    """
    problem = pixel_option_problem(method=method, model=model, num_samples=num_samples, seed=seed,
                                   skip_timesteps=skip_timesteps, respacing=respacing,
                                   clip_guidance_scale=clip_guidance_scale, range_scale=range_scale,
                                   num_views=num_views, background_loss=background_loss, ddim=ddim, device=device)
    if problem:  # before any model is loaded
        raise EditInputError(problem)
    if not isinstance(prompt, str):
        raise EditInputError(f"prompt={prompt!r}: expected a string, the edit's text")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    photo = read_image(image)
    pixel_mask = read_mask(mask, photo.size)                                          # (H, W) of 0/1
    components = load_pixel_components(model, dtype=dtype, device=device)
    size = (components.spec.image_size,) * 2
    source = image_to_tensor(photo.resize(size, Image.LANCZOS)).to(device)           # (1, 3, S, S)
    m = torch.from_numpy(np.array(Image.fromarray(pixel_mask).resize(size, Image.NEAREST)))[None, None].to(device)
    if not m.any():
        raise EditInputError(f"the mask covers no pixel of the model's {size[0]}x{size[1]} image: enlarge the mask")
    if background_loss and lpips is None:
        from .evaluate import load_lpips  # its VGG16 backbone comes from the Hub
        lpips = load_lpips("vgg16", device=device)

    judge = components.judge
    if hasattr(judge, "set_mask"):           # a judge that looks only at the edited region (the toy's) is told it
        judge.set_mask(m)
    try:
        with torch.no_grad():
            prompt_embedding = judge.text_embeddings([prompt])                       # (1, D)
    except ValueError as error:  # a judge that refuses the prompt (the toy's names none of its classes)
        raise EditInputError(str(error)) from None
    diffusion = components.spec.build_diffusion(respacing)
    generator = torch.Generator(device=device).manual_seed(seed)
    guidance = None if prompt == "" else CLIPGuidance(   # "": no guidance (the official cond_fn returns zeros)
        components.model, diffusion, judge, prompt_embedding, m, source=source, clip_scale=clip_guidance_scale,
        range_scale=range_scale, num_views=num_views, lpips=lpips if background_loss else None, generator=generator)
    x0 = METHODS[method](components.model, diffusion, source, m, guidance, num_samples=num_samples,
                         skip_timesteps=skip_timesteps, generator=generator, ddim=ddim, callback=callback)
    distances = clip_ranking_distance(judge, x0, m, prompt_embedding).float().cpu()  # (B,), masked x̂0 in [0, 1]
    order = torch.argsort(distances, stable=True).tolist()
    results = []
    for sample in order:
        result = tensor_to_image(x0[sample])
        result.info.update(sample=sample, clip_distance=float(distances[sample]))
        results.append(result)
    return results


def load_pixel_components(model, *, dtype=None, device="cpu"):
    """weights.PixelComponents (.model .judge .spec) from a name or file; loaded components as they are."""
    if not isinstance(model, (str, Path)):
        return model
    return weights.load_pixel_model(model, dtype=dtype, device=device)
