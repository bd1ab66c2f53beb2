"""Our networks and Algorithm 1 against the reference implementations, on the same weights and inputs, in
each dtype of one run. From the repository root:

    python -m benchmarks.versus_diffusers                          # CPU: float32, and bfloat16 where native
    python -m benchmarks.versus_diffusers --only unet32 text       # some cases
    python -m benchmarks.versus_diffusers --dtypes float32         # one dtype
    python -m benchmarks.versus_diffusers --only whole_edit        # a whole 512² edit per dtype (long)
    python -m benchmarks.versus_diffusers --device cuda            # GPU, float16 (--dtypes, --compile)

Both sides hold the same full-size SD 1.5 weights (deterministic random values, `weights.fill_random_`;
the speed of a network does not depend on its values), moved into diffusers' and transformers' layouts
with diffusers' own converters (tests/parity.py), in the dtype of the row. Ours is built as a user gets
it from `weights.load`: the plain network made fast by `fast.optimize(model, device=..., dtype=...)`
(`ours_as_loaded`). In one process the two sides alternate call by call, ours first in even rounds and
the reference first in odd ones, and the table gives the medians, their ratio, and the largest relative
difference of the outputs (the check that both did the same work). Cases:

    unet32, unet64   UNet forward, batch 2 (a classifier-free-guidance pair), 32×32 / 64×64 latent, 77 tokens
    vae_encode       VAE encode of one 512×512 image (ours: `.mean`; diffusers: `latent_dist.mean`)
    vae_decode       VAE decode of one 64×64 latent to 512×512
    text             SD 1 text tower (ViT-L/14) on 2 × 77 tokens, against transformers' CLIPTextModel (SDPA)
    edit             Algorithm 1, 50 DDIM steps, start 0.25 (38 steps run), guidance 7.5, one sample:
                     `blend.blended_latent_diffusion(variant="official")` on our UNet against the official
                     script's loop (diffusers' DDIMScheduler) on diffusers' UNet; --loop-size pixels
                     (256 on the CPU to stay within minutes, 512 on a GPU)
    load             `weights.load` against `StableDiffusionPipeline.from_single_file`, fresh processes
                     (benchmarks/load_benchmark.py; a 2.1 GB fake fp16 file in the temp folder; float16)
    whole_edit       not in the default set: `blend.edit` end to end (VAE encode, text, 50 DDIM steps from
                     start 0.25 with guidance 7.5, 4 samples, decode) at --edit-size (512) on SD 1.5-size
                     components, ours only; its ratio is its time over our own float32 whole_edit's
                     (about 20 min in float32 at 512² on 2 cores; --edit-size, --edit-steps and
                     --edit-samples shrink it; --edit-sampler ddim|euler|dpm++2m picks the sampler)

OpenVINO, a third side on the CPU in float32 for unet32, unet64 and vae_decode (the benchmark extra,
`pip install ".[benchmark]"`; `make benchmark` installs it): our plain network, with the weights the other
two sides hold and before `fast.optimize`, converted with `openvino.convert_model(module, example_input=...)`
and, reshaped to the static input shapes of each case, compiled with
`openvino.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})` (otherwise
OpenVINO's defaults: the LATENCY hint, all cores; the precision is pinned because OpenVINO's default on a
CPU with bf16 is bf16). Its calls alternate with the other two (ours, reference, OpenVINO in even rounds,
the reverse in odd ones), and its output is checked against ours. Without openvino (or with
--no-openvino) its columns read "–".
GFLOP/s: each case's floating-point operations, counted once with `torch.utils.flop_counter.FlopCounterMode`
on our plain network (on the meta device: 2 per multiply-add, as torch counts), over each side's median
time; the reference line is this machine's float32 rate on a 4096×4096 matrix product.

Memory: on the CPU, the peak resident memory during the call above the resident memory just before it
(VmHWM is reset through /proc/self/clear_refs; Linux), that is, what the call allocates; on a GPU,
`torch.cuda.max_memory_allocated` during the call, weights included. The table is printed and written
as JSON (--json) with the machine: CPU model and flags, torch's CPU capability, cores, threads and the
versions. Needs the reference extra (diffusers, transformers).
"""
import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import fast

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it from the repository root as a module: python -m benchmarks.versus_diffusers")

