"""The editor: a photograph, a mask and a prompt in, edited photographs out.

    from blend import edit
    results = edit("photo.jpg", "mask.png", "a cat", model="toy")   # -> list of PIL images

It runs Algorithm 1 end to end (see blend.algorithm for the lines it does not do itself):
  line 1  the pixel mask → the latent mask: nearest resize of the mask as given, then the 0.5 threshold
          (the official script's rule; the image itself is resized with Lanczos)
  line 2  z_init = scale_factor · E(x).mean (the posterior mean, as the official SD2 script; a posterior
          sample for the LDM, as the official LDM script: `source_latent`)
  3–8     blended_latent_diffusion, on num_samples copies of z_init
  line 9  x̂ = D(z_0 / scale_factor), then the optional background reconstruction of §4.2

Input rules: the image and the mask are read by blend.images (display orientation from EXIF, every
Pillow mode and bit depth, masks in the alpha channel or as 0/1 labels; white / 1 = edit, thresholded
at 0.5). A mask of another size than the image is resized to it (nearest) with a warning. An empty
mask is an error (nothing to edit); a full mask is allowed (then the whole image is generated from the
noised source). The model works at a "working size": the image scaled so
that its long side is about `size` (default: the model's training resolution), each side a multiple of
what the networks divide by (64 for SD: 8 in the autoencoder, 8 in the UNet) and at least one such
multiple, so a photograph of any size from 1x1 up runs (a 300x1 one at 512x64 with SD); results are
resized back to the image's own size.
"""
import copy
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import weights
from clip import CLIPModel
from samplers import EulerSampler
from weights.load import Components, load_vae

from .algorithm import blended_latent_diffusion
from .errors import EditInputError
from .images import image_to_tensor, read_image, read_mask, tensor_to_image
from .interfaces import StepCallback
from .masks import resize_mask, threshold_mask
from .options import SAMPLERS, default_sampler, option_problem, size_multiple_of, warn_if_large
from .rank import rank as rank_by_clip
from .reconstruction import decoder_parameters, finetune_decoder, optimise_latent, paste_background

# What blend.images reads: a photograph as a path or a PIL image; a mask also as an array or a tensor.
ImageInput = str | Path | Image.Image
MaskInput = str | Path | Image.Image | np.ndarray | torch.Tensor


def load_model(model="sd-2.1-base", *, dtype=None, device="cpu", allow_pickle: bool = False):
    """Components (.unet .vae .text_encoder .tokenizer .spec): "toy", a `weights.load` source, or loaded ones.

    allow_pickle: read a .ckpt/.pt/.bin checkpoint with torch.load(weights_only=True) instead of refusing it.
    """
    if not isinstance(model, (str, Path)):
        return model  # already loaded
    chosen_by_default = dtype is None
    if chosen_by_default:
        dtype = weights.default_dtype(model, device)   # bfloat16 for SD and SDXL on a CPU with native bf16
    components = weights.load(model, dtype=dtype, device=device, allow_pickle=allow_pickle)
    weight = next(components.unet.parameters(), None)
    if weight is not None:
        print(weights.dtype_message(weight.dtype, chosen_by_default), file=sys.stderr, flush=True)
    return components


def working_size(image_size: tuple, long_side: int, multiple: int = 64) -> tuple:
    """(W, H) scaled so that the long side is about `long_side`, each side a multiple of `multiple`.

    SD needs multiples of 64: the autoencoder divides by 8, then the UNet by 8 again.
    """
    scale = long_side / max(image_size)
    return tuple(max(multiple, int(round(side * scale / multiple)) * multiple) for side in image_size)


