"""Blended Diffusion against Blended Latent Diffusion: the cost of one edited image, each at its defaults.

The paper's Table 2 says latent blending is 10 to 20 times faster than Blended Diffusion (on one A10 GPU:
23 s an image against 2.2 s in batches). This times one step of each method's own loop, in one process, on
full-size networks filled with random values (the time does not depend on them), and turns the steps into
the cost of one image at each method's default settings:

    Blended Diffusion   python -m blend --method blended-diffusion: the 256² unconditional ADM (552 M parameters),
                        100 respaced steps with 25 skipped, so 75 steps. A step is one ADM forward without
                        gradients, one with, CLIP ViT-B/16 forward and backward on 8 views, and the backward
                        through the ADM (blend.blended_diffusion with blend.clip_guidance.CLIPGuidance).
    Blended Latent      the paper's LDM (1.45 B with its BERT), 256² (a 32×32 latent), 50 DDIM steps: all 50 in the
    Diffusion           official LDM script (its --skip_steps 0), 38 in `python -m blend --model ldm-txt2img-f8-large`
                        (the first quarter skipped). A step is one UNet call on [unconditional; conditional]
                        (blend.blended_latent_diffusion); once an image: the BERT text encoder on two prompts,
                        the encoder and the decoder.

Both run as `weights.load` gives them to a user: the LDM's networks through `fast.optimize`, the ADM plain (it
has no fast path). Each image runs alone (batch 1): on a CPU, a batch of 4 costs 4 images' arithmetic, so the
official script's batch of 4 changes the cost per image little; pass --batch 4 to time that instead.

    python -m benchmarks.blended_diffusion_cost [--repeats N] [--batch B] [--threads T] [--device D] [--json PATH]

On a GPU (`--device cuda`; benchmarks/gpu_check.sh runs it) both run in float32 too, as Blended Diffusion's loop
here keeps its samples in float32.

Prints a markdown table and writes the JSON (default benchmarks/results-blended-diffusion-cpu.json) with the
machine it ran on. The two sides alternate call by call; the table gives medians.
"""
import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BD_STEPS = 75           # 100 respaced steps, 25 skipped (the official script's --skip_timesteps)
BLD_STEPS = {"official LDM script": 50, "python -m blend": 38}   # 50 DDIM steps; start 0 or 0.25 (timesteps[12:])
BLD_SKIP_ALL_BUT_ONE = 0.99   # ⌊50 · 0.99⌋ = 49: one step of the 50 runs


def blended_diffusion_step(batch: int, device: torch.device, generator: torch.Generator):
    """A function running one step of Blended Diffusion's loop (guided DDPM step and blend) at full size."""
    from adm import ADM_256_UNCOND, ADMUNet
    from blend.blended_diffusion import blended_diffusion
    from blend.clip_guidance import CLIPGuidance
    from clip import CLIPModel
    from samplers import GaussianDiffusion

    model = ADMUNet(ADM_256_UNCOND).eval().requires_grad_(False).to(device)
    judge = CLIPModel("ViT-B/16").eval().requires_grad_(False).to(device)
    diffusion = GaussianDiffusion.adm("100")
    source = (torch.rand(1, 3, 256, 256, generator=generator, device=device) * 2 - 1)
    mask = torch.zeros(1, 1, 256, 256, device=device)
    mask[..., 64:192, 64:192] = 1
    with torch.no_grad():
        prompt = judge.text_embeddings(["a photo of a cat"])
    guidance = CLIPGuidance(model, diffusion, judge, prompt, mask, source=source, num_views=8, generator=generator)

    def step():
        return blended_diffusion(model, diffusion, source, mask, guidance, num_samples=batch,
                                 skip_timesteps=diffusion.num_steps - 1, generator=generator)
    return step


