"""`python -m blend.evaluate`: the paper's Table 1 for results of `python -m blend.batch`, and its benchmark.

    python -m blend.evaluate make-benchmark IMAGES_DIR --n 50 --seed 0 --out benchmark.jsonl
    python -m blend.batch benchmark.jsonl --out runs/paper                      # (and --variant official ...)
    python -m blend.evaluate runs/paper runs/official --manifest benchmark.jsonl --out evaluation.json

The evaluation writes evaluation.json and evaluation.md (the table), and prints the table.
Exit status: 0 done; 2 a folder, manifest, option or output refused, with one line `error: ...` (or
one per bad manifest line, result or mask) before any model is loaded and with nothing written; 1 the
judge's or LPIPS's weights could not be loaded (a paragraph saying how to get them), or the output
could not be written; 130 stopped (Ctrl-C or SIGTERM), with nothing half-written. Both commands
write under hidden names and rename when whole; the next run tidies what a killed one left.
"""
import argparse
import signal
import sys
import warnings
from pathlib import Path

from ..manifest import text_lines
from .benchmark import BenchmarkError, make_benchmark
from .evaluation import LPIPS_MIN_SIZE, LPIPS_SIZE, EvaluationError, evaluate, judge_classes
from .judges import DEFAULT_JUDGE
from .metrics import PADDING
from .report import finish_interrupted, markdown_table, output_file_problem, write_report

CLASS_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".lst", ".list")
CLASSES_EXPECTED = "toy, a UTF-8 file with one class name a line, or a comma-separated list like 'cat,dog'"


class OptionError(ValueError):
    """A command-line value refused before anything is read or loaded."""


def class_list(text: str | None):
    """--classes: None (the 1000 ImageNet names), "toy" (the toy model's), a file (one a line) or a comma list.

    A value that names a folder, or looks like a file name (CLASS_FILE_SUFFIXES, no comma) but names no
    file, is refused rather than taken as one class name; so are an empty file and a list of no names.
    """
    if text is None:
        return None
    if text == "toy":
        return judge_classes("toy")
    path = Path(text).expanduser()
    if not text.strip(","):
        raise OptionError(f"--classes {text!r}: found no class name; expected {CLASSES_EXPECTED}")
    if path.is_dir():
        raise OptionError(f"--classes {text}: found a folder; expected {CLASSES_EXPECTED}")
    if path.is_file():
        try:
            lines = text_lines(path, "the classes file", "one class name a line, in UTF-8")
        except ValueError as error:
            raise OptionError(f"--classes: {error}") from None
        names = [line.strip() for line in lines if line.strip()]
        if not names:
            raise OptionError(f"--classes {text}: the file holds no class name; expected one class name a line")
        return names
    if "," not in text and path.suffix.lower() in CLASS_FILE_SUFFIXES:
        raise OptionError(f"--classes {text}: no such file; expected {CLASSES_EXPECTED}")
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise OptionError(f"--classes {text!r}: found no class name; expected {CLASSES_EXPECTED}")
    return names


def stoppable(command):
    """Run command() with SIGTERM raised as KeyboardInterrupt, so that both stops tidy up; 130 when stopped.
    Warnings (a mask resized to its results) are printed as one `warning: ...` line each."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
            return command()
    except KeyboardInterrupt:
        print("interrupted: nothing was written (a finished output is whole)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def benchmark_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m blend.evaluate make-benchmark",
                                     description="Random masks and ImageNet-class prompts over a folder of images, "
                                                 "as a manifest for python -m blend.batch.")
    parser.add_argument("images_dir", metavar="IMAGES_DIR")
    parser.add_argument("--n", type=int, default=50, help="number of edits (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="the draw's seed (default 0)")
    parser.add_argument("--out", default="benchmark.jsonl", help="the manifest to write; masks go beside it")
    parser.add_argument("--classes", default=None,
                        help="the prompts' classes: 'toy' (the toy model's six), a file with one name a line, or "
                             "a comma-separated list (default: the 1000 ImageNet names)")
    args = parser.parse_args(argv)
    try:
        entries = make_benchmark(args.images_dir, n=args.n, seed=args.seed, out=args.out,
                                 class_names=class_list(args.classes))
    except (BenchmarkError, OptionError) as error:
        print("\n".join(f"error: {line}" for line in str(error).splitlines()), file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write {args.out} or its masks: {error}; nothing was written", file=sys.stderr)
        return 1
    masks = Path(args.out).parent / f"{Path(args.out).stem}_masks"
    print(f"wrote {args.out} ({len(entries)} edits) and its masks in {masks}")
    return 0


def evaluate_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m blend.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR",
                        help="folders written by python -m blend.batch, one row each")
    parser.add_argument("--manifest", required=True, help="the manifest the results were made from")
    parser.add_argument("--out", default="evaluation.json", help="the JSON report; the table goes beside it (.md)")
    parser.add_argument("--names", default=None, help="comma-separated row names (default: the folders' names)")
    parser.add_argument("--judge", default=DEFAULT_JUDGE,
                        help=f"the classifier of precision: {DEFAULT_JUDGE} (default), ViT-B/16, tiny, a CLIP "
                             f"model.safetensors, or toy (the toy model's results only)")
    parser.add_argument("--classes", default=None, help="the judge's classes (as for make-benchmark; default ImageNet)")
    parser.add_argument("--lpips", default="vgg16",
                        help="the LPIPS backbone: vgg16 (default, timm/vgg16.tv_in1k), a .safetensors file, or random")
    parser.add_argument("--padding", type=float, default=PADDING, help="crop padding, a fraction of its side (0.1)")
    parser.add_argument("--lpips-size", type=int, default=LPIPS_SIZE,
                        help=f"side the crops are resized to for LPIPS ({LPIPS_SIZE}; at least {LPIPS_MIN_SIZE}; "
                             f"0 keeps them as they are)")
    parser.add_argument("--rank", nargs="?", const="ViT-B/16", default=None, metavar="CLIP",
                        help="rank the results of inputs that have no ranking.txt, for best-result precision: "
                             "CLIP ViT-B/16 (default, as python -m blend --rank), ViT-L/14, tiny or a "
                             "model.safetensors")
    parser.add_argument("--allow-missing", action="store_true", help="score the ids that have results, skip the rest")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    out = Path(args.out)
    problem = output_file_problem(out, table=True)
    if problem is None:
        finish_interrupted(out)
    for path in (out, out.with_suffix(".md")):
        if problem is None and path.exists():
            problem = f"{path} already exists; the evaluation never overwrites: choose another --out"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from weights import WeightsError
    try:
        report = evaluate(args.results_dirs, args.manifest, names=args.names.split(",") if args.names else None,
                          judge=args.judge, class_names=class_list(args.classes), lpips=args.lpips,
                          padding=args.padding, lpips_size=args.lpips_size, allow_missing=args.allow_missing,
                          rank=args.rank, device=args.device)
    except (EvaluationError, OptionError) as error:
        print("\n".join(f"error: {line}" for line in str(error).splitlines()), file=sys.stderr)
        return 2
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        write_report(report, out)
    except OSError as error:
        print(f"error: cannot write {out} and {out.with_suffix('.md')}: {error}; nothing was written",
              file=sys.stderr)
        return 1
    print(markdown_table(report), end="")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["make-benchmark"]:
        return stoppable(lambda: benchmark_main(argv[1:]))
    return stoppable(lambda: evaluate_main(argv))


if __name__ == "__main__":
    sys.exit(main())
