"""Model presets, deterministic random weights, and checkpoint loading (`weights.load`, and `weights.load_pixel_model`
for the pixel-space ADM of Blended Diffusion; see weights/LOADING.md)."""
from . import presets
from .adm import AdmSpec, PixelComponents, load_pixel_model
from .clip_ranker import load_clip
from .conditioning import prompt_conditioning
from .errors import (
                     CorruptFileError,
                     NotAModelError,
                     OfflineError,
                     PickleRefusedError,
                     StateDictMismatchError,
                     UnknownSourceError,
                     UnsupportedModelError,
                     WeightsError,
)
from .load import MODEL_NAMES, Components, load, spec_of
from .pickle_checkpoint import convert_checkpoint
from .precision import default_dtype, dtype_message
from .random_init import fill_random_, random_state_dict, random_tensor

__all__ = ["presets", "fill_random_", "random_state_dict", "random_tensor", "load", "Components", "MODEL_NAMES",
           "spec_of", "prompt_conditioning", "default_dtype", "dtype_message", "load_clip",
           "convert_checkpoint", "WeightsError", "UnknownSourceError", "NotAModelError", "CorruptFileError",
           "OfflineError", "PickleRefusedError", "StateDictMismatchError", "UnsupportedModelError",
           "load_pixel_model", "PixelComponents", "AdmSpec"]
