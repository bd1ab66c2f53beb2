"""The editor: a photograph, a mask and a prompt in, edited photographs out.

    from blend import edit
    results = edit("photo.jpg", "mask.png", "a cat", model="toy")   # -> list of PIL images
    results = edit("photo.jpg", None, "a cat", model="toy", method="diffedit", mask_from="coffee")

It runs Algorithm 1 end to end (see blend.algorithm for the lines it does not do itself), or with `method`
another latent method on the same lines 1, 2 and 9 (blend.sdedit, blend.repaint, blend.diffedit,
blend.inpaint); `mask_from` replaces the mask by DiffEdit's estimate (blend.diffedit.estimate_mask), which
`mask_from_prompt` gives on its own:
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
from .diffedit import ddim_invert, diffedit, estimate_mask
from .errors import EditInputError
from .images import image_to_tensor, read_image, read_mask, tensor_to_image
from .inpaint import inpaint, inpainting_mask, masked_image
from .interfaces import StepCallback
from .masks import resize_mask, threshold_mask
from .options import (
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    SAMPLERS,
    default_sampler,
    default_steps,
    inpainting_problem,
    is_inpainting_model,
    method_problem,
    option_problem,
    size_multiple_of,
    warn_if_large,
)
from .rank import rank as rank_by_clip
from .reconstruction import decoder_parameters, finetune_decoder, optimise_latent, paste_background
from .repaint import repaint
from .sdedit import sdedit

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
def edit(image: ImageInput, mask: MaskInput | None, prompt: str, *,
         model: str | Path | Components = "sd-2.1-base", method: str = "bld", steps: int | None = None,
         guidance_scale: float | None = None, start: float = 0.25, num_samples: int = 4, seed: int = 42,
         variant: str = "paper", shrink: bool = False, reconstruction: str = "none", dtype: torch.dtype | None = None,
         device: str | None = None, size: int | None = None, callback: StepCallback | None = None,
         rank: str | Path | None = None, ranker: CLIPModel | None = None,
         vae: str | Path | torch.nn.Module | None = None, sampler: str | None = None, strength: float | None = None,
         jump_length: int = 10, jump_n_sample: int = 10, encode_ratio: float = 0.8,
         mask_from: str | None = None) -> list[Image.Image]:
    """Edit `image` inside `mask` (white = edit) towards `prompt`; returns `num_samples` PIL images.

    method: the latent method (blend.options.LATENT_METHODS), each on the same networks, sampler and size:
      "bld"       Blended Latent Diffusion, Algorithm 1 (blend.algorithm; the default);
      "sdedit"    SDEdit (blend.sdedit): the whole image noised to `strength` and denoised towards the prompt. It
                  uses no mask: `mask` may be None (then the whole photograph), and is otherwise only what --rank
                  and the results' grid read;
      "repaint"   RePaint on latents (blend.repaint): every step, the known region noised to the level of the
                  latent it joins, with `jump_n_sample` passes over each `jump_length` steps (about 8× BLD's
                  network calls at the defaults: blend.repaint.repaint_network_calls);
      "diffedit"  DiffEdit's steps 2–3 (blend.diffedit): DDIM inversion to `encode_ratio` with the empty prompt,
                  then decoding with the inverted latents as the background;
      "inpaint"   an inpainting checkpoint (blend.inpaint; "sd-2-inpainting", "sd-1.5-inpainting" or such a file):
                  its UNet reads the mask and the masked image's latent, noised from `strength` (default 1).
    Options that `method` does not take (blend.options.METHOD_OPTIONS) must keep their defaults: start, variant,
    shrink, reconstruction and vae are bld's. sampler: "ddim" only for sdedit, diffedit and inpaint (None: their
    own), none for repaint.
    steps: the sampler's steps; None: the sampler's default (blend.options.default_steps: 50 for DDIM and Euler, 30
    for DPM-Solver++(2M), where on the exact toy model it matches DDIM-50's error; 50 for repaint).
    mask_from: a reference text ("" for the unconditional model, the paper's choice for ImageNet): the mask is
    DiffEdit's step 1 (blend.diffedit.estimate_mask) of `prompt` against it, at latent resolution (with DDIM at
    `steps`, or DDIM's default 50 when None, so that mask_from_prompt gives the same mask), used as it is
    by the method, and nearest-upsampled to the photograph for ranking; pass mask=None. Each result then carries
    that pixel mask as `info["mask"]` ((H, W) 0/1 float32), for the caller to show or save. Draw order: z_init
    (a posterior sample for the LDM), the mask's noise, then the method's draws.

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
    problem = python_method_problem(method, start=start, variant=variant, shrink=shrink, reconstruction=reconstruction,
                                    vae=vae, sampler=sampler, strength=strength, jump_length=jump_length,
                                    jump_n_sample=jump_n_sample, encode_ratio=encode_ratio, mask_from=mask_from)
    problem = problem or option_problem(
        steps=steps, start=start, guidance_scale=guidance_scale, num_samples=num_samples, seed=seed, size=size,
        device=device, variant=variant, reconstruction=reconstruction, model=model, rank=rank, vae=vae,
        sampler=sampler, method=method, strength=strength, jump_length=jump_length, jump_n_sample=jump_n_sample,
        encode_ratio=encode_ratio, mask_from=mask_from) or mask_problem(method, mask, mask_from, prompt)
    if problem:  # before any model is loaded (blend/options.py has the ranges)
        raise EditInputError(problem)
    mask_steps = DEFAULT_STEPS["ddim"] if steps is None else steps     # the estimate's own sampler is DDIM
    steps = default_steps(method, sampler, variant) if steps is None else steps
    warn_if_large(size)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = read_image(image)
    pixel_mask = read_mask(mask, source.size) if mask is not None else None
    components = load_model(model, dtype=dtype, device=device)
    problem = inpainting_problem(method, components)   # a checkpoint file: told once its UNet is loaded
    if problem:
        raise EditInputError(problem)
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

    # The working size and the tensors: x in [−1, 1], (1, 3, H, W); line 2's z_init; the prompt's conditioning.
    size_wh, x, generator, z_init = prepared(components, source, size, device, seed)
    cond, uncond = conditioning(components, prompt, size_wh, device)
    if mask_from is not None:                                  # DiffEdit's step 1, at latent resolution
        m_latent = estimated_mask(components, z_init, cond, uncond, mask_from, size_wh, steps=mask_steps,
                                  guidance_scale=guidance_scale, generator=generator, prompt=prompt)
        pixel_mask = upsampled(m_latent, source.size)
    elif pixel_mask is None:                                   # SDEdit without a mask: the whole photograph
        pixel_mask = np.ones(source.size[::-1], dtype=np.float32)
    m_pixel = torch.from_numpy(np.array(Image.fromarray(pixel_mask).resize(size_wh, Image.NEAREST)))
    m_pixel = threshold_mask(m_pixel[None, None]).to(device)
    if mask_from is None and method == "inpaint":              # as its training: plain nearest of the working mask
        m_latent = inpainting_mask(m_pixel, z_init.shape[-2:])
    elif mask_from is None:                                    # line 1: the photograph's mask, nearest, at ½
        m_latent = resize_mask(torch.from_numpy(pixel_mask)[None, None], z_init.shape[-2:]).to(device)
    if not m_latent.any() and method != "sdedit":
        raise EditInputError(f"the mask covers no pixel of the {z_init.shape[-1]}x{z_init.shape[-2]} latent of "
                             f"the {size_wh[0]}x{size_wh[1]} working image: enlarge the mask")

    z_init_rows = z_init.expand(num_samples, -1, -1, -1)
    options = dict(guidance_scale=guidance_scale, generator=generator, callback=callback)
    if method == "bld":
        solver = build_sampler(sampler or default_sampler(variant), spec, steps, variant)
        z = blended_latent_diffusion(components.unet, solver, z_init_rows, m_latent, cond, uncond, start=start,
                                     variant=variant, shrink=shrink, **options)          # lines 3–8
    elif method == "sdedit":
        z = sdedit(components.unet, build_sampler(sampler or "ddim", spec, steps), z_init_rows, cond, uncond,
                   strength=DEFAULT_STRENGTH["sdedit"] if strength is None else strength, **options)
    elif method == "repaint":
        z = repaint(components.unet, spec.build_schedule(), z_init_rows, m_latent, cond, uncond, num_steps=steps,
                    jump_length=jump_length, jump_n_sample=jump_n_sample, prediction_type=spec.prediction_type,
                    **options)
    elif method == "diffedit":
        solver = build_sampler("ddim", spec, steps)
        inverted = [row.expand_as(z_init_rows) for row in                        # step 2, once for all samples
                    ddim_invert(components.unet, solver, z_init, uncond, encode_ratio=encode_ratio)]
        z = diffedit(components.unet, solver, z_init_rows, m_latent, cond, uncond, encode_ratio=encode_ratio,
                     inverted=inverted, **options)                                   # step 3
    else:  # inpaint: the masked image (masked pixels 0 in [−1, 1]) encoded as z_init is
        masked_latent = source_latent(components, masked_image(x, m_pixel).to(model_dtype), generator)
        z = inpaint(components.unet, build_sampler(sampler or "ddim", spec, steps), z_init_rows, m_latent,
                    masked_latent, cond, uncond, strength=DEFAULT_STRENGTH["inpaint"] if strength is None else strength,
                    **options)
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
    if mask_from is not None:
        for result in results:
            result.info["mask"] = pixel_mask
    return results


@torch.no_grad()
def mask_from_prompt(image: ImageInput, prompt: str, reference: str = "", *,
                     model: str | Path | Components = "sd-2.1-base", steps: int | None = None,
                     guidance_scale: float | None = None, seed: int = 42, size: int | None = None,
                     dtype: torch.dtype | None = None, device: str | None = None) -> np.ndarray:
    """DiffEdit's step 1 as a tool: the (H, W) 0/1 float32 mask, at the photograph's size (1 = edit), where
    `prompt` and the `reference` text predict different noise (blend.diffedit.estimate_mask: ten copies of the
    source latent noised to half the `steps`' noise, the differences averaged, thresholded at 1.5× their mean),
    nearest-upsampled from latent resolution. The same mask as `edit(..., mask_from=reference)` with the same model,
    steps, guidance, seed and size (steps None: DDIM's default 50, as edit's estimate without steps, whatever its
    sampler): blend.app's "Mask from prompt" button paints it for the user to refine."""
    steps = DEFAULT_STEPS["ddim"] if steps is None else steps
    problem = (option_problem(steps=steps, guidance_scale=guidance_scale, seed=seed, size=size, device=device,
                              model=model, mask_from=reference, method=latent_method_of(model))
               or mask_problem("bld", None, reference, prompt))
    if problem:
        raise EditInputError(problem)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = read_image(image)
    components = load_model(model, dtype=dtype, device=device)
    size_wh, _, generator, z_init = prepared(components, source, size, device, seed)
    cond, uncond = conditioning(components, prompt, size_wh, device)
    guidance_scale = components.spec.guidance_scale if guidance_scale is None else guidance_scale
    m_latent = estimated_mask(components, z_init, cond, uncond, reference, size_wh, steps=steps,
                              guidance_scale=guidance_scale, generator=generator, prompt=prompt)
    return upsampled(m_latent, source.size)


def latent_method_of(model) -> str:
    """A latent method that `model` runs: "inpaint" for an inpainting model (known by name or loaded), else "bld"."""
    return "bld" if inpainting_problem("bld", model) is None else "inpaint"


def python_method_problem(method: str, **options) -> str | None:
    """method_problem for edit()'s keywords: an option of another method is refused when it is not at its default."""
    defaults = {"start": 0.25, "variant": "paper", "shrink": False, "reconstruction": "none", "vae": None,
                "sampler": None, "strength": None, "jump_length": 10, "jump_n_sample": 10, "encode_ratio": 0.8,
                "mask_from": None}
    given = {name.replace("_", "-") for name, value in options.items()
             if not (value is defaults[name] or (type(value) is type(defaults[name]) and value == defaults[name]))}
    return method_problem(method, given, python=True)


def mask_problem(method: str, mask, mask_from, prompt: str) -> str | None:
    """Why the mask arguments do not fit `method`, or None: one of mask and mask_from (SDEdit: either, or neither)."""
    if mask is not None and mask_from is not None:
        return ("mask and mask_from were both given: mask_from estimates the mask from the prompt against its "
                "reference text, in place of a painted one. Give one of them, and mask=None with mask_from")
    if mask is None and mask_from is None and method != "sdedit":
        return (f"method={method!r} edits inside a mask: give mask (white = edit) or mask_from (a reference text, "
                f"'' for the unconditional model); only 'sdedit' runs without one")
    if mask_from is not None and mask_from.strip() == prompt.strip():
        return (f"mask_from={mask_from!r} is the prompt itself: the mask is where the prompt and the reference text "
                f"predict different noise, so it would be empty. Give what the region shows now (e.g. 'a cup'), or "
                f"'' for the unconditional model")
    return None


def prepared(components, source: Image.Image, size: int | None, device: str, seed: int) -> tuple:
    """(working (W, H), x (1, 3, H, W) in [−1, 1], the run's generator, z_init): lines 1–2's inputs."""
    size_wh = working_size(source.size, size or components.spec.image_size, size_multiple_of(components))
    model_dtype = next(iter(components.unet.state_dict().values())).dtype
    x = image_to_tensor(source.resize(size_wh, Image.LANCZOS)).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    return size_wh, x, generator, source_latent(components, x.to(model_dtype), generator)   # line 2


def conditioning(components, prompt: str, size_wh: tuple, device) -> tuple:
    """(cond, uncond) of `prompt`; a prompt the tokenizer refuses (the toy's: it names none of its classes) as an
    EditInputError. SDXL: (context, y) of both towers, pooled text and time ids."""
    try:
        return weights.prompt_conditioning(components, prompt, (size_wh[1], size_wh[0]), device)
    except ValueError as error:
        raise EditInputError(str(error)) from None


def estimated_mask(components, z_init: torch.Tensor, cond, uncond, reference: str, size_wh: tuple, *, steps: int,
                   guidance_scale: float, generator: torch.Generator, prompt: str) -> torch.Tensor:
    """DiffEdit's step 1 on the source latent: the (1, 1, h, w) mask of the prompt (cond) against `reference`
    ("" is the unconditional model: uncond), at the noise of half of `steps` DDIM steps. An inpainting UNet is
    asked as a text-to-image model: everything masked, the masked image all grey (as trained 25 % of the time)."""
    reference_cond = uncond if reference == "" else conditioning(components, reference, size_wh, z_init.device)[0]
    unet = components.unet
    if is_inpainting_model(components):       # the image with every pixel masked: all 0 in [−1, 1]
        grey = torch.zeros(1, 3, size_wh[1], size_wh[0], device=z_init.device, dtype=z_init.dtype)
        unet = FullyMasked(unet, source_latent(components, grey, generator))
    mask = estimate_mask(unet, build_sampler("ddim", components.spec, steps), z_init, cond, reference_cond,
                         uncond=uncond, guidance_scale=guidance_scale, generator=generator)
    if not mask.any():
        raise EditInputError(f"the mask estimated from {prompt!r} against the reference {reference!r} is empty: "
                             f"nowhere on this photograph does the difference of the two texts' noise predictions "
                             f"pass DiffEdit's threshold (1.5x its mean). Give a reference text that names what the "
                             f"region shows now, or paint the mask")
    return mask


class FullyMasked(torch.nn.Module):
    """An inpainting UNet seen as a text-to-image one: unet(cat[z_t, 1, E(grey)], t, …), everything to repaint."""

    def __init__(self, unet, masked_latent: torch.Tensor):
        super().__init__()
        self.unet, self.masked_latent = unet, masked_latent

    def forward(self, z_t: torch.Tensor, timesteps: torch.Tensor, *conditioning) -> torch.Tensor:
        rows, (h, w) = z_t.shape[0], z_t.shape[-2:]
        ones = torch.ones(rows, 1, h, w, device=z_t.device, dtype=z_t.dtype)
        return self.unet(torch.cat([z_t, ones, self.masked_latent.expand(rows, -1, -1, -1)], dim=1), timesteps,
                         *conditioning)


def upsampled(m_latent: torch.Tensor, image_size: tuple) -> np.ndarray:
    """A (1, 1, h, w) latent mask → (H, W) 0/1 float32 at image_size = (W, H), nearest (each pixel's centre)."""
    return resize_mask(m_latent.float().cpu(), image_size[::-1])[0, 0].numpy()


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
