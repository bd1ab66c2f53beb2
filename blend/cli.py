"""`python -m blend`: edit a photograph from the command line.

    python -m blend                       # the shipped example with SD 2.1-base (downloads ~5 GB once)
    python -m blend --model toy           # the same example, offline, with the exact toy model (seconds)
    python -m blend --image photo.jpg --mask mask.png --prompt "a red ball" --samples 2

Each run writes its results and grid.png (input | mask | results) to a new folder, which it prints;
an existing folder or file is never written into. The folder is whole or absent: the results are
written into a hidden folder beside it, which is renamed when they are all written and removed
on any failure or interrupt.

Exit status: 0 done; 2 an option, input or output folder refused, with one line `error: ...`,
before any model is loaded and with nothing written; 1 the weights could not be loaded or the
results could not be written; 130 interrupted (Ctrl-C, SIGTERM or SIGHUP), with nothing left
half-written. A hidden folder left by a run that was killed outright (SIGKILL) is removed by the
next run for the same output name (ResultFolder).
"""
import argparse
import errno
import os
import re
import secrets
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

try:
    import fcntl  # POSIX: a run's hidden folder is locked while it lives
except ImportError:  # Windows: no locks, and so no removal of a killed run's folder
    fcntl = None

import torch
from PIL import Image

from weights import OfflineError, PickleRefusedError, load_clip
from weights.load import load_vae
from weights.pickle_checkpoint import conversion_command, is_pickle_checkpoint

from .algorithm import VARIANTS
from .editor import EditInputError, edit, load_model
from .images import mask_to_image, read_image, read_mask
from .options import LARGE_SIZE, SAMPLERS, default_sampler, option_problem
from .reconstruction import MODES

ASSETS = Path(__file__).resolve().parent / "assets"
EXAMPLE_IMAGE = ASSETS / "example.jpg"       # scikit-image's "coffee" photograph, CC0 (assets/SOURCES.md)
EXAMPLE_MASK = ASSETS / "example_mask.png"   # white = the cup, the region to edit
EXAMPLE_PROMPT = "a cat"
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PARTIAL = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.partial")  # ResultFolder's hidden folders
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m blend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=None,
                        help="the photograph to edit, given with --mask (default: the example and its mask)")
    parser.add_argument("--mask", default=None, help="white (1) = edit, black (0) = keep; given with --image")
    parser.add_argument("--prompt", default=EXAMPLE_PROMPT, help=f"what the masked region becomes ({EXAMPLE_PROMPT!r})")
    add_edit_options(parser)
    parser.add_argument("--vae", default=None,
                        help="a replacement autoencoder: fp16-fix (SDXL's, decodes in float16 without overflow; "
                             "madebyollin/sdxl-vae-fp16-fix) or a diffusers vae/ folder (default: the model's own)")
    parser.add_argument("--seed", type=int, default=42, help="0 to 2**64 - 1, torch's range (default 42)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N, mps or xpu, available on this machine (default: cuda when available)")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/<image>-<prompt>; "
                                                    "a new name is chosen when it exists)")
    return parser.parse_args(argv)


