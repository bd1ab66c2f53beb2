"""The SD 1.5 UNet on a GPU: UNet calls per second in a 50-step CFG loop and peak memory, ours against diffusers;
and the whole 512² edit, with DDIM at 50 steps and with DPM-Solver++(2M) at its default 30.

    python -m benchmarks.gpu_benchmark                          # float16 and bfloat16, eager (needs CUDA)
    python -m benchmarks.gpu_benchmark --compile --cuda-graph   # also torch.compile and CUDA-graph rows
    python -m benchmarks.gpu_benchmark --dry-run                # the CPU, the tiny preset, 3 steps (CI)
    python -m benchmarks.gpu_benchmark --report results.json    # the table of a results file

Run from the repository root; benchmarks/gpu_check.sh runs it after the gpu-marked tests.

Weights. Both sides hold the same full-size SD 1.5 UNet: deterministic random values (`weights.fill_random_`,
seed 0; the speed of a network does not depend on its values), moved into diffusers' UNet2DConditionModel
by diffusers' own converter and sharing our storage (tests/parity.py `reference_unet`). Ours runs as
`weights.load` gives it, through `fast.optimize(unet, device=..., dtype=...)`.

The loop. What Algorithm 1 runs per step, less the blend: 50 DDIM steps (`samplers.DDIMSampler`), each one
UNet call on the classifier-free-guidance pair [uncond; cond] (batch 2, a 64×64 latent for 512² images,
77 tokens) and guidance 7.5 (`samplers.guided_model_output`). it/s = steps / seconds of the loop: the
median of --repeat loops per side, the two sides alternating loop by loop (ours first in even rounds),
after one warm-up loop each. The table also gives the largest relative difference between the two sides'
outputs of one call on the same inputs (the check that both did the same work).

Peak memory, eager rows only: one UNet call at batch 1 (one image, no CFG pair), the model's weights plus
the most `torch.cuda.max_memory_allocated` rose above the memory allocated just before the call. That is
what a process holding this UNet alone would reach, whatever else this process holds.

Variants:
    eager        the modules as they are
    compile      `torch.compile(module, backend=--compile-backend)` on each side, the same call for both
                 (compiled-vs-compiled); compiling happens in the warm-up loop, which is not timed
    cuda-graph   one UNet call captured as a `torch.cuda.CUDAGraph` with static inputs: the batch-2
                 (x, t, context) buffers are filled, three calls run on a side stream (as the CUDA-graph
                 notes of PyTorch ask), then one call is recorded under `torch.cuda.graph`. Each step copies
                 its inputs into the static buffers, replays the graph and reads its static output; the
                 guidance and the DDIM update stay eager.

--dry-run: the CPU on one thread, the "tiny" preset at its own size (8×8 latent), 3 steps, float32 and
bfloat16; the compile rows with the "eager" backend (dynamo traces the modules, nothing is generated), the
CUDA-graph rows marked skipped. The JSON and the table have the same shape. It checks the code, not the speed.
Without diffusers, the diffusers side is reported as missing.

The whole edit (rows "edit512-ddim50" and "edit512-dpm30", ours only, in the first of --dtypes, after the eager
and CUDA-graph rows and before the compile rows): what `blend.edit` runs for one sample of a 512² photograph on
SD 1.5, from the photograph's tensor to the decoded image, on random weights (`weights.fill_random_`, seed 0):
line 2's z_init = s·E(x), Algorithm 1 (variant paper, start 0.25, a 256² square mask) with classifier-free
guidance 7.5 on the sampler that `blend.editor.build_sampler` builds, and line 9's decode (`AutoencoderKL.decode`,
which runs float16 weights in float32). The prompt's context is random, as in the loop above: the text encoder is
not timed. The seconds are the median of --repeat edits after one warm-up edit. DDIM runs 50 steps, the CLI's
default; DPM-Solver++(2M) runs its CLI default, 30, where it matches DDIM-50's error on the exact toy model
(benchmarks/README.md, "Samplers against the exact solution"; blend.options.DEFAULT_STEPS). The dry run edits
the tiny preset at its own size (64²) with --steps (3) for both.

The JSON (--json, rewritten after every row): the machine, torch's and diffusers' versions, the rows and
the targets with their results; the markdown table is printed (and written beside it with --table).
"""
import argparse
import functools
import importlib.util
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

