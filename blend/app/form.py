"""POST /api/edit's form: multipart/form-data in, a checked blend.app.jobs.EditRequest out, or the CLI's refusal.

Fields (the option fields are named as `python -m blend`'s long options and take the same values):

    image                                   file, the photograph (any format Pillow reads); required
    mask                                    file, white = edit (blend.images' rules); required, but for sdedit
                                            (absent: the whole photograph, which SDEdit regenerates)
    prompt                                  text; required
    method                                  bld, sdedit, repaint, diffedit, inpaint, blended-diffusion or
                                            local-clip; empty or absent: bld
    samples seed                            numbers; empty or absent: the CLI's default
  for the latent methods (bld, sdedit, repaint, diffedit, inpaint):
    steps guidance size                     numbers; empty or absent: the CLI's default (steps: the sampler's,
                                            blend.options.default_steps)
    sampler                                 ddim, euler or dpm++2m; empty or absent: the method's own
    rank                                    a CLIP name (ViT-B/16, …); empty or absent: no ranking
  for bld:
    start                                   a number; empty or absent: the CLI's default
    variant reconstruction                  one of the CLI's choices; empty or absent: the CLI's default
    shrink                                  on/off (true/false, 1/0); absent: off
  for sdedit and inpaint: strength; for repaint: jump-length jump-n-sample; for diffedit: encode-ratio
  for blended-diffusion and local-clip:
    skip-timesteps respacing clip-guidance range-loss views    empty or absent: the CLI's default
    ddim, background-loss (local-clip)      on/off; absent: off

A field is given when it is not empty (a checkbox: when on); a field given for a method that does not
take it is refused as the CLI refuses the option, so a page sends only the chosen method's fields.
The values are checked by the CLI's own checks (blend.cli.option_refusal, then blend.images'
read_image and read_mask, then the model's tokenizer), so a refusal is the sentence the CLI prints
after "error: ". The server's model, device and dtype are set when it starts and are not fields; the
pixel methods run `pixel_model_name(model)`: the toy for the toy, else adm-256-uncond, which the
server loads when the first job asks for it. An inpainting model serves inpaint alone; every other latent
model serves the four others (`model_methods`).

POST /api/mask-from's form (`mask_from_request`): image, prompt, reference (what the region shows now; empty:
the unconditional model), and optionally seed, steps (absent: DDIM's default, the estimate's sampler), guidance
and size, checked as the CLI checks them; the server answers blend.editor.mask_from_prompt's mask as a PNG.
Beyond the CLI's checks, a form is refused when its prompt is empty, when rank is not one of the CLIP
names (a form names no file on the server), and when the job would not fit in memory:

    the photograph and the mask   at most MAX_IMAGE_PIXELS (50 M) each, read from the file's header
                                  before anything is decoded (a 48 MP phone photograph fits)
    the job                       job_memory's estimate of its peak, at most the memory available
                                  when the request arrives (available_memory; a CUDA device's part
                                  against that GPU's free memory)

For the pixel methods the estimate is the photograph's part only: their working image is the model's
(256x256 for ADM), and the peak of a forward and a backward pass through it is not estimated here.
For bld the estimate is per pixel, from the float32 CPU peaks of benchmarks/README.md and of the toy model
on a 6000x4000 photograph: at the photograph's size, 16 bytes (its copies, the float32 mask) plus 8
per sample (each result), plus 64 for reconstruction "pixel" (float32 copies); at the working size,
3300 bytes (one SD 512x512 decode peaks at 804 MiB) plus 600 per sample (the guided UNet batch, the
decoded rows). "latent" and "decoder" backpropagate through the decoder: counted as three decodes per
sample (all at once) or one sample at a time plus the decoder's weights, gradients and Adam state
(an assumption, not measured). Until the first job has run, the fast path's packed convolution weights
(`Components.packing_bytes`: up to 2.2 GB for SD 1.5's UNet in float32) are added to it as well.
It is compared with what the machine has free now rather than with a
fixed ceiling because the same job fits a workstation and not a laptop, and the model, already
loaded, is already counted there.

Warnings raised while the form is checked (a mask of another size, resized; a prompt cut to CLIP's 75
tokens; a working size above 2048) are the job's "warnings".
"""
import contextlib
import email.parser
import email.policy
import io
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clip import CLIP_NAMES

