#!/usr/bin/env python
"""How much each network loses in bfloat16 against float32: the measurement behind the CPU's dtype defaults.

    python -m benchmarks.bf16_quality                 # SD 1.5 sizes, 512×512; about 2 minutes on 2 cores
    python -m benchmarks.bf16_quality --size 256      # quicker

Every network holds the deterministic random weights of `weights.fill_random_` (seed 0) in float32, and
a copy of them rounded to bfloat16; both run through the fast path (`fast.optimize`), as `weights.load` gives
them. The figures:

    autoencoder   decode(encode(photo)) and decode(z ~ N(0, I)), each turned into the 8-bit image the
                  editor saves (clamp to [−1, 1], then round((x + 1) · 127.5)); PSNR = 10 log10(255² / MSE)
                  of the bf16 image against the fp32 one, and the largest difference in levels
    the toy       the toy's autoencoder (x ↦ x) on its own photographs: only bf16's rounding of the image
    text towers   SD 1's ViT-L/14 and SD 2's ViT-H/14 context: max|bf16 − fp32| / max|fp32| and the
                  cosine of the two contexts
    UNet          one SD 1.5 forward at 64×64, batch 2 (a classifier-free-guidance pair): the same relative error

Random weights are not trained ones: the activations have order one everywhere by construction
(weights/random_init.py), which is about what trained networks show, but the figures are a guide,
not a guarantee for every checkpoint.
"""
import argparse
import math
import time

import torch

import fast
from ldm import AutoencoderKL, UNetModel
from weights import fill_random_, presets
from weights.toy import load_toy_images


def to_8bit(image: torch.Tensor) -> torch.Tensor:
    """What the editor saves: [−1, 1] -> 0 … 255 levels."""
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round()


def psnr(image: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(PSNR in dB, largest difference in levels) of two images as their 8-bit versions."""
    a, b = to_8bit(image), to_8bit(reference)
    mse = (a - b).pow(2).mean().item()
    return (math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)), (a - b).abs().max().item()


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max|v − r| / max|r|, cosine of v and r)."""
    value, reference = value.double(), reference.double()
    error = ((value - reference).abs().max() / reference.abs().max()).item()
    cosine = torch.nn.functional.cosine_similarity(value.flatten(), reference.flatten(), dim=0).item()
    return error, cosine


def pair(build, seed: int) -> tuple:
    """The float32 network with `fill_random_` weights and its bfloat16 copy, both through the fast path."""
    model = fill_random_(build(), seed).eval()
    low = build().eval()
    low.load_state_dict(model.state_dict())
    return fast.optimize(model), fast.optimize(low, dtype=torch.bfloat16)


def autoencoder_rows(size: int) -> list:
    spec = presets.get("sd-1.5")
    vae32, vae16 = pair(lambda: AutoencoderKL(spec.vae), 0)
    images, _, _ = load_toy_images()
    photo = torch.nn.functional.interpolate(images[:1], size=(size, size), mode="bilinear", align_corners=False)
    z = torch.randn(1, spec.vae.z_channels, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    rows = []
    round_trip32 = vae32.decode(vae32.encode(photo).mean)
    round_trip16 = vae16.decode(vae16.encode(photo.bfloat16()).mean)
    rows.append(("autoencoder, decode(encode(photo))", *psnr(round_trip16, round_trip32)))
    rows.append(("autoencoder, decode(z ~ N(0, I))", *psnr(vae16.decode(z.bfloat16()), vae32.decode(z))))
    rows.append(("toy autoencoder (x ↦ x), its photographs", *psnr(images.bfloat16(), images)))
    return rows


def text_rows() -> list:
    rows = []
    for name in ("sd-1.5", "sd-2.1-base"):
        spec = presets.get(name)
        tower32, tower16 = pair(spec.build_text_encoder, 0)
        ids = spec.build_tokenizer()(["a photograph of an astronaut riding a horse", ""])
        rows.append((f"text tower of {name}, context", *relative_error(tower16(ids), tower32(ids))))
    return rows


def unet_rows() -> list:
    spec = presets.get("sd-1.5")
    unet32, unet16 = pair(lambda: UNetModel(spec.unet), 0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=generator)
    context = torch.randn(2, 77, spec.unet.context_dim, generator=generator)
    t = torch.tensor([500, 500])
    return [("UNet of sd-1.5, 64×64, batch 2", *relative_error(unet16(x.bfloat16(), t, context.bfloat16()),
                                                               unet32(x, t, context)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    args = parser.parse_args()
    started = time.perf_counter()
    with torch.inference_mode():
        images = autoencoder_rows(args.size)
        errors = text_rows() + unet_rows()
    print(f"bfloat16 against float32, random weights, {args.size}×{args.size}\n")
    print("| network | PSNR dB | largest difference, levels |\n|---|---:|---:|")
    for name, value, worst in images:
        print(f"| {name} | {value:.1f} | {worst:.0f} |")
    print("\n| network | max relative error | cosine |\n|---|---:|---:|")
    for name, error, cosine in errors:
        print(f"| {name} | {error:.1e} | {cosine:.6f} |")
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