from benchmarks.load_benchmark import status_bytes  # noqa: E402
from tests.parity import max_relative_error, random_model  # noqa: E402  (max|a − e| / max|e|)

ROOT = Path(__file__).resolve().parent.parent
CASES = ("unet32", "unet64", "vae_encode", "vae_decode", "text", "edit", "load", "whole_edit")
DEFAULT_CASES = CASES[:-1]                                # whole_edit takes tens of minutes: opt-in
# CPU targets: time ours/reference, per dtype; whole_edit's is its bfloat16 time over its float32 time.
TARGETS = {"float32": {"unet32": 0.85, "unet64": 0.85, "vae_decode": 0.9},
           "bfloat16": {"unet32": 0.65, "unet64": 0.65, "whole_edit": 0.33}}
OPENVINO_CASES = ("unet32", "unet64", "vae_decode")    # float32 on the CPU only
SIDES = ("ours", "reference", "openvino")
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16")


def ours_as_loaded(model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                   compile: bool = False) -> torch.nn.Module:
    """Our network as `weights.load` gives it: the plain one moved to device and dtype and made fast there."""
    return fast.optimize(model, device=device, dtype=dtype, compile=compile)


# --- measuring ------------------------------------------------------------------------------------

def measure(fn, device: torch.device) -> tuple:
    """(seconds, peak bytes, output) of one call of fn(); see the module docstring for the memory."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:   # "5": reset this process's peak RSS to its RSS
            f.write("5")
        before = status_bytes("VmRSS")
    start = time.perf_counter()
    output = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else status_bytes("VmHWM") - before
    return seconds, peak, output


def compare(name: str, dtype: torch.dtype, ours, reference, device: torch.device, repeat: int, warmup: bool,
            openvino=None, flops: int | None = None) -> dict:
    """Alternate ours(), reference() and, where given, openvino() `repeat` times each: medians, ratios, output
    differences (ours against the reference, OpenVINO against ours) and, where flops is given, GFLOP/s."""
    sides = {"ours": ours, "reference": reference}
    if openvino is not None:
        sides["openvino"] = openvino
    if warmup:                                            # first calls pay one-time costs (kernel setup)
        for fn in sides.values():
            fn()
    times, peaks, outputs = {side: [] for side in sides}, {side: [] for side in sides}, {}
    for round_ in range(repeat):
        order = list(sides.items())
        for side, fn in order if round_ % 2 == 0 else order[::-1]:
            seconds, peak, outputs[side] = measure(fn, device)
            times[side].append(seconds)
            peaks[side].append(peak)
    row = {"case": name, "dtype": dtype_name(dtype), "repeat": repeat}
    for side in SIDES:
        row[f"{side}_s"] = statistics.median(times[side]) if side in sides else None
        row[f"{side}_peak_mib"] = statistics.median(peaks[side]) / 2**20 if side in sides else None
        row[f"{side}_times"] = times.get(side)
    row["ratio"] = row["ours_s"] / row["reference_s"]
    row["max_rel_diff"] = max_relative_error(outputs["ours"], outputs["reference"])
    row["ratio_openvino"] = row["ours_s"] / row["openvino_s"] if openvino is not None else None
    row["openvino_max_rel_diff"] = (max_relative_error(outputs["openvino"], outputs["ours"])
                                    if openvino is not None else None)
    row["gflop"] = flops / 1e9 if flops is not None else None
    for side in SIDES:
        row[f"{side}_gflops"] = flops / 1e9 / row[f"{side}_s"] if flops is not None and side in sides else None
    openvino_note = (f"; OpenVINO {row['openvino_s']:.3f} s, ours/OpenVINO {row['ratio_openvino']:.2f}, "
                     f"differs from ours by {row['openvino_max_rel_diff']:.1e}" if openvino is not None else "")
    print(f"  {name} {row['dtype']}: ours {row['ours_s']:.3f} s, reference {row['reference_s']:.3f} s, "
          f"ratio {row['ratio']:.2f}, peak {row['ours_peak_mib']:.0f} / {row['reference_peak_mib']:.0f} MiB, "
          f"outputs differ by {row['max_rel_diff']:.1e}{openvino_note}", flush=True)
    return row


def release_freed_memory() -> None:
    """Give the previous dtype's freed memory back to the system (glibc's malloc_trim), so that the next
    dtype's calls find no pages already resident and their peak memory reads as in a fresh process."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):          # not glibc: the peaks after the first dtype may read low
        pass


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- OpenVINO and FLOPs ---------------------------------------------------------------------------

