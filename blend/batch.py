"""`python -m blend.batch`: the edits of a manifest, data-parallel under torchrun, resumable.

    python -m blend.batch edits.jsonl --out results --model toy --samples 4 --rank tiny
    torchrun --nproc_per_node 8 -m blend.batch edits.jsonl --out results --samples 4 --rank

The manifest has one JSON object per line, {"id", "image", "mask", "prompt"} with an optional "seed",
an optional "method", "mask-from" in place of "mask", and per-item options (blend/manifest.py has the
rules). The command line takes the edit options of `python -m blend` (--method --model --samples --dtype
--allow-pickle; for the latent methods bld, sdedit, repaint, diffedit and inpaint --steps --guidance
--sampler --rank --size --mask-from, for bld also --start --variant --shrink --reconstruction, and
--strength (sdedit, inpaint), --jump-length --jump-n-sample (repaint), --encode-ratio (diffedit); for
blended-diffusion and local-clip --skip-timesteps --respacing --clip-guidance --range-loss --views --ddim
--background-loss), refused as python -m blend refuses them; a line's options override them for that
item, and a line's "method" runs it with that method (the command line's options that method does not
take do not apply to it). Each model is loaded once, when its first item needs it: --model when given,
else the method's own (sd-2.1-base for bld, sdedit, repaint and diffedit, sd-2-inpainting for inpaint,
adm-256-uncond for the pixel methods). A repaint item prints its network calls before it runs.

Processes. Alone, one process does every item. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set),
process `rank` of `world_size` takes the items i (in manifest order, from 0) with
i % world_size == rank. Each loads the model once, when its first item needs it, on cuda:LOCAL_RANK
when there are GPUs (hide them with CUDA_VISIBLE_DEVICES= to run on the CPU), else on the CPU.
torch.distributed (nccl on GPUs, gloo on the CPU; joined by every process torchrun starts) serves only
a barrier at the start (after rank 0 has removed the last run's failures.jsonl) and the summary at
the end (a barrier, the sum of the counts, and a barrier once rank 0 has printed it).

Results, under --out DIR:
    DIR/<id>/result_<k>.png   k = 0 … samples − 1; best first with --rank
    DIR/<id>/grid.png         input | mask | results
    DIR/<id>/mask-from.png    with "mask-from" (or --mask-from): the estimated mask, white = edit
    DIR/<id>/ranking.txt      with --rank, and always for the pixel methods: a '#' comment line, then
                              one line per result, best first:
                              `result_<k>.png  sample <index before ranking>  clip_distance <d>`
                              (cosine distance of CLIP(result ⊙ mask) to CLIP(prompt), paper §4.4; for the
                              pixel methods Blended Diffusion's spherical distance)
    DIR/failures.jsonl        one {"id", "error"} line per item this run could not do
An item folder is whole or absent: it is written as DIR/.<id>.<8 hex digits>.partial and renamed
when complete. An item that cannot be done (unreadable image, empty mask, a prompt the model cannot
take, …) goes to failures.jsonl and the run goes on.

Resuming. An existing DIR/<id> folder is finished and skipped, whatever options made it; other items
are done again, failed ones included. --redo does every item again, replacing its folder only once
the new one is whole. Hidden .partial folders that a killed run left are removed by the next run.

Reproducibility. An item's seed is the manifest's or, by default, derived from its id
(blend.manifest.default_seed: SHA-256), and edit() draws from its own torch.Generator on the item's
device; so a result depends on the item alone, not on the number of processes or on the rank. (The
bits still depend on the device type and on the CPU threads' summation order, as any float result.)

Output: one progress line per item on stderr, prefixed by the process's rank; at the end rank 0
prints one summary: items done, skipped and failed, wall time, and items done per minute.
Exit status: 0 every item done or skipped; 1 some failed (failures.jsonl says which) or the model
could not be loaded; 2 the options or the manifest refused, each problem with its line number,
before any work; 130 interrupted (Ctrl-C, or SIGTERM from torchrun), with nothing half-written.
"""
import argparse
import json
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

try:
    import fcntl  # POSIX: failures.jsonl is appended under a lock
except ImportError:  # Windows: one write per line, unlocked
    fcntl = None

