"""The editor's options and their valid ranges, checked before any model is loaded.

`option_problem(...)` returns the first problem as one sentence (what was expected, what was
found, what to do), or None. `edit()` raises it as an EditInputError; `python -m blend` prints it
and exits with status 2. The ranges:

    steps            1 … 999 with SD's timestep offset 1 (the paper variant), 1 … 1000 with offset 0
                     (--variant official): "leading" timesteps i·(1000 // S) + offset must stay below
                     T = 1000 (samplers.ddim_timesteps decides)
    start            finite, in [0, 1): the loop skips int(steps · start) steps, which is then below
                     steps (also in floating point), so at least one step runs
    guidance_scale   any finite number (None: the model's default)
    num_samples      1 or more
    seed             0 … 2**64 − 1, what torch.Generator.manual_seed takes. Negative seeds are refused:
                     torch maps −n to 2**64 − n, so −1 would silently be the same run as 2**64 − 1
    size             at least what each side must divide by: 64 for SD and the LDM (8 in the autoencoder,
                     8 in the UNet; assumed for a checkpoint path), 32 for SDXL, 16 for tiny, 1 for the
                     toy. Above LARGE_SIZE it only warns (memory and time grow quickly past the training
                     size). The photograph itself may be as small as 1x1: blend.editor.working_size gives
                     each side at least one multiple
    device           cpu, cuda, cuda:N (N below the number of GPUs), mps or xpu, and available here
    model            a model name (weights.MODEL_NAMES: "toy" and the presets), or an existing, readable
                     folder or non-empty .safetensors / .ckpt / .pt / .pth / .bin file (a missing one is not
                     looked for on the Hub: only preset names are; "" is refused, not read as ".")
    rank             a CLIP name (ViT-B/16, ViT-L/14, tiny) or a readable, non-empty .safetensors file
    vae              "fp16-fix" or a folder holding config.json and diffusion_pytorch_model.safetensors
    sampler          line 5's solver: "ddim", "euler" or "dpm++2m" (SAMPLERS), or None for the variant's own
                     (ddim; euler for official-sdxl). The paper's variant takes all three; each official
                     variant only its script's (VARIANT_SAMPLERS in blend.algorithm)
    A path is refused by the part at fault: a folder given for a file or a file for a folder, a path
    under a file (naming that file), a missing, unreadable or empty file (path_problem).

What needs the network (is a preset's Hub repository reachable, are the files cached?) or the
weights (does the file hold a model?) is left to the loader.
"""
import json
import math
import numbers
import os
import warnings
from pathlib import Path

import torch

from clip import CLIP_NAMES
from samplers import DDIMSampler, DPMSolverSampler, EulerSampler, ddim_timesteps
from weights import MODEL_NAMES, spec_of
from weights.load import VAE_FILES
from weights.pickle_checkpoint import PICKLE_SUFFIXES

from .algorithm import VARIANT_SAMPLERS, VARIANTS
from .reconstruction import MODES

NUM_TRAIN_TIMESTEPS = 1000      # every model here: SD 1.x/2.x, tiny and the toy
PUBLISHED_STEPS_OFFSET = 1      # the published SD scheduler configs; the official SD2 script uses 0
CHECKPOINT_SIZE_MULTIPLE = 64   # SD 1.x/2.x: the autoencoder divides by 8, then the UNet by 8
LARGE_SIZE = 2048
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
CLI_FLAGS = {"num_samples": "--samples", "guidance_scale": "--guidance"}
MODEL_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
# --sampler's names: line 5 of Algorithm 1 as DDIM (η = 0), Karras' Euler, or DPM-Solver++(2M)
SAMPLERS = {"ddim": DDIMSampler, "euler": EulerSampler, "dpm++2m": DPMSolverSampler}
OFFICIAL_LOOPS = {"official": "the official SD 2 script's loop with its DDIM scheduler",
                  "official-ldm": "the official LDM script's loop with CompVis's DDIM",
                  "official-sdxl": "the official SDXL script's loop with its Euler scheduler"}


def samplers_of(variant: str) -> tuple:
    """The --sampler names that `variant` runs, its own (the default) first."""
    return tuple(name for name, kind in SAMPLERS.items() if kind in VARIANT_SAMPLERS.get(variant, ()))


def default_sampler(variant: str) -> str:
    """The sampler a variant runs when none is named: DDIM, or Euler for the official SDXL loop."""
    return samplers_of(variant)[0]