OPENVINO_MISSING = "openvino is not installed: its columns read \"–\" (`make benchmark` installs it)"
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}   # the rest as OpenVINO sets it by default
OPENVINO_PROPERTIES = ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS")


def openvino_wanted(args, device: torch.device, dtype: torch.dtype, names) -> bool:
    """Whether one of the cases `names` gets an OpenVINO side in this row (CPU, float32, openvino importable)."""
    return (device.type == "cpu" and dtype == torch.float32 and args.openvino is not None
            and bool(set(names) & set(OPENVINO_CASES) & set(args.only)))


def openvino_side(args, module: torch.nn.Module, example_input: tuple):
    """module converted once with `openvino.convert_model` (it traces module on example_input); returns
    compile_for(inputs), which compiles the converted model for the CPU at the static shapes of inputs
    and gives a function of those torch inputs that returns a torch tensor."""
    started = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():   # tracing needs ordinary tensors
        warnings.simplefilter("ignore", torch.jit.TracerWarning)      # the shape checks traced as constants
        converted = args.openvino.convert_model(module, example_input=tuple(x.clone() for x in example_input))
    print(f"  OpenVINO: {type(module).__name__} converted in {time.perf_counter() - started:.0f} s", flush=True)

    def compile_for(inputs: tuple):
        started = time.perf_counter()
        model = converted.clone()
        model.reshape({port: args.openvino.PartialShape(list(x.shape))
                       for port, x in zip(model.inputs, inputs, strict=True)})
        compiled = args.openvino.compile_model(model, "CPU", OPENVINO_CONFIG)
        args.openvino_settings = {name: str(compiled.get_property(name)) for name in OPENVINO_PROPERTIES}
        print(f"  OpenVINO: compiled for {[tuple(x.shape) for x in inputs]} in "
              f"{time.perf_counter() - started:.0f} s; {args.openvino_settings}", flush=True)
        request = compiled.create_infer_request()

        def run() -> torch.Tensor:
            request.infer([x.numpy() for x in inputs])
            return torch.from_numpy(request.get_output_tensor(0).data.copy())
        return run
    return compile_for


class Decoder(torch.nn.Module):
    """The VAE's decode as a module's forward, for the conversion and the FLOP count."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent)


def count_flops(build, inputs: tuple) -> int:
    """Floating-point operations of build()(*inputs) as `FlopCounterMode` counts them (2 per multiply-add),
    on the meta device: shapes only, no arithmetic."""
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        build()(*(torch.empty(x.shape, dtype=x.dtype) for x in inputs))
    return counter.get_total_flops()


def matmul_gflops(repeat: int = 3, size: int = 4096) -> float:
    """This machine's float32 rate on a size×size matrix product (2·size³ operations), median of `repeat`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b                                                 # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


# --- the two sides --------------------------------------------------------------------------------

def plain(cls, config, dtype, device):
    """Our plain cls(config) with the `fill_random_` weights of seed 0 (as the golden fixtures build it)."""
    return random_model(cls, config, seed=0).to(device=device, dtype=dtype)