def add_edit_options(parser: argparse.ArgumentParser) -> None:
    """The edit options that `python -m blend` and `python -m blend.batch` share (model, schedule, ranking, size)."""
    parser.add_argument("--model", default="sd-2.1-base",
                        help="sd-2.1-base (default, as the official script), sd-1.5, sd-2.1, sdxl-base-1.0 (1024 px, "
                             "guidance 5; bfloat16 by default on a CPU with native bf16), ldm-txt2img-f8-large (the "
                             "paper's LDM: 256 px, guidance 5, 5.7 GB), a .safetensors file, "
                             "a diffusers folder, 'toy' (offline, exact toy model) or 'tiny' (random weights)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a .ckpt/.pt/.bin --model with torch.load(weights_only=True) instead of refusing it")
    parser.add_argument("--steps", type=int, default=50,
                        help="the sampler's steps S: 1 to 999 (1 to 1000 with --variant official, whose timestep "
                             "offset is 0; 1 to 500 for the LDM's uniform timesteps); default 50")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale, any finite number (default: the model's, 7.5 for SD, "
                             "5 for SDXL and the LDM, 1.0 for the toy)")
    parser.add_argument("--start", type=float, default=0.25,
                        help="fraction of the steps skipped, in [0, 1) with at least one step left to run "
                             "(default 0.25)")
    parser.add_argument("--samples", type=int, default=4, help="number of results, at least 1 (default 4)")
    parser.add_argument("--variant", choices=VARIANTS, default="paper",
                        help="Algorithm 1 as the paper intends it (paper), or an official script's loop "
                             "(README: variants); official-sdxl is the SDXL script's (Euler steps; --model "
                             "sdxl-base-1.0), official-ldm the paper's LDM script's (--model ldm-txt2img-f8-large)")
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), default=None,
                        help="line 5's solver: ddim (DDIM, η = 0), euler (Karras' Euler, the SDXL script's) or dpm++2m "
                             "(DPM-Solver++(2M), second order: fewer steps for the same error); default: the "
                             "variant's own, ddim, or euler for official-sdxl. --variant paper takes all three, "
                             "each official variant only its script's")
    parser.add_argument("--shrink", action="store_true", help="progressive mask shrinking (paper §4.3)")
    parser.add_argument("--reconstruction", choices=MODES, default="none", help="background reconstruction (§4.2)")
    parser.add_argument("--rank", nargs="?", const="ViT-B/16", default=None, metavar="CLIP",
                        help="rank the results by CLIP (paper §4.4), best first, with their distances in ranking.txt; "
                             "CLIP is ViT-B/16 (default, as the official code), ViT-L/14, tiny or a model.safetensors")
    parser.add_argument("--dtype", choices=tuple(DTYPE_NAMES), default=None,
                        help="weights' dtype (default: bfloat16 for SD and SDXL on a CPU with native bf16, "
                             "else float32; the run prints which)")
    parser.add_argument("--size", type=int, default=None,
                        help="working long side in pixels, at least what each side must divide by (64 for SD and "
                             f"the LDM, 32 for SDXL, 16 for tiny, 1 for the toy); a warning above {LARGE_SIZE} "
                             "(default: the model's)")


