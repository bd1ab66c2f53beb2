"""Diffusers-layout model folders: one sub-folder per component, each with its config.json.

    model_index.json
    unet/          config.json  diffusion_pytorch_model[.fp16].safetensors
    vae/           config.json  diffusion_pytorch_model[.fp16].safetensors
    text_encoder/  config.json  model[.fp16].safetensors
    tokenizer/     vocab.json  merges.txt  special_tokens_map.json  tokenizer_config.json
    scheduler/     scheduler_config.json

The architecture comes from each config.json (so models of other sizes load too), and
the tensors are renamed to ours by the table in `diffusers_keys`. This is also how
presets load: their Hub repositories have this layout.
"""
import json
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from clip import Tokenizer
from clip.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE

from . import diffusers_keys as keys
from .errors import CorruptFileError, NotAModelError, UnsupportedModelError
from .materialize import assign_weights, build_empty, open_safetensors
from .pickle_checkpoint import read_pickle, refusal
from .presets import PREDICTION_TYPES, ModelSpec

COMPONENTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
TOKENIZER_FILES = ("vocab.json", "merges.txt")
# Saved by transformers < 4.31 as a persistent buffer; it is arange(77), not a weight.
FOLDER_NON_WEIGHTS = {"text_encoder": ("text_model.embeddings.position_ids", "embeddings.position_ids")}


def looks_like_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or all((path / c / "config.json").is_file() for c in COMPONENTS)


def read_json(path: Path) -> dict:
    """The JSON object in `path`; a missing, empty or damaged file, or JSON that is not an object, is refused."""
    if not path.is_file():
        raise NotAModelError(f"{path} is missing: a diffusers model folder has it (see weights/LOADING.md)")
    again = ("Copy it again from the model's repository (for the Hub cache: `hf download <repo> "
             "--force-download`)")
    text = path.read_bytes()
    if not text.strip():
        found = "0 bytes" if not text else f"{len(text)} bytes of white space"
        raise CorruptFileError(f"{path}: the file is empty ({found}); expected a JSON object "
                               f"{{...}}. {again}.")
    try:
        value = json.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path}: not valid JSON ({error}); expected a JSON object {{...}}. The file is "
                               f"damaged: {again[0].lower()}{again[1:]}.") from None
    if not isinstance(value, dict):
        shown = text.decode("utf-8").strip()
        shown = shown if len(shown) <= 40 else shown[:40] + "…"
        raise CorruptFileError(f"{path}: JSON holding a {type(value).__name__} ({shown!r}), "
                               f"not an object {{...}}. {again}.")
    return value


def check_folder(folder: Path) -> None:
    """Raise NotAModelError, saying what is there and what is expected, unless `folder` is a model folder."""
    if looks_like_folder(folder):
        absent = [c for c in (*COMPONENTS, "tokenizer") if not (folder / c).is_dir()]
        if absent:
            raise NotAModelError(f"{folder}: a diffusers model folder without {', '.join(absent)}/; this loader needs "
                                 f"unet/, vae/, text_encoder/ and tokenizer/")
        return
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        hint = (f"It looks like one component of a model (it has config.json and weights); pass the model folder "
                f"that holds it, {folder.parent}, instead.")
    else:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())[:12]
        hint = f"It holds: {', '.join(found) or 'nothing'}."
    raise NotAModelError(
        f"{folder} is not a model folder: expected the diffusers layout (model_index.json, unet/, vae/, "
        f"text_encoder/, tokenizer/, scheduler/). {hint} To load a single-file checkpoint, pass the .safetensors "
        f"file itself.")


def weight_files(component: Path, stem: str, fp16: bool, allow_pickle: bool) -> list[Path]:
    """The file(s) holding a component's weights: the .fp16 variant first when fp16 is wanted."""
    variants = [".fp16", ""] if fp16 else ["", ".fp16"]
    for variant in variants:
        single = component / f"{stem}{variant}.safetensors"
        if single.is_file():
            return [single]
        index = component / f"{stem}{variant}.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            return [component / shard for shard in shards]
    for variant in variants:
        pickled = component / f"{stem}{variant}.bin"
        if pickled.is_file():
            if not allow_pickle:
                raise refusal(pickled)
            return [pickled]
    raise NotAModelError(f"{component}: no weights ({stem}.safetensors or {stem}.fp16.safetensors); "
                         f"it holds {sorted(p.name for p in component.iterdir()) if component.is_dir() else 'nothing'}")


