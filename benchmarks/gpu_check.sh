#!/usr/bin/env bash
# One prepared call on a GPU machine (made for a lent H100/H200 with no network; under 8 minutes there):
#   1. installs the carried wheels of .whl/ into a folder on PYTHONPATH (diffusers, open_clip, ftfy ...);
#   2. runs the gpu-marked tests (python -m pytest -q -m gpu);
#   3. runs benchmarks/blended_diffusion_cost.py on the GPU: one step of Blended Diffusion (ADM 256² with CLIP
#      guidance on 8 views) against one of BLD on the paper's LDM, float32, and their ratio an image;
#   4. runs benchmarks/gpu_benchmark.py: the SD 1.5 UNet at 512², 50 steps with CFG, float16 and bfloat16,
#      eager, CUDA graph and torch.compile, ours against diffusers; then, before the compile rows, the whole
#      512² edit in float16 (encode, Algorithm 1 at start 0.25 with CFG, decode; one sample, random SD 1.5
#      weights) with DDIM at 50 steps and with DPM-Solver++(2M) at its default 30 (rows edit512-ddim50 and
#      edit512-dpm30, a few seconds each); one JSON and a markdown table.
#
# Here, once (the wheels the GPU machine lacks, about 9 MB; .whl/ is ignored by git):
#     make gpu-wheels
# On the GPU machine, through the device tool:
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=500)   # then give_back
# On the CPU (CI runs this through tests/test_gpu_check.py): the tiny preset, 3 steps, no tests:
#     bash benchmarks/gpu_check.sh --dry-run
#
# Options:
#     --dry-run            the CPU check above
#     --out DIR            where the results go (default: $OUT if set, else benchmarks/gpu-results)
#     --no-tests           skip the gpu-marked tests
#     --no-compile         skip the torch.compile rows (about two minutes of compiling on a GPU)
#     --no-cuda-graph      skip the CUDA-graph rows
#     --time-limit S       seconds the whole run may take (default 460); the benchmark gets what the
#                          tests leave, and the rows it finished by then are kept
#     --test-limit S       seconds the tests may take (default 200); then they are stopped
#     --no-blended-diffusion  skip step 3 (it takes about a minute, mostly building the networks)
# Environment: PYTHON (default: .venv/bin/python if there, else python3), SITE (where the wheels go,
# default /tmp/site).
#
# Writes into DIR: environment.txt, gpu-tests.log, blended-diffusion.log, blended-diffusion.json, gpu-benchmark.log,
# gpu-benchmark.json, gpu-benchmark.md.
# Exits 0 when the tests passed and every benchmark row was measured (a missed target is a result, not an
# error), 1 otherwise, 2 on a bad option.
set -euo pipefail

dry_run=0 tests=1 compile=1 cuda_graph=1 time_limit=460 test_limit=200 blended=1 blended_limit=120
out="${OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --out) out="${2:?--out needs a folder}"; shift ;;
        --no-tests) tests=0 ;;
        --no-compile) compile=0 ;;
        --no-cuda-graph) cuda_graph=0 ;;
        --no-blended-diffusion) blended=0 ;;
        --test-limit) test_limit="${2:?--test-limit needs seconds}"; shift ;;
        --time-limit) time_limit="${2:?--time-limit needs seconds}"; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option '$1'; expected --dry-run, --out DIR, --no-tests, --no-compile," \
                "--no-cuda-graph, --no-blended-diffusion, --time-limit S or --test-limit S (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for seconds in "$time_limit" "$test_limit"; do
    case "$seconds" in
        '' | *[!0-9]*) echo "error: a time limit must be whole seconds, got '$seconds'" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${out:-benchmarks/gpu-results}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x .venv/bin/python ]; then
    python=.venv/bin/python
else
    python=python3
fi
export PYTHONUNBUFFERED=1
started=$SECONDS

say() { printf '\n== %s\n' "$*"; }

