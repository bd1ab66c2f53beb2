"""Model presets, deterministic random weights, and (in the weights issue) checkpoint loading."""
from . import presets
from .random_init import fill_random_, random_state_dict, random_tensor

__all__ = ["presets", "fill_random_", "random_state_dict", "random_tensor"]