def read_tensors(files: list[Path]) -> dict:
    tensors = {}
    for file in files:
        tensors.update(read_pickle(file) if file.suffix == ".bin" else open_safetensors(file))
    return tensors


def tokenizer_style(folder: Path) -> str:
    """"sd2" when the tokenizer pads with "!" (id 0, as open_clip does), else "sd1" (pads with EOS).

    special_tokens_map.json wins over tokenizer_config.json, as in transformers: SD 2's folders
    name "<|endoftext|>" in the latter and "!" in the former, and pad with "!".
    """
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            pad = read_json(folder / name).get("pad_token")
            if pad is not None:
                pad = pad.get("content") if isinstance(pad, dict) else pad
                return "sd2" if pad == "!" else "sd1"
    return "sd1"


def read_spec(folder: Path, name: str) -> ModelSpec:
    """The ModelSpec described by the folder's config files (an SDXL folder's: `read_sdxl_spec`)."""
    if (folder / "text_encoder_2").is_dir():
        return read_sdxl_spec(folder, name)
    return read_one_tower_spec(folder, name)


def read_sdxl_spec(folder: Path, name: str) -> ModelSpec:
    """An SDXL folder's spec (StableDiffusionXLPipeline: text_encoder_2/ and tokenizer_2/ beside the rest).

    Both towers are complete in the folder (12 and 32 blocks); SDXL's pipelines read their penultimate
    hidden states without the final norm, which the configs do not say, so the spec does."""
    spec = read_one_tower_spec(folder, name)
    file = folder / "text_encoder_2" / "config.json"
    text = replace(spec.text, skip_last_layers=1, context_final_norm=False)
    text_2 = replace(keys.text_2_config_from_transformers(read_json(file), file), skip_last_layers=1,
                     context_final_norm=False)
    if spec.unet.context_dim != text.width + text_2.width or \
            spec.unet.adm_in_channels != text_2.resolved_projection_dim + 6 * spec.time_embedding_dim:
        raise UnsupportedModelError(
            f"{folder / 'unet' / 'config.json'}: cross_attention_dim={spec.unet.context_dim}, "
            f"projection_class_embeddings_input_dim={spec.unet.adm_in_channels}; SDXL's UNet attends to both towers "
            f"({text.width} + {text_2.width}) and takes y = [pooled text ({text_2.resolved_projection_dim}) | 6 × 256]")
    return replace(spec, text=text, text_2=text_2, guidance_scale=5.0)


def read_one_tower_spec(folder: Path, name: str) -> ModelSpec:
    """The ModelSpec of unet/, vae/, text_encoder/ and scheduler/.

    The default image size is diffusers' own: the UNet's `sample_size` (latent side) times the
    VAE's downsampling factor 2^(levels - 1); the VAE's `scaling_factor` is the scale factor.
    """
    files = {part: folder / part / "config.json" for part in ("unet", "vae", "text_encoder")}
    unet, vae, text = (read_json(files[part]) for part in files)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = read_json(scheduler_file) if scheduler_file.is_file() else {}
    kind = scheduler.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise UnsupportedModelError(f"{scheduler_file}: prediction_type={kind!r}; supported: {list(PREDICTION_TYPES)}")
    if scheduler.get("beta_schedule", "scaled_linear") != "scaled_linear" or scheduler.get("trained_betas"):
        raise UnsupportedModelError(f"{scheduler_file}: beta_schedule {scheduler.get('beta_schedule')!r}; "
                                    f"SD's samplers here use 'scaled_linear'")
    unet_config = keys.unet_config_from_diffusers(unet, files["unet"])
    vae_config = keys.vae_config_from_diffusers(vae, files["vae"])
    text_config = keys.text_config_from_transformers(text, files["text_encoder"])
    check_components_fit(files, unet_config, vae_config, text_config)
    downsampling = 2 ** (len(vae_config.ch_mult) - 1)
    image_size = unet["sample_size"] * downsampling if unet.get("sample_size") else vae.get("sample_size", 512)
    return ModelSpec(
        name=name, unet=unet_config, vae=vae_config, text=text_config,
        prediction_type=PREDICTION_TYPES[kind], scale_factor=vae.get("scaling_factor", 0.18215),
        image_size=image_size,
        beta_start=scheduler.get("beta_start", 0.00085), beta_end=scheduler.get("beta_end", 0.012),
        num_train_timesteps=scheduler.get("num_train_timesteps", 1000),
        steps_offset=scheduler.get("steps_offset", 1), notes=f"diffusers folder {folder}")


