"""The dtype a model runs in when none is asked for: bfloat16 for SD and SDXL on a CPU that computes it natively.

On such a CPU (x86 with AVX512_BF16 or AMX; Arm with BF16) the UNet runs about 2 to 3 times faster in
bfloat16 than in float32 (benchmarks/README.md), and the weights take half the memory. bf16 keeps
float32's range and 8 of its 24 significant bits; what that costs was measured on random weights
(python -m benchmarks.bf16_quality, benchmarks/README.md):

    UNet, one forward          max relative error about 1e-2 against float32, cosine 0.9999
    text towers, the context   about 2e-2, cosine 0.9999: the same order as the UNet's own
    autoencoder, 8-bit images  43 dB PSNR for decode(encode(photo)), 47 dB for decode(z)

So the whole model runs in one dtype: the autoencoder's images differ from float32's by less than
JPEG's usual loss, and the text towers add an error no larger than the UNet's. `--dtype float32`
(dtype=torch.float32) gives the reference precision. Everything else keeps float32 by default: GPUs
(a caller picks float16 there), CPUs without native bf16 (it would be emulated, slower than float32),
the paper's LDM, the toy and "tiny", and pickled checkpoints (which cannot be identified without
unpickling them).
"""
from pathlib import Path

import torch

from . import ldm_txt2img, presets


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: torch's own check (AVX512_BF16, AMX), else Arm's `bf16` flag."""
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return True
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("Features") and "bf16" in line.split(":", 1)[-1].split() for line in info.splitlines())


def safetensors_keys(path: Path) -> set:
    """The tensor names in a .safetensors header (nothing is read besides it); empty if it cannot be read."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return set(f.keys())
    except Exception:                      # an unreadable file: weights.load reports it
        return set()


def is_stable_diffusion_source(source) -> bool:
    """An SD 1.x, 2.x or SDXL preset, diffusers folder or .safetensors single file (not the LDM, the toy or tiny)."""
    if isinstance(source, str) and source in ("toy", "tiny"):
        return False
    if isinstance(source, str) and source in presets.NAMES:
        spec = presets.get(source)          # not the LDM, nor the pixel-space ADM (weights.adm.AdmSpec)
        return isinstance(spec, presets.ModelSpec) and not isinstance(spec, presets.LDMSpec)
    path = Path(source).expanduser()
    if path.is_dir():
        return (path / "unet").is_dir() and (path / "vae").is_dir() and not ldm_txt2img.looks_like_port(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    keys = safetensors_keys(path)
    return any(key.startswith("model.diffusion_model.") for key in keys) and not ldm_txt2img.is_ldm_txt2img(keys)


def default_dtype(source, device) -> torch.dtype | None:
    """bfloat16 for an SD or SDXL source on a CPU with native bf16; otherwise None (weights.load's float32)."""
    if torch.device(device).type != "cpu" or not cpu_has_native_bf16() or not is_stable_diffusion_source(source):
        return None
    return torch.bfloat16


def dtype_message(dtype: torch.dtype, chosen_by_default: bool) -> str:
    """The line a run prints about its dtype."""
    name = str(dtype).removeprefix("torch.")
    if not chosen_by_default:
        return f"dtype: {name}"
    if dtype == torch.bfloat16:
        return (f"dtype: {name} (this CPU computes bfloat16 natively, about 2-3x faster than float32; "
                f"--dtype float32 gives the reference precision)")
    return f"dtype: {name} (the default)"