def unet_pair(args, spec, device, dtype) -> tuple:
    """Our UNet and diffusers' UNet2DConditionModel on the same weights (shared storage)."""
    from ldm import UNetModel
    from tests.parity import reference_unet

    model = plain(UNetModel, spec.unet, dtype, device)
    reference = reference_unet(model)
    openvino = None
    if openvino_wanted(args, device, dtype, ("unet32", "unet64")):   # the plain network, before fast.optimize
        openvino = openvino_side(args, model, unet_inputs(spec, 32, device, dtype))
    return ours_as_loaded(model, device, dtype, compile=args.compile), reference, openvino


def unet_inputs(spec, side: int, device, dtype) -> tuple:
    """(x, t, context) for a batch-2 UNet call at side×side, the same for every side of the comparison."""
    generator = torch.Generator().manual_seed(side)
    x = torch.randn(2, 4, side, side, generator=generator).to(device, dtype)
    context = torch.randn(2, 77, spec.unet.context_dim, generator=generator).to(device, dtype)
    return x, torch.tensor([500, 500], device=device), context


def unet_cases(args, spec, ours, reference, openvino, device, dtype) -> list:
    from ldm import UNetModel

    rows = []
    for name, side in (("unet32", 32), ("unet64", 64)):
        if name not in args.only:
            continue
        x, t, context = inputs = unet_inputs(spec, side, device, dtype)
        repeat = args.repeat if side == 32 else args.heavy_repeat
        rows.append(compare(name, dtype, lambda x=x, t=t, context=context: ours(x, t, context),
                            lambda x=x, t=t, context=context: reference(x, t, context).sample,
                            device, repeat, warmup=True,
                            openvino=None if openvino is None else openvino(inputs),
                            flops=count_flops(lambda: UNetModel(spec.unet), inputs)))
    return rows


def vae_cases(args, spec, device, dtype) -> list:
    from ldm import AutoencoderKL
    from tests.parity import reference_vae

    model = plain(AutoencoderKL, spec.vae, dtype, device)
    reference = reference_vae(model)
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, 512, 512, generator=generator) * 2 - 1).to(device, dtype)
    latent = torch.randn(1, 4, 64, 64, generator=generator).to(device, dtype)
    openvino = None
    if openvino_wanted(args, device, dtype, ("vae_decode",)):         # the plain network, before fast.optimize
        openvino = openvino_side(args, Decoder(model), (latent,))((latent,))
    ours = ours_as_loaded(model, device, dtype)
    small_image, small_latent = image[..., :64, :64], latent[..., :8, :8]
    rows = []
    if "vae_encode" in args.only:
        ours.encode(small_image), reference.encode(small_image)                              # warm up, small
        rows.append(compare("vae_encode", dtype, lambda: ours.encode(image).mean,
                            lambda: reference.encode(image).latent_dist.mean, device, args.heavy_repeat, warmup=False))
    if "vae_decode" in args.only:
        ours.decode(small_latent), reference.decode(small_latent)                            # warm up, small
        if openvino is not None:
            openvino()                                                                       # warm up, full size
        rows.append(compare("vae_decode", dtype, lambda: ours.decode(latent), lambda: reference.decode(latent).sample,
                            device, args.heavy_repeat, warmup=False,
                            openvino=openvino,
                            flops=count_flops(lambda: Decoder(AutoencoderKL(spec.vae)), (latent,))))
    return rows


def text_case(args, spec, device, dtype) -> list:
    from clip import TextEncoder
    from tests.parity import reference_sd1_text_encoder

    model = plain(TextEncoder, spec.text, dtype, device)
    reference = reference_sd1_text_encoder(model, attn_implementation="sdpa").to(device, dtype)
    ours = ours_as_loaded(model, device, dtype)
    ids = spec.build_tokenizer()(["a photograph of an astronaut riding a horse", ""]).to(device)
    return [compare("text", dtype, lambda: ours(ids), lambda: reference(input_ids=ids).last_hidden_state,
                    device, args.repeat, warmup=True)]