def check_components_fit(files: dict, unet, vae, text) -> None:
    """The UNet denoises the VAE's latents and attends to the text tower's output: refuse, by the
    config keys involved, a folder whose parts do not fit. An inpainting UNet takes the latent, the mask
    and the masked image's latent (2·latent_channels + 1 = 9 input channels)."""
    latent = vae.z_channels
    if unet.in_channels not in (latent, 2 * latent + 1) or unet.out_channels != latent:
        raise UnsupportedModelError(
            f"{files['unet']}: in_channels={unet.in_channels}, out_channels={unet.out_channels}, but {files['vae']} "
            f"has latent_channels={latent}; supported: out_channels equal to the VAE's latent_channels and "
            f"in_channels {latent} (text-to-image) or {2 * latent + 1} (inpainting: latent, mask, masked image)")
    if unet.context_dim != text.width and unet.adm_in_channels is None:   # SDXL's: read_sdxl_spec checks it
        raise UnsupportedModelError(
            f"{files['unet']}: cross_attention_dim={unet.context_dim}, but {files['text_encoder']} has "
            f"hidden_size={text.width}; supported: a UNet that attends to its own text tower's width")


def load_folder(folder: Path, *, dtype: torch.dtype, device: torch.device, prediction_type: str | None,
                allow_pickle: bool, preset: ModelSpec | None = None):
    """(unet, vae, text_encoder, tokenizer, spec) from a diffusers folder. `preset` names the model
    when the folder is a preset's Hub snapshot; its facts (name, prediction type, repository) are kept."""
    check_folder(folder)
    spec = read_spec(folder, folder.name)
    tokenizer = read_tokenizer(folder / "tokenizer")        # before the weights: a refusal costs no reading
    if preset is not None:
        if preset.prediction_type != spec.prediction_type:
            warnings.warn(f"{folder}: the scheduler config says {spec.prediction_type!r} but preset {preset.name!r} "
                          f"says {preset.prediction_type!r}; using the preset's", stacklevel=3)
        spec = replace(preset, unet=spec.unet, vae=spec.vae, text=spec.text, text_2=spec.text_2,
                       notes=f"Hub snapshot {folder}")
    if prediction_type is not None:
        spec = replace(spec, prediction_type=prediction_type)

    fp16 = dtype == torch.float16
    modules = {}
    for part, stem in COMPONENTS.items():
        files = weight_files(folder / part, stem, fp16, allow_pickle)
        tensors = {k: v for k, v in read_tensors(files).items() if k not in FOLDER_NON_WEIGHTS.get(part, ())}
        file = files[0] if len(files) == 1 else f"{folder / part} ({len(files)} shards)"
        if part == "unet":
            module = build_empty(spec.build_unet)
            tensors = keys.unet_from_diffusers(tensors, spec.unet)
        elif part == "vae":
            module = build_empty(spec.build_vae)
            tensors = keys.vae_from_diffusers(tensors, spec.vae)
        else:
            module = build_empty(spec.build_text_encoder)
            tensors = keys.text_from_transformers(tensors, spec.text)
            tensors.update(_absent_from_transformers(module, tensors))
        modules[part] = assign_weights(module, tensors, file=file, part=part, dtype=dtype, device=device)

    if spec.text_2 is None:
        return modules["unet"], modules["vae"], modules["text_encoder"], tokenizer, spec
    files = weight_files(folder / "text_encoder_2", COMPONENTS["text_encoder"], fp16, allow_pickle)
    tensors = {k: v for k, v in read_tensors(files).items() if k not in FOLDER_NON_WEIGHTS["text_encoder"]}
    module = build_empty(spec.build_text_encoder_2)
    tensors = keys.text_from_transformers(tensors, spec.text_2)
    tensors.update(_absent_from_transformers(module, tensors))          # logit_scale: no counterpart
    file = files[0] if len(files) == 1 else f"{folder / 'text_encoder_2'} ({len(files)} shards)"
    text_encoder_2 = assign_weights(module, tensors, file=file, part="text_encoder_2", dtype=dtype, device=device)
    return (modules["unet"], modules["vae"], modules["text_encoder"], tokenizer, spec, text_encoder_2,
            read_tokenizer(folder / "tokenizer_2"))