def option_problem(*, steps=50, start=0.25, guidance_scale=None, num_samples=1, seed=42, size=None, device=None,
                   variant="paper", reconstruction="none", model="toy", rank=None, cli=False,
                   manifest=False, vae=None, sampler=None) -> str | None:
    """The first option out of its range, as one sentence naming the option as the caller spelled it."""
    def named(option: str, value) -> str:  # "--steps 1001" for the CLI, "steps=1001" for Python
        flag = CLI_FLAGS.get(option, '--' + option.replace('_', '-'))
        if manifest:  # a manifest line of python -m blend.batch: its keys are the flags' names
            return f"{json.dumps(flag[2:])}: {json.dumps(value, default=str)}"
        if cli:
            return f"{flag} {value}"
        return f"{option}={value!r}"

    if variant not in VARIANTS:
        return f"{named('variant', variant)}: expected one of {', '.join(VARIANTS)}"
    if reconstruction not in MODES:
        return f"{named('reconstruction', reconstruction)}: reconstruction must be one of {MODES}"
    if sampler is not None and (not isinstance(sampler, str) or sampler not in SAMPLERS):
        return f"{named('sampler', sampler)}: expected one of {', '.join(SAMPLERS)}"
    if sampler is not None and sampler not in samplers_of(variant):
        own = samplers_of(variant)[0]
        return (f"{named('sampler', sampler)}: {named('variant', variant)} reproduces {OFFICIAL_LOOPS[variant]} and "
                f"runs only {named('sampler', own)}; choose {named('sampler', own)}, or "
                f"{named('variant', 'paper')} (Algorithm 1 as the paper intends it) for {sampler}")
    if variant == "official-sdxl" and isinstance(model, str) and model in MODEL_NAMES \
            and getattr(spec_of(model), "text_2", None) is None:
        return (f"{named('variant', variant)}: the official SDXL script's loop needs an SDXL model "
                f"({'--model' if cli else 'model='} sdxl-base-1.0 or an SDXL file), not {model!r}")
    if isinstance(vae, (str, Path)) and vae != "fp16-fix":
        problem = path_problem(vae, "folder") or folder_files_problem(Path(vae).expanduser(), VAE_FILES)
        if problem:
            return (f"{named('vae', vae)}: {problem}; expected 'fp16-fix' (madebyollin/sdxl-vae-fp16-fix) or a "
                    f"diffusers vae/ folder ({' + '.join(VAE_FILES)})")
    for option, value, low in (("steps", steps, 1), ("num_samples", num_samples, 1), ("seed", seed, 0)):
        if not _is_integer(value):
            return f"{named(option, value)}: expected a whole number"
        if value < low:
            return f"{named(option, value)}: expected at least {low}" + (
                f" (torch would silently run seed {value} as 2**64 - {-value}); use a seed in 0 … 2**64 - 1"
                if option == "seed" else "")
    if seed > 2**64 - 1:
        return (f"{named('seed', seed)}: expected at most 2**64 - 1 = {2**64 - 1}, the largest seed "
                f"torch.Generator takes")
    offset = 0 if variant == "official" else _steps_offset(model)
    try:
        ddim_timesteps(NUM_TRAIN_TIMESTEPS, steps, _spec_value(model, "timestep_spacing", "leading"), offset)
    except ValueError as error:
        allowed = NUM_TRAIN_TIMESTEPS - (1 if offset else 0)
        if _spec_value(model, "timestep_spacing", "leading") == "uniform":  # CompVis's: T // S must be at least 2
            allowed = NUM_TRAIN_TIMESTEPS // 2
        official = "--variant official" if cli else "variant='official'"
        return (f"{named('steps', steps)}: expected 1 … {allowed} steps with timestep offset {offset} ({error})"
                + (f"; {official} (offset 0) allows {NUM_TRAIN_TIMESTEPS}" if offset else ""))
    if not _is_real(start) or not math.isfinite(start) or not 0 <= start < 1:
        return (f"{named('start', start)}: expected the fraction of the {steps} steps to skip, a number in "
                f"[0, 1) (0.25 skips a quarter)")
    if guidance_scale is not None and (not _is_real(guidance_scale) or not math.isfinite(guidance_scale)):
        return (f"{named('guidance_scale', guidance_scale)}: expected a finite number (7.5 is the official "
                f"scale, 1 means no guidance); a non-finite scale turns every latent into NaN")
    if size is not None:
        multiple = size_multiple_of(model)
        if not _is_integer(size) or size < max(multiple, 1):
            return (f"{named('size', size)}: expected a whole number of pixels of at least {multiple} "
                    f"(the sides of the {model if isinstance(model, str) else 'given'} model's working image are "
                    f"multiples of {multiple}); leave it out for the model's own size")
    problem = device_problem(device, instead="--device cpu" if cli else "device='cpu'")
    if problem:
        return f"{named('device', device)}: {problem}"
    if isinstance(model, (str, Path)) and not _is_known_model(model):
        under = _file_above(Path(model).expanduser()) if str(model).strip() else None
        found = (f"{under} is a file, so nothing can be under it" if under else
                 f"looked for {Path(model).expanduser().resolve()}")
        return (f"{named('model', model)}: neither a model name ({', '.join(MODEL_NAMES)}) nor an "
                f"existing file or folder ({found}); give one of those names, a .safetensors file or a diffusers "
                f"folder")
    if isinstance(model, (str, Path)) and not (isinstance(model, str) and model in MODEL_NAMES):
        problem = path_problem(model, "either", suffixes=MODEL_FILE_SUFFIXES)
        if problem:
            return (f"{named('model', model)}: {problem}; expected a .safetensors checkpoint, a diffusers folder, or "
                    f"(with {'--allow-pickle' if cli else 'allow_pickle'}) a {'/'.join(PICKLE_SUFFIXES)} file")
    if rank is not None and not (isinstance(rank, str) and rank in CLIP_NAMES):
        problem = path_problem(rank, "file", suffixes=(".safetensors",))
        if problem:
            return (f"{named('rank', rank)}: neither a CLIP model name ({', '.join(CLIP_NAMES)}) nor a readable "
                    f".safetensors file: {problem}; give one of those names or a transformers CLIPModel "
                    f"model.safetensors")
    return None