def edit_case(args, spec, ours, reference, device, dtype) -> list:
    from blend import blended_latent_diffusion
    from samplers import DDIMSampler
    from tests.parity import run_official_loop

    side = args.loop_size // 8
    generator = torch.Generator().manual_seed(0)
    z_init = torch.randn(1, 4, side, side, generator=generator).to(device, dtype)
    mask = torch.zeros(1, 1, side, side, device=device, dtype=dtype)
    mask[..., side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 1
    cond, uncond = (torch.randn(1, 77, spec.unet.context_dim, generator=generator).to(device, dtype)
                    for _ in range(2))
    sampler = DDIMSampler(spec.build_schedule(), 50, prediction_type=spec.prediction_type, offset=0)

    def run_ours():
        return blended_latent_diffusion(ours, sampler, z_init, mask, cond, uncond, guidance_scale=7.5, start=0.25,
                                        generator=torch.Generator(device).manual_seed(1), variant="official")

    def run_reference():
        return run_official_loop(lambda x, t, c: reference(x, t, c).sample, z_init, mask, cond, uncond,
                                 torch.Generator(device).manual_seed(1), guidance_scale=7.5, start=0.25)[0]

    return [compare("edit", dtype, run_ours, run_reference, device, args.edit_repeat, warmup=False)]


def whole_edit_case(args, spec, device, dtype) -> list:
    """`blend.edit` end to end on SD 1.5-size components (ours only); the ratio is filled in by add_dtype_ratios."""
    import numpy as np
    from PIL import Image

    from blend import edit
    from clip import TextEncoder
    from ldm import AutoencoderKL, UNetModel
    from weights.load import TINY_MODEL_SEEDS, Components

    def ours(cls, config, part, compile=False):      # the seeds of weights.load's "tiny" random components
        return ours_as_loaded(random_model(cls, config, TINY_MODEL_SEEDS[part]), device, dtype, compile=compile)

    components = Components(ours(UNetModel, spec.unet, "unet", args.compile), ours(AutoencoderKL, spec.vae, "vae"),
                            ours(TextEncoder, spec.text, "text_encoder"), spec.build_tokenizer(), spec)
    size = args.edit_size
    pixels = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))[None]   # a smooth random photograph
    pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear")[0]
    image = Image.fromarray((pixels.permute(1, 2, 0) * 255).round().byte().numpy())
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255

    def run():
        return edit(image, mask, "a red ball on the grass", model=components, steps=args.edit_steps,
                    sampler=args.edit_sampler, guidance_scale=7.5, start=0.25, num_samples=args.edit_samples,
                    seed=0, device=str(device), size=size)

    times, peaks = [], []
    for _ in range(args.edit_repeat):
        seconds, peak, results = measure(run, device)
        times.append(seconds)
        peaks.append(peak)
    assert len(results) == args.edit_samples and results[0].size == (size, size), "edit returned something else"
    row = {"case": "whole_edit", "dtype": dtype_name(dtype), "repeat": args.edit_repeat,
           "ours_s": statistics.median(times), "ours_times": times, "ours_peak_mib": statistics.median(peaks) / 2**20,
           "reference_s": None, "reference_peak_mib": None, "ratio": None, "max_rel_diff": None,
           "size": size, "steps": args.edit_steps, "sampler": args.edit_sampler, "samples": args.edit_samples}
    print(f"  whole_edit {row['dtype']}: ours {row['ours_s']:.1f} s at {size}², {args.edit_sampler}, "
          f"{args.edit_steps} steps, "
          f"{args.edit_samples} samples, peak {row['ours_peak_mib']:.0f} MiB", flush=True)
    return [row]


def add_dtype_ratios(rows: list) -> None:
    """whole_edit has no reference: its ratio is its time over our float32 whole_edit's, where there is one."""
    base = next((r for r in rows if r["case"] == "whole_edit" and r["dtype"] == "float32"), None)
    for row in rows:
        if base is not None and row["case"] == "whole_edit" and row is not base:
            row["ratio"], row["ratio_of"] = row["ours_s"] / base["ours_s"], "whole_edit float32 (ours)"