from ..cli import option_refusal, parse_args, result_bytes
from ..editor import latent_method_of, working_size
from ..errors import EditInputError
from ..images import read_image, read_mask
from ..options import (
    DEFAULT_MODELS,
    LATENT_METHODS,
    METHODS,
    inpainting_problem,
    is_inpainting_model,
    option_problem,
    warn_if_large,
)
from .jobs import EditRequest

NUMBERS = {"steps": int, "samples": int, "guidance": float, "start": float, "seed": int, "size": int,
           "skip-timesteps": int, "clip-guidance": float, "range-loss": float, "views": int, "strength": float,
           "jump-length": int, "jump-n-sample": int, "encode-ratio": float}
CHOICES = ("method", "variant", "reconstruction", "sampler", "respacing")
FLAGS = ("shrink", "ddim", "background-loss")
FILES = ("image", "mask")
FIELDS = (*FILES, "prompt", *NUMBERS, *CHOICES, *FLAGS, "rank")
MASK_FROM_FIELDS = {"image": None, "prompt": None, "reference": None, "seed": int, "steps": int, "guidance": float,
                    "size": int}
TRUE, FALSE = ("1", "true", "on", "yes"), ("", "0", "false", "off", "no")
MAX_IMAGE_PIXELS = 50_000_000  # width × height of the photograph or the mask, read from the header
MEMORY_FALLBACK = 4 * 2**30    # what available_memory assumes where the system does not say
PHOTO_BYTES, RESULT_BYTES, PIXEL_RECONSTRUCTION_BYTES = 16, 8, 64   # per pixel of the photograph (docstring)
DECODE_BYTES, SAMPLE_BYTES = 3300, 600                                # per pixel of the working image (docstring)


class FormError(ValueError):
    """A refused request: the message says what was expected, what was found and what to do."""


