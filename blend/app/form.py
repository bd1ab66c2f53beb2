"""POST /api/edit's form: multipart/form-data in, a checked blend.app.jobs.EditRequest out, or the CLI's refusal.

Fields (the option fields are named as `python -m blend`'s long options and take the same values):

    image                                   file, the photograph (any format Pillow reads); required
    mask                                    file, white = edit (blend.images' rules); required
    prompt                                  text; required
    steps samples guidance start seed size  numbers; empty or absent: the CLI's default
    variant reconstruction                  one of the CLI's choices
    shrink                                  on/off (true/false, 1/0); absent: off
    rank                                    a CLIP name (ViT-B/16, …); empty or absent: no ranking

The values are checked by the CLI's own checks (blend.cli.option_refusal, then blend.images'
read_image and read_mask, then the model's tokenizer), so a refusal is the sentence the CLI prints
after "error: ". The server's model, device and dtype are set when it starts and are not fields.
"""
import email.parser
import email.policy
import io
import shutil
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..cli import option_refusal, parse_args, result_bytes
from ..errors import EditInputError
from ..images import read_image, read_mask
from .jobs import EditRequest

NUMBERS = {"steps": int, "samples": int, "guidance": float, "start": float, "seed": int, "size": int}
CHOICES = ("variant", "reconstruction")
FLAGS = {"shrink"}
FILES = ("image", "mask")
FIELDS = (*FILES, "prompt", *NUMBERS, *CHOICES, *FLAGS, "rank")
TRUE, FALSE = ("1", "true", "on", "yes"), ("", "0", "false", "off", "no")


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


def edit_request(fields: dict, *, model_name: str, tokenizer, output_root: Path) -> EditRequest:
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
    flag = text(fields, "shrink").strip().lower() if "shrink" in fields else ""
    if flag not in TRUE + FALSE:
        raise FormError(f"argument --shrink: expected on or off (true/false, 1/0), got {flag!r}")
    args.shrink = flag in TRUE
    args.rank = (text(fields, "rank").strip() or None) if "rank" in fields else None
    args.image = args.mask = "upload"          # both given
    problem = option_refusal(args)
    if problem:
        raise FormError(problem)

    with warnings.catch_warnings(record=True) as caught:  # e.g. a mask of another size, resized
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = read_image(uploaded_image(fields, "image"))
            mask = read_mask(uploaded_image(fields, "mask"), image.size)
        except EditInputError as error:
            raise FormError(str(error)) from None
    try:
        tokenizer([args.prompt])               # the toy's tokenizer refuses a prompt that names none of its classes
    except ValueError as error:
        raise FormError(str(error)) from None
    needed, free = result_bytes(image.size, args.samples), shutil.disk_usage(output_root).free
    if free < needed:
        raise FormError(f"the output folder {output_root}: its disk has {free / 2**20:.1f} MiB free, and the results "
                        f"need up to {needed / 2**20:.1f} MiB; free some space")
    options = dict(steps=args.steps, guidance_scale=args.guidance, start=args.start, num_samples=args.samples,
                   seed=args.seed, variant=args.variant, shrink=args.shrink, reconstruction=args.reconstruction,
                   size=args.size)
    return EditRequest(image, mask, args.prompt, options, rank=args.rank,
                       warnings=[str(w.message) for w in caught])


def text(fields: dict, name: str) -> str:
    filename, data = fields[name]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError(f"the field {name!r} is not UTF-8 text; send it as text") from None


def uploaded_image(fields: dict, name: str) -> Image.Image:
    """The uploaded file `name`, decoded by Pillow, named in later errors by its file name (as the CLI names a path)."""
    filename, data = fields[name]
    shown = Path(filename or name).name
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = opened.copy()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise FormError(f"the {name} file {shown} has more pixels than Pillow opens safely ({Image.MAX_IMAGE_PIXELS} "
                        f"pixels, its guard against decompression bombs); send a smaller photograph") from None
    except (UnidentifiedImageError, OSError) as error:
        reason = str(error) if not isinstance(error, UnidentifiedImageError) else "not an image Pillow can read"
        raise FormError(f"cannot read the {name} file {shown} as an image: {reason}. Save it as PNG or JPEG.") from None
    image.filename = shown                     # describe() names it: "the mask file mask.png"
    return image
