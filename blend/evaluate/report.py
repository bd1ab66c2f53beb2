"""The evaluation report as JSON and as a markdown table in the form of the paper's Table 1.

One row per results folder, side by side:

    | results | batch precision ↑ | top-5 | batch diversity ↑ | best-result precision ↑ | inputs | results |

then the settings (judge, classes, crop, LPIPS network) and, for scale, the paper's own numbers,
which were measured with a classifier, crop and LPIPS network it does not name.
"""
import json
from pathlib import Path

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
    """Write `json_path` and the table beside it (same name, .md); neither may exist. Returns both paths."""
    json_path = Path(json_path)
    table_path = json_path.with_suffix(".md")
    for path in (json_path, table_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; the evaluation never overwrites: choose another --out")
    for path, text in ((json_path, json.dumps(report, indent=2) + "\n"), (table_path, markdown_table(report))):
        temporary = path.with_name(f".{path.name}.incomplete")
        temporary.write_text(text, encoding="utf-8")
        temporary.rename(path)
    return json_path, table_path