def parse_multipart(content_type: str, body: bytes) -> dict:
    """{field name: (file name or None, bytes)} of a multipart/form-data body (RFC 7578), by the email parser."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise FormError(f"expected a multipart/form-data body, got Content-Type {content_type or 'none'!r}; "
                        f"send the fields as a browser's FormData or `curl -F` does")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart() or message.defects:
        raise FormError("the multipart/form-data body could not be read (no boundary, or a malformed part); "
                        "send it as a browser's FormData or `curl -F` does")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            raise FormError("a part of the form has no name; every part needs Content-Disposition: form-data; name=...")
        if name in fields:
            raise FormError(f"the field {name!r} was sent twice; send each field once")
        fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def edit_request(fields: dict, *, model_name: str, components, output_root: Path, device: str = "cpu") -> EditRequest:
    """Check the fields as `python -m blend` checks its command line and inputs; raise FormError with its message."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise FormError(f"unknown field(s) {', '.join(map(repr, unknown))}; expected {', '.join(FIELDS)} "
                        f"(named as python -m blend's long options; model and device are set when the server starts)")
    sdedit = text(fields, "method").strip() == "sdedit" if "method" in fields else False
    missing = [name for name in (*FILES, "prompt") if name not in fields and not (name == "mask" and sdedit)]
    if missing:
        raise FormError(f"the form has no {' and no '.join(map(repr, missing))} field; send image (the photograph), "
                        f"mask (a PNG, white = edit) and prompt")
    args = parse_args([])                      # the CLI's defaults
    args.allow_pickle = True                   # the model is loaded already
    args.prompt = text(fields, "prompt")
    if not args.prompt.strip():
        raise FormError(f"the prompt is empty (got {args.prompt!r}): expected what the painted region should become, "
                        f"e.g. 'a cat'. Type a prompt")
    given = set()
    for name, kind in NUMBERS.items():
        value = text(fields, name).strip() if name in fields else ""
        if value:
            try:
                setattr(args, name.replace("-", "_"), kind(value))
            except ValueError:  # argparse's words
                raise FormError(f"argument --{name}: invalid {kind.__name__} value: {value!r}") from None
            given.add(name)
    for name in CHOICES:
        value = text(fields, name).strip() if name in fields else ""
        if value:
            setattr(args, name, value)
            given.add(name)
    args.sampler = args.sampler or None        # empty: the variant's own sampler, as without --sampler
    if args.method not in METHODS:             # argparse's words
        raise FormError(f"argument --method: invalid choice: {args.method!r} (choose from "
                        f"{', '.join(map(repr, METHODS))})")
    for name in FLAGS:
        flag = text(fields, name).strip().lower() if name in fields else ""
        if flag not in TRUE + FALSE:
            raise FormError(f"argument --{name}: expected on or off (true/false, 1/0), got {flag!r}")
        setattr(args, name.replace("-", "_"), flag in TRUE)
        if flag in TRUE:
            given.add(name)
    args.rank = (text(fields, "rank").strip() or None) if "rank" in fields else None
    if args.rank is not None:
        given.add("rank")
    args.given = frozenset(given)
    args.model = model_name if args.method in LATENT_METHODS else pixel_model_name(model_name)
    if args.rank is not None and args.rank not in CLIP_NAMES:   # the CLI would also read a file by that name
        raise FormError(f"--rank {args.rank}: expected one of the CLIP names {', '.join(CLIP_NAMES)}; blend.app reads "
                        f"no file named by a form. Choose one of those names, or leave rank empty for no ranking")
    args.image = args.mask = "upload"          # both given (sdedit's absent mask: the whole photograph, below)
    problem = option_refusal(args) or (inpainting_problem(args.method, components, cli=True)
                                       if args.method in LATENT_METHODS else None)
    if problem:
        raise FormError(problem)

    with this_threads_warnings() as caught:   # e.g. a mask of another size, resized; a prompt cut to 75 tokens
        warn_if_large(args.size if args.method in LATENT_METHODS else None)
        image_file = opened_upload(fields, "image")
        mask_file = opened_upload(fields, "mask") if "mask" in fields else None
        problem = memory_problem(image_file.size, args, components, device)
        if problem:
            raise FormError(problem)
        try:
            image = read_image(decoded(image_file, fields, "image"))
            mask = (read_mask(decoded(mask_file, fields, "mask"), image.size) if mask_file is not None
                    else np.ones(image.size[::-1], dtype=np.float32))
        except EditInputError as error:
            raise FormError(str(error)) from None
        try:
            components.tokenizer([args.prompt])  # the toy's refuses a prompt that names none of its classes
        except ValueError as error:
            raise FormError(str(error)) from None
    needed, free = result_bytes(image.size, args.samples), shutil.disk_usage(output_root).free
    if free < needed:
        raise FormError(f"the output folder {output_root}: its disk has {free / 2**20:.1f} MiB free, and the results "
                        f"need up to {needed / 2**20:.1f} MiB; free some space")
    if args.method in LATENT_METHODS:
        options = dict(steps=args.steps, guidance_scale=args.guidance, start=args.start, num_samples=args.samples,
                       seed=args.seed, variant=args.variant, shrink=args.shrink, reconstruction=args.reconstruction,
                       size=args.size, sampler=args.sampler, strength=args.strength, jump_length=args.jump_length,
                       jump_n_sample=args.jump_n_sample, encode_ratio=args.encode_ratio)
    else:
        options = dict(num_samples=args.samples, seed=args.seed, skip_timesteps=args.skip_timesteps,
                       respacing=args.respacing, clip_guidance_scale=args.clip_guidance, range_scale=args.range_loss,
                       num_views=args.views, background_loss=args.background_loss, ddim=args.ddim)
    return EditRequest(image, mask, args.prompt, options, rank=args.rank, warnings=caught, method=args.method)