def blended_latent_diffusion_parts(batch: int, device: torch.device, generator: torch.Generator):
    """Functions running one step of Algorithm 1 on the paper's LDM, and its once-an-image parts, at full size."""
    from blend.algorithm import blended_latent_diffusion
    from fast import optimize
    from samplers import DDIMSampler
    from weights import presets

    spec = presets.get("ldm-txt2img-f8-large")
    unet = optimize(spec.build_unet().eval(), device=device)
    vae = optimize(spec.build_vae().eval(), device=device)
    text_encoder = spec.build_text_encoder().eval().to(device)
    sampler = DDIMSampler(spec.build_schedule(), 50, offset=spec.steps_offset, spacing=spec.timestep_spacing)
    ids = torch.randint(1000, 20000, (2, 77), generator=generator, device=device)
    with torch.no_grad():
        context = text_encoder(ids)
    uncond, cond = context[:1].expand(batch, -1, -1), context[1:].expand(batch, -1, -1)
    pixels = torch.rand(1, 3, 256, 256, generator=generator, device=device) * 2 - 1
    z_init = torch.randn(batch, 4, 32, 32, generator=generator, device=device)
    mask = torch.zeros(1, 1, 32, 32, device=device)
    mask[..., 8:24, 8:24] = 1

    def step():
        with torch.no_grad():
            return blended_latent_diffusion(unet, sampler, z_init, mask, cond, uncond,
                                            guidance_scale=spec.guidance_scale, start=BLD_SKIP_ALL_BUT_ONE,
                                            generator=generator)

    def once():                     # text encoder, E(x) and D(z): once an edit of `batch` images
        with torch.no_grad():
            text_encoder(ids)
            vae.encode(pixels)
            vae.decode(z_init)
    return step, once


def timed(function, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def machine(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": name, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="calls of each side, alternating (default 1)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1; the official BD batch: 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the results go (default benchmarks/results-blended-diffusion-<device type>.json)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        parser.error(f"--repeats and --batch must be at least 1, got {args.repeats} and {args.batch}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: not a device name; expected cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; run on the CPU (the default)")
    args.json = args.json or HERE / f"results-blended-diffusion-{device.type}.json"
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator(device).manual_seed(0)
    print("building the full-size networks (random weights) ...", flush=True)
    bd_step = blended_diffusion_step(args.batch, device, generator)
    bld_step, bld_once = blended_latent_diffusion_parts(args.batch, device, generator)
    times = {"bd_step": [], "bld_step": [], "bld_once": []}
    for repeat in range(args.repeats):
        for name, function in (("bld_step", bld_step), ("bd_step", bd_step), ("bld_once", bld_once)):
            times[name].append(timed(function, device))
            print(f"  call {repeat + 1}/{args.repeats} {name}: {times[name][-1]:.2f} s", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    bd_image = BD_STEPS * median["bd_step"] / args.batch
    bld_image = {setting: (steps * median["bld_step"] + median["bld_once"]) / args.batch
                 for setting, steps in BLD_STEPS.items()}
    ratio = {setting: bd_image / seconds for setting, seconds in bld_image.items()}
    result = {"machine": machine(device), "batch": args.batch, "repeats": args.repeats, "seconds": times,
              "median_seconds": median, "steps": {"blended_diffusion": BD_STEPS, "bld": BLD_STEPS},
              "seconds_per_image": {"blended_diffusion": bd_image, "bld": bld_image}, "ratio": ratio}
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    where = result["machine"].get("gpu") or f"{result['machine']['cpu']}, {result['machine']['threads']} threads"
    print(f"\n{where}, float32, batch {args.batch}\n")
    print("| method | one step s | steps | s an image | Blended Diffusion's cost over it |")
    print("|---|---:|---:|---:|---:|")
    print(f"| Blended Diffusion (ADM 256², CLIP on 8 views) | {median['bd_step']:.2f} | {BD_STEPS} "
          f"| {bd_image:.0f} | |")
    for setting, steps in BLD_STEPS.items():
        print(f"| Blended Latent Diffusion, paper's LDM, {setting} | {median['bld_step']:.2f} | {steps} "
              f"(+ {median['bld_once']:.2f} s once) | {bld_image[setting]:.0f} | {ratio[setting]:.1f}× |")
    print(f"\n({args.json})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
