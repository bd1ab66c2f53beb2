"""From files to modules without a second copy: memory-mapped tensors assigned into meta-built modules.

1. `open_safetensors` memory-maps a file. Its tensors are views of the mapping: nothing
   is read until a weight is used, and the pages belong to the OS page cache, not to
   this process's heap.
2. `build_empty` builds a module whose parameters live on the `meta` device. They have
   shapes but no storage, so no memory is allocated and no random init is computed.
   Buffers are built as usual (they are small, and some are not in any file).
3. `assign_weights` checks the file's keys and shapes against the module's (strict),
   then makes each parameter the file's tensor, as `load_state_dict(assign=True)` would.
   A tensor that already has the requested dtype and device is used as it is: the
   parameter *is* the memory-mapped view. Only a dtype or device change makes a copy.
"""
import json
import math
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .errors import CorruptFileError, StateDictMismatchError, mismatch_message

# safetensors dtype names -> torch dtypes
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def open_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """{name: tensor} of a .safetensors file, memory-mapped: no copy, nothing read until used.

    The format: an 8-byte little-endian header length N, N bytes of JSON
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
    data, each tensor at bytes [8 + N + begin, 8 + N + end). The whole file is mapped once
    (`UntypedStorage.from_file`, copy-on-write) and each tensor is a view into that mapping.
    A tensor whose offset is not a multiple of its element size cannot be such a view; then the
    file is read with the safetensors library instead.
    """
    path = Path(path)
    size = path.stat().st_size

    def corrupt(problem: str) -> CorruptFileError:
        return CorruptFileError(
            f"{path}: not a readable safetensors file ({problem}). It is probably truncated by an interrupted "
            f"download or damaged; delete it and download it again (for the Hub cache: "
            f"`hf download <repo> <file> --force-download`).")

    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
        header_length = int.from_bytes(prefix, "little")
        if header_length > min(size - 8, 100 * 2**20):
            raise corrupt(f"header length {header_length} does not fit in a file of {size} bytes")
        try:
            header = json.loads(f.read(header_length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise corrupt(f"the JSON header does not parse: {error}") from None
    header.pop("__metadata__", None)
    start = 8 + header_length
    try:
        entries = {name: (SAFETENSORS_DTYPES[e["dtype"]], tuple(e["shape"]), *e["data_offsets"])
                   for name, e in header.items()}
    except (KeyError, TypeError, ValueError) as error:
        raise corrupt(f"a header entry is malformed or of an unknown dtype ({error!r})") from None
    end = max((e[3] for e in entries.values()), default=0)
    if start + end > size:
        raise corrupt(f"the header describes {start + end} bytes but the file has {size}")
    for name, (dtype, shape, begin, stop) in entries.items():
        if stop - begin != math.prod(shape) * dtype.itemsize:
            raise corrupt(f"{name}: {stop - begin} bytes for shape {shape} of {dtype}")
    if any((start + begin) % dtype.itemsize for dtype, _, begin, _ in entries.values()):
        return _read_with_safetensors(path, corrupt)
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    return {name: torch.empty(0, dtype=dtype).set_(storage, (start + begin) // dtype.itemsize, shape)
            for name, (dtype, shape, begin, _) in entries.items()}


def _read_with_safetensors(path: Path, corrupt) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as error:
        raise corrupt(str(error)) from None


@contextmanager
def parameters_on_meta():
    """While active, every parameter a module registers is moved to the meta device.

    Layers allocate their parameters with `torch.empty` (which reserves but does not
    touch memory) and then initialise them; on meta, `torch.nn.init` is skipped.
    Tensors that are not on meta (buffers) are built and initialised as usual.
    It patches `nn.Module.register_parameter` and `nn.init` for its duration, so modules
    built meanwhile in other threads would get meta parameters too.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module, name, parameter):
        if parameter is not None and not parameter.is_meta:
            parameter = nn.Parameter(parameter.to("meta"), requires_grad=parameter.requires_grad)
        register(module, name, parameter)

    # Initialising a meta tensor computes nothing, but torch still dispatches each call through
    # Python decompositions (0.3 s for SD's UNet), so the initialisers are skipped outright.
    skipped = {name: getattr(nn.init, name) for name in _INITIALISERS}
    nn.Module.register_parameter = register_on_meta
    for name, function in skipped.items():
        setattr(nn.init, name, _skip_on_meta(function))
    try:
        yield
    finally:
        nn.Module.register_parameter = register
        for name, function in skipped.items():
            setattr(nn.init, name, function)


_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


def _skip_on_meta(initialiser):
    def initialise(tensor, *args, **kwargs):
        return tensor if tensor.is_meta else initialiser(tensor, *args, **kwargs)
    return initialise


def build_empty(builder: Callable[[], nn.Module]) -> nn.Module:
    """builder() with its parameters on meta: the skeleton that `assign_weights` fills."""
    with parameters_on_meta():
        return builder()


def assign_weights(module: nn.Module, tensors: dict, *, file, part: str,
                   dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Load `tensors` into `module` strictly, converting each to dtype/device only if it differs.

    Raises StateDictMismatchError, naming `file`, when a key is missing, unexpected or mis-shaped.
    Returns the module in eval mode.
    """
    expected = {name: tuple(t.shape) for name, t in module.state_dict(keep_vars=True).items()}
    missing = expected.keys() - tensors.keys()
    unexpected = tensors.keys() - expected.keys()
    mis_shaped = {k: (tuple(tensors[k].shape), expected[k]) for k in expected.keys() & tensors.keys()
                  if tuple(tensors[k].shape) != expected[k]}
    if missing or unexpected or mis_shaped:
        raise StateDictMismatchError(mismatch_message(file, part, missing, unexpected, mis_shaped))

    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    # What load_state_dict(strict=True, assign=True) does once the keys are checked, without its
    # per-module hooks: each parameter or persistent buffer becomes the file's tensor.
    owners = dict(module.named_modules())
    for key, value in tensors.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = owners[owner_name]
        value = convert(value)
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=owner._parameters[leaf].requires_grad)
        else:
            owner._buffers[leaf] = value
    module.to(device=device, dtype=dtype)       # the buffers built with the module; loaded tensors already match
    left = [n for n, t in chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{file}: {part} has tensors that no file provides and that were left unallocated: "
                           f"{left[:5]}; this is a bug in the loader or the module")
    return module.eval()