def mask_from_request(fields: dict, *, model_name: str, components) -> tuple:
    """POST /api/mask-from's fields, checked: (image, prompt, reference, blend.editor.mask_from_prompt's keywords)."""
    unknown = sorted(set(fields) - set(MASK_FROM_FIELDS))
    if unknown:
        raise FormError(f"unknown field(s) {', '.join(map(repr, unknown))}; expected {', '.join(MASK_FROM_FIELDS)}")
    missing = [name for name in ("image", "prompt", "reference") if name not in fields]
    if missing:
        raise FormError(f"the form has no {' and no '.join(map(repr, missing))} field; send image (the photograph), "
                        f"prompt (what the region should become) and reference (what it shows now; empty for the "
                        f"unconditional model)")
    prompt, reference = text(fields, "prompt").strip(), text(fields, "reference").strip()
    if not prompt:
        raise FormError("the prompt is empty: the mask is where the prompt and the reference text predict different "
                        "noise. Type a prompt")
    if reference == prompt:
        raise FormError(f"the reference text {reference!r} is the prompt itself, so the mask would be empty: type "
                        f"what the region shows now (e.g. 'a cup'), or leave it empty for the unconditional model")
    options = {}
    for name, kind in MASK_FROM_FIELDS.items():
        value = text(fields, name).strip() if kind is not None and name in fields else ""
        if value:
            try:
                options[name] = kind(value)
            except ValueError:  # argparse's words
                raise FormError(f"argument --{name}: invalid {kind.__name__} value: {value!r}") from None
    keywords = {"steps": options.get("steps"), "guidance_scale": options.get("guidance"),
                "seed": options.get("seed", 42), "size": options.get("size")}
    problem = option_problem(**keywords, model=model_name, mask_from=reference, cli=True,
                             method=latent_method_of(components))
    if problem:
        raise FormError(problem)
    with this_threads_warnings():
        try:
            image = read_image(decoded(opened_upload(fields, "image"), fields, "image"))
        except EditInputError as error:
            raise FormError(str(error)) from None
    return image, prompt, reference, keywords


def model_methods(components) -> list:
    """The latent methods a loaded model serves: inpaint alone for an inpainting model, else the four others."""
    if is_inpainting_model(components):
        return ["inpaint"]
    return [method for method in LATENT_METHODS if method != "inpaint"]


def pixel_model_name(model_name: str) -> str:
    """The model a server of `model_name` runs the pixel methods on: the toy for the toy, else adm-256-uncond."""
    return "toy" if model_name == "toy" else DEFAULT_MODELS["blended-diffusion"]


