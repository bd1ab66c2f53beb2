"""POST /api/edit's form: multipart/form-data in, a checked blend.app.jobs.EditRequest out, or the CLI's refusal.

Fields (the option fields are named as `python -m blend`'s long options and take the same values):

    image                                   file, the photograph (any format Pillow reads); required
    mask                                    file, white = edit (blend.images' rules); required
    prompt                                  text; required
    steps samples guidance start seed size  numbers; empty or absent: the CLI's default
    variant reconstruction                  one of the CLI's choices
    sampler                                 ddim, euler or dpm++2m; empty or absent: the variant's own
    shrink                                  on/off (true/false, 1/0); absent: off
    rank                                    a CLIP name (ViT-B/16, …); empty or absent: no ranking

The values are checked by the CLI's own checks (blend.cli.option_refusal, then blend.images'
read_image and read_mask, then the model's tokenizer), so a refusal is the sentence the CLI prints
after "error: ". The server's model, device and dtype are set when it starts and are not fields.
Beyond the CLI's checks, a form is refused when its prompt is empty, when rank is not one of the CLIP
names (a form names no file on the server), and when the job would not fit in memory:

    the photograph and the mask   at most MAX_IMAGE_PIXELS (50 M) each, read from the file's header
                                  before anything is decoded (a 48 MP phone photograph fits)
    the job                       job_memory's estimate of its peak, at most the memory available
                                  when the request arrives (available_memory; a CUDA device's part
                                  against that GPU's free memory)

The estimate is per pixel, from the float32 CPU peaks of benchmarks/README.md and of the toy model
on a 6000x4000 photograph: at the photograph's size, 16 bytes (its copies, the float32 mask) plus 8
per sample (each result), plus 64 for reconstruction "pixel" (float32 copies); at the working size,
3300 bytes (one SD 512x512 decode peaks at 804 MiB) plus 600 per sample (the guided UNet batch, the
decoded rows). "latent" and "decoder" backpropagate through the decoder: counted as three decodes per
sample (all at once) or one sample at a time plus the decoder's weights, gradients and Adam state
(an assumption, not measured). It is compared with what the machine has free now rather than with a
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

import torch
from PIL import Image, UnidentifiedImageError

from clip import CLIP_NAMES

from ..cli import option_refusal, parse_args, result_bytes
from ..editor import working_size
from ..errors import EditInputError
from ..images import read_image, read_mask
from ..options import warn_if_large
from .jobs import EditRequest

NUMBERS = {"steps": int, "samples": int, "guidance": float, "start": float, "seed": int, "size": int}
CHOICES = ("variant", "reconstruction", "sampler")
FLAGS = {"shrink"}
FILES = ("image", "mask")
FIELDS = (*FILES, "prompt", *NUMBERS, *CHOICES, *FLAGS, "rank")
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
    missing = [name for name in (*FILES, "prompt") if name not in fields]
    if missing:
        raise FormError(f"the form has no {' and no '.join(map(repr, missing))} field; send image (the photograph), "
                        f"mask (a PNG, white = edit) and prompt")
    args = parse_args([])                      # the CLI's defaults
    args.model, args.allow_pickle = model_name, True   # the model is loaded already
    args.prompt = text(fields, "prompt")
    if not args.prompt.strip():
        raise FormError(f"the prompt is empty (got {args.prompt!r}): expected what the painted region should become, "
                        f"e.g. 'a cat'. Type a prompt")
    for name, kind in NUMBERS.items():
        value = text(fields, name).strip() if name in fields else ""
        if value:
            try:
                setattr(args, name, kind(value))
            except ValueError:  # argparse's words
                raise FormError(f"argument --{name}: invalid {kind.__name__} value: {value!r}") from None
    for name in CHOICES:
        if name in fields:
            setattr(args, name, text(fields, name).strip())
    args.sampler = args.sampler or None        # empty: the variant's own sampler, as without --sampler
    flag = text(fields, "shrink").strip().lower() if "shrink" in fields else ""
    if flag not in TRUE + FALSE:
        raise FormError(f"argument --shrink: expected on or off (true/false, 1/0), got {flag!r}")
    args.shrink = flag in TRUE
    args.rank = (text(fields, "rank").strip() or None) if "rank" in fields else None
    if args.rank is not None and args.rank not in CLIP_NAMES:   # the CLI would also read a file by that name
        raise FormError(f"--rank {args.rank}: expected one of the CLIP names {', '.join(CLIP_NAMES)}; blend.app reads "
                        f"no file named by a form. Choose one of those names, or leave rank empty for no ranking")
    args.image = args.mask = "upload"          # both given
    problem = option_refusal(args)
    if problem:
        raise FormError(problem)

    with this_threads_warnings() as caught:   # e.g. a mask of another size, resized; a prompt cut to 75 tokens
        warn_if_large(args.size)
        image_file, mask_file = opened_upload(fields, "image"), opened_upload(fields, "mask")
        problem = memory_problem(image_file.size, args, components, device)
        if problem:
            raise FormError(problem)
        try:
            image = read_image(decoded(image_file, fields, "image"))
            mask = read_mask(decoded(mask_file, fields, "mask"), image.size)
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
    options = dict(steps=args.steps, guidance_scale=args.guidance, start=args.start, num_samples=args.samples,
                   seed=args.seed, variant=args.variant, shrink=args.shrink, reconstruction=args.reconstruction,
                   size=args.size, sampler=args.sampler)
    return EditRequest(image, mask, args.prompt, options, rank=args.rank, warnings=caught)


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
    """Upper estimates of a job's peak bytes: (at the photograph's size, at the working size, the working (W, H))."""
    pixels = image_size[0] * image_size[1]
    working = working_size(image_size, args.size or components.spec.image_size, components.spec.size_multiple)
    working_pixels = working[0] * working[1]
    photo = pixels * (PHOTO_BYTES + RESULT_BYTES * args.samples
                      + PIXEL_RECONSTRUCTION_BYTES * (args.reconstruction == "pixel"))
    decodes = {"latent": 1 + 3 * args.samples, "decoder": 4}.get(args.reconstruction, 1)
    at_work = working_pixels * (DECODE_BYTES * decodes + SAMPLE_BYTES * args.samples)
    if args.reconstruction == "decoder" and isinstance(components.vae, torch.nn.Module):
        at_work += 16 * sum(parameter.numel() for parameter in components.vae.parameters())  # weights, grads, Adam
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
            return (f"the job would need about {needed / 2**30:.1f} GiB of memory ({args.samples} samples of a "
                    f"{image_size[0]}x{image_size[1]} photograph, edited at {working[0]}x{working[1]}"
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
