"""`weights.load(source)`: one entry point for every kind of checkpoint.

    load("sd-1.5")                          a preset: its files come from the Hub (then the cache)
    load("v1-5-pruned-emaonly.safetensors") a single-file checkpoint in the original LDM layout
    load("path/to/folder")                  a diffusers-layout folder (unet/, vae/, text_encoder/, ...)
    load("tiny")                            a small random model: no files, for tests and offline runs
    load("toy")                             the exact toy model of a dozen photographs (weights/toy.py)

Whatever the source, the result is the same `Components`: our modules (named like the
published single files), the tokenizer, and the `ModelSpec` that says what they are.
See weights/LOADING.md for examples and for what each error means.
"""
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import fast as fast_path
from clip import TextEncoder, Tokenizer
from ldm import AutoencoderKL, UNetModel

from . import hub, ldm_txt2img, presets, single_file
from .adm import AdmSpec, latent_editor_refusal
from .diffusers_folder import load_folder
from .errors import NotAModelError, UnknownSourceError
from .materialize import assign_weights, build_empty, open_safetensors
from .pickle_checkpoint import PICKLE_SUFFIXES, read_pickle, refusal
from .presets import ModelSpec
from .random_init import fill_random_
from .toy import ToySpec, load_toy

TINY_MODEL_SEEDS = {"unet": 0, "vae": 1, "text_encoder": 2}
MODEL_NAMES = ("toy", *presets.NAMES)   # the names `load` takes besides files and folders


def spec_of(name: str) -> ModelSpec | ToySpec:
    """The spec of a model name, before anything is loaded: a preset's, or the toy's."""
    return ToySpec() if name == "toy" else presets.get(name)


@dataclass
class Components:
    """A loaded model: the three networks, the tokenizer, and the spec (architecture, ε or v, scale factor).

    SDXL adds its second text tower and that tower's tokenizer; other models leave them None."""
    unet: UNetModel
    vae: AutoencoderKL
    text_encoder: TextEncoder
    tokenizer: Tokenizer
    spec: ModelSpec
    text_encoder_2: TextEncoder | None = None
    tokenizer_2: Tokenizer | None = None

    def packing_bytes(self) -> int:
        """Memory the fast path's packed convolution weights may still take on first use (`fast.packing_bytes`)."""
        return sum(fast_path.packing_bytes(network) for network in (self.unet, self.vae)
                   if isinstance(network, torch.nn.Module))


def load(source: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
         prediction_type: str | None = None, allow_pickle: bool = False, fast: bool = True) -> Components:
    """Load a Stable Diffusion 1.x/2.x model from a preset id, a single file, a diffusers folder, or "tiny".

    dtype: of every weight (default float32). float16 also picks the Hub's `.fp16` files.
    device: where the weights go. Tensors are memory-mapped from the files and copied only
        when the dtype or device differs from the file's.
    prediction_type: "epsilon" or "v" ("v_prediction" is accepted). The weights cannot say which;
        by default it comes from the preset or the folder's scheduler config.
    allow_pickle: read .ckpt/.pt/.bin files with torch.load(weights_only=True) instead of refusing them.
    fast: apply the fast path for the device (`fast.optimize`: the same weights, keys and map, computed
        faster); False gives the plain reference networks of ldm/ and clip/.
    """
    components = load_plain(source, dtype=dtype, device=device, prediction_type=prediction_type,
                            allow_pickle=allow_pickle)
    if fast:
        for network in (components.unet, components.vae, components.text_encoder, components.text_encoder_2):
            if isinstance(network, torch.nn.Module):
                fast_path.optimize(network, device=device)
    return components


def load_plain(source: str | Path, *, dtype: torch.dtype | None, device: str | torch.device,
               prediction_type: str | None, allow_pickle: bool) -> Components:
    """`load` without the fast path."""
    dtype = dtype or torch.float32
    device = torch.device(device)
    if prediction_type is not None:
        if prediction_type not in presets.PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {sorted(presets.PREDICTION_TYPES)}, "
                             f"not {prediction_type!r}")
        prediction_type = presets.PREDICTION_TYPES[prediction_type]
    options = dict(dtype=dtype, device=device, prediction_type=prediction_type)

    if isinstance(source, str) and source == "toy":
        return Components(*load_toy(device=device))
    if isinstance(source, str) and source == "tiny":
        return load_tiny(**options)
    if isinstance(source, str) and source in presets.NAMES:
        spec = presets.get(source)
        if isinstance(spec, AdmSpec):           # pixel space, no autoencoder: weights.load_pixel_model loads it
            raise latent_editor_refusal(source)
        if isinstance(spec, presets.LDMSpec):   # the paper's LDM: pickles from known sources, converted once
            return Components(*ldm_txt2img.load_preset(spec, dtype=dtype, device=device))
        if spec.text_2 is not None:             # SDXL: the single file (the folder's VAE is another one)
            file = hub.fetch_single_file(spec)
            return load_single_file(file, open_safetensors(file), **options)
        # A float16_only preset's float32 weights are published only as pickles: its float16 files, widened.
        folder = hub.fetch(spec, fp16=dtype == torch.float16 or spec.float16_only)
        return Components(*load_folder(folder, preset=spec, allow_pickle=False, **options))

    path = Path(source).expanduser()
    if path.is_dir() and ldm_txt2img.looks_like_port(path):
        return Components(*ldm_txt2img.load_port(path, presets.get("ldm-txt2img-f8-large"), convert=False,
                                                 allow_pickle=allow_pickle, dtype=dtype, device=device))
    if path.is_dir():
        return Components(*load_folder(path, allow_pickle=allow_pickle, **options))
    if path.is_file():
        if path.suffix == ".safetensors":
            return load_single_file(path, open_safetensors(path), **options)
        if path.suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise refusal(path)
            return load_single_file(path, read_pickle(path), **options)
        raise NotAModelError(f"{path}: not a checkpoint this loader reads; expected a .safetensors single file, "
                             f"a diffusers model folder, or (with allow_pickle=True) a .ckpt file")
    if path.suffix in (".safetensors", *PICKLE_SUFFIXES):
        raise UnknownSourceError(f"{path}: no such file (looked for {path.resolve()})")
    raise UnknownSourceError(
        f"{str(source)!r} is neither a known model id nor an existing file or folder "
        f"(looked for {path.resolve()}). Known ids: {', '.join(MODEL_NAMES)}. For another Hub repository, "
        f"download it with `hf download <repo> --local-dir DIR` and pass DIR.")


