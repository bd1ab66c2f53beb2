"""Single-file checkpoints in the original LDM layout (`v1-5-pruned-emaonly.safetensors`, `v2-1_512-ema-pruned...`).

One file holds the whole LatentDiffusion model, with each network under its own prefix:

    model.diffusion_model.*          the UNet
    first_stage_model.*              the autoencoder
    cond_stage_model.transformer.*   SD 1's text tower (transformers' CLIPTextModel, `text_model.*`)
    cond_stage_model.model.*         SD 2's text tower (open_clip's names, 24 blocks)
    conditioner.embedders.0.transformer.*   SDXL's ViT-L/14 tower (transformers' names, `text_model.*`)
    conditioner.embedders.1.model.*         SDXL's ViT-bigG/14 tower (open_clip's names, 32 blocks)

beside entries that are not weights of any network (`SINGLE_FILE_NON_WEIGHTS`). SD 1 and SD 2 are told apart
by the text tower's prefix and checked against the UNet's cross-attention width (768 vs 1024); an inpainting
checkpoint (`sd-v1-5-inpainting`, `512-inpainting-ema`) from the text-to-image one of its family by the input
channels of its first convolution, `model.diffusion_model.input_blocks.0.0.weight` (320, 9, 3, 3) against
(320, 4, 3, 3), as diffusers' `infer_diffusers_model_type` tells them apart.
Whether a model predicts ε or v is not in the weights; it comes from the matching preset or the caller.
"""
import warnings
from pathlib import Path

from .errors import StateDictMismatchError, UnsupportedModelError, mismatch_message

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {"sd1": "cond_stage_model.transformer.", "sd2": "cond_stage_model.model."}
# The UNet's input channels: the latent (4), or the inpainting UNet's latent | mask | masked image's latent (9).
UNET_IN_CHANNELS = (4, 9)
SDXL_TEXT_PREFIXES = {"text_encoder": "conditioner.embedders.0.transformer.",
                      "text_encoder_2": "conditioner.embedders.1.model."}

# Not weights: the training-time EMA copy (`model_ema.decay`, `model_ema.num_updates`, and in the
# non-"emaonly" files one flattened copy of every UNet weight), DDPM schedule buffers that the
# samplers recompute, and the position ids that old transformers versions saved as a buffer.
NON_WEIGHT_PREFIXES = ("model_ema.",)
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "logvar")
SINGLE_FILE_NON_WEIGHTS = frozenset(SCHEDULE_BUFFERS + (
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
    "denoiser.sigmas"))   # SDXL's σ table, which EulerSampler recomputes


def is_non_weight(key: str) -> bool:
    return key in SINGLE_FILE_NON_WEIGHTS or key.startswith(NON_WEIGHT_PREFIXES)


