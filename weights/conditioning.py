"""What a loaded model is conditioned on, and the dtype it runs in by default.

`prompt_conditioning(components, prompt, size_hw)` returns (cond, uncond): what the network takes after
(z, t) for the prompt and for the unconditional half of classifier-free guidance, for every model that
`weights.load` gives:

    SD 1/2, the LDM, the toy   cond = text_encoder(tokenizer(prompt)), uncond = the same of ""
    SDXL                       (context, y), see `sdxl_conditioning`

`default_dtype(source, device)` is float32 for every model except SDXL on a CPU with native bfloat16.
"""
import warnings
from pathlib import Path

import torch

from ldm.unet import vector_conditioning

from . import presets


def prompt_conditioning(components, prompt: str, size_hw: tuple, device) -> tuple:
    """(cond, uncond) for `prompt` at the working size (H, W). A tokenizer that refuses the prompt (the toy's,
    for a prompt that names none of its classes) raises its ValueError."""
    if getattr(components, "text_encoder_2", None) is not None:
        return sdxl_conditioning(components, prompt, size_hw, device)
    return tuple(components.text_encoder(components.tokenizer([text]).to(device)) for text in (prompt, ""))


def sdxl_conditioning(components, prompt: str, size_hw: tuple, device) -> tuple:
    """SDXL's (context, y) for the prompt and for the unconditional half (sgm's conditioner, diffusers' pipeline):

        context = cat[ViT-L/14(ids), bigG(ids_2)]            (1, 77, 768 + 1280), both penultimate, no final norm
        y       = [pooled bigG text | emb(H, W, 0, 0, H, W)] original = target = the working size, crop (0, 0)
        uncond  = zeros for context and pooled (an empty negative prompt, `force_zeros_for_empty_prompt`),
                  with the same time ids
    """
    ids, ids_2 = components.tokenizer([prompt]).to(device), components.tokenizer_2([prompt]).to(device)
    context = torch.cat([components.text_encoder(ids), components.text_encoder_2(ids_2)], dim=-1)
    pooled = components.text_encoder_2.pooled_embedding(ids_2)
    height, width = size_hw
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device)
    y = vector_conditioning(pooled, time_ids, components.spec.time_embedding_dim).to(context.dtype)
    y_uncond = vector_conditioning(torch.zeros_like(pooled), time_ids, components.spec.time_embedding_dim)
    return (context, y), (torch.zeros_like(context), y_uncond.to(context.dtype))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AVX512_BF16 or AMX-BF16, Arm BF16), from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set(" ".join(line.split(":", 1)[1] for line in info.splitlines()
                         if line.startswith(("flags", "Features")) and ":" in line).split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def is_sdxl_source(source) -> bool:
    """An SDXL preset name, a diffusers folder with text_encoder_2/, or a .safetensors file with SDXL's
    `conditioner.embedders.*` keys (read from its header)."""
    if isinstance(source, str) and source in presets.NAMES:
        return getattr(presets.get(source), "text_2", None) is not None
    path = Path(source).expanduser()
    if path.is_dir():
        return (path / "text_encoder_2").is_dir()
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return any(key.startswith("conditioner.embedders.") for key in f.keys())
    except Exception:                      # an unreadable file: weights.load reports it
        return False


def default_dtype(source, device) -> torch.dtype | None:
    """SDXL on a CPU with native bfloat16 runs in bfloat16 by default (the UNet alone is 10.3 GB in float32,
    5.1 GB in bfloat16), and says so; otherwise None (weights.load's float32)."""
    if str(device).split(":")[0] != "cpu" or not is_sdxl_source(source) or not cpu_has_native_bf16():
        return None
    warnings.warn("SDXL on this CPU runs in bfloat16 by default (the CPU computes bf16 natively; the UNet takes "
                  "5.1 GB instead of 10.3 GB in float32); pass dtype=torch.float32 (--dtype float32) for float32",
                  stacklevel=3)
    return torch.bfloat16
