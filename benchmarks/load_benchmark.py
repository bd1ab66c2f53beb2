#!/usr/bin/env python
"""Load time and peak memory of `weights.load` against diffusers' `from_single_file`, on the same file.

    python -m benchmarks.load_benchmark                      # writes a full-size fake SD 1.5 fp16 file (2.1 GB)
    python -m benchmarks.load_benchmark --file v1-5-pruned-emaonly-fp16.safetensors
    python -m benchmarks.load_benchmark --dtype float32 --repeat 3

(from the repository root; the child processes run there too, so that they import `benchmarks` and `tests`.)

Each load runs in a fresh Python process, so that one's caches and heap do not help or
hurt the next, and the two loaders alternate. The file is read once beforehand, so
both find it in the OS page cache. Reported per loader (median over --repeat runs):

    load s       wall time of the load call alone (imports excluded, first call in the process)
    peak RSS     the process's peak resident memory (VmHWM, Linux), imports included
    load RSS     peak RSS minus the RSS just before the load call: what loading costs
    touched RSS  the same after reading every weight once: memory-mapped pages now count too

diffusers gets a local config folder (model_index.json, the component configs and the
tokenizer files, written by tests/fakes.py) and `local_files_only=True`, since nothing may
be downloaded. The goal (issue "weights.load"): load s <= 0.3x diffusers', and no more memory.
Needs the reference extra (diffusers, transformers) for the diffusers side.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, time
import torch
kind, path, config, dtype = {kind!r}, {path!r}, {config!r}, getattr(torch, {dtype!r})
torch.set_num_threads(1)
if kind == "ours":
    from weights import load
else:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging
    logging.set_verbosity_error(); logging.disable_progress_bar()
from benchmarks.load_benchmark import status_bytes as status
before = status("VmRSS")
start = time.perf_counter()
if kind == "ours":
    loaded = load(path, dtype=dtype)
    modules = [loaded.unet, loaded.vae, loaded.text_encoder]
else:
    loaded = StableDiffusionPipeline.from_single_file(path, config=config, torch_dtype=dtype, local_files_only=True)
    modules = [loaded.unet, loaded.vae, loaded.text_encoder]
seconds = time.perf_counter() - start
load_peak = status("VmHWM")
with torch.no_grad():
    total = sum(float(p.float().sum()) for m in modules for p in m.parameters())
touched_peak = status("VmHWM")
tokenizer_seconds = 0.0
if kind == "ours":                     # how much of the load is the tokenizer's table building (clip/)
    from weights import presets
    start = time.perf_counter()
    presets.get("sd-1.5").build_tokenizer()
    tokenizer_seconds = time.perf_counter() - start
print(json.dumps(dict(seconds=seconds, before=before, load_peak=load_peak, touched_peak=touched_peak,
                      tokenizer_seconds=tokenizer_seconds,
                      params=sum(p.numel() for m in modules for p in m.parameters()))))
"""


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in bytes (Linux).

    VmHWM is this process's own peak; ru_maxrss is not (after fork + exec it starts from the parent's peak).
    """
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


WRITER = r"""
import torch
from tests import fakes
from weights import presets
fakes.write_single_file({path!r}, presets.get("sd-1.5"), dtype=torch.float16, ema_copies=False, values="constant")
"""


def run_child(kind: str, path: Path, config: Path, dtype: str) -> dict:
    code = CHILD.format(kind=kind, path=str(path), config=str(config), dtype=dtype)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_config_folder(folder: Path, spec) -> None:
    """What from_single_file reads besides the weights: configs and tokenizer, no safety checker."""
    from tests import fakes

    for name, content in fakes.diffusers_files(spec, weights=False).items():
        fakes._write(folder / name, content)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index))


def measure_loads(path: Path | None, dtype: str = "float16", repeat: int = 3) -> dict:
    """{"ours": row, "diffusers": row}, each the medians over `repeat` fresh processes, alternating.

    A row: seconds (load call), peak (peak RSS, MiB), load and touched (RSS the load adds, MiB), and
    tokenizer_seconds (ours only; see the module docstring). `path` None writes a full-size fake
    SD 1.5 fp16 single file first (about 20 s, 2.1 GB in the temp folder, removed afterwards).
    """
    from weights import presets

    with tempfile.TemporaryDirectory(prefix="load_benchmark_") as scratch:
        scratch = Path(scratch)
        if path is None:
            path = scratch / "v1-5-pruned-emaonly-fp16.safetensors"
            print(f"writing a full-size fake SD 1.5 fp16 checkpoint to {path} ...", flush=True)
            subprocess.run([sys.executable, "-c", WRITER.format(path=str(path))], check=True, cwd=ROOT)
        write_config_folder(scratch / "config", presets.get("sd-1.5"))
        with open(path, "rb") as f:                       # into the page cache, for both
            while f.read(1 << 24):
                pass
        size = path.stat().st_size
        runs = {"ours": [], "diffusers": []}
        for _ in range(repeat):
            for kind in runs:
                runs[kind].append(run_child(kind, path, scratch / "config", dtype))
    rows = {"file": path.name, "size_gb": size / 1e9}
    for kind, results in runs.items():
        def median(f, results=results):
            return statistics.median(f(r) for r in results)
        rows[kind] = dict(seconds=median(lambda r: r["seconds"]), peak=median(lambda r: r["load_peak"]) / 2**20,
                          load=median(lambda r: r["load_peak"] - r["before"]) / 2**20,
                          touched=median(lambda r: r["touched_peak"] - r["before"]) / 2**20,
                          tokenizer_seconds=median(lambda r: r["tokenizer_seconds"]))
    return rows


def main() -> None:
    if not __package__:
        raise SystemExit("run it from the repository root as a module: python -m benchmarks.load_benchmark")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="an SD 1.5 single file; default: write a full-size fake one")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import torch

    rows = measure_loads(args.file, args.dtype, args.repeat)
    print(f"\nfile: {rows['file']}, dtype {args.dtype}, median of {args.repeat} runs, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"{'':12}{'load s':>10}{'peak RSS MiB':>15}{'load RSS MiB':>15}{'touched RSS MiB':>18}")
    for kind in ("ours", "diffusers"):
        row = rows[kind]
        print(f"{kind:12}{row['seconds']:>10.2f}{row['peak']:>15.0f}{row['load']:>15.0f}{row['touched']:>18.0f}")
    print(f"\nof ours, building the CLIP tokenizer's tables (clip.Tokenizer, timed again after the load): "
          f"{rows['ours']['tokenizer_seconds']:.2f} s")
    ratio = rows["ours"]["seconds"] / rows["diffusers"]["seconds"]
    print(f"time ratio ours/diffusers: {ratio:.2f} (goal <= 0.30); "
          f"load RSS ratio: {rows['ours']['load'] / rows['diffusers']['load']:.2f} (goal <= 1)")


if __name__ == "__main__":
    main()