def load_case(args) -> list:
    from benchmarks.load_benchmark import measure_loads
    loads = measure_loads(None, "float16", args.repeat)
    ours, diffusers = loads["ours"], loads["diffusers"]
    row = {"case": "load", "dtype": "float16", "repeat": args.repeat, "ours_s": ours["seconds"],
           "reference_s": diffusers["seconds"], "ours_peak_mib": ours["load"], "reference_peak_mib": diffusers["load"],
           "ratio": ours["seconds"] / diffusers["seconds"], "max_rel_diff": None, "details": loads}
    print(f"  load: ours {row['ours_s']:.3f} s, reference {row['reference_s']:.3f} s, ratio {row['ratio']:.2f}, "
          f"RSS added {row['ours_peak_mib']:.0f} / {row['reference_peak_mib']:.0f} MiB", flush=True)
    return [row]


# --- the machine ----------------------------------------------------------------------------------

def cpu_info() -> tuple:
    """(model name, {flags}) from /proc/cpuinfo (x86 "flags", Arm "Features"); the platform's name elsewhere."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return name, flags
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    return name, flags


def machine_record(device: torch.device, threads: int) -> dict:
    import diffusers
    import transformers

    from weights.precision import cpu_has_native_bf16

    name, flags = cpu_info()
    record = {"cpu": name, "cpu_flags": [f for f in CPU_FLAGS if f in flags],
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_has_native_bf16": cpu_has_native_bf16(),
              "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)), "threads": threads,
              "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
              "transformers": transformers.__version__}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def default_dtypes(device: torch.device) -> list:
    """float32, plus bfloat16 on a CPU that computes it natively; float16 on a GPU."""
    from weights.precision import cpu_has_native_bf16
    if device.type != "cpu":
        return ["float16"]
    return ["float32", "bfloat16"] if cpu_has_native_bf16() else ["float32"]


# --- the table ------------------------------------------------------------------------------------

def print_table(rows: list, device: torch.device, matmul_rate: float | None) -> None:
    memory = "peak MiB above start" if device.type == "cpu" else "peak MiB allocated"

    def cell(row, key, form):
        return "–" if row.get(key) is None else form % row[key]

    print(f"\n{'case':12}{'dtype':>10}{'ours s':>10}{'ref s':>10}{'ratio':>8}{'target':>8}   {memory:>26}"
          f"   {'max rel diff':>12}{'OpenVINO s':>12}{'ours/OV':>9}{'OV diff':>9}   {'GFLOP/s ours / ref / OV':>24}")
    for row in rows:
        target = TARGETS.get(row["dtype"], {}).get(row["case"]) if device.type == "cpu" else None
        gflops = " / ".join(cell(row, f"{side}_gflops", "%.0f") for side in SIDES) if row.get("gflop") else ""
        print(f"{row['case']:12}{row['dtype']:>10}{row['ours_s']:>10.3f}{cell(row, 'reference_s', '%.3f'):>10}"
              f"{cell(row, 'ratio', '%.2f'):>8}{'≤ %.2f' % target if target else '':>8}   "
              f"{row['ours_peak_mib']:>12.0f} / {cell(row, 'reference_peak_mib', '%.0f'):<11}   "
              f"{'' if row['max_rel_diff'] is None else '%.1e' % row['max_rel_diff']:>12}"
              f"{cell(row, 'openvino_s', '%.3f'):>12}{cell(row, 'ratio_openvino', '%.2f'):>9}"
              f"{cell(row, 'openvino_max_rel_diff', '%.1e'):>9}   {gflops:>24}")
    if any(row["case"] == "whole_edit" for row in rows):
        print("(whole_edit: ours only; its ratio is its time over our float32 whole_edit's)")
    if matmul_rate is not None:
        print(f"(this machine's float32 4096×4096 matrix product, torch: {matmul_rate:.0f} GFLOP/s)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.versus_diffusers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(DEFAULT_CASES),
                        help="cases to run (default: all but whole_edit)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float16", "bfloat16"],
                        help="default: float32 on the CPU, plus bfloat16 where the CPU has it natively; "
                             "float16 on a GPU")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per side (unet32, text, load)")
    parser.add_argument("--heavy-repeat", type=int, default=2, help="timed calls per side (unet64, VAE at 512×512)")
    parser.add_argument("--edit-repeat", type=int, default=1, help="timed edits per side (edit, whole_edit)")
    parser.add_argument("--loop-size", type=int, help="the edit case's size in pixels (default: 256 on the CPU, "
                                                       "512 on a GPU)")
    parser.add_argument("--edit-size", type=int, default=512, help="whole_edit's size in pixels (default 512)")
    parser.add_argument("--edit-steps", type=int, default=50, help="whole_edit's steps (default 50)")
    parser.add_argument("--edit-sampler", choices=("ddim", "euler", "dpm++2m"), default="ddim",
                        help="whole_edit's sampler (default ddim)")
    parser.add_argument("--edit-samples", type=int, default=4, help="whole_edit's samples (default 4)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our UNet (not the reference)")
    parser.add_argument("--no-openvino", action="store_true", help="leave the OpenVINO side out")
    parser.add_argument("--json", type=Path,
                        help="where to write the results (default: benchmarks/results-<device>.json)")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtypes = [getattr(torch, name) for name in args.dtypes or default_dtypes(device)]
    args.loop_size = args.loop_size or (256 if device.type == "cpu" else 512)
    torch.set_num_threads(args.threads)
    args.openvino, args.openvino_settings = None, None
    if not args.no_openvino and device.type == "cpu":
        try:
            import openvino
            args.openvino = openvino
        except ImportError:
            print(OPENVINO_MISSING, flush=True)
    from diffusers.utils import logging
    logging.set_verbosity_error()
    from weights import presets
    spec = presets.get("sd-1.5")

    machine = machine_record(device, args.threads)
    if args.openvino is not None:
        machine["openvino"] = args.openvino.__version__
    matmul_rate = matmul_gflops() if device.type == "cpu" else None
    print(f"{machine.get('gpu', machine['cpu'])} ({machine['cpu_capability']}), {machine['cores']} cores, "
          f"{args.threads} threads; torch {torch.__version__}; {', '.join(map(dtype_name, dtypes))}; "
          f"SD 1.5 sizes; medians, ours vs reference", flush=True)
    started = time.perf_counter()
    rows = []
    for dtype in dtypes:
        with torch.inference_mode():
            if {"unet32", "unet64", "edit"} & set(args.only):
                unets = unet_pair(args, spec, device, dtype)
                rows += unet_cases(args, spec, *unets, device, dtype)
                if "edit" in args.only:
                    rows += edit_case(args, spec, *unets[:2], device, dtype)
                del unets
            if {"vae_encode", "vae_decode"} & set(args.only):
                rows += vae_cases(args, spec, device, dtype)
            if "text" in args.only:
                rows += text_case(args, spec, device, dtype)
        if "whole_edit" in args.only:
            rows += whole_edit_case(args, spec, device, dtype)
        release_freed_memory()
    if "load" in args.only:
        rows += load_case(args)
    add_dtype_ratios(rows)
    print_table(rows, device, matmul_rate)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")

    path = args.json or ROOT / "benchmarks" / f"results-{device.type}.json"
    path.write_text(json.dumps({
        "machine": machine, "device": str(device), "dtypes": [dtype_name(d) for d in dtypes],
        "loop_size": args.loop_size, "edit_size": args.edit_size, "edit_steps": args.edit_steps,
        "edit_sampler": args.edit_sampler,
        "edit_samples": args.edit_samples, "compile": args.compile, "matmul_gflops_float32": matmul_rate,
        "openvino_config": OPENVINO_CONFIG if args.openvino else None, "openvino_settings": args.openvino_settings,
        "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
