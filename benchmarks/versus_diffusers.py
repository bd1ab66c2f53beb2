#!/usr/bin/env python
"""Our networks and Algorithm 1 against the reference implementations, on the same weights and inputs.

    python benchmarks/versus_diffusers.py                       # CPU, float32, all cases (about 8 minutes here)
    python benchmarks/versus_diffusers.py --only unet32 text    # some cases
    python benchmarks/versus_diffusers.py --device cuda         # GPU, float16 (--dtype bfloat16, --compile)

Both sides hold the same full-size SD 1.5 weights (deterministic random values, `weights.fill_random_`;
the speed of a network does not depend on its values), moved into diffusers' and transformers' layouts
with diffusers' own converters (tests/golden/fixtures_ldm.py, fixtures_clip.py). In one process the
two sides alternate call by call, ours first in even rounds and the reference first in odd ones,
and the table gives the medians, their ratio, and the largest relative difference of the outputs
(the check that both did the same work). Cases:

    unet32, unet64   UNet forward, batch 2 (a classifier-free-guidance pair), 32×32 / 64×64 latent, 77 tokens
    vae_encode       VAE encode of one 512×512 image (ours: `.mean`; diffusers: `latent_dist.mean`)
    vae_decode       VAE decode of one 64×64 latent to 512×512
    text             SD 1 text tower (ViT-L/14) on 2 × 77 tokens, against transformers' CLIPTextModel (SDPA)
    edit             Algorithm 1, 50 DDIM steps, start 0.25 (38 steps run), guidance 7.5, one sample:
                     `blend.blended_latent_diffusion(variant="official")` on our UNet against the official
                     script's loop (diffusers' DDIMScheduler) on diffusers' UNet; --edit-size pixels
                     (256 on the CPU to stay within minutes, 512 on a GPU)
    load             `weights.load` against `StableDiffusionPipeline.from_single_file`, fresh processes
                     (benchmarks/load_benchmark.py; a 2.1 GB fake fp16 file in the temp folder)

Memory: on the CPU, the peak resident memory during the call above the resident memory just before it
(VmHWM is reset through /proc/self/clear_refs; Linux), that is, what the call allocates; on a GPU,
`torch.cuda.max_memory_allocated` during the call, weights included. The table is printed and written
as JSON (--json). Needs the reference extra (diffusers, transformers).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "golden"), str(ROOT / "benchmarks")]

from helpers import max_relative_error  # noqa: E402  (the parity tests' figure: max|a − e| / max|e|)
from load_benchmark import status_bytes  # noqa: E402

CASES = ("unet32", "unet64", "vae_encode", "vae_decode", "text", "edit", "load")
TARGETS = {"unet32": 0.85, "unet64": 0.85, "vae_decode": 0.9}    # CPU time ratios ours/reference to reach


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


def compare(name: str, ours, reference, device: torch.device, repeat: int, warmup: bool) -> dict:
    """Alternate ours() and reference() `repeat` times each; medians, ratio and output difference."""
    if warmup:                                            # first calls pay one-time costs (kernel setup)
        ours(), reference()
    times, peaks = {"ours": [], "reference": []}, {"ours": [], "reference": []}
    outputs = {}
    for round_ in range(repeat):
        order = [("ours", ours), ("reference", reference)]
        for side, fn in order if round_ % 2 == 0 else order[::-1]:
            seconds, peak, outputs[side] = measure(fn, device)
            times[side].append(seconds)
            peaks[side].append(peak)
    row = {"case": name, "repeat": repeat}
    for side in ("ours", "reference"):
        row[f"{side}_s"] = statistics.median(times[side])
        row[f"{side}_peak_mib"] = statistics.median(peaks[side]) / 2**20
        row[f"{side}_times"] = times[side]
    row["ratio"] = row["ours_s"] / row["reference_s"]
    row["max_rel_diff"] = max_relative_error(outputs["ours"], outputs["reference"])
    print(f"  {name}: ours {row['ours_s']:.3f} s, reference {row['reference_s']:.3f} s, ratio {row['ratio']:.2f}, "
          f"peak {row['ours_peak_mib']:.0f} / {row['reference_peak_mib']:.0f} MiB, "
          f"outputs differ by {row['max_rel_diff']:.1e}", flush=True)
    return row


# --- the two sides --------------------------------------------------------------------------------

def build(cls, config, dtype, device):
    """cls(config) with the `fill_random_` weights of seed 0 (as the golden fixtures build it), on device."""
    from fixtures_ldm import random_model
    return random_model(cls, config, seed=0).to(device=device, dtype=dtype)


def unet_pair(args, spec, device, dtype) -> tuple:
    """Our UNet and diffusers' UNet2DConditionModel on the same weights (shared storage)."""
    from fixtures_ldm import reference_unet

    from ldm import UNetModel

    ours = build(UNetModel, spec.unet, dtype, device)
    reference = reference_unet(ours)
    return (torch.compile(ours) if args.compile else ours), reference


def unet_cases(args, spec, ours, reference, device, dtype) -> list:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for name, side in (("unet32", 32), ("unet64", 64)):
        if name not in args.only:
            continue
        x = torch.randn(2, 4, side, side, generator=generator).to(device, dtype)
        context = torch.randn(2, 77, spec.unet.context_dim, generator=generator).to(device, dtype)
        t = torch.tensor([500, 500], device=device)
        repeat = args.repeat if side == 32 else args.heavy_repeat
        rows.append(compare(name, lambda x=x, t=t, context=context: ours(x, t, context),
                            lambda x=x, t=t, context=context: reference(x, t, context).sample,
                            device, repeat, warmup=True))
    return rows