from .cli import (
    DTYPE_NAMES,
    ResultFolder,
    add_edit_options,
    cannot_load_message,
    command_line_problem,
    judge_name,
    parse_with_given,
    remove_stale_partials,
    repaint_cost_line,
    results_mask,
    unwritable_message,
    write_estimated_mask,
    write_results,
)
from .editor import edit, load_model
from .errors import EditInputError
from .images import read_image, read_mask
from .manifest import ManifestError, output_blocker, read_manifest
from .options import DEFAULT_MODELS, LATENT_METHODS, default_steps, warn_if_large

FAILURES = "failures.jsonl"
# The final barrier waits for the slowest process; its share may take days, so wait that long.
BARRIER_TIMEOUT = timedelta(days=7)
REFUSAL_WAIT_S = 60


@dataclass(frozen=True)
class Process:
    """Where this process stands: torchrun's RANK, WORLD_SIZE and LOCAL_RANK (0, 1, 0 alone).

    `launched`: started by torchrun (or with the variables that torch.distributed's env:// start reads),
    so that even a single process joins the process group.
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @classmethod
    def from_environment(cls) -> "Process":
        numbers = (int(os.environ.get(name, default)) for name, default in
                   (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
        launched = all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
        return cls(*numbers, launched=launched)

    def say(self, line: str) -> None:
        print(f"[rank {self.rank}/{self.world_size}] {line}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m blend.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", help="the JSON Lines file of edits (blend/manifest.py)")
    parser.add_argument("--out", required=True, help="the folder of the results, one sub-folder per item id")
    add_edit_options(parser)
    parser.add_argument("--redo", action="store_true", help="redo the finished items too (default: skip them)")
    return parse_with_given(parser, argv)


def main(argv=None) -> int:
    args, process = parse_args(argv), Process.from_environment()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # torchrun stops its workers with SIGTERM
    try:
        with warnings.catch_warnings():  # warnings as plain "warning: ..." lines, for this run only
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *_, **__: process.say(f"warning: {message}")
            return run(args, process)
    except KeyboardInterrupt:
        process.say("interrupted: finished items are whole in their folders; run again to resume")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace, process: Process) -> int:
    """Check everything, then do this process's share of the manifest (exit status: module docstring)."""
    started = time.perf_counter()
    items, device, problems = checked(args, process)
    if problems:
        if process.local_rank == 0:  # one copy per machine, not one per process
            print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr)
        elif process.launched:
            # torchrun stops all its processes when one ends in error: wait, so that local rank 0, which
            # finds the same problems, prints them before this exit could stop it (its exit stops this one)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(REFUSAL_WAIT_S)
        return 2
    warn_if_large(args.size)
    out = Path(args.out)
    if process.launched:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT,
                                             device_id=device if device.type == "cuda" else None)
    if process.rank == 0:
        (out / FAILURES).unlink(missing_ok=True)  # it lists this run's failures only
    if process.launched:
        torch.distributed.barrier()               # no process records a failure before that
    share = items[process.rank::process.world_size]
    remove_stale_partials(out, {item.id for item in share})
    try:
        counts = Worker(args, process, device, out).do(share)
    except ModelUnavailable as error:
        process.say(str(error))
        return 1
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # all written: torchrun may stop this process now
    if process.launched:
        torch.distributed.barrier()
        totals = torch.tensor(counts, dtype=torch.int64, device=device)
        torch.distributed.all_reduce(totals)
        counts = totals.tolist()
    if process.rank == 0:
        print(summary(len(items), *counts, time.perf_counter() - started, process.world_size, out), flush=True)
    if process.launched:
        torch.distributed.barrier()  # the summary is out before any exit, which ends torchrun's processes
        torch.distributed.destroy_process_group()
    return 1 if counts[2] else 0


