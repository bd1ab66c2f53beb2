"""`python -m blend`: edit a photograph from the command line.

    python -m blend                       # the shipped example with SD 2.1-base (downloads ~5 GB once)
    python -m blend --model toy           # the same example, offline, with the exact toy model (seconds)
    python -m blend --image photo.jpg --mask mask.png --prompt "a red ball" --samples 2

Each run writes its results and grid.png (input | mask | results) to a new folder, which it prints;
an existing folder or file is never written into.
"""
import argparse
import re
import sys
import time
import warnings
from pathlib import Path

import torch
from PIL import Image

from .editor import EditInputError, edit, load_model
from .images import mask_to_image, read_image, read_mask
from .reconstruction import MODES
from weights import load_clip

ASSETS = Path(__file__).resolve().parent / "assets"
EXAMPLE_IMAGE = ASSETS / "example.jpg"       # scikit-image's "coffee" photograph, CC0 (assets/SOURCES.md)
EXAMPLE_MASK = ASSETS / "example_mask.png"   # white = the cup, the region to edit
EXAMPLE_PROMPT = "a cat"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m blend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(EXAMPLE_IMAGE), help="the photograph to edit (default: the example)")
    parser.add_argument("--mask", default=str(EXAMPLE_MASK), help="white (1) = edit, black (0) = keep")
    parser.add_argument("--prompt", default=EXAMPLE_PROMPT, help=f"what the masked region becomes ({EXAMPLE_PROMPT!r})")
    parser.add_argument("--model", default="sd-2.1-base",
                        help="sd-2.1-base (default, as the official script), sd-1.5, sd-2.1, a .safetensors file, "
                             "a diffusers folder, 'toy' (offline, exact toy model) or 'tiny' (random weights)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps S (default 50)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default 7.5; 1.0 for the toy model)")
    parser.add_argument("--start", type=float, default=0.25, help="fraction of the steps skipped (default 0.25)")
    parser.add_argument("--samples", type=int, default=4, help="number of results (default 4)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variant", choices=("paper", "official"), default="paper",
                        help="Algorithm 1 as the paper intends it, or the official SD2 script's loop")
    parser.add_argument("--shrink", action="store_true", help="progressive mask shrinking (paper §4.3)")
    parser.add_argument("--reconstruction", choices=MODES, default="none", help="background reconstruction (§4.2)")
    parser.add_argument("--rank", nargs="?", const="ViT-B/16", default=None, metavar="CLIP",
                        help="rank the results by CLIP (paper §4.4), best first, with their distances in ranking.txt; "
                             "CLIP is ViT-B/16 (default, as the official code), ViT-L/14, tiny or a model.safetensors")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="weights' dtype (default: the loader's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda when available)")
    parser.add_argument("--size", type=int, default=None, help="working long side in pixels (default: the model's)")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/<image>-<prompt>; "
                                                    "a new name is chosen when it exists)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():  # warnings as plain "warning: ..." lines, for this run only
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        return run(args)