def vae_cases(args, spec, device, dtype) -> list:
    from fixtures_ldm import reference_vae

    from ldm import AutoencoderKL

    ours = build(AutoencoderKL, spec.vae, dtype, device)
    reference = reference_vae(ours)
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, 512, 512, generator=generator) * 2 - 1).to(device, dtype)
    latent = torch.randn(1, 4, 64, 64, generator=generator).to(device, dtype)
    small_image, small_latent = image[..., :64, :64], latent[..., :8, :8]
    rows = []
    if "vae_encode" in args.only:
        ours.encode(small_image), reference.encode(small_image)                              # warm up, small
        rows.append(compare("vae_encode", lambda: ours.encode(image).mean,
                            lambda: reference.encode(image).latent_dist.mean, device, args.heavy_repeat, warmup=False))
    if "vae_decode" in args.only:
        ours.decode(small_latent), reference.decode(small_latent)                            # warm up, small
        rows.append(compare("vae_decode", lambda: ours.decode(latent), lambda: reference.decode(latent).sample,
                            device, args.heavy_repeat, warmup=False))
    return rows


def text_case(args, spec, device, dtype) -> list:
    from fixtures_clip import reference_sd1_text_encoder

    from clip import TextEncoder
    ours = build(TextEncoder, spec.text, dtype, device)
    reference = reference_sd1_text_encoder(ours, attn_implementation="sdpa").to(device, dtype)
    ids = spec.build_tokenizer()(["a photograph of an astronaut riding a horse", ""]).to(device)
    return [compare("text", lambda: ours(ids), lambda: reference(input_ids=ids).last_hidden_state,
                    device, args.repeat, warmup=True)]


def edit_case(args, spec, ours, reference, device, dtype) -> list:
    from fixtures_blend import run_official_loop

    from blend import blended_latent_diffusion
    from samplers import DDIMSampler

    side = args.edit_size // 8
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

    return [compare("edit", run_ours, run_reference, device, args.edit_repeat, warmup=False)]


def load_case(args) -> list:
    from load_benchmark import measure_loads
    loads = measure_loads(None, "float16", args.repeat)
    ours, diffusers = loads["ours"], loads["diffusers"]
    row = {"case": "load", "repeat": args.repeat, "ours_s": ours["seconds"], "reference_s": diffusers["seconds"],
           "ours_peak_mib": ours["load"], "reference_peak_mib": diffusers["load"],
           "ratio": ours["seconds"] / diffusers["seconds"], "max_rel_diff": None, "details": loads}
    print(f"  load: ours {row['ours_s']:.3f} s, reference {row['reference_s']:.3f} s, ratio {row['ratio']:.2f}, "
          f"RSS added {row['ours_peak_mib']:.0f} / {row['reference_peak_mib']:.0f} MiB", flush=True)
    return [row]


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


# --- the table ------------------------------------------------------------------------------------

def print_table(rows: list, device: torch.device) -> None:
    memory = "peak MiB above start" if device.type == "cpu" else "peak MiB allocated"
    print(f"\n{'case':12}{'ours s':>10}{'ref s':>10}{'ratio':>8}{'target':>8}   {memory:>26}   {'max rel diff':>12}")
    for row in rows:
        target = TARGETS.get(row["case"]) if device.type == "cpu" else None
        diff = "" if row["max_rel_diff"] is None else f"{row['max_rel_diff']:.1e}"
        print(f"{row['case']:12}{row['ours_s']:>10.3f}{row['reference_s']:>10.3f}{row['ratio']:>8.2f}"
              f"{'≤ %.2f' % target if target else '':>8}   "
              f"{row['ours_peak_mib']:>12.0f} / {row['reference_peak_mib']:<11.0f}   {diff:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES), help="cases to run (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="default: float32 on the CPU, float16 on a GPU")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per side (unet32, text, load)")
    parser.add_argument("--heavy-repeat", type=int, default=2, help="timed calls per side (unet64, VAE at 512×512)")
    parser.add_argument("--edit-repeat", type=int, default=1, help="timed edits per side")
    parser.add_argument("--edit-size", type=int, help="edit size in pixels (default: 256 on the CPU, 512 on a GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our UNet (not the reference)")
    parser.add_argument("--json", type=Path,
                        help="where to write the results (default: benchmarks/results-<device>.json)")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cpu" else "float16"))
    args.edit_size = args.edit_size or (256 if device.type == "cpu" else 512)
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging
    logging.set_verbosity_error()
    from weights import presets
    spec = presets.get("sd-1.5")

    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} threads")
    print(f"{machine}; torch {torch.__version__}, {dtype}; SD 1.5 sizes; medians, ours vs reference", flush=True)
    started = time.perf_counter()
    rows = []
    with torch.inference_mode():
        if {"unet32", "unet64", "edit"} & set(args.only):
            unets = unet_pair(args, spec, device, dtype)
            rows += unet_cases(args, spec, *unets, device, dtype)
        if {"vae_encode", "vae_decode"} & set(args.only):
            rows += vae_cases(args, spec, device, dtype)
        if "text" in args.only:
            rows += text_case(args, spec, device, dtype)
        if "edit" in args.only:
            rows += edit_case(args, spec, *unets, device, dtype)
            del unets
    if "load" in args.only:
        rows += load_case(args)
    print_table(rows, device)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")

    import diffusers
    import transformers
    path = args.json or ROOT / "benchmarks" / f"results-{device.type}.json"
    path.write_text(json.dumps({
        "machine": machine, "cpus": os.cpu_count(), "threads": args.threads, "device": str(device),
        "dtype": str(dtype), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "edit_size": args.edit_size, "compile": args.compile,
        "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
