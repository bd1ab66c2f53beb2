"""Test fakes: files laid out exactly like the published ones, filled with deterministic random weights.

No test can download 5 GB, and no test should: the loader's job is names, shapes, layouts
and errors, and those can be checked on files that look like the published ones in every
way but their values. This module writes

- `write_single_file`: an LDM single-file checkpoint (the three networks under their
  prefixes, plus the EMA counters, the DDPM schedule buffers and SD 1's position ids);
- `write_diffusers_folder`: a diffusers-layout folder, with config.json files in the
  published format and the real CLIP tokenizer tables (vocab.json, merges.txt);
- `write_hub_cache`: a Hugging Face cache entry (blobs/, refs/main, snapshots/<commit>/)
  for a repository id, so that `huggingface_hub` finds it with `HF_HUB_OFFLINE=1`;
- `write_refused_pickle`: a pickle checkpoint that `torch.load(weights_only=True)` refuses, of each kind.

Every weight is `random_tensor(name, shape, seed)` under our name, with seeds
`load.TINY_MODEL_SEEDS`, so `fill_random_(spec.build_unet(), 0)` rebuilds the same UNet.
"""
import hashlib
import json
import os
import pickle
import zlib
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from clip.tokenizer import read_bpe_merges, vocabulary_from_merges
from weights import diffusers_keys as keys
from weights.load import TINY_MODEL_SEEDS
from weights.materialize import build_empty
from weights.presets import ModelSpec
from weights.random_init import random_tensor
from weights.single_file import TEXT_PREFIXES, UNET_PREFIX, VAE_PREFIX

SCHEDULE_BUFFER_SHAPES = {"betas": (1000,), "alphas_cumprod": (1000,), "alphas_cumprod_prev": (1000,),
                          "sqrt_alphas_cumprod": (1000,), "sqrt_one_minus_alphas_cumprod": (1000,),
                          "log_one_minus_alphas_cumprod": (1000,), "sqrt_recip_alphas_cumprod": (1000,),
                          "sqrt_recipm1_alphas_cumprod": (1000,), "posterior_variance": (1000,),
                          "posterior_log_variance_clipped": (1000,), "posterior_mean_coef1": (1000,),
                          "posterior_mean_coef2": (1000,)}


def random_weights(spec: ModelSpec, part: str, dtype=torch.float32, values: str = "random") -> dict:
    """{our key: tensor} for one network of `spec`.

    values="random": `random_tensor(name, shape, TINY_MODEL_SEEDS[part])`, the weights `fill_random_` gives.
    values="constant": each tensor filled with `constant_value(name)`; full-size files in seconds
    instead of a minute, for tests of layout, routing and memory rather than of outputs.
    """
    builder = {"unet": spec.build_unet, "vae": spec.build_vae, "text_encoder": spec.build_text_encoder}[part]
    shapes = {name: t.shape for name, t in build_empty(builder).state_dict(keep_vars=True).items()}
    if values == "constant":
        return {name: torch.full(shape, constant_value(name), dtype=dtype) for name, shape in shapes.items()}
    return {name: random_tensor(name, shape, TINY_MODEL_SEEDS[part]).to(dtype) for name, shape in shapes.items()}


def constant_value(name: str) -> float:
    """A value in [-1, 1) that differs between names, so a tensor read under the wrong name shows."""
    return zlib.crc32(name.encode()) / 2**31 - 1