@torch.no_grad()
def edit(image: ImageInput, mask: MaskInput, prompt: str, *, model: str | Path | Components = "sd-2.1-base",
         steps: int = 50, guidance_scale: float | None = None, start: float = 0.25, num_samples: int = 4,
         seed: int = 42, variant: str = "paper", shrink: bool = False, reconstruction: str = "none",
         dtype: torch.dtype | None = None, device: str | None = None, size: int | None = None,
         callback: StepCallback | None = None, rank: str | Path | None = None, ranker: CLIPModel | None = None,
         vae: str | Path | torch.nn.Module | None = None, sampler: str | None = None) -> list[Image.Image]:
    """Edit `image` inside `mask` (white = edit) towards `prompt`; returns `num_samples` PIL images.

    model: "toy" (offline, exact; weights/toy.py), "tiny" (random weights: noise by design), a
    preset ("sd-2.1-base", the official script's; "sd-1.5"; "sd-2.1"), a checkpoint file or folder
    (see weights.load), or already loaded components. guidance_scale: default 7.5 (official), the
    toy's own default (1.0) for the toy. variant, shrink, start: see blended_latent_diffusion.
    sampler: line 5's solver, "ddim" (DDIM, η = 0), "euler" (Karras' Euler, the SDXL script's) or "dpm++2m"
    (DPM-Solver++(2M), second order); None: the variant's own, DDIM, or Euler for "official-sdxl". The
    official variants run only their script's (blend.options.samplers_of).
    reconstruction: one of "none" (the official SD2 script's), "pixel", "latent", "decoder" (§4.2).
    rank: a CLIP model name ("ViT-B/16", the official code's; "ViT-L/14"; "tiny") or file, or
    `ranker`, a built clip.CLIPModel: the results come back best first (§4.4, blend.rank), each
    with `info["sample"]` (its index before ranking) and `info["clip_distance"]`.
    callback(blend.StepRecord) is called after every step of the loop (progress, previews).
    vae: a replacement autoencoder, "fp16-fix" (SDXL's fine-tuned VAE, which decodes in float16 without
    overflow), a diffusers vae/ folder (weights.load.load_vae) or a loaded one; by default the model's own,
    whose float16 decoder runs in float32 inside.
    Same seed, same output on the same device.
    """
    problem = option_problem(steps=steps, start=start, guidance_scale=guidance_scale, num_samples=num_samples,
                             seed=seed, size=size, device=device, variant=variant, reconstruction=reconstruction,
                             model=model, rank=rank, vae=vae, sampler=sampler)
    if problem:  # before any model is loaded (blend/options.py has the ranges)
        raise EditInputError(problem)
    warn_if_large(size)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = read_image(image)
    pixel_mask = read_mask(mask, source.size)
    components = load_model(model, dtype=dtype, device=device)
    spec = components.spec
    if guidance_scale is None:
        guidance_scale = spec.guidance_scale
    if reconstruction == "decoder":
        try:
            decoder_parameters(components.vae)
        except ValueError:
            raise EditInputError(f"the {spec.name} model's decoder has no weights to fine-tune; "
                                 "use reconstruction 'latent' or 'pixel'") from None
    model_dtype = next(iter(components.unet.state_dict().values())).dtype
    if vae is not None:               # e.g. SDXL's fp16-fix: float16 decoding without the float32 detour
        components = copy.copy(components)
        components.vae = load_vae(vae, dtype=model_dtype, device=device) if isinstance(vae, (str, Path)) else vae

    # The working size and the tensors: x in [−1, 1], (1, 3, H, W); the pixel mask (1, 1, H, W).
    size_wh = working_size(source.size, size or spec.image_size, size_multiple_of(components))
    x = image_to_tensor(source.resize(size_wh, Image.LANCZOS)).to(device)
    m_pixel = torch.from_numpy(np.array(Image.fromarray(pixel_mask).resize(size_wh, Image.NEAREST)))
    m_pixel = threshold_mask(m_pixel[None, None]).to(device)

    generator = torch.Generator(device=device).manual_seed(seed)
    z_init = source_latent(components, x.to(model_dtype), generator)                   # line 2
    m_latent = resize_mask(torch.from_numpy(pixel_mask)[None, None], z_init.shape[-2:]).to(device)  # line 1
    if not m_latent.any():
        raise EditInputError(f"the mask covers no pixel of the {z_init.shape[-1]}x{z_init.shape[-2]} latent of "
                             f"the {size_wh[0]}x{size_wh[1]} working image: enlarge the mask")
    try:                                         # SDXL: (context, y) of both towers, pooled text and time ids
        cond, uncond = weights.prompt_conditioning(components, prompt, (size_wh[1], size_wh[0]), device)
    except ValueError as error:  # a tokenizer that refuses the prompt (the toy's: it names none of its classes)
        raise EditInputError(str(error)) from None
    solver = build_sampler(sampler or default_sampler(variant), spec, steps, variant)
    z = blended_latent_diffusion(components.unet, solver, z_init.expand(num_samples, -1, -1, -1), m_latent,
                                 cond, uncond, guidance_scale=guidance_scale, start=start, generator=generator,
                                 variant=variant, shrink=shrink, callback=callback)      # lines 3–8
    z = z / spec.scale_factor
    edited = _decode(components.vae, z, upcast_fp16=vae is None)                         # line 9
    if reconstruction == "decoder":
        edited = finetune_decoder(components.vae, z, edited, x, m_pixel)
    elif reconstruction == "latent":
        edited = optimise_latent(components.vae, z, edited, x.to(edited.dtype), m_pixel.to(edited.dtype))

    results = [tensor_to_image(row) for row in edited]
    if size_wh != source.size:
        results = [result.resize(source.size, Image.LANCZOS) for result in results]
    if reconstruction == "pixel":  # at the image's own size, so that the background is the source's pixels
        original_mask, source_pixels = torch.from_numpy(pixel_mask)[None, None], image_to_tensor(source)
        results = [tensor_to_image(paste_background(image_to_tensor(result), source_pixels, original_mask)[0])
                   for result in results]
    if rank is not None or ranker is not None:  # §4.4: best first
        order, scores = rank_by_clip(results, prompt, pixel_mask, clip_model=rank or "ViT-B/16", ranker=ranker)
        results = [results[i] for i in order]
        for result, sample, score in zip(results, order, scores, strict=True):
            result.info.update(sample=sample, clip_distance=score)
    return results


