"""Deterministic random weights, so that tests of full-size models need no stored weights.

Every tensor gets its own generator, seeded from the model seed and the tensor's
name, so a value depends only on (seed, name, shape): not on module order, on what
else the model holds, or on the machine. Scales keep activations of order one:

    matrix / conv kernel  W ~ N(0, 1/fan_in)      fan_in = numel / shape[0]
    1-d "weight" (norms)  1 + 0.1 * N(0, 1)
    1-d "bias", scalars   0.1 * N(0, 1)
"""
import zlib

import torch
from torch import nn


def random_tensor(name: str, shape, seed: int = 0) -> torch.Tensor:
    """The float32 value that tensor `name` of `shape` gets under `seed`."""
    shape = tuple(shape)
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if len(shape) >= 2:
        fan_in = noise.numel() // shape[0]
        return noise / fan_in**0.5
    if name.endswith("weight") and len(shape) == 1:
        return 1.0 + 0.1 * noise
    return 0.1 * noise


def random_state_dict(shapes: dict, seed: int = 0) -> dict:
    """{name: shape} -> {name: random_tensor(name, shape, seed)}."""
    return {name: random_tensor(name, shape, seed) for name, shape in shapes.items()}


@torch.no_grad()
def fill_random_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every parameter of `module` in place with `random_tensor`; returns the module."""
    for name, parameter in module.named_parameters():
        parameter.copy_(random_tensor(name, parameter.shape, seed).to(parameter.dtype))
    return module