def checked(args: argparse.Namespace, process: Process) -> tuple:
    """(items, device, problems): the options, the manifest, the device, then the output folder (created)."""
    options = {"steps": args.steps, "guidance_scale": args.guidance, "start": args.start,
               "num_samples": args.samples, "variant": args.variant, "sampler": args.sampler, "shrink": args.shrink,
               "reconstruction": args.reconstruction, "size": args.size, "skip_timesteps": args.skip_timesteps,
               "respacing": args.respacing, "clip_guidance_scale": args.clip_guidance, "range_scale": args.range_loss,
               "num_views": args.views, "background_loss": args.background_loss, "ddim": args.ddim,
               "strength": args.strength, "jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample,
               "encode_ratio": args.encode_ratio, "mask_from": args.mask_from}
    items, device, problems = [], None, refusals(args)
    if not problems:
        try:
            items = read_manifest(args.manifest, options, model=args.model if "model" in args.given else None,
                                  method=args.method)
        except ManifestError as error:
            problems = error.problems
    if not problems:
        device, problem = choose_device(process)
        problems = [problem] if problem else []
    if not problems:
        problems = [problem] if (problem := output_folder_problem(Path(args.out))) else []
    return items, device, problems


def output_folder_problem(out: Path) -> str | None:
    """Why --out cannot be the results folder (created here, with its parents, when it can), or None."""
    blocker = output_blocker(out)
    if blocker is not None:
        where = "" if blocker == out else f": {blocker} is a file, so no folder can be made under it"
        return (f"--out {out}: expected a folder for the results{where or ', found a file'}; "
                f"choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return unwritable_message(out, error, given=True)
    if not os.access(out, os.W_OK | os.X_OK):
        return f"--out {out}: the folder is not writable; choose another --out"
    return None


def summary(total: int, done: int, skipped: int, failed: int, seconds: float, processes: int, out: Path) -> str:
    """Rank 0's last line: the counts, the wall time and the items done per minute."""
    where = f" (see {out / FAILURES})" if failed else ""
    return (f"blend.batch: {total} item{'s' * (total != 1)}: {done} done, {skipped} skipped, {failed} failed{where}; "
            f"{seconds:.1f} s on {processes} process{'es' * (processes != 1)}, "
            f"{60 * done / max(seconds, 1e-6):.1f} items done per minute")


def refusals(args: argparse.Namespace) -> list:
    """The command line's problems that can be told without loading anything (as python -m blend)."""
    problem = command_line_problem(args)
    return [problem] if problem else []


def model_of(args: argparse.Namespace, method: str) -> str:
    """The model that runs `method`'s items: --model when given, else the method's own."""
    return args.model if "model" in args.given else DEFAULT_MODELS[method]


def choose_device(process: Process) -> tuple:
    """cuda:LOCAL_RANK when there are GPUs, else the CPU; or a problem when there are fewer GPUs than processes."""
    if not torch.cuda.is_available():
        return torch.device("cpu"), None
    count = torch.cuda.device_count()
    if process.local_rank >= count:
        return None, (f"this process has LOCAL_RANK {process.local_rank}, but this machine has {count} GPU(s): "
                      f"start at most {count} processes per machine (torchrun --nproc_per_node {count}), or "
                      f"run on the CPU with CUDA_VISIBLE_DEVICES=")
    torch.cuda.set_device(process.local_rank)
    return torch.device("cuda", process.local_rank), None


class ModelUnavailable(RuntimeError):
    """The model or the CLIP ranker could not be loaded: the whole run stops (exit 1)."""


class Worker:
    """One process's share: each item edited with the model loaded once, written whole, or recorded as failed."""

    def __init__(self, args: argparse.Namespace, process: Process, device: torch.device, out: Path):
        self.args, self.process, self.device, self.out = args, process, device, out
        self.models, self.ranker, self.ranker_loaded, self.pixel_model = {}, None, False, None

    def do(self, share: list) -> list:
        """[done, skipped, failed] for the items of `share`, one progress line each."""
        counts = [0, 0, 0]
        for number, item in enumerate(share, start=1):
            where = f"{number}/{len(share)} {item.id}"
            if (self.out / item.id).is_dir() and not self.args.redo:
                counts[1] += 1
                self.process.say(f"{where}: skipped, already in {self.out / item.id}/ (--redo redoes it)")
                continue
            started = time.perf_counter()
            try:
                written = self.edit_and_write(item)
            except (KeyboardInterrupt, ModelUnavailable):
                raise
            except Exception as error:  # this item cannot be done: record it, go on with the next
                counts[2] += 1
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # after an out-of-memory error, the next item starts clean
                message = str(error) if isinstance(error, EditInputError) else f"{type(error).__name__}: {error}"
                record_failure(self.out / FAILURES, item.id, message)
                self.process.say(f"{where}: failed: {message}")
                continue
            counts[0] += 1
            seconds = time.perf_counter() - started
            self.process.say(f"{where}: done, {written} result{'s' * (written != 1)} in {seconds:.1f} s")
        return counts

    def edit_and_write(self, item) -> int:
        image = read_image(item.image)
        mask = read_mask(item.mask, image.size) if item.mask is not None else None
        estimated = item.options.get("mask_from") is not None
        if item.method in LATENT_METHODS:
            model = self.load(item.method)
            if item.method == "repaint":
                options = item.options
                steps = default_steps("repaint") if options.get("steps") is None else options["steps"]
                self.process.say(f"{item.id}: " + repaint_cost_line(steps, options.get("jump_length", 10),
                                                                    options.get("jump_n_sample", 10)))
            results = edit(image, mask, item.prompt, model=model, method=item.method, seed=item.seed,
                           device=str(self.device), ranker=self.ranker, **item.options)
            mask = results_mask(results, mask, image)
            ranking = (self.args.rank,)
        else:
            from .pixel_editor import edit_pixels
            self.load_pixel(item.method)
            results = edit_pixels(image, mask, item.prompt, method=item.method, model=self.pixel_model,
                                  seed=item.seed, device=str(self.device), dtype=DTYPE_NAMES.get(self.args.dtype),
                                  **item.options)
            ranking = (judge_name(self.pixel_model), item.method)   # always ranked, by the method's own distance
        folder = ItemFolder(self.out / item.id)
        try:
            write_results(folder.temporary, image, mask, results, *ranking)
            if estimated:
                write_estimated_mask(folder.temporary, mask)
            folder.commit()
        finally:
            folder.discard()  # unless it was renamed into place
        return len(results)

    def load_pixel(self, method: str) -> None:
        """The pixel methods' model and its judge (weights.load_pixel_model), once, when the first item needs it."""
        if self.pixel_model is not None:
            return
        from weights import load_pixel_model
        model = model_of(self.args, method)
        try:
            self.pixel_model = load_pixel_model(model, dtype=DTYPE_NAMES.get(self.args.dtype), device=str(self.device))
        except Exception as error:
            raise ModelUnavailable(cannot_load_message(model, error, method=method)) from error

    def load(self, method: str):
        """The latent model of `method` (sd-2.1-base, an inpainting model, or --model for all) and the ranker, each
        once, when the first item needs them."""
        args, name = self.args, model_of(self.args, method)
        if name not in self.models:
            try:
                self.models[name] = load_model(name, dtype=DTYPE_NAMES.get(args.dtype), device=str(self.device),
                                               allow_pickle=args.allow_pickle)
            except Exception as error:
                raise ModelUnavailable(cannot_load_message(name, error)) from error
        if args.rank and not self.ranker_loaded:
            from weights import load_clip
            try:
                self.ranker = load_clip(args.rank)  # on the CPU, where blend.rank reads the results
            except Exception as error:
                raise ModelUnavailable(f"error: could not load the CLIP ranker {args.rank!r}: {error}") from error
            self.ranker_loaded = True
        return self.models[name]


class ItemFolder(ResultFolder):
    """An item's folder: written hidden beside DIR/<id>, then renamed to DIR/<id>, replacing an older one."""

    def commit(self) -> Path:
        aside = None
        if self.wanted.is_dir() and not self.wanted.is_symlink():  # --redo: keep the old one until the new is whole
            aside = self._make_hidden(self.wanted.parent)
            os.rename(self.wanted, aside)
        os.rename(self.temporary, self.wanted)
        self.final = self.wanted
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return self.wanted


def record_failure(path: Path, item_id: str, error: str) -> None:
    """Append {"id", "error"} to failures.jsonl, one whole line under a lock (several processes append)."""
    with open(path, "a", encoding="utf-8") as failures:
        if fcntl is not None:
            fcntl.flock(failures, fcntl.LOCK_EX)
        failures.write(json.dumps({"id": item_id, "error": error}) + "\n")
        failures.flush()


if __name__ == "__main__":
    sys.exit(main())
