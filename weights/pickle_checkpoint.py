"""Pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`): refused unless asked for, and then never executed.

Unpickling can run arbitrary code, so `weights.load` refuses these files by default and
says how to convert them once. With `allow_pickle=True` they are read with
`torch.load(weights_only=True)`, whose unpickler rebuilds only tensors and plain
containers and raises on anything else. Many Lightning `.ckpt` files also store
training objects (callbacks, optimizer state), which that unpickler rejects: use the
`.safetensors` file published beside them, or convert them where you trust the file.
"""
from pathlib import Path

import torch

from .errors import PickleRefusedError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def refusal(path: Path) -> PickleRefusedError:
    target = path.with_suffix(".safetensors")
    return PickleRefusedError(
        f"{path}: a pickle checkpoint, which can run code when loaded, so it is refused by default. Either\n"
        f"  - use the .safetensors file published beside it (the SD 1.5 and 2.1 repositories have one), or\n"
        f"  - convert it once (tensors only; nothing in the file is executed):\n"
        f"      python -c \"from weights import convert_checkpoint; convert_checkpoint('{path}')\"\n"
        f"    which writes {target}, then load that; or\n"
        f"  - pass allow_pickle=True to read it with torch.load(weights_only=True).")


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a pickle checkpoint, unpickled with weights_only=True (memory-mapped when possible)."""
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:                 # the legacy (non-zip) format cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the safe unpickler raises UnpicklingError on any non-tensor object
        raise PickleRefusedError(
            f"{path}: torch.load(weights_only=True) refused it: {str(error).splitlines()[0]}. It holds objects "
            f"other than tensors (Lightning checkpoints store callbacks and optimizer state). Use the "
            f".safetensors version of this checkpoint, or convert it in an environment where you trust the file.") \
            from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]                      # Lightning: {"state_dict": ..., "global_step": ...}
    if not isinstance(data, dict):
        raise PickleRefusedError(f"{path}: holds a {type(data).__name__}, not a dict of tensors")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def convert_checkpoint(source: str | Path, target: str | Path | None = None) -> Path:
    """Write the tensors of pickle checkpoint `source` to a .safetensors file (default: same name) and return it."""
    from safetensors.torch import save_file

    source = Path(source)
    target = Path(target) if target is not None else source.with_suffix(".safetensors")
    tensors, seen = {}, set()
    for key, value in read_pickle(source).items():
        storage = value.untyped_storage().data_ptr()
        # safetensors stores each tensor on its own: copy only those that share memory with another.
        tensors[key] = value.clone() if storage in seen else value.contiguous()
        seen.add(storage)
    save_file(tensors, str(target))
    return target
