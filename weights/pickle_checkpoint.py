"""Pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`): refused unless asked for, and then never executed.

Unpickling can run arbitrary code, so `weights.load` refuses these files by default and
says how to convert them once. With `allow_pickle=True` they are read with
`torch.load(weights_only=True)`, whose unpickler rebuilds only tensors and plain
containers and raises on anything else. Many Lightning `.ckpt` files also store
training objects (callbacks, optimizer state), which that unpickler rejects: use the
`.safetensors` file published beside them, or convert them where you trust the file.
"""
import json
import os
import pickle
import re
import shlex
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from .errors import CorruptFileError, PickleRefusedError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def conversion_command(path: Path, python: str = "python") -> str:
    """The shell command that converts `path` once, quoted so that any file name survives copying."""
    code = f"from weights import convert_checkpoint; convert_checkpoint({json.dumps(str(path))})"
    return f"{python} -c {shlex.quote(code)}"


def refusal(path: Path) -> PickleRefusedError:
    target = path.with_suffix(".safetensors")
    error = PickleRefusedError(
        f"{path}: a pickle checkpoint, which can run code when loaded, so it is refused by default. Either\n"
        f"  - use the .safetensors file published beside it (the SD 1.5 and 2.1 repositories have one), or\n"
        f"  - convert it once (tensors only; nothing in the file is executed), where the weights package is\n"
        f"    importable (this repository's folder):\n"
        f"      {conversion_command(path)}\n"
        f"    which writes {target} (never over an existing file), then load that; or\n"
        f"  - pass allow_pickle=True to read it with torch.load(weights_only=True).")
    error.path = path  # so that a caller (the CLI) can word the ways on with its own flags
    return error


def is_pickle_checkpoint(path: Path) -> bool:
    """Whether `weights.load(path)` would refuse it as a pickle unless allow_pickle=True."""
    return path.is_file() and path.suffix in PICKLE_SUFFIXES


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a pickle checkpoint, unpickled with weights_only=True (memory-mapped when possible).

    A file that the safe unpickler refuses (a class instance, a `__reduce__` call, a plain `pickle.dump`
    rather than `torch.save`), an empty file, or one that holds no dict of tensors raises PickleRefusedError
    (CorruptFileError when empty), naming the file, what was found and what to do.
    """
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: the file is empty (0 bytes), not a checkpoint; expected a torch.save'd "
                               f"dict of tensors. It was probably cut short by an interrupted download or copy: "
                               f"download or copy it again.")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:                 # the legacy (non-zip) format cannot be memory-mapped
                data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the safe unpickler raises UnpicklingError on any non-tensor object
        raise PickleRefusedError(
            f"{path}: torch.load(weights_only=True) refused it ({unpickler_reason(error)}); expected a dict of "
            f"tensors saved by torch.save, which is all that it rebuilds. The file holds something else (Lightning "
            f"checkpoints store callbacks and optimizer state), or it is not a torch checkpoint. Use the "
            f".safetensors version of this checkpoint, or convert it in an environment where you trust the "
            f"file.") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]                      # Lightning: {"state_dict": ..., "global_step": ...}
    if not isinstance(data, dict):
        found = (f"a single tensor of shape {tuple(data.shape)}" if isinstance(data, torch.Tensor)
                 else f"a {type(data).__name__}")
        raise PickleRefusedError(f"{path}: holds {found}, not a dict of named tensors; expected a checkpoint "
                                 f"saved as torch.save(model.state_dict()) or a Lightning checkpoint with a "
                                 f"'state_dict'. Pass the model's checkpoint file, not a single tensor's.")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


TORCH_LOAD_ADVICE = ("Weights only load failed", "(1)", "(2)", "Check the documentation", "Please file an issue")


def unpickler_reason(error: Exception) -> str:
    """What torch.load's refusal met ("Unsupported global: GLOBAL x.Y …", "Trying to load unsupported GLOBAL
    posix.system …"), without the advice around it (which suggests weights_only=False, i.e. running the file);
    else the error's type and text."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line.split("WeightsUnpickler error:", 1)[-1].strip() for line in lines]
    reasons = [line for line in lines if line and not line.startswith(TORCH_LOAD_ADVICE)]
    if not reasons or not isinstance(error, pickle.UnpicklingError):  # not the safe unpickler's refusal
        text = " ".join(line for line in lines if line)
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    reason = reasons[0].split(" Please use ")[0].rstrip(".")
    if reason.startswith("Unsupported operand"):
        reason += ": not the pickle protocol torch.save writes (a plain pickle.dump file?)"
    return reason


def convert_checkpoint(source: str | Path, target: str | Path | None = None) -> Path:
    """Write the tensors of pickle checkpoint `source` to a .safetensors file (default: same name) and return it.

    It never overwrites: an existing target is a FileExistsError. The file is written to a temporary
    file in the target's folder and then linked to its name (which fails if the name was taken
    meanwhile), so an interrupted conversion leaves no partial target.
    """
    from safetensors.torch import save_file

    source = Path(source)
    target = Path(target) if target is not None else source.with_suffix(".safetensors")
    if target.exists() or target.is_symlink():
        raise _exists(source, target)
    tensors, seen = {}, set()
    for key, value in read_pickle(source).items():
        storage = value.untyped_storage().data_ptr()
        # safetensors stores each tensor on its own: copy only those that share memory with another.
        tensors[key] = value.clone() if storage in seen else value.contiguous()
        seen.add(storage)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary)
        _link_without_overwriting(Path(temporary), target, source)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def _link_without_overwriting(temporary: Path, target: Path, source: Path) -> None:
    """Give the finished file its name; never replace a file that took the name meanwhile."""
    try:
        os.link(temporary, target)                      # atomic, and fails if target exists
    except FileExistsError:
        raise _exists(source, target) from None
    except OSError:                                     # a file system without hard links: copy exclusively
        try:
            with open(target, "xb") as written, open(temporary, "rb") as finished:
                shutil.copyfileobj(finished, written)
        except FileExistsError:
            raise _exists(source, target) from None
        except BaseException:
            target.unlink(missing_ok=True)
            raise


def _exists(source: Path, target: Path) -> FileExistsError:
    other = target.with_name(f"{target.stem}-converted{target.suffix}")
    return FileExistsError(
        f"{target} already exists and convert_checkpoint never overwrites a file: load that file if it is the "
        f"converted {source.name}, or pass another target, e.g. convert_checkpoint({str(source)!r}, "
        f"{str(other)!r})")