def run(args: argparse.Namespace) -> int:
    """Read the inputs, load the model, edit, write the results; 0 on success, 1 no model, 2 bad input."""
    try:  # the inputs first: a bad input fails before any model is loaded
        image = read_image(args.image)
        mask = read_mask(args.mask, image.size)
    except EditInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.model == "tiny":
        print("WARNING: --model tiny has RANDOM weights: its results are NOISE BY DESIGN. It runs the whole\n"
              "path (tokenizer, text encoder, UNet, VAE) offline; for a meaningful offline edit use --model toy.",
              file=sys.stderr)
    if args.model == "toy":
        print("toy model: the exact denoiser of a dozen photographs (blend/toy_model.py). Expect the masked\n"
              "region to become the same region of a photograph of the prompt's class, the rest to stay.",
              file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = load_model(args.model, dtype=DTYPES.get(args.dtype), device=device)
    except Exception as error:  # any failure to get weights ends here, with one clear paragraph
        print(cannot_load_message(args.model, error), file=sys.stderr)
        return 1
    ranker = None
    if args.rank:  # before the edit, so that missing CLIP weights cost no sampling time
        try:
            ranker = load_clip(args.rank)
        except Exception as error:
            print(f"error: could not load the CLIP ranker {args.rank!r}: {error}", file=sys.stderr)
            return 1

    started = time.perf_counter()
    try:
        results = edit(image, mask, args.prompt, model=model, steps=args.steps, guidance_scale=args.guidance,
                       start=args.start, num_samples=args.samples, seed=args.seed, variant=args.variant,
                       shrink=args.shrink, reconstruction=args.reconstruction, device=device, size=args.size,
                       progress=ProgressLine(f"{args.model} {args.variant}"), ranker=ranker)
    except EditInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    default_folder = Path("outputs") / f"{Path(args.image).stem}-{slug(args.prompt)}"
    folder = new_folder(Path(args.out) if args.out else default_folder)
    for index, result in enumerate(results):
        result.save(folder / f"result_{index}.png")
    grid(image, mask, results).save(folder / "grid.png")
    if args.rank:
        lines = [f"result_{index}.png  sample {result.info['sample']}  clip_distance {result.info['clip_distance']:.6f}"
                 for index, result in enumerate(results)]
        (folder / "ranking.txt").write_text(f"# ranked by CLIP {args.rank} (paper §4.4): lower distance is better\n"
                                            + "\n".join(lines) + "\n")
        print("\n".join(lines))
    print(f"{len(results)} results for {args.prompt!r} ({args.model}, {time.perf_counter() - started:.1f} s) "
          f"written to {folder}/ : result_0..{len(results) - 1}.png and grid.png (input | mask | results)")
    return 0


def cannot_load_message(model: str, error: Exception) -> str:
    """One paragraph: what failed, how to get the files, how to use a local checkpoint, and --model toy."""
    what_failed = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    what_failed += "" if what_failed.endswith((".", "!", "?")) else "."
    try:
        from weights import presets
        spec = presets.get(model)
    except (ImportError, KeyError):
        spec = None
    if spec is not None and spec.hub_repo:
        how = (f"To get the weights, run this once on a machine with network access (they are cached under "
               f"~/.cache/huggingface), or fetch the single file with `hf download {spec.hub_repo} "
               f"{spec.single_file} --local-dir DIR` and run `python -m blend --model DIR/{spec.single_file}`")
    else:
        how = "Check that the path exists and holds a Stable Diffusion 1.x/2.x checkpoint"
    paragraph = (f"error: could not load the model {model!r}: {what_failed} {how}; a local .safetensors "
                 f"checkpoint or a diffusers folder can always be given with --model PATH. To run the example "
                 f"offline now, use --model toy (an exact toy model of a dozen photographs: a real, explainable "
                 f"edit in seconds on a CPU) or --model tiny (random weights: its output is noise by design).")
    return paragraph  # one line: the terminal wraps it, and the commands in it stay whole for copying


def new_folder(path: Path) -> Path:
    """Create and return `path`, or `path-1`, `path-2`, … when it exists: nothing is overwritten."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    candidate.mkdir(parents=True)
    return candidate


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "unconditional"


def grid(image: Image.Image, mask, results: list, height: int = 512) -> Image.Image:
    """One row: input | mask | results, each scaled to `height` (at most the image's own)."""
    tiles = [image, mask_to_image(mask), *results]
    height = min(height, image.height)
    width = round(image.width * height / image.height)
    row = Image.new("RGB", (len(tiles) * width, height), "white")
    for index, tile in enumerate(tiles):
        row.paste(tile.resize((width, height), Image.LANCZOS), (index * width, 0))
    return row


class ProgressLine:
    """A one-line progress bar on stderr: `for t in ProgressLine("label")(timesteps): ...`."""

    def __init__(self, label: str, stream=sys.stderr, width: int = 30):
        self.label, self.stream, self.width = label, stream, width

    def __call__(self, iterable):
        items = list(iterable)
        started = time.perf_counter()
        live = self.stream.isatty()  # redraw in place on a terminal; only the last line in a log
        for index, item in enumerate(items):
            if live:
                self._draw(index, len(items), started)
            yield item
        self._draw(len(items), len(items), started)
        self.stream.write("\n")

    def _draw(self, done: int, total: int, started: float):
        filled = self.width * done // max(total, 1)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                          f"{time.perf_counter() - started:.1f} s")
        self.stream.flush()