# --- 1. the carried wheels (the GPU machine has no network) ------------------------------------------------
if [ "$dry_run" = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
    site="${SITE:-/tmp/site}"
    wheels=(.whl/*.whl)
    say "installing ${#wheels[@]} carried wheels into $site"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
elif [ "$dry_run" = 0 ]; then
    say "no .whl/*.whl here: using the packages installed (make gpu-wheels, then carry .whl)"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

say "environment ($python) -> $out/environment.txt"
{
    date -u
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    fi
    "$python" - <<'EOF'
import importlib.metadata
import platform

import torch

print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "cuda available", torch.cuda.is_available())
for name in ("diffusers", "transformers", "open_clip_torch", "ftfy", "huggingface_hub", "safetensors", "einops"):
    try:
        print(name, importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        print(name, "missing")
EOF
} 2>&1 | tee "$out/environment.txt"

# --- 2. the gpu-marked tests ---------------------------------------------------------------------------------
tests_status="skipped" tests_ok=1
if [ "$dry_run" = 1 ]; then
    say "dry run: the gpu-marked tests are not run (on a GPU: $python -m pytest -q -m gpu)"
    tests_status="skipped (dry run)"
elif [ "$tests" = 1 ]; then
    parallel=()
    if "$python" -c "import xdist" 2>/dev/null; then
        parallel=(-n 4)          # the random full-size weights are drawn on the CPU: four at a time
    fi
    say "gpu-marked tests (at most ${test_limit} s) -> $out/gpu-tests.log"
    set +e
    timeout -k 10 "$test_limit" "$python" -m pytest -q -m gpu -rs --durations=10 -p no:cacheprovider "${parallel[@]}" \
        2>&1 | tee "$out/gpu-tests.log"
    status=${PIPESTATUS[0]}
    set -e
    case "$status" in
        0) tests_status="passed" ;;
        124) tests_status="stopped after ${test_limit} s"; tests_ok=0 ;;
        *) tests_status="failed (exit $status)"; tests_ok=0 ;;
    esac
fi

# --- 3. Blended Diffusion's step against BLD's --------------------------------------------------------------
blended_status="skipped"
if [ "$dry_run" = 1 ]; then
    say "dry run: Blended Diffusion's cost is not measured (full size only; on the CPU: $python -m benchmarks.blended_diffusion_cost)"
    blended_status="skipped (dry run)"
elif [ "$blended" = 1 ]; then
    say "Blended Diffusion's step against BLD's (at most ${blended_limit} s) -> $out/blended-diffusion.log"
    set +e
    timeout -k 10 "$blended_limit" "$python" -m benchmarks.blended_diffusion_cost --device cuda --repeats 3 \
        --json "$out/blended-diffusion.json" 2>&1 | tee "$out/blended-diffusion.log"
    status=${PIPESTATUS[0]}
    set -e
    case "$status" in
        0) blended_status="measured" ;;
        124) blended_status="stopped after ${blended_limit} s" ;;
        *) blended_status="failed (exit $status)" ;;
    esac
fi

# --- 4. the benchmark ----------------------------------------------------------------------------------------
benchmark=(-m benchmarks.gpu_benchmark --json "$out/gpu-benchmark.json" --table "$out/gpu-benchmark.md")
[ "$dry_run" = 1 ] && benchmark+=(--dry-run)
[ "$compile" = 1 ] && benchmark+=(--compile)
[ "$cuda_graph" = 1 ] && benchmark+=(--cuda-graph)
rm -f "$out/gpu-benchmark.json" "$out/gpu-benchmark.md"
benchmark_limit=$((time_limit - (SECONDS - started)))
[ "$benchmark_limit" -ge 60 ] || benchmark_limit=60
say "benchmark (at most ${benchmark_limit} s): $python ${benchmark[*]} -> $out/gpu-benchmark.log"
set +e
timeout -k 10 "$benchmark_limit" "$python" "${benchmark[@]}" 2>&1 | tee "$out/gpu-benchmark.log"
status=${PIPESTATUS[0]}
set -e
case "$status" in
    0) benchmark_status="every row measured" ;;
    124) benchmark_status="stopped after ${benchmark_limit} s (the rows done by then are in the JSON)" ;;
    *) benchmark_status="failed (exit $status)" ;;
esac
if [ "$status" != 0 ] && [ -f "$out/gpu-benchmark.json" ]; then    # the table of the rows written so far
    "$python" -m benchmarks.gpu_benchmark --report "$out/gpu-benchmark.json" >"$out/gpu-benchmark.md"
    cat "$out/gpu-benchmark.md"
fi

say "summary ($((SECONDS - started)) s)"
echo "gpu-marked tests: $tests_status"
echo "Blended Diffusion's cost: $blended_status"
echo "benchmark: $benchmark_status"
echo "results: $out"
[ "$status" = 0 ] && [ "$tests_ok" = 1 ]