def build_sampler(name: str, spec, steps: int, variant: str = "paper"):
    """Line 5's solver for a model's spec: "ddim", "euler" or "dpm++2m" (blend.options.SAMPLERS), on the spec's
    schedule, prediction type, timestep offset and spacing; "official" runs the SD 2 script's offset 0."""
    schedule = spec.build_schedule()
    if name == "euler":                                          # the SDXL script's EulerDiscreteScheduler
        return EulerSampler(schedule, steps, offset=spec.steps_offset, prediction_type=spec.prediction_type)
    kind = SAMPLERS[name]                                        # DDIMSampler or DPMSolverSampler
    offset = 0 if variant == "official" else spec.steps_offset  # the official script's scheduler: offset 0
    return kind(schedule, steps, prediction_type=spec.prediction_type, offset=offset,
                spacing=spec.timestep_spacing)                   # the LDM's: CompVis's uniform


def source_latent(components, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Algorithm 1, line 2: z_init = s · E(x), the posterior mean (the official SD 2 script), or, where the
    model's spec says "sample" (the official LDM script's `encoder_posterior.sample()`), a sample whose
    noise is the generator's first draw, before the loop's."""
    spec = components.spec
    posterior = components.vae.encode(x)
    if spec.z_init == "sample":
        return posterior.sample(generator) * spec.scale_factor
    return posterior.mean * spec.scale_factor


def _decode(vae, z: torch.Tensor, upcast_fp16: bool = True) -> torch.Tensor:
    """D(z), one latent at a time, as float32. AutoencoderKL.decode runs float16 weights in float32 (an fp16
    decode can overflow); upcast_fp16=False decodes in float16 itself (a VAE made for it, SDXL's fp16-fix)."""
    decode = vae.decode if upcast_fp16 else partial(vae.decode, upcast_fp16=False)
    return torch.cat([decode(row).float() for row in z.split(1)])
