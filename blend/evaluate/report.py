"""The evaluation report as JSON and as a markdown table in the form of the paper's Table 1.

One row per results folder, side by side:

    | results | batch precision ↑ | top-5 | batch diversity ↑ | best-result precision ↑ | inputs | results |

then the settings (judge, classes, crop, LPIPS network) and, for scale, the paper's own numbers,
which were measured with a classifier, crop and LPIPS network it does not name.
"""
import json
import os
from pathlib import Path

from ..manifest import output_blocker

PAPER = ("Paper, Table 1 (its classifier, crop and LPIPS network are not stated): Blended Latent Diffusion "
         "28.66% / 0.115 / 54%, Blended Diffusion 10.4% / 0.106 / 36% (batch precision / batch diversity / "
         "best-result precision).")


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def number(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown_table(report: dict) -> str:
    """The report as a markdown table with its settings below it."""
    lines = ["| results | batch precision ↑ | top-5 | batch diversity ↑ | best-result precision ↑ | inputs | results |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for run in report["runs"]:
        best = percent(run["best_result_precision"])
        if run["best_result_precision"] is not None and run["ranked_inputs"] != run["inputs"]:
            best += f" ({run['ranked_inputs']} ranked)"
        lines.append(f"| {run['name']} | {percent(run['batch_precision'])} | {percent(run['batch_precision_top5'])} "
                     f"| {number(run['batch_diversity'])} | {best} | {run['inputs']} | {run['results']} |")
    settings = report["settings"]
    template = f", prompt template \"{settings['template'].format('{name}')}\"" if settings.get("template") else ""
    lines += ["",
              f"Judge: {settings['judge']}, top-1 over {settings['classes']} classes{template}. "
              f"Crop: {settings['crop']}. Diversity: {settings['lpips']}, crops resized to "
              f"{settings['lpips_size']}², mean over pairs of one input's results, then over inputs. "
              f"Best-result precision: the result that ranking.txt, or else --rank, puts first (– when not "
              f"ranked).",
              "", PAPER]
    return "\n".join(lines) + "\n"


def write_report(report: dict, json_path) -> tuple[Path, Path]:
    """Write `json_path` and the table beside it (same name, .md); neither may exist. Returns both paths.

    Both are written whole under hidden names first, then renamed, the JSON first: a run stopped between
    the two renames leaves the whole JSON and the table's hidden file, which `finish_interrupted` renames.
    """
    json_path = Path(json_path)
    table_path = json_path.with_suffix(".md")
    for path in (json_path, table_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; the evaluation never overwrites: choose another --out")
    written = [(hidden(json_path), json.dumps(report, indent=2) + "\n", json_path),
               (hidden(table_path), markdown_table(report), table_path)]
    try:
        for temporary, text, _ in written:
            temporary.write_text(text, encoding="utf-8")
    except BaseException:
        for temporary, _, _ in written:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, _, path in written:
        temporary.rename(path)
    return json_path, table_path


def hidden(path: Path) -> Path:
    """Where `path` is written before it is whole: `.<name>.incomplete` beside it."""
    return path.with_name(f".{path.name}.incomplete")


def finish_interrupted(json_path) -> None:
    """Tidy what a killed write_report left for `json_path`: finish the pair if the JSON is in place, else
    remove the hidden files (they were never renamed, so nothing else refers to them)."""
    json_path = Path(json_path)
    table_path = json_path.with_suffix(".md")
    if json_path.is_file() and not table_path.exists() and hidden(table_path).is_file() \
            and not hidden(json_path).exists():
        hidden(table_path).rename(table_path)
    for path in (json_path, table_path):
        if hidden(path).is_file():
            hidden(path).unlink()


def output_file_problem(path, option: str = "--out", table: bool = False) -> str | None:
    """Why the file `path` cannot be written (or None): a folder there, a file where a folder must be, a missing
    or unwritable folder. With `table`, the name must leave room for the .md beside it."""
    path = Path(path)
    if path.is_dir():
        return f"{option} {path} is a folder; expected the name of a file to write, like {path / 'out.json'}"
    if table and path.with_suffix(".md") == path:
        return f"{option} {path}: expected a .json name; the table is written beside it with the suffix .md"
    folder = path.parent
    blocker = output_blocker(folder)
    if blocker is not None:
        return f"{option} {path}: {blocker} is a file, not a folder; choose another {option}"
    if not folder.is_dir():
        return f"{option} {path}: the folder {folder} does not exist; create it or choose another {option}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{option} {path}: the folder {folder} is not writable; choose another {option}"
    return None
