"""The fast path: `optimize(module, device=..., dtype=...)` makes a plain network from ldm/ or clip/ faster on
one device, with the same parameters, state-dict keys and map (fast/transform.py says what and why)."""
from .transform import OPTIMIZED_CLASSES, conv_as_matmul, is_optimized, optimize, packing_bytes

__all__ = ["optimize", "is_optimized", "packing_bytes", "conv_as_matmul", "OPTIMIZED_CLASSES"]