import fast
from blend.algorithm import blended_latent_diffusion
from blend.editor import build_sampler
from blend.options import DEFAULT_STEPS
from ldm import AutoencoderKL, UNetModel
from samplers import DDIMSampler, guided_model_output
from weights import presets

ROOT = Path(__file__).resolve().parent.parent
GUIDANCE_SCALE = 7.5
TOKENS = 77
GIB = 2**30
# Targets on an H100 or H200 (issue 18): diffusers' eager UNet runs at about 55 it/s there, compiled about 66.
TARGET_IT_S = 100.0          # ours, UNet calls per second at batch 2 (the CFG pair), float16, best variant
TARGET_PEAK_GIB = 2.6        # ours, peak memory at batch 1, float16, eager
TARGET_GPUS = ("H100", "H200")
# The whole edit: case → the --sampler it runs at its CLI default steps (blend.options.DEFAULT_STEPS)
EDIT_CASES = {f"edit512-ddim{DEFAULT_STEPS['ddim']}": "ddim", f"edit512-dpm{DEFAULT_STEPS['dpm++2m']}": "dpm++2m"}
EDIT_START = 0.25            # the CLI's --start


# --- the two sides ----------------------------------------------------------------------------------------------

@functools.cache
def parity():
    """tests/parity.py (random networks, diffusers' UNet on our weights, the comparison figure), loaded from its
    file, so that a top-level `tests` package that some wheel installs cannot stand in for it."""
    spec = importlib.util.spec_from_file_location("parity", ROOT / "tests" / "parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def our_unet(base: UNetModel, device: torch.device, dtype: torch.dtype) -> UNetModel:
    """`base`'s weights on device in dtype (tensor by tensor, no copy on the CPU), through the fast path that
    `weights.load` applies."""
    with torch.device("meta"):
        unet = UNetModel(base.config)
    unet.load_state_dict({k: v.to(device, dtype) for k, v in base.state_dict().items()}, strict=True, assign=True)
    return fast.optimize(unet.eval(), device=device, dtype=dtype)


def diffusers_unet(ours: UNetModel):
    """(diffusers' UNet2DConditionModel sharing our weights, None), or (None, why it is missing)."""
    try:
        from diffusers.utils import logging
    except ImportError as error:
        return None, f"missing: {error.name or 'diffusers'} is not installed"
    logging.set_verbosity_error()
    try:
        return parity().reference_unet(ours), None
    except Exception as error:     # measure ours all the same
        traceback.print_exc()
        return None, failure(error)


def failure(error: Exception) -> str:
    """A row's status for an error: its type and the first line of its message."""
    return f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


def call_ours(unet):
    return lambda x, t, context: unet(x, t, context)


def call_diffusers(unet):
    return lambda x, t, context: unet(x, t, encoder_hidden_states=context, return_dict=False)[0]


class GraphedCall:
    """One UNet call recorded as a CUDA graph on static inputs, replayed on each call (module docstring)."""

    def __init__(self, call, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
        self.inputs = (x.clone(), t.clone(), context.clone())
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):                  # warm-up calls: workspaces, kernel choices
            for _ in range(3):
                call(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = call(*self.inputs)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(self.inputs, (x, t, context), strict=True):
            buffer.copy_(value)
        self.graph.replay()
        return self.output


# --- measuring --------------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cfg_loop(call, sampler: DDIMSampler, z: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """The DDIM loop with classifier-free guidance: one call on the pair [uncond; cond] per step."""
    for t in sampler.timesteps.tolist():
        z, _ = sampler.step(guided_model_output(call, z, t, cond, uncond, GUIDANCE_SCALE), t, z)
    return z


def loop_seconds(run, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def peak_gib(call, module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
    """The weights plus what one call allocates on top (module docstring); None on the CPU."""
    if x.device.type != "cuda":
        return None
    weights = sum(p.numel() * p.element_size() for p in [*module.parameters(), *module.buffers()])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call(x, t, context)
    torch.cuda.synchronize()
    return (weights + torch.cuda.max_memory_allocated() - before) / GIB


def compare_loops(calls: dict, inputs: dict, sampler: DDIMSampler, device: torch.device, repeat: int) -> dict:
    """{side: {"it_s", "loop_s"}}: one warm-up loop per side, then `repeat` alternating rounds."""
    runs = {side: (lambda call=call: cfg_loop(call, sampler, inputs["z"], inputs["cond"], inputs["uncond"]))
            for side, call in calls.items()}
    for run in runs.values():
        run()
    seconds = {side: [] for side in runs}
    order = list(runs)
    for round_ in range(repeat):
        for side in order if round_ % 2 == 0 else order[::-1]:
            seconds[side].append(loop_seconds(runs[side], device))
    steps = len(sampler.timesteps)
    return {side: {"it_s": steps / statistics.median(s), "loop_s": s} for side, s in seconds.items()}


def measure_variant(variant: str, models: dict, inputs: dict, sampler, device, args) -> dict:
    """{side: {...}} and the outputs' difference for one variant of the modules in `models`."""
    x, t, context = inputs["x"], inputs["t"], inputs["context"]
    wrap = {"ours": call_ours, "diffusers": call_diffusers}
    calls = {}
    for side, module in models.items():
        if variant == "compile":
            module = torch.compile(module, backend=args.compile_backend)
        calls[side] = wrap[side](module)
        if variant == "cuda-graph":
            calls[side] = GraphedCall(calls[side], x, t, context)
    result = {side: {"status": "ok"} for side in calls}
    if variant == "eager":
        for side, call in calls.items():
            result[side]["peak_gib"] = peak_gib(call, models[side], x[:1], t[:1], context[:1])
    for side, timing in compare_loops(calls, inputs, sampler, device, args.repeat).items():
        result[side].update(timing)
    if len(calls) == 2:
        outputs = [call(x, t, context).float() for call in calls.values()]
        result["max_rel_diff"] = parity().max_relative_error(*outputs)
    return result


# --- the rows ---------------------------------------------------------------------------------------------------

def make_inputs(spec, side: int, dtype: torch.dtype, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    channels, width = spec.unet.in_channels, spec.unet.context_dim
    z = torch.randn(1, channels, side, side, generator=generator)
    cond, uncond = (torch.randn(1, TOKENS, width, generator=generator) for _ in range(2))
    inputs = {"z": z, "cond": cond, "uncond": uncond, "x": torch.cat([z, z]), "context": torch.cat([uncond, cond])}
    inputs = {name: value.to(device, dtype) for name, value in inputs.items()}
    inputs["t"] = torch.tensor([500, 500], device=device)
    return inputs


def run_row(dtype_name: str, models: dict, missing: str | None, variant: str, spec, side, sampler, device,
            args) -> dict:
    dtype = getattr(torch, dtype_name)
    row = {"dtype": dtype_name, "variant": variant, "steps": len(sampler.timesteps), "batch": 2,
           "latent": [side, side], "ours": {}, "diffusers": {"status": missing} if missing else {}}
    if variant == "cuda-graph" and device.type != "cuda":
        row["ours"]["status"] = row["diffusers"]["status"] = "skipped: needs CUDA"
        return row
    print(f"  {dtype_name} {variant} ...", flush=True)
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            row.update(measure_variant(variant, models, make_inputs(spec, side, dtype, device), sampler, device,
                                       args))
    except Exception as error:     # report the row as failed and go on with the others
        traceback.print_exc()
        for name in models:
            row[name] = {"status": failure(error)}
    ours, theirs = row["ours"].get("it_s"), row["diffusers"].get("it_s")
    row["speedup"] = ours / theirs if ours and theirs else None
    summary = ", ".join(f"{name} {row[name]['it_s']:.1f} it/s" if "it_s" in row[name] else
                        f"{name} {row[name]['status']}" for name in ("ours", "diffusers"))
    row["seconds"] = time.perf_counter() - started
    print(f"  {dtype_name} {variant}: {summary} ({row['seconds']:.0f} s)", flush=True)
    return row


def targets(rows: list, machine: str, dry_run: bool) -> list:
    """The two GPU targets, each with the measured value and "pass", "fail" or why it does not apply."""
    applies = not dry_run and any(name in machine for name in TARGET_GPUS)
    why_not = "n/a (dry run)" if dry_run else "n/a (targets are for an H100/H200)"
    fp16 = [row for row in rows if row["dtype"] == "float16" and "it_s" in row["ours"]]
    best = max(fp16, key=lambda row: row["ours"]["it_s"], default=None)
    eager = next((row for row in fp16 if row["variant"] == "eager"), None)
    peak = eager["ours"].get("peak_gib") if eager else None

    def result(value, ok):
        return why_not if not applies else "missing" if value is None else "pass" if ok else "fail"

    speed = best["ours"]["it_s"] if best else None
    return [
        {"target": f"ours ≥ {TARGET_IT_S:.0f} UNet it/s at batch 2, float16"
                   + (f" (best: {best['variant']})" if best else ""),
         "value": speed, "result": result(speed, speed is not None and speed >= TARGET_IT_S)},
        {"target": f"ours peak ≤ {TARGET_PEAK_GIB} GiB at batch 1, float16, eager",
         "value": peak, "result": result(peak, peak is not None and peak <= TARGET_PEAK_GIB)},
    ]


# --- the whole edit ---------------------------------------------------------------------------------------------

def edit_parts(spec, device: torch.device, dtype: torch.dtype) -> dict:
    """The autoencoder (random weights, seed 0, through the fast path), a photograph in [−1, 1], its mask at latent
    resolution (the middle half of each side) and the prompt's random context, for `edit_once`."""
    vae = fast.optimize(parity().random_model(AutoencoderKL, spec.vae, seed=0), device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    side = spec.image_size
    photograph = torch.rand(1, 3, side, side, generator=generator) * 2 - 1
    mask = torch.zeros(1, 1, side // 8, side // 8)
    mask[..., side // 32:3 * side // 32, side // 32:3 * side // 32] = 1
    cond, uncond = (torch.randn(1, TOKENS, spec.unet.context_dim, generator=generator) for _ in range(2))
    return {"vae": vae, "x": photograph.to(device, dtype), "mask": mask.to(device),
            "cond": cond.to(device, dtype), "uncond": uncond.to(device, dtype)}


def edit_once(unet, parts: dict, spec, sampler, generator: torch.Generator) -> torch.Tensor:
    """Algorithm 1 end to end for one sample, as blend.edit runs it: z_init = s·E(x) (line 2), lines 3–8, then
    x̂ = D(z_0 / s) (line 9)."""
    z_init = parts["vae"].encode(parts["x"]).mean * spec.scale_factor
    z = blended_latent_diffusion(unet, sampler, z_init, parts["mask"], parts["cond"], parts["uncond"],
                                 guidance_scale=GUIDANCE_SCALE, start=EDIT_START, generator=generator)
    return parts["vae"].decode(z / spec.scale_factor).float()


def run_edit(case: str, dtype_name: str, unet, spec, device, args) -> dict:
    """One row of the whole edit: {"case", "sampler", "steps", "steps_run", "seconds" (each timed edit),
    "median_s", "status"}."""
    name = EDIT_CASES[case]
    steps = args.steps if args.dry_run else DEFAULT_STEPS[name]
    sampler = build_sampler(name, spec, steps)
    row = {"case": case, "sampler": name, "steps": steps, "steps_run": steps - int(steps * EDIT_START),
           "dtype": dtype_name, "image": [spec.image_size, spec.image_size], "samples": 1}
    print(f"  {case} ({name}, {steps} steps, {dtype_name}) ...", flush=True)
    try:
        with torch.inference_mode():
            parts = edit_parts(spec, device, getattr(torch, dtype_name))
            generator = torch.Generator(device).manual_seed(0)
            edit_once(unet, parts, spec, sampler, generator)                     # warm-up
            row["seconds"] = [loop_seconds(lambda: edit_once(unet, parts, spec, sampler, generator), device)
                              for _ in range(args.repeat)]
        row["median_s"], row["status"] = statistics.median(row["seconds"]), "ok"
        print(f"  {case}: {row['median_s']:.2f} s per edit", flush=True)
    except Exception as error:     # report the row as failed and go on with the others
        traceback.print_exc()
        row["status"] = failure(error)
    return row


# --- the table --------------------------------------------------------------------------------------------------

def cell(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def side_cell(side: dict, key: str, digits: int = 1) -> str:
    return cell(side[key], digits) if key in side else side.get("status", "—") if key == "it_s" else "—"


def table(results: dict) -> str:
    lines = [f"{results['machine']}; torch {results['torch']}, diffusers {results['diffusers'] or 'missing'}; "
             f"{results['model']} UNet, {results['steps']} steps with CFG (batch 2), latent "
             f"{results['latent']}×{results['latent']}", "",
             "| dtype | variant | ours it/s | diffusers it/s | ours ÷ diffusers | ours peak GiB (batch 1) "
             "| diffusers peak GiB | max rel diff |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in results["rows"]:
        ours, theirs = row["ours"], row["diffusers"]
        diff = "—" if row.get("max_rel_diff") is None else f"{row['max_rel_diff']:.1e}"
        lines.append(f"| {row['dtype']} | {row['variant']} | {side_cell(ours, 'it_s')} | {side_cell(theirs, 'it_s')} "
                     f"| {cell(row.get('speedup'), 2)} | {side_cell(ours, 'peak_gib', 2)} "
                     f"| {side_cell(theirs, 'peak_gib', 2)} | {diff} |")
    if results.get("edits"):
        first = results["edits"][0]
        lines += ["", f"The whole {first['image'][0]}² edit, one sample (ours): encode, Algorithm 1 (start "
                      f"{EDIT_START}, CFG), decode", "",
                  f"| case | sampler | steps (run) | dtype | seconds (median) | ÷ {first['case']} |",
                  "| --- | --- | ---: | --- | ---: | ---: |"]
        first = first.get("median_s")
        for edit in results["edits"]:
            seconds = edit.get("median_s")
            lines.append(f"| {edit['case']} | {edit['sampler']} | {edit['steps']} ({edit['steps_run']}) "
                         f"| {edit['dtype']} | {cell(seconds, 2) if seconds is not None else edit['status']} "
                         f"| {cell(seconds / first, 2) if seconds is not None and first else '—'} |")
    lines += ["", "| target | measured | result |", "| --- | ---: | --- |"]
    lines += [f"| {t['target']} | {cell(t['value'], 2)} | {t['result']} |" for t in results["targets"]]
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name (Linux), else the architecture."""
    path = Path("/proc/cpuinfo")
    lines = path.read_text().splitlines() if path.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def write(results: dict, path: Path) -> None:
    """Write the JSON whole or not at all (a temporary file renamed over it)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=1))
    partial.replace(path)


# --- main -------------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the CPU, the tiny preset, 3 steps (see above)")
    parser.add_argument("--dtypes", nargs="+", choices=["float16", "bfloat16", "float32"],
                        help="default: float16 bfloat16 (dry run: float32 bfloat16)")
    parser.add_argument("--steps", type=int, help="DDIM steps per loop (default: 50; dry run: 3)")
    parser.add_argument("--repeat", type=int, default=3, help="timed loops per side and variant (default: 3)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows (both sides)")
    parser.add_argument("--compile-dtypes", nargs="+", choices=["float16", "bfloat16", "float32"],
                        help="the dtypes of the compile rows (default: the first of --dtypes)")
    parser.add_argument("--compile-backend", help="torch.compile's backend (default: inductor; dry run: eager)")
    parser.add_argument("--cuda-graph", action="store_true", help="add CUDA-graph rows (both sides)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/gpu-results/gpu-benchmark.json"),
                        help="where to write the results (default: %(default)s)")
    parser.add_argument("--table", type=Path, help="also write the markdown table there")
    parser.add_argument("--report", type=Path, metavar="JSON", help="only print the table of a results file")
    args = parser.parse_args(argv)
    args.dtypes = args.dtypes or (["float32", "bfloat16"] if args.dry_run else ["float16", "bfloat16"])
    args.compile_dtypes = args.compile_dtypes or args.dtypes[:1]
    args.compile_backend = args.compile_backend or ("eager" if args.dry_run else "inductor")
    args.steps = args.steps or (3 if args.dry_run else 50)
    return args


def plan(args) -> list:
    """[(dtype, variant or edit case)] in the order measured: the whole edits (EDIT_CASES) in the first dtype after
    the loops, the compile rows last, as they take the longest."""
    rows = [(dtype, variant) for dtype in args.dtypes
            for variant in ("eager", *(["cuda-graph"] if args.cuda_graph else []))]
    rows += [(args.dtypes[0], case) for case in EDIT_CASES]
    return rows + [(dtype, "compile") for dtype in args.compile_dtypes] if args.compile else rows


def header(args, spec, device: torch.device) -> dict:
    """What the results were measured on and with; the rows and targets follow."""
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = None
    return {"machine": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "device": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
            "diffusers": diffusers_version, "python": platform.python_version(), "model": spec.name,
            "latent": spec.image_size // 8, "steps": args.steps, "tokens": TOKENS, "guidance_scale": GUIDANCE_SCALE,
            "repeat": args.repeat, "compile_backend": args.compile_backend if args.compile else None,
            "dry_run": args.dry_run, "rows": [], "edits": [], "targets": []}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        print(table(json.loads(args.report.read_text())))
        return 0
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device: this benchmark needs a GPU (torch.cuda.is_available() is False); "
              "--dry-run runs it on the CPU with the tiny preset", file=sys.stderr)
        return 2
    if args.dry_run:
        torch.set_num_threads(1)       # it checks the code path, not the speed: no waiting on busy cores
    spec = presets.get("tiny" if args.dry_run else "sd-1.5")
    side = spec.image_size // 8
    sampler = DDIMSampler(spec.build_schedule(), args.steps, prediction_type=spec.prediction_type)
    results = header(args, spec, device)
    print(f"{results['machine']}; torch {torch.__version__}, diffusers {results['diffusers'] or 'missing'}; "
          f"{spec.name} UNet, {args.steps} steps, latent {side}×{side}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = parity().random_model(UNetModel, spec.unet, seed=0)          # float32, on the CPU
    built = None                                                         # (dtype, {side: module}, missing)
    for dtype_name, variant in plan(args):
        if built is None or built[0] != dtype_name:
            built = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            ours = our_unet(base, device, getattr(torch, dtype_name))
            reference, missing = diffusers_unet(ours)
            built = (dtype_name, {"ours": ours} | ({"diffusers": reference} if reference else {}), missing)
            del ours, reference
        if variant in EDIT_CASES:
            results["edits"].append(run_edit(variant, dtype_name, built[1]["ours"], spec, device, args))
        else:
            results["rows"].append(run_row(*built, variant, spec, side, sampler, device, args))
        results["targets"] = targets(results["rows"], results["machine"], args.dry_run)
        write(results, args.json)
    results["seconds"] = time.perf_counter() - started
    write(results, args.json)
    print("\n" + table(results))
    if args.table:
        args.table.write_text(table(results) + "\n")
    print(f"\nwrote {args.json} ({results['seconds']:.0f} s)")
    failed = [row for row in results["rows"] if any(row[name].get("status", "").startswith("failed")
                                                    for name in ("ours", "diffusers"))]
    failed += [edit for edit in results["edits"] if edit["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