def detect_family(tensors: dict, file) -> str:
    """'sd1', 'sd2' or 'sdxl', from the text towers' prefixes, checked against the UNet's input and context widths."""
    keys = tensors.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return detect_sdxl(tensors, file)
    found = [family for family, prefix in TEXT_PREFIXES.items() if any(k.startswith(prefix) for k in keys)]
    if not any(k.startswith(UNET_PREFIX) for k in keys) or len(found) != 1:
        raise UnsupportedModelError(
            f"{file}: not a full SD 1.x/2.x single-file checkpoint: expected keys under {UNET_PREFIX!r}, "
            f"{VAE_PREFIX!r} and one of {TEXT_PREFIXES['sd1']!r} (SD 1) or {TEXT_PREFIXES['sd2']!r} (SD 2); "
            f"found text towers: {found or 'none'}. A UNet-only or LoRA file cannot be loaded as a model.")
    family = found[0]
    conv_in = tensors.get(PROBES["unet"])
    if conv_in is not None and conv_in.shape[1] not in UNET_IN_CHANNELS:
        raise UnsupportedModelError(f"{file}: its UNet takes {conv_in.shape[1]} input channels (a depth or other "
                                    f"image-conditioned model); supported: 4 (text-to-image) and 9 (inpainting: the "
                                    f"latent, the mask and the masked image's latent)")
    token_embedding = tensors.get(PROBES[family])
    to_k = next((v for k, v in tensors.items() if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if token_embedding is not None and to_k is not None and to_k.shape[1] != token_embedding.shape[1]:
        raise UnsupportedModelError(f"{file}: the UNet cross-attends to width {to_k.shape[1]}, but its "
                                    f"{family.upper()} text tower has width {token_embedding.shape[1]}")
    return family


def detect_sdxl(tensors: dict, file) -> str:
    """'sdxl' when both of SDXL's towers and its UNet are there, with the UNet attending to their joint width."""
    keys = tensors.keys()
    absent = [prefix for prefix in (UNET_PREFIX, VAE_PREFIX, *SDXL_TEXT_PREFIXES.values())
              if not any(k.startswith(prefix) for k in keys)]
    if absent:
        raise UnsupportedModelError(f"{file}: an SDXL checkpoint (conditioner.embedders.*) without keys under "
                                    f"{', '.join(map(repr, absent))}; a full SDXL base file has the UNet, the VAE and "
                                    f"both text towers (a refiner or UNet-only file cannot be loaded as a model)")
    conv_in = tensors.get(PROBES["unet"])
    if conv_in is not None and conv_in.shape[1] != 4:
        raise UnsupportedModelError(f"{file}: its UNet takes {conv_in.shape[1]} input channels (an inpainting "
                                    "model); only the 4-channel text-to-image UNet is supported")
    widths = [tensors[PROBES[p]].shape[1] for p in ("sdxl_0", "sdxl_1") if PROBES[p] in tensors]
    to_k = next((v for k, v in tensors.items() if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if len(widths) == 2 and to_k is not None and to_k.shape[1] != sum(widths):
        raise UnsupportedModelError(f"{file}: the UNet cross-attends to width {to_k.shape[1]}, but its text towers "
                                    f"have widths {widths[0]} + {widths[1]}")
    return "sdxl"


PROBES = {"unet": UNET_PREFIX + "input_blocks.0.0.weight", "vae": VAE_PREFIX + "encoder.conv_in.weight",
          "sd1": TEXT_PREFIXES["sd1"] + "text_model.embeddings.token_embedding.weight",
          "sd2": TEXT_PREFIXES["sd2"] + "token_embedding.weight",
          "sdxl_0": SDXL_TEXT_PREFIXES["text_encoder"] + "text_model.embeddings.token_embedding.weight",
          "sdxl_1": SDXL_TEXT_PREFIXES["text_encoder_2"] + "token_embedding.weight",
          "sdxl_y": UNET_PREFIX + "label_emb.0.0.weight"}


def probe_shapes(spec) -> dict:
    """The shapes a few tensors of `spec`'s networks have: enough to tell the presets apart."""
    if getattr(spec, "text_2", None) is not None:
        return {PROBES["unet"]: (spec.unet.model_channels, spec.unet.in_channels, 3, 3),
                PROBES["vae"]: (spec.vae.ch, spec.vae.in_channels, 3, 3),
                PROBES["sdxl_0"]: (spec.text.vocab_size, spec.text.width),
                PROBES["sdxl_1"]: (spec.text_2.vocab_size, spec.text_2.width),
                PROBES["sdxl_y"]: (4 * spec.unet.model_channels, spec.unet.adm_in_channels)}
    return {PROBES["unet"]: (spec.unet.model_channels, spec.unet.in_channels, 3, 3),
            PROBES["vae"]: (spec.vae.ch, spec.vae.in_channels, 3, 3),
            PROBES[spec.text.layout]: (spec.text.vocab_size, spec.text.width)}


def choose_preset(family: str, file: Path, shapes: dict, prediction_type: str | None, presets) -> str:
    """The preset whose architecture the file has, told apart by the shapes of a few tensors.

    SD 2 comes in ε (512 px) and v (768 px) variants with the same shapes: `prediction_type`
    decides, else the file name if it is the published one, else ε with a warning.
    """
    fits = [name for name in presets.NAMES if getattr(presets.get(name).text, "layout", None) == family
            and all(shapes.get(k) == v for k, v in probe_shapes(presets.get(name)).items())]
    if family == "sdxl":
        fits = [name for name in presets.NAMES if getattr(presets.get(name), "text_2", None) is not None
                and all(shapes.get(k) == v for k, v in probe_shapes(presets.get(name)).items())]
    if not fits:
        found = {k: shapes.get(k) for k in PROBES.values() if k in shapes}
        raise UnsupportedModelError(
            f"{file}: an {family.upper()} checkpoint whose sizes match no preset ({found}). Single files load onto "
            f"a preset's architecture; for other sizes use a diffusers folder, whose config.json says the sizes.")
    if len(fits) == 1:
        return fits[0]
    if prediction_type is not None:
        return next(n for n in fits if (presets.get(n).prediction_type == "v") == (prediction_type == "v"))
    for name in fits:
        if presets.get(name).single_file == file.name:
            return name
    eps = next(n for n in fits if presets.get(n).prediction_type == "epsilon")
    warnings.warn(f"{file}: an SD 2 checkpoint; whether it predicts ε (512 px, like 2.1-base) or v (768 px, like "
                  f"2.1) cannot be read from the weights. Assuming ε ({eps}); pass prediction_type='v' for a "
                  f"768-v model.", stacklevel=3)
    return eps


def split(tensors: dict, family: str, file) -> dict[str, dict]:
    """{"unet"|"vae"|"text_encoder": {our key: tensor}}, the non-weights dropped.

    Any other key is an error, listed by name: strict loading, with the ignore list explicit.
    """
    prefixes = {"unet": UNET_PREFIX, "vae": VAE_PREFIX}
    prefixes.update(SDXL_TEXT_PREFIXES if family == "sdxl" else {"text_encoder": TEXT_PREFIXES[family]})
    parts = {part: {} for part in prefixes}
    stray = []
    for key, value in tensors.items():
        if is_non_weight(key):
            continue
        for part, prefix in prefixes.items():
            if key.startswith(prefix):
                parts[part][key[len(prefix):]] = value
                break
        else:
            stray.append(key)
    if stray:
        raise StateDictMismatchError(mismatch_message(file, "checkpoint", [], stray, {}))
    if family == "sd1":
        # Files saved by transformers < 4.x lack the `text_model.` level.
        parts["text_encoder"] = {k if k.startswith("text_model.") else "text_model." + k: v
                                 for k, v in parts["text_encoder"].items()}
    return parts
