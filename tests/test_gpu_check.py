"""benchmarks/gpu_check.sh and benchmarks/gpu_benchmark.py on the CPU: the dry run that CI runs of the GPU
script (the tiny preset, 3 steps), the benchmark without diffusers, and the targets' pass/fail on a GPU."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
DRY_RUN_ROWS = [("float32", "eager"), ("float32", "cuda-graph"), ("bfloat16", "eager"), ("bfloat16", "cuda-graph"),
                ("float32", "compile")]
# Ours against diffusers on the same weights and inputs: float32 rounding alone, or bfloat16's (unit roundoff
# 2^-8, over a few layers); a different computation differs by O(1).
SAME_WORK = {"float32": 1e-5, "bfloat16": 5e-2}
TABLE_HEADER = "| dtype | variant | ours it/s | diffusers it/s |"
# The whole edit, after the loops and before the compile rows: DDIM at 50 steps, DPM-Solver++(2M) at its default 30
# (the dry run: 3 steps each, the tiny preset at 64²)
DRY_RUN_EDITS = ["edit512-ddim50", "edit512-dpm30"]
EDIT_TABLE_HEADER = "| case | sampler | steps (run) | dtype | seconds (median) | ÷ edit512-ddim50 |"


def environment(**extra) -> dict:
    env = {**os.environ, "PYTHON": sys.executable, **extra}
    env.pop("OUT", None)                      # the device tool's output folder, where one is set
    return env


@pytest.mark.processes
def test_gpu_check_dry_run_writes_every_row_to_the_json_and_prints_the_table(tmp_path):
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(tmp_path)], cwd=REPOSITORY,
                         env=environment(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    results = json.loads((tmp_path / "gpu-benchmark.json").read_text())
    assert results["dry_run"] and results["device"] == "cpu" and results["model"] == "tiny" and results["steps"] == 3
    assert [(row["dtype"], row["variant"]) for row in results["rows"]] == DRY_RUN_ROWS
    have_diffusers = importlib.util.find_spec("diffusers") is not None
    for row in results["rows"]:
        if row["variant"] == "cuda-graph":
            assert row["ours"]["status"] == row["diffusers"]["status"] == "skipped: needs CUDA"
            continue
        assert row["ours"]["status"] == "ok" and row["ours"]["it_s"] > 0 and len(row["ours"]["loop_s"]) == 3
        if have_diffusers:
            assert row["diffusers"]["status"] == "ok" and row["diffusers"]["it_s"] > 0
            assert row["max_rel_diff"] <= SAME_WORK[row["dtype"]], row
        else:
            assert row["diffusers"]["status"].startswith("missing")
    assert [target["result"] for target in results["targets"]] == ["n/a (dry run)"] * 2
    assert [edit["case"] for edit in results["edits"]] == DRY_RUN_EDITS
    for edit, sampler in zip(results["edits"], ["ddim", "dpm++2m"], strict=True):
        assert edit["status"] == "ok" and edit["sampler"] == sampler and edit["dtype"] == "float32"
        assert edit["steps"] == 3 and edit["image"] == [64, 64] and len(edit["seconds"]) == 3 and edit["median_s"] > 0
    log = (tmp_path / "gpu-benchmark.log").read_text()
    assert log.index("edit512-dpm30:") < log.index("float32 compile ...")        # the edits before the compile rows
    table = (tmp_path / "gpu-benchmark.md").read_text()
    assert TABLE_HEADER in table and EDIT_TABLE_HEADER in table and table in run.stdout
    assert "| edit512-dpm30 | dpm++2m | 3 (3) | float32 |" in table
    assert "| float32 | compile |" in table and "| target | measured | result |" in table
    assert "gpu-marked tests: skipped (dry run)" in run.stdout and "benchmark: every row measured" in run.stdout
    assert {"environment.txt", "gpu-benchmark.log"} <= {path.name for path in tmp_path.iterdir()}


@pytest.mark.processes
def test_gpu_benchmark_without_diffusers_reports_its_side_missing_and_measures_ours(tmp_path):
    hidden = tmp_path / "hidden" / "diffusers"       # an `import diffusers` that fails as an absent package does
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ModuleNotFoundError("No module named diffusers", name="diffusers")\n')
    path = os.pathsep.join(filter(None, [str(hidden.parent), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_benchmark", "--dry-run", "--dtypes", "float32",
                          "--json", str(out)], cwd=REPOSITORY, env=environment(PYTHONPATH=path),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["diffusers"] is None
    [row] = results["rows"]
    assert row["ours"]["status"] == "ok" and row["ours"]["it_s"] > 0
    assert row["diffusers"] == {"status": "missing: diffusers is not installed"} and row["speedup"] is None
    assert TABLE_HEADER in run.stdout and "| missing: diffusers is not installed |" in run.stdout


def fp16_row(variant: str, it_s: float, peak_gib: float | None = None) -> dict:
    ours = {"status": "ok", "it_s": it_s, **({"peak_gib": peak_gib} if peak_gib is not None else {})}
    return {"dtype": "float16", "variant": variant, "ours": ours, "diffusers": {"status": "ok", "it_s": 55.0}}


def test_targets_pass_or_fail_on_an_h200_from_the_best_float16_row_and_the_eager_peak():
    from benchmarks.gpu_benchmark import targets

    rows = [fp16_row("eager", 60.0, peak_gib=2.1), fp16_row("cuda-graph", 104.0),
            {**fp16_row("eager", 500.0, peak_gib=1.0), "dtype": "bfloat16"}]   # other dtypes do not count
    speed, peak = targets(rows, "NVIDIA H200", dry_run=False)
    assert (speed["value"], speed["result"]) == (104.0, "pass") and "cuda-graph" in speed["target"]
    assert (peak["value"], peak["result"]) == (2.1, "pass")
    speed, peak = targets([fp16_row("eager", 99.0, peak_gib=2.7)], "NVIDIA H100 80GB HBM3", dry_run=False)
    assert (speed["result"], peak["result"]) == ("fail", "fail")
    assert [t["result"] for t in targets(rows, "NVIDIA A100-SXM4-40GB", dry_run=False)] == \
        ["n/a (targets are for an H100/H200)"] * 2
    assert [t["result"] for t in targets([], "NVIDIA H200", dry_run=False)] == ["missing"] * 2


def test_plan_times_the_whole_edit_in_float16_with_ddim_at_50_and_dpm_solver_at_30_before_the_compile_rows():
    from benchmarks.gpu_benchmark import EDIT_CASES, parse_args, plan

    assert EDIT_CASES == {"edit512-ddim50": "ddim", "edit512-dpm30": "dpm++2m"}
    assert plan(parse_args(["--compile", "--cuda-graph"])) == [
        ("float16", "eager"), ("float16", "cuda-graph"), ("bfloat16", "eager"), ("bfloat16", "cuda-graph"),
        ("float16", "edit512-ddim50"), ("float16", "edit512-dpm30"), ("float16", "compile")]