def main(argv=None) -> int:
    args = parse_args(argv)
    stopped_by = {}  # SIGTERM (kill, a job scheduler) and SIGHUP (the terminal closed) end the run as Ctrl-C does
    if threading.current_thread() is threading.main_thread():
        stopped_by = {number: signal.signal(number, _interrupt) for number in STOP_SIGNALS}
    try:
        with warnings.catch_warnings():  # warnings as plain "warning: ..." lines, for this run only
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
            return run(args)
    except KeyboardInterrupt:  # before the output folder existed: nothing was written
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        for number, previous in stopped_by.items():
            signal.signal(number, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Check the options, the inputs and the output folder; load the model, edit, write (exit status above)."""
    problem = option_refusal(args)
    if problem is None:
        image_path, mask_path = (args.image, args.mask) if args.image else (EXAMPLE_IMAGE, EXAMPLE_MASK)
        try:  # the inputs: a bad input fails before any model is loaded
            image = read_image(image_path)
            mask = read_mask(mask_path, image.size)
        except EditInputError as error:
            problem = str(error)
    if problem is None:
        wanted = Path(args.out) if args.out else Path("outputs") / f"{Path(image_path).stem}-{slug(args.prompt)}"
        try:  # the output location: creating the hidden folder is the check that it can be written
            output = ResultFolder(wanted)
        except OSError as error:
            problem = unwritable_message(wanted, error, given=bool(args.out))
    if problem is None:
        try:
            problem = space_problem(output, result_bytes(image.size, args.samples), given=bool(args.out))
            if problem is None:
                return edit_and_write(args, image, mask, output)
        except KeyboardInterrupt:
            output.discard()
            print(f"interrupted: {f'the results are in {output.final}/' if output.final else 'nothing was written'}",
                  file=sys.stderr)
            return 130
        finally:
            output.discard()  # unless it was renamed into place: a result folder is whole or absent
    print(f"error: {problem}", file=sys.stderr)
    return 2


def option_refusal(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line that can be told without loading anything or the network."""
    if bool(args.image) != bool(args.mask):
        given, missing = ("--image", "--mask") if args.image else ("--mask", "--image")
        return (f"{given} was given without {missing}: the example's {missing[2:]} does not belong with your "
                f"{given[2:]}. Give both --image PHOTO and --mask MASK (white = edit), or neither for the example")
    problem = option_problem(steps=args.steps, start=args.start, guidance_scale=args.guidance,
                             num_samples=args.samples, seed=args.seed, size=args.size, device=args.device,
                             variant=args.variant, reconstruction=args.reconstruction, model=args.model,
                             rank=args.rank, cli=True, vae=args.vae, sampler=args.sampler)
    if problem is None and not args.allow_pickle and is_pickle_checkpoint(Path(args.model).expanduser()):
        problem = pickle_refusal_message(args.model, Path(args.model).expanduser())
    return problem


def edit_and_write(args: argparse.Namespace, image: Image.Image, mask, output: "ResultFolder") -> int:
    if args.model == "tiny":
        print("WARNING: --model tiny has RANDOM weights: its results are NOISE BY DESIGN. It runs the whole\n"
              "path (tokenizer, text encoder, UNet, VAE) offline; for a meaningful offline edit use --model toy.",
              file=sys.stderr)
    if args.model == "toy":
        print("toy model: the exact denoiser of a dozen photographs (weights/toy.py). Expect the masked\n"
              "region to become the same region of a photograph of the prompt's class, the rest to stay.",
              file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = load_model(args.model, dtype=DTYPE_NAMES.get(args.dtype), device=device, allow_pickle=args.allow_pickle)
    except Exception as error:  # any failure to get weights ends here, with one clear paragraph (status 1)
        if isinstance(error, PickleRefusedError) and getattr(error, "path", None) is not None:
            print(f"error: {pickle_refusal_message(args.model, error.path)}", file=sys.stderr)  # .bin weights in
            return 2                                                    # a diffusers folder, without --allow-pickle
        print(cannot_load_message(args.model, error), file=sys.stderr)  # incl. what torch.load(weights_only) refused
        return 1
    ranker = None
    if args.rank:  # before the edit, so that missing CLIP weights cost no sampling time
        try:
            ranker = load_clip(args.rank)
        except Exception as error:
            print(f"error: could not load the CLIP ranker {args.rank!r}: {error}", file=sys.stderr)
            return 1
    vae = None
    if args.vae:  # before the edit too: a VAE that cannot be fetched costs no sampling time
        try:
            vae = load_vae(args.vae, dtype=next(iter(model.unet.state_dict().values())).dtype, device=device)
        except Exception as error:
            print(f"error: could not load the autoencoder {args.vae!r}: {error}", file=sys.stderr)
            return 1

    started = time.perf_counter()
    label = f"{args.model} {args.variant} {args.sampler or default_sampler(args.variant)}"
    try:
        results = edit(image, mask, args.prompt, model=model, steps=args.steps, guidance_scale=args.guidance,
                       start=args.start, num_samples=args.samples, seed=args.seed, variant=args.variant,
                       shrink=args.shrink, reconstruction=args.reconstruction, device=device, size=args.size,
                       callback=ProgressLine(label), ranker=ranker, vae=vae, sampler=args.sampler)
    except EditInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        lines = write_results(output.temporary, image, mask, results, args.rank)
        folder = output.commit()
    except OSError as error:
        print(f"error: could not write the results for {output.wanted}: {error.strerror or error}"
              f"{f' ({error.filename})' if error.filename else ''}; nothing was written. Free some space or "
              f"choose another --out, and run again", file=sys.stderr)
        return 1
    if lines:
        print("\n".join(lines))
    print(f"{len(results)} results for {args.prompt!r} ({args.model}, {time.perf_counter() - started:.1f} s) "
          f"written to {folder}/ : result_0..{len(results) - 1}.png and grid.png (input | mask | results)")
    return 0


def write_results(folder: Path, image: Image.Image, mask, results: list, rank: str | None) -> list:
    """result_<k>.png, grid.png and, when ranked by CLIP `rank`, ranking.txt into `folder`; its lines.

    ranking.txt: a '#' comment line, then one line per result, best first (lowest distance):
    `result_<k>.png  sample <index before ranking>  clip_distance <cosine distance, 6 decimals>`.
    """
    for index, result in enumerate(results):
        result.save(folder / f"result_{index}.png")
    grid(image, mask, results).save(folder / "grid.png")
    if not rank:
        return []
    lines = [f"result_{index}.png  sample {result.info['sample']}  clip_distance {result.info['clip_distance']:.6f}"
             for index, result in enumerate(results)]
    (folder / "ranking.txt").write_text(f"# ranked by CLIP {rank} (paper §4.4): lower distance is better\n"
                                        + "\n".join(lines) + "\n")
    return lines


def pickle_refusal_message(model: str, pickled: Path) -> str:
    """weights.pickle_checkpoint's refusal, whole, on one line, with this CLI's flags."""
    target = pickled.with_suffix(".safetensors")
    what = "a pickle checkpoint" if pickled == Path(model).expanduser() else f"its weights {pickled} are a pickle"
    then = (f"then use --model {shlex.quote(str(target))}" if pickled == Path(model).expanduser()
            else "then run again with the same --model")
    return (f"--model {model}: {what}, which can run code when loaded, so it is refused by default. Either use "
            f"the .safetensors file published beside it (the SD 1.5 and 2.1 repositories have one); or add "
            f"--allow-pickle to read it with torch.load(weights_only=True), which rebuilds tensors only and runs "
            f"nothing in the file; or convert it once into {target} (never over an existing file), {then}, with "
            f"this command, from this folder: {conversion_command(pickled, python=shlex.quote(sys.executable))}")


def cannot_load_message(model: str, error: Exception) -> str:
    """One paragraph: what failed, how to get the files, how to use a local checkpoint, and --model toy."""
    text = str(error).strip()
    if isinstance(error, OfflineError):  # its first line is what failed; the rest is the Python API's how-to
        text = text.splitlines()[0]
    what_failed = " ".join(text.split()) if text else type(error).__name__  # whole, on one line
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


def unwritable_message(wanted: Path, error: OSError, given: bool) -> str:
    """Why the output folder cannot be created there, and what to do."""
    where = f"--out {wanted}" if given else f"the output folder {wanted}"
    place = Path(error.filename) if error.filename else wanted.parent
    if isinstance(error, (NotADirectoryError, FileExistsError)) or error.errno == errno.ENOTDIR:
        why = f"{place} is a file, not a folder"
    elif isinstance(error, PermissionError) or error.errno == errno.EROFS:
        why = f"{place.parent} is not writable ({error.strerror})"
    else:
        why = f"{error.strerror or error} ({place})"
    return f"{where}: cannot create the output folder: {why}; choose another " + ("--out" if given else "with --out")


def result_bytes(image_size: tuple, num_samples: int, grid_height: int = 512) -> int:
    """An upper estimate of what a run writes: each result and grid.png as uncompressed RGB, plus 1%
    (a PNG of noise is slightly larger than its pixels) and 1 MiB for headers and ranking.txt."""
    width, height = image_size
    tile_height = min(grid_height, height)
    tile_width = round(width * tile_height / height)
    pixels = num_samples * width * height + (num_samples + 2) * tile_width * tile_height
    return int(3 * pixels * 1.01) + 2**20


def space_problem(output: "ResultFolder", needed: int, given: bool) -> str | None:
    """Why the results will not fit on the disk that holds the output folder, or None."""
    free = shutil.disk_usage(output.temporary).free
    if free >= needed:
        return None
    where = f"--out {output.wanted}" if given else f"the output folder {output.wanted}"
    return (f"{where}: its disk has {free / 2**20:.1f} MiB free, and the results need up to {needed / 2**20:.1f} "
            f"MiB; free some space or choose another " + ("--out" if given else "folder with --out"))


class ResultFolder:
    """Where a run's results go: a hidden folder beside `wanted`, renamed when complete, else removed.

    Creating the hidden folder (and any missing parents) before the model loads checks that the place
    can be written. `commit()` renames it to `wanted`, or `wanted-1`, `wanted-2`, … when that name is
    taken: an existing folder or file is never written into. `discard()` removes it and the parents
    this run created, unless it was committed.

    The hidden folder, `.<wanted's name>.<8 hex digits>.partial` (PARTIAL), is held under an exclusive
    lock (flock) while this run lives. A run killed outright (SIGKILL, a power cut) cannot remove it, so
    each new run for the same name removes those whose lock it can take: their run is gone. A live run's
    folder stays locked and is left alone. (Without fcntl, on Windows, nothing is locked or removed.)
    """

    def __init__(self, wanted: Path):
        if wanted.name in ("", ".", ".."):  # "--out ." : a new folder beside the current one
            wanted = Path(os.path.abspath(wanted))
        self.wanted, self.final, self.created = wanted, None, []
        self.temporary, self._lock = None, None
        try:
            self._make_parents(wanted.parent)
            self.temporary = self._make_hidden(wanted.parent)
            self._lock = lock_folder(self.temporary, wait=True)
            remove_stale_partials(wanted.parent, {wanted.name})
        except BaseException:
            self.discard()
            raise

    def _make_parents(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and not folder.is_symlink():
            missing.append(folder)
            folder = folder.parent
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        for parent in reversed(missing):
            os.mkdir(parent)
            self.created.append(parent)

    def _make_hidden(self, parent: Path) -> Path:
        while True:
            hidden = parent / f".{self.wanted.name}.{secrets.token_hex(4)}.partial"
            try:
                os.mkdir(hidden)
                return hidden
            except FileExistsError:
                continue

    def commit(self) -> Path:
        candidate, number = self.wanted, 0
        while True:
            if not candidate.exists() and not candidate.is_symlink():
                try:
                    os.rename(self.temporary, candidate)
                    self.final = candidate
                    return candidate
                except OSError as error:  # taken meanwhile (a non-empty folder): the next name
                    if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                        raise
            number += 1
            candidate = self.wanted.with_name(f"{self.wanted.name}-{number}")

    def discard(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if self.final is not None:
            return
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)
            self.temporary = None
        for parent in reversed(self.created):
            try:
                os.rmdir(parent)
            except OSError:
                break
        self.created = []


def lock_folder(folder: Path, wait: bool) -> int | None:
    """An open descriptor of `folder` holding an exclusive flock on it, or None: another process holds it
    (wait=False), or this system has no flock. Closing the descriptor, or the process ending, releases it."""
    if fcntl is None:
        return None
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def remove_stale_partials(parent: Path, names: set[str]) -> None:
    """Remove the hidden folders `.<name>.<8 hex digits>.partial` in `parent`, for each name in `names`, that no
    live run holds locked: what a run killed before it could clean up (SIGKILL) left behind."""
    if fcntl is None:
        return
    for entry in os.scandir(parent):
        match = PARTIAL.fullmatch(entry.name)
        if not (match and match["name"] in names and entry.is_dir(follow_symlinks=False)):
            continue
        try:
            descriptor = lock_folder(Path(entry.path), wait=False)
        except OSError:  # removed meanwhile, or not ours to read
            continue
        if descriptor is not None:
            try:
                shutil.rmtree(entry.path, ignore_errors=True)
            finally:
                os.close(descriptor)


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
    """A one-line progress bar on stderr, as the loop's per-step callback: `edit(..., callback=ProgressLine(label))`."""

    def __init__(self, label: str, stream=sys.stderr, width: int = 30):
        self.label, self.stream, self.width = label, stream, width
        self.started = None

    def __call__(self, record):
        if self.started is None:
            self.started = time.perf_counter()
        done = record.index + 1
        last = done == record.num_steps
        if last or self.stream.isatty():  # redraw in place on a terminal; only the last line in a log
            self._draw(done, record.num_steps)
        if last:
            self.stream.write("\n")
            self.started = None

    def _draw(self, done: int, total: int):
        filled = self.width * done // max(total, 1)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                          f"{time.perf_counter() - self.started:.1f} s")
        self.stream.flush()