@contextlib.contextmanager
def this_threads_warnings():
    """The warnings raised on this thread inside the block, as a list of their texts, each one every time.

    The warnings module's state is global: another thread's warnings (the worker's) still go where they
    went before. Pillow's decompression-bomb warning is raised as an error.
    """
    caught, thread = [], threading.get_ident()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        elsewhere = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if threading.get_ident() == thread:
                caught.append(str(message))
            else:
                elsewhere(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield caught


def job_memory(image_size: tuple, args, components) -> tuple[int, int, tuple]:
    """Upper estimates of a job's peak bytes: (at the photograph's size, at the working size, the working (W, H)).
    A pixel method's working size is not counted (module docstring)."""
    pixels = image_size[0] * image_size[1]
    if getattr(args, "method", "bld") not in LATENT_METHODS:
        return pixels * (PHOTO_BYTES + RESULT_BYTES * args.samples), 0, tuple(image_size)
    working = working_size(image_size, args.size or components.spec.image_size, components.spec.size_multiple)
    working_pixels = working[0] * working[1]
    photo = pixels * (PHOTO_BYTES + RESULT_BYTES * args.samples
                      + PIXEL_RECONSTRUCTION_BYTES * (args.reconstruction == "pixel"))
    decodes = {"latent": 1 + 3 * args.samples, "decoder": 4}.get(args.reconstruction, 1)
    at_work = working_pixels * (DECODE_BYTES * decodes + SAMPLE_BYTES * args.samples)
    if args.reconstruction == "decoder" and isinstance(components.vae, torch.nn.Module):
        at_work += 16 * sum(parameter.numel() for parameter in components.vae.parameters())  # weights, grads, Adam
    if hasattr(components, "packing_bytes"):
        at_work += components.packing_bytes()          # the fast path's packed weights, made on the first job
    return photo, at_work, working


def memory_problem(image_size: tuple, args, components, device: str) -> str | None:
    """Why the job would not fit in the memory free now (module docstring), or None."""
    photo, at_work, working = job_memory(image_size, args, components)
    if str(device).startswith("cuda") and torch.cuda.is_available():
        free_on_device = torch.cuda.mem_get_info(torch.device(device))[0]
        checks = [(photo, available_memory(), "this machine has"), (at_work, free_on_device, f"{device} has")]
    else:
        checks = [(photo + at_work, available_memory(), "this machine has")]
    for needed, available, where in checks:
        if needed > available:
            at = f", edited at {working[0]}x{working[1]}" if getattr(args, "method", "bld") in LATENT_METHODS else ""
            return (f"the job would need about {needed / 2**30:.1f} GiB of memory ({args.samples} samples of a "
                    f"{image_size[0]}x{image_size[1]} photograph{at}"
                    f"{', reconstruction ' + args.reconstruction if args.reconstruction != 'none' else ''}), and "
                    f"{where} {available / 2**30:.1f} GiB available; send fewer samples, a smaller size or a "
                    f"smaller photograph")
    return None


def available_memory() -> int:
    """Bytes free for a new job now: /proc/meminfo's MemAvailable (else the free physical pages), and at most what
    this process's cgroup (a container's limit) has left; MEMORY_FALLBACK where the system says neither."""
    free = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as meminfo:
            free = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    if free is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = left if free is None else min(free, left)
    return MEMORY_FALLBACK if free is None else max(free, 0)


def text(fields: dict, name: str) -> str:
    filename, data = fields[name]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError(f"the field {name!r} is not UTF-8 text; send it as text") from None


def opened_upload(fields: dict, name: str) -> Image.Image:
    """The uploaded file `name`, opened by Pillow from its header only: its size is known, nothing is decoded yet.

    More than MAX_IMAGE_PIXELS is refused here, before the pixels are decoded.
    """
    filename, data = fields[name]
    shown = Path(filename or name).name
    try:
        opened = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise FormError(f"the {name} file {shown} has more pixels than Pillow opens safely ({Image.MAX_IMAGE_PIXELS} "
                        f"pixels, its guard against decompression bombs); send a smaller photograph") from None
    except (UnidentifiedImageError, OSError) as error:
        raise FormError(unreadable(name, shown, error)) from None
    width, height = opened.size
    if width * height > MAX_IMAGE_PIXELS:
        advice = ("edits photographs of at most {:.1f} megapixels. Send a smaller photograph (the edit runs at the "
                  "model's working size anyway)" if name == "image" else
                  "reads masks of at most {:.1f} megapixels. Send the mask at the photograph's size")
        raise FormError(f"the {name} file {shown} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); "
                        f"blend.app " + advice.format(MAX_IMAGE_PIXELS / 1e6))
    return opened


def decoded(opened: Image.Image, fields: dict, name: str) -> Image.Image:
    """The pixels of an opened upload, named in later errors by its file name (as the CLI names a path)."""
    shown = Path(fields[name][0] or name).name
    try:
        with opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise FormError(unreadable(name, shown, error)) from None
    image.filename = shown                     # describe() names it: "the mask file mask.png"
    return image


def unreadable(name: str, shown: str, error: Exception) -> str:
    reason = str(error) if not isinstance(error, UnidentifiedImageError) else "not an image Pillow can read"
    return f"cannot read the {name} file {shown} as an image: {reason}. Save it as PNG or JPEG."