def read_tokenizer(folder: Path) -> Tokenizer:
    """The CLIP tokenizer from `vocab.json` + `merges.txt` (the published folders), or from the
    `tokenizer.json` that transformers 5 writes instead, in the style its pad token names.

    clip.Tokenizer holds CLIP's own table (49408 entries, BOS 49406, EOS 49407); a folder with
    another table, such as the 1000-entry tokenizers of test pipelines, is refused by name."""
    style = tokenizer_style(folder)
    try:
        if all((folder / name).is_file() for name in TOKENIZER_FILES):
            check_vocabulary(folder / "vocab.json", read_json(folder / "vocab.json"))
            return Tokenizer.from_vocab_files(folder / "vocab.json", folder / "merges.txt", style=style)
        if (folder / "tokenizer.json").is_file():
            model = read_json(folder / "tokenizer.json").get("model", {})
            if model.get("type") != "BPE":
                raise CorruptFileError(f"{folder / 'tokenizer.json'}: not a BPE tokenizer ({model.get('type')})")
            check_vocabulary(folder / "tokenizer.json", model.get("vocab", {}))
            merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
            with tempfile.TemporaryDirectory() as scratch:     # the same tables, in the two-file form
                vocab_json, merges_txt = Path(scratch) / "vocab.json", Path(scratch) / "merges.txt"
                vocab_json.write_text(json.dumps(model["vocab"]), encoding="utf-8")
                merges_txt.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
                return Tokenizer.from_vocab_files(vocab_json, merges_txt, style=style)
    except (ValueError, KeyError) as error:
        if isinstance(error, UnsupportedModelError):
            raise
        raise CorruptFileError(f"{folder}: the tokenizer tables are damaged or not CLIP's ({error})") from None
    raise NotAModelError(f"{folder}: no tokenizer tables; expected vocab.json + merges.txt (or tokenizer.json)")


def check_vocabulary(file: Path, vocabulary: dict) -> None:
    """Refuse a tokenizer table other than CLIP's: clip.Tokenizer cannot express it."""
    specials = {name: vocabulary.get(name) for name in ("<|startoftext|>", "<|endoftext|>")}
    if len(vocabulary) != VOCAB_SIZE or specials != {"<|startoftext|>": BOS_ID, "<|endoftext|>": EOS_ID}:
        raise UnsupportedModelError(
            f"{file}: a vocabulary of {len(vocabulary)} entries with <|startoftext|>={specials['<|startoftext|>']}, "
            f"<|endoftext|>={specials['<|endoftext|>']}; supported: CLIP's BPE vocabulary, {VOCAB_SIZE} entries with "
            f"<|startoftext|>={BOS_ID}, <|endoftext|>={EOS_ID}, as every SD 1.x/2.x folder has. Replace the "
            f"folder's tokenizer/ with CLIP's (vocab.json and merges.txt of any SD 1.x/2.x repository) and its text "
            f"encoder with one of vocab_size {VOCAB_SIZE}")


def _absent_from_transformers(module, tensors: dict) -> dict:
    """SD 2's open_clip tower keeps `text_projection` and `logit_scale`, which a transformers
    CLIPTextModel does not have. Neither is used to condition the UNet, only by
    `TextEncoder.pooled_embedding`. They are filled with NaN, so that any use shows at once
    instead of giving a plausible but wrong embedding."""
    state = module.state_dict(keep_vars=True)
    return {name: torch.full(state[name].shape, float("nan"))
            for name in ("text_projection", "logit_scale") if name in state and name not in tensors}