def path_problem(path, kind: str, suffixes: tuple = ()) -> str | None:
    """Why `path` cannot be read as a `kind` ("file", "folder" or "either"; a file ending in one of `suffixes`
    when given), in words that name the path at fault; None when it can (without reading more than a byte)."""
    path = Path(path).expanduser()
    if not path.exists():
        above = _file_above(path)
        if above is not None:
            return f"{above} is a file, so {path} cannot be under it"
        return f"{path} does not exist (looked for {path.resolve()})"
    if path.is_dir():
        if kind == "file":
            return f"{path} is a folder, not a file"
        try:
            next(os.scandir(path), None)
        except OSError as error:
            return f"the folder {path} cannot be read ({error.strerror or error})"
        return None
    if kind == "folder":
        return f"{path} is a file, not a folder"
    if suffixes and path.suffix not in suffixes:
        found = f"a {path.suffix} file" if path.suffix else "a file without a suffix"
        return f"{path} is {found}, not a {' or '.join(suffixes)} file"
    try:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            empty = not os.read(descriptor, 1)
        finally:
            os.close(descriptor)
    except OSError as error:
        return f"{path} cannot be read ({error.strerror or error}); check its permissions"
    if empty:
        return (f"{path} is empty (0 bytes), perhaps cut short by an interrupted download or copy; download or "
                f"copy it again")
    return None


def folder_files_problem(folder: Path, names: tuple) -> str | None:
    """Which of the files `names` the folder `folder` lacks (or holds as something else), or None."""
    for name in names:
        problem = path_problem(folder / name, "file")
        if problem:
            return problem
    return None


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of a missing `path` when it is a file (so `path` cannot exist), else None."""
    for parent in path.parents:
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


def device_problem(device, instead: str = "device='cpu'") -> str | None:
    """Why `device` cannot run the edit on this machine, or None (None also for device=None: the default)."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"not a device name; expected {', '.join(DEVICE_TYPES)} or cuda:N"
    if parsed.type not in DEVICE_TYPES:
        return f"a {parsed.type!r} device cannot run the edit; use {', '.join(DEVICE_TYPES)} or cuda:N"
    if parsed.type == "cpu":
        return None
    if parsed.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    else:
        backend = getattr(torch, parsed.type)
        available = backend.is_available()
        count = backend.device_count() if available else 0
    name = {"cuda": "CUDA", "mps": "MPS (Apple GPU)", "xpu": "XPU"}[parsed.type]
    if not available:
        return f"{name} is not available on this machine (torch {torch.__version__}); use {instead}"
    if parsed.index is not None and parsed.index >= count:
        return (f"this machine has {count} {name} device(s) ({parsed.type}:0 … {parsed.type}:{count - 1}); "
                f"use one of those")
    return None


def warn_if_large(size) -> None:
    if size is not None and size > LARGE_SIZE:
        warnings.warn(f"size {size} is above {LARGE_SIZE} pixels: memory and time grow quickly with the working "
                      f"size, and SD was trained at 512 or 768", stacklevel=3)


def size_multiple_of(model) -> int:
    """What each side of the working image must divide by, for a model name or loaded components."""
    if not isinstance(model, (str, Path)):
        return model.spec.size_multiple
    if model in MODEL_NAMES:
        return spec_of(model).size_multiple
    return CHECKPOINT_SIZE_MULTIPLE


def _steps_offset(model) -> int:
    return _spec_value(model, "steps_offset", PUBLISHED_STEPS_OFFSET)


def _spec_value(model, name: str, default):
    """A field of the model's spec (loaded components, or a model name), else `default` (a file: SD's)."""
    spec = getattr(model, "spec", None)
    if spec is None and isinstance(model, str) and model in MODEL_NAMES:
        spec = spec_of(model)
    return getattr(spec, name, default)


def _is_known_model(model) -> bool:
    if not str(model).strip():
        return False                      # "" would be the current folder
    return (isinstance(model, str) and model in MODEL_NAMES) or Path(model).expanduser().exists()


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