def load_single_file(path: Path, tensors: dict, *, dtype, device, prediction_type) -> Components:
    """A single-file checkpoint's networks, on the architecture of the preset it matches."""
    if ldm_txt2img.is_ldm_txt2img(tensors):     # the paper's LDM; its vocab.txt beside it, or the downloaded one
        vocab_file = path.parent / "vocab.txt" if (path.parent / "vocab.txt").is_file() else None
        return Components(*ldm_txt2img.load_single_file(path, tensors, presets.get("ldm-txt2img-f8-large"),
                                                        vocab_file=vocab_file, dtype=dtype, device=device))
    family = single_file.detect_family(tensors, path)
    shapes = {k: tuple(tensors[k].shape) for k in single_file.PROBES.values() if k in tensors}
    preset = presets.get(single_file.choose_preset(family, path, shapes, prediction_type, presets))
    spec = replace(preset, prediction_type=prediction_type or preset.prediction_type, notes=f"single file {path}")
    parts = single_file.split(tensors, family, path)
    del tensors
    unet = assign_weights(build_empty(spec.build_unet), parts.pop("unet"), file=path, part="unet",
                          dtype=dtype, device=device)
    vae = assign_weights(build_empty(spec.build_vae), parts.pop("vae"), file=path, part="vae",
                         dtype=dtype, device=device)
    text_encoder = assign_weights(build_empty(spec.build_text_encoder), parts.pop("text_encoder"), file=path,
                                  part="text_encoder", dtype=dtype, device=device)
    if spec.text_2 is None:
        return Components(unet, vae, text_encoder, spec.build_tokenizer(), spec)
    text_encoder_2 = assign_weights(build_empty(spec.build_text_encoder_2), parts.pop("text_encoder_2"), file=path,
                                    part="text_encoder_2", dtype=dtype, device=device)
    return Components(unet, vae, text_encoder, spec.build_tokenizer(), spec, text_encoder_2, spec.build_tokenizer_2())


FP16_FIX_VAE_REPO = "madebyollin/sdxl-vae-fp16-fix"
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def load_vae(source: str | Path, *, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu") -> AutoencoderKL:
    """A replacement autoencoder: "fp16-fix" (madebyollin/sdxl-vae-fp16-fix, SDXL's VAE fine-tuned so that its
    float16 activations stay in range, so it decodes in float16 without NaN; from the Hub cache, else the Hub),
    or a diffusers `vae/` folder (config.json + diffusion_pytorch_model.safetensors)."""
    from . import diffusers_keys as keys
    from .diffusers_folder import read_json
    folder = hub.fetch_files(FP16_FIX_VAE_REPO, list(VAE_FILES)) if source == "fp16-fix" else Path(source).expanduser()
    config_file, file = (folder / name for name in VAE_FILES)
    if not file.is_file():
        raise NotAModelError(f"{folder}: not an autoencoder folder; expected {' and '.join(VAE_FILES)}")
    config = keys.vae_config_from_diffusers(read_json(config_file), config_file)
    tensors = keys.vae_from_diffusers(dict(open_safetensors(file)), config)
    return assign_weights(build_empty(lambda: AutoencoderKL(config)), tensors, file=file, part="vae",
                          dtype=dtype or torch.float32, device=torch.device(device))


def load_tiny(*, dtype, device, prediction_type) -> Components:
    """The "tiny" preset with deterministic random weights (`fill_random_`, seeds TINY_MODEL_SEEDS)."""
    spec = presets.get("tiny")
    if prediction_type is not None:
        spec = replace(spec, prediction_type=prediction_type)
    unet = fill_random_(spec.build_unet(), TINY_MODEL_SEEDS["unet"])
    vae = fill_random_(spec.build_vae(), TINY_MODEL_SEEDS["vae"])
    text_encoder = fill_random_(spec.build_text_encoder(), TINY_MODEL_SEEDS["text_encoder"])
    modules = [m.to(device=device, dtype=dtype).eval() for m in (unet, vae, text_encoder)]
    return Components(*modules, spec.build_tokenizer(), spec)