# ----------------------------------------------------------------------------- single file
def write_single_file(path: str | Path, spec: ModelSpec, dtype=torch.float32, ema_copies: bool = True,
                      values: str = "random") -> Path:
    """An LDM-layout checkpoint of `spec`, with the non-weights the published files carry.

    ema_copies: also add a flattened EMA copy of the UNet (`model_ema.<name without dots>`), as the
    non-"emaonly" files have; the published "emaonly" files keep just `model_ema.decay`/`num_updates`.
    values: see `random_weights`.
    """
    tensors = {}
    for part, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("text_encoder", TEXT_PREFIXES[spec.text.layout])):
        for name, value in random_weights(spec, part, dtype, values).items():
            tensors[prefix + name] = value
            if part == "unet" and ema_copies:
                tensors["model_ema.diffusion_model" + name.replace(".", "")] = value.clone()
    tensors["model_ema.decay"] = torch.tensor(0.9999)
    tensors["model_ema.num_updates"] = torch.tensor(470000, dtype=torch.int32)
    for name, shape in SCHEDULE_BUFFER_SHAPES.items():
        tensors[name] = torch.rand(shape, generator=torch.Generator().manual_seed(len(name)))
    if spec.text.layout == "sd1":
        tensors[TEXT_PREFIXES["sd1"] + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    path = Path(path)
    save_file(tensors, str(path))
    return path


# ----------------------------------------------------------------------------- published configs
def unet_config(spec: ModelSpec) -> dict:
    c = spec.unet
    channels = [c.model_channels * m for m in c.channel_mult]
    down = ["CrossAttnDownBlock2D" if i in c.attention_levels else "DownBlock2D" for i in range(len(channels))]
    config = {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.8.0", "act_fn": "silu",
        # diffusers' "attention_head_dim" holds the number of heads
        "attention_head_dim": c.num_heads if c.num_heads is not None else [ch // c.head_dim for ch in channels],
        "block_out_channels": channels, "center_input_sample": False, "cross_attention_dim": c.context_dim,
        "down_block_types": down, "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True,
        "freq_shift": 0, "in_channels": c.in_channels, "layers_per_block": c.num_res_blocks,
        "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": c.norm_groups, "num_class_embeds": None,
        "only_cross_attention": False, "out_channels": c.out_channels, "sample_size": spec.image_size // 8,
        "up_block_types": [d.replace("Down", "Up") for d in reversed(down)],
        "upcast_attention": c.upcast_attention, "use_linear_projection": c.use_linear_proj}
    if c.transformer_depth != 1:
        config["transformer_layers_per_block"] = c.transformer_depth
    return config


def vae_config(spec: ModelSpec) -> dict:
    c = spec.vae
    return {"_class_name": "AutoencoderKL", "_diffusers_version": "0.8.0", "act_fn": "silu",
            "block_out_channels": [c.ch * m for m in c.ch_mult],
            "down_block_types": ["DownEncoderBlock2D"] * len(c.ch_mult),
            "in_channels": c.in_channels, "latent_channels": c.z_channels, "layers_per_block": c.num_res_blocks,
            "norm_num_groups": c.norm_groups, "out_channels": c.out_channels, "sample_size": spec.image_size,
            "up_block_types": ["UpDecoderBlock2D"] * len(c.ch_mult)}


def text_config(spec: ModelSpec) -> dict:
    c = spec.text
    return {"_name_or_path": "openai/clip-vit-large-patch14" if c.layout == "sd1" else "hf-models/stable-diffusion-v2",
            "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
            "eos_token_id": 2, "hidden_act": c.activation, "hidden_size": c.width, "initializer_factor": 1.0,
            "initializer_range": 0.02, "intermediate_size": c.resolved_mlp_width, "layer_norm_eps": c.layer_norm_eps,
            "max_position_embeddings": c.context_length, "model_type": "clip_text_model",
            "num_attention_heads": c.heads, "num_hidden_layers": c.layers - c.skip_last_layers, "pad_token_id": 1,
            "projection_dim": 768 if c.layout == "sd1" else 512, "torch_dtype": "float32",
            "transformers_version": "4.25.1", "vocab_size": c.vocab_size}


def scheduler_config(spec: ModelSpec) -> dict:
    # As published: SD 2.1 (v) ships a DDIMScheduler config, SD 1.5 and 2.1-base a PNDMScheduler one.
    return {"_class_name": "DDIMScheduler" if spec.prediction_type == "v" else "PNDMScheduler",
            "_diffusers_version": "0.8.0", "beta_end": spec.beta_end,
            "beta_schedule": "scaled_linear", "beta_start": spec.beta_start, "clip_sample": False,
            "num_train_timesteps": spec.num_train_timesteps,
            "prediction_type": "v_prediction" if spec.prediction_type == "v" else "epsilon",
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": spec.steps_offset, "trained_betas": None}


def model_index(spec: ModelSpec) -> dict:
    return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.8.0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "requires_safety_checker": spec.text.layout == "sd1",
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"] if spec.text.layout == "sd1"
            else [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}


def clip_vocab_files() -> dict[str, bytes]:
    """{"vocab.json", "merges.txt"}: CLIP's tokenizer tables byte for byte as the published diffusers
    tokenizer folders hold them, derived from the merge list in clip/ (tests/test_clip_tokenizer.py
    checks both files' sha256 against the published ones)."""
    merges = read_bpe_merges()
    vocabulary = {token: i for i, token in enumerate(vocabulary_from_merges(merges))}
    return {"vocab.json": json.dumps(vocabulary, ensure_ascii=False, sort_keys=True).encode("utf-8"),
            "merges.txt": ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode("utf-8")}


def tokenizer_files(layout: str) -> dict[str, bytes]:
    """tokenizer/{vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json} as published.

    The tables come from CLIP's merge list (the copy in clip/). SD 1 pads with "<|endoftext|>",
    SD 2 with "!" (its special_tokens_map.json), as in the published folders.
    """
    def token(text, typed):
        return {**({"__type": "AddedToken"} if typed else {}), "content": text, "lstrip": False,
                "normalized": True, "rstrip": False, "single_word": False}

    pad = "<|endoftext|>" if layout == "sd1" else "!"
    special = {"bos_token": token("<|startoftext|>", False), "eos_token": token("<|endoftext|>", False),
               "pad_token": pad, "unk_token": token("<|endoftext|>", False)}
    config = {"add_prefix_space": False, "bos_token": token("<|startoftext|>", True), "do_lower_case": True,
              "eos_token": token("<|endoftext|>", True), "errors": "replace", "model_max_length": 77,
              "name_or_path": "openai/clip-vit-large-patch14" if layout == "sd1" else "stabilityai/stable-diffusion-2",
              "pad_token": "<|endoftext|>", "special_tokens_map_file": "./special_tokens_map.json",
              "tokenizer_class": "CLIPTokenizer", "unk_token": token("<|endoftext|>", True)}
    return {**{f"tokenizer/{name}": content for name, content in clip_vocab_files().items()},
            "tokenizer/special_tokens_map.json": json.dumps(special, indent=2).encode(),
            "tokenizer/tokenizer_config.json": json.dumps(config, indent=2).encode()}


# ----------------------------------------------------------------------------- diffusers folder
def diffusers_files(spec: ModelSpec, dtype=torch.float32, variant: str = "", weights: bool = True) -> dict:
    """{relative path: bytes or tensor dict} of a diffusers folder of `spec` with random weights."""
    files = {"model_index.json": model_index(spec), "scheduler/scheduler_config.json": scheduler_config(spec),
             "unet/config.json": unet_config(spec), "vae/config.json": vae_config(spec),
             "text_encoder/config.json": text_config(spec)}
    files = {k: json.dumps(v, indent=2).encode() for k, v in files.items()}
    files.update(tokenizer_files(spec.text.layout))
    if weights:
        files[f"unet/diffusion_pytorch_model{variant}.safetensors"] = keys.unet_to_diffusers(
            random_weights(spec, "unet", dtype), spec.unet)
        files[f"vae/diffusion_pytorch_model{variant}.safetensors"] = keys.vae_to_diffusers(
            random_weights(spec, "vae", dtype), spec.vae)
        files[f"text_encoder/model{variant}.safetensors"] = keys.text_to_transformers(
            random_weights(spec, "text_encoder", dtype), spec.text)
    return files


def _write(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        save_file({k: v.contiguous() for k, v in content.items()}, str(path))


def write_diffusers_folder(folder: str | Path, spec: ModelSpec, dtype=torch.float32, variant: str = "") -> Path:
    folder = Path(folder)
    for name, content in diffusers_files(spec, dtype, variant).items():
        _write(folder / name, content)
    return folder


def diffusers_spec_of(spec: ModelSpec) -> ModelSpec:
    """The spec a diffusers folder of `spec` describes: SD 2's text tower there has 23 blocks, no skip."""
    text = replace(spec.text, layers=spec.text.layers - spec.text.skip_last_layers, skip_last_layers=0)
    return replace(spec, text=text)


# ----------------------------------------------------------------------------- Hub cache
def write_hub_cache(cache_dir: str | Path, repo_id: str, files: dict, commit: str = "a" * 40) -> Path:
    """A Hub cache entry for `repo_id` at `commit`, in huggingface_hub's documented layout:

        models--{org}--{name}/blobs/<sha256 of the content>
        models--{org}--{name}/refs/main                     (holds the commit hash)
        models--{org}--{name}/snapshots/<commit>/<path>     (relative symlinks to the blobs)

    Returns the snapshot folder.
    """
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name, content in files.items():
        staging = repo / "blobs" / "incoming"
        _write(staging, content)
        digest = hashlib.sha256(staging.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        os.replace(staging, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


# ----------------------------------------------------------------------------- pickles torch.load refuses
class PickledObject:
    """A training object stored beside the weights (as Lightning stores callbacks)."""

    def __init__(self):
        self.step = 470000


class PickledCall:
    """An object whose unpickling calls a function: os.system creating `marker`, if anything ran it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


REFUSED_PICKLE_KINDS = ("class instance", "__reduce__ call", "legacy non-zip", "plain pickle.dump", "bare tensor")


def write_refused_pickle(path: str | Path, kind: str) -> Path:
    """A `.ckpt` at `path` that torch.load(weights_only=True) refuses or that holds no dict of tensors, by `kind`:
    a class instance beside the weights, a `__reduce__` call (which would create `<path>.ran`), a legacy (non-zip)
    torch.save file with a class instance, a plain pickle.dump (not torch.save), or a bare tensor."""
    path = Path(path)
    tensors = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3)}
    if kind == "class instance":
        torch.save({"state_dict": tensors, "callbacks": PickledObject()}, path)
    elif kind == "__reduce__ call":
        torch.save({"state_dict": tensors, "callbacks": PickledCall(path.with_name(path.name + ".ran"))}, path)
    elif kind == "legacy non-zip":
        torch.save({"state_dict": tensors, "callbacks": PickledObject()}, path, _use_new_zipfile_serialization=False)
    elif kind == "plain pickle.dump":
        with open(path, "wb") as file:
            pickle.dump({"state_dict": {name: value.tolist() for name, value in tensors.items()}}, file, protocol=4)
    elif kind == "bare tensor":
        torch.save(torch.zeros(3), path)
    else:
        raise ValueError(f"unknown kind {kind!r}; one of {REFUSED_PICKLE_KINDS}")
    return path
