"""The diffusers layout <-> ours: architecture configs and the one key table.

Our modules are named like the published single-file checkpoints (LDM's names), so a
diffusers folder is the only source that needs renaming. Every rename is a row of a
table, (diffusers module path, our module path, renames inside that module), built from
the architecture config so that block indices come out right for any size:

    UNet   down_blocks.L.resnets.J        -> input_blocks.(1 + L·(n+1) + J).0     n = res blocks per level
           down_blocks.L.attentions.J     -> input_blocks.(1 + L·(n+1) + J).1
           down_blocks.L.downsamplers.0.conv -> input_blocks.((L+1)·(n+1)).0.op
           mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / 1 / 2
           up_blocks.U.resnets.J          -> output_blocks.(U·(n+1) + J).0          U counts from the deepest level
           up_blocks.U.attentions.J       -> output_blocks.(U·(n+1) + J).1
           up_blocks.U.upsamplers.0.conv  -> output_blocks.(U·(n+1) + n).(2 if attention else 1).conv
           resnet insides: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut
                        -> in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection
    VAE    down_blocks.L.resnets.J -> down.L.block.J;  up_blocks.U.resnets.J -> up.(levels-1-U).block.J
           mid_block.resnets.0 / attentions.0 / resnets.1 -> mid.block_1 / attn_1 / block_2
           attention group_norm, to_q, to_k, to_v, to_out.0 -> norm, q, k, v, proj_out
           (older diffusers files: query, key, value, proj_attn), Linear (C, C) <-> 1×1 conv (C, C, 1, 1)
    Text   SD 1: transformers' names are ours (`text_model.` is added if a transformers-5 file lacks it).
           SD 2: transformers' CLIPTextModel -> open_clip names, q_proj/k_proj/v_proj stacked into
           in_proj_weight = [W_q; W_k; W_v]. The diffusers folder holds 23 blocks, not 24: diffusers
           dropped the last block, which SD 2 never runs, so our tower is built with 23 blocks and
           skip_last_layers = 0, which computes the same function.

Names not in a table (conv_in, conv_out, quant_conv, the transformer blocks inside a
SpatialTransformer, ...) are the same in both layouts and pass through unchanged; strict
loading then catches anything that is neither.
"""
import torch

from clip import TextConfig
from ldm import AutoencoderConfig, UNetConfig

from .errors import CorruptFileError, UnsupportedModelError

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
VAE_ATTENTION_LEGACY = {"query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}   # read, never written
SD2_TEXT_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                  "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


# ----------------------------------------------------------------------------- the tables
def unet_table(config: UNetConfig) -> list[tuple[str, str, dict]]:
    """(diffusers module, our module, inner renames) for every renamed UNet module."""
    levels, n = len(config.channel_mult), config.num_res_blocks
    rows = [("time_embedding.linear_1", "time_embed.0", {}), ("time_embedding.linear_2", "time_embed.2", {}),
            ("conv_in", "input_blocks.0.0", {}), ("conv_norm_out", "out.0", {}), ("conv_out", "out.2", {}),
            ("mid_block.resnets.0", "middle_block.0", UNET_RESNET), ("mid_block.attentions.0", "middle_block.1", {}),
            ("mid_block.resnets.1", "middle_block.2", UNET_RESNET)]
    for level in range(levels):
        for j in range(n):
            block = 1 + level * (n + 1) + j
            rows.append((f"down_blocks.{level}.resnets.{j}", f"input_blocks.{block}.0", UNET_RESNET))
            if level in config.attention_levels:
                rows.append((f"down_blocks.{level}.attentions.{j}", f"input_blocks.{block}.1", {}))
        if level < levels - 1:
            rows.append((f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{(level + 1) * (n + 1)}.0.op", {}))
    for up in range(levels):
        level = levels - 1 - up                      # diffusers counts up blocks from the deepest level
        for j in range(n + 1):
            block = up * (n + 1) + j
            rows.append((f"up_blocks.{up}.resnets.{j}", f"output_blocks.{block}.0", UNET_RESNET))
            if level in config.attention_levels:
                rows.append((f"up_blocks.{up}.attentions.{j}", f"output_blocks.{block}.1", {}))
        if level > 0:
            index = 2 if level in config.attention_levels else 1
            rows.append((f"up_blocks.{up}.upsamplers.0.conv", f"output_blocks.{up * (n + 1) + n}.{index}.conv", {}))
    if config.adm_in_channels is not None:           # SDXL: diffusers' add_embedding is sgm's label_emb.0
        rows += [("add_embedding.linear_1", "label_emb.0.0", {}), ("add_embedding.linear_2", "label_emb.0.2", {})]
    return rows


def vae_table(config: AutoencoderConfig) -> list[tuple[str, str, dict]]:
    """(diffusers module, our module, inner renames) for every renamed autoencoder module."""
    levels, n = len(config.ch_mult), config.num_res_blocks
    rows = []
    for part in ("encoder", "decoder"):
        rows += [(f"{part}.conv_norm_out", f"{part}.norm_out", {}),
                 (f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", VAE_RESNET),
                 (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION | VAE_ATTENTION_LEGACY),
                 (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", VAE_RESNET)]
    for level in range(levels):
        for j in range(n):
            rows.append((f"encoder.down_blocks.{level}.resnets.{j}", f"encoder.down.{level}.block.{j}", VAE_RESNET))
        if level < levels - 1:
            rows.append((f"encoder.down_blocks.{level}.downsamplers.0.conv",
                         f"encoder.down.{level}.downsample.conv", {}))
    for up in range(levels):
        level = levels - 1 - up
        for j in range(n + 1):
            rows.append((f"decoder.up_blocks.{up}.resnets.{j}", f"decoder.up.{level}.block.{j}", VAE_RESNET))
        if level > 0:
            rows.append((f"decoder.up_blocks.{up}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv", {}))
    return rows


def sd2_text_table(config: TextConfig) -> list[tuple[str, str, dict]]:
    """(transformers name, open_clip name, inner renames) for SD 2's text tower; q/k/v are fused separately."""
    rows = [("text_model.embeddings.token_embedding", "token_embedding", {}),
            ("text_model.embeddings.position_embedding.weight", "positional_embedding", {}),
            ("text_model.final_layer_norm", "ln_final", {})]
    rows += [(f"text_model.encoder.layers.{i}", f"transformer.resblocks.{i}", SD2_TEXT_BLOCK)
             for i in range(config.layers)]
    return rows


LDM_BERT_BLOCK_ATTENTION = {"self_attn_layer_norm": "0", "self_attn.q_proj": "1.to_q", "self_attn.k_proj": "1.to_k",
                            "self_attn.v_proj": "1.to_v", "self_attn.out_proj": "1.to_out"}
LDM_BERT_BLOCK_FEED_FORWARD = {"final_layer_norm": "0", "fc1": "1.net.0.0", "fc2": "1.net.2"}


def ldm_bert_table(layers: int) -> list[tuple[str, str, dict]]:
    """(diffusers LDMBertModel name, ours = the published `cond_stage_model.transformer.` name, inner renames).

    Block i of LDMBertModel is two layers of x-transformers' Encoder: 2i (norm, attention) and
    2i+1 (norm, feed-forward); the table lists each half's modules as whole paths.
    """
    rows = [("model.embed_tokens", "token_emb", {}), ("model.embed_positions", "pos_emb.emb", {}),
            ("model.layer_norm", "norm", {}), ("to_logits", "to_logits", {})]
    for i in range(layers):
        for half, renames in ((2 * i, LDM_BERT_BLOCK_ATTENTION), (2 * i + 1, LDM_BERT_BLOCK_FEED_FORWARD)):
            rows += [(f"model.layers.{i}.{theirs}", f"attn_layers.layers.{half}.{ours}", {})
                     for theirs, ours in renames.items()]
    return rows


def _rename(key: str, lookup: dict) -> str:
    """Rename `key` by its longest module prefix in `lookup`, then the rest by the longest inner rename."""
    parts = key.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in lookup:
            target, inner = lookup[prefix]
            rest = parts[cut:]
            for inner_cut in range(len(rest), 0, -1):
                head = ".".join(rest[:inner_cut])
                if head in inner:
                    rest = inner[head].split(".") + rest[inner_cut:]
                    break
            return ".".join([target, *rest])
    return key


def _forward(table) -> dict:
    return {theirs: (ours, inner) for theirs, ours, inner in table}


def _backward(table) -> dict:
    legacy = set(VAE_ATTENTION_LEGACY)
    return {ours: (theirs, {v: k for k, v in inner.items() if k not in legacy}) for theirs, ours, inner in table}


def _vae_attention_weight(key: str) -> bool:
    return ".mid.attn_1." in key and key.rsplit(".", 2)[-2] in ("q", "k", "v", "proj_out") and key.endswith("weight")


# ----------------------------------------------------------------------------- diffusers -> ours
def unet_from_diffusers(tensors: dict, config: UNetConfig) -> dict:
    lookup = _forward(unet_table(config))
    return {_rename(k, lookup): v for k, v in tensors.items()}


def vae_from_diffusers(tensors: dict, config: AutoencoderConfig) -> dict:
    """Renamed, with the attention's Linear (C, C) weights viewed as 1×1 convs (C, C, 1, 1) (no copy)."""
    lookup = _forward(vae_table(config))
    out = {}
    for key, value in tensors.items():
        ours = _rename(key, lookup)
        out[ours] = value[:, :, None, None] if _vae_attention_weight(ours) and value.ndim == 2 else value
    return out


def text_from_transformers(tensors: dict, config: TextConfig) -> dict:
    """A transformers CLIPTextModel state dict -> our TextEncoder's (either layout).

    CLIPTextModelWithProjection (SDXL's bigG) adds `text_projection.weight` W, used as x Wᵀ:
    open_clip's `text_projection` P, used as x P, is Wᵀ.
    """
    tensors = dict(tensors)
    projection = tensors.pop("text_projection.weight", None) if config.layout == "sd2" else None
    # transformers 5 writes `embeddings.*` without the `text_model.` prefix; the published folders have it.
    tensors = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in tensors.items()}
    if config.layout == "sd1":
        return tensors
    lookup = _forward(sd2_text_table(config))
    out, qkv = {}, {}
    for key, value in tensors.items():
        parts = key.split(".")
        if parts[-2] in ("q_proj", "k_proj", "v_proj") and parts[-3] == "self_attn":
            qkv[(int(parts[3]), parts[-1], parts[-2])] = value      # (layer, weight|bias, q|k|v)
            continue
        out[_rename(key, lookup)] = value
    for layer, kind in sorted({(layer, kind) for layer, kind, _ in qkv}):
        pieces = [qkv.get((layer, kind, name)) for name in ("q_proj", "k_proj", "v_proj")]
        if any(p is None for p in pieces):
            raise UnsupportedModelError(f"text encoder layer {layer}: q_proj/k_proj/v_proj.{kind} is incomplete")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(pieces)   # rows [q; k; v]
    if projection is not None:
        out["text_projection"] = projection.T
    return out


def ldm_bert_from_diffusers(tensors: dict, layers: int) -> dict:
    """The diffusers port's `bert/` state dict (LDMBertModel) -> ours (ldm.BERTTextEncoder)."""
    lookup = _forward(ldm_bert_table(layers))
    return {_rename(k, lookup): v for k, v in tensors.items()}


# ----------------------------------------------------------------------------- ours -> diffusers
def unet_to_diffusers(tensors: dict, config: UNetConfig) -> dict:
    lookup = _backward(unet_table(config))
    return {_rename(k, lookup): v for k, v in tensors.items()}


def vae_to_diffusers(tensors: dict, config: AutoencoderConfig) -> dict:
    lookup = _backward(vae_table(config))
    return {_rename(k, lookup): (v[:, :, 0, 0] if _vae_attention_weight(k) else v) for k, v in tensors.items()}


def text_to_transformers(tensors: dict, config: TextConfig) -> dict:
    """Our TextEncoder's state dict -> the published transformers layout (`text_model.*`).

    SD 2: the projection and logit scale have no place in a CLIPTextModel and are dropped;
    so is any block past the 23rd, as diffusers does.
    """
    if config.layout == "sd1":
        return dict(tensors)
    lookup = _backward(sd2_text_table(config))
    kept = config.layers - config.skip_last_layers
    out = {}
    for key, value in tensors.items():
        if key in ("text_projection", "logit_scale"):
            continue
        if key.startswith("transformer.resblocks.") and int(key.split(".")[2]) >= kept:
            continue
        if key.endswith(("attn.in_proj_weight", "attn.in_proj_bias")):
            layer, kind = int(key.split(".")[2]), key.rsplit("_", 1)[-1]
            for name, piece in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                out[f"text_model.encoder.layers.{layer}.self_attn.{name}.{kind}"] = piece
            continue
        out[_rename(key, lookup)] = value
    return out


def ldm_bert_to_diffusers(tensors: dict, layers: int) -> dict:
    lookup = _backward(ldm_bert_table(layers))
    return {_rename(k, lookup): v for k, v in tensors.items()}


# ----------------------------------------------------------------------------- configs
# Every key of diffusers' UNet2DConditionModel / AutoencoderKL and of transformers' CLIPTextConfig is one of:
# read into our config; fixed (our modules have only this value, any other is refused by name); or ignored,
# because it changes nothing our networks compute at inference (listed below with the reason).
_UNET_FIXED = {"center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1,
               "mid_block_scale_factor": 1, "act_fn": "silu", "norm_eps": 1e-5, "only_cross_attention": False,
               "dual_cross_attention": False, "class_embed_type": None, "addition_embed_type": None,
               "num_class_embeds": None, "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
               "conv_in_kernel": 3, "conv_out_kernel": 3, "time_cond_proj_dim": None, "encoder_hid_dim": None,
               "attention_type": "default", "time_embedding_dim": None, "timestep_post_act": None,
               "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "cross_attention_norm": None,
               "mid_block_type": "UNetMidBlock2DCrossAttn", "mid_block_only_cross_attention": None,
               "time_embedding_act_fn": None, "class_embeddings_concat": False, "encoder_hid_dim_type": None,
               "addition_time_embed_dim": None, "projection_class_embeddings_input_dim": None,
               "reverse_transformer_layers_per_block": None}
_VAE_FIXED = {"act_fn": "silu", "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
              "shift_factor": None, "latents_mean": None, "latents_std": None}
_TEXT_FIXED = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model"}
# Ignored keys: `dropout`, `attention_dropout`, `initializer_range`, `initializer_factor` act only in training;
# `addition_embed_type_num_heads` only with an addition embedding (refused above); `force_upcast` is diffusers'
# advice to run the VAE in float32 under float16, not an architecture; `sample_size` and `scaling_factor` go
# into the ModelSpec (diffusers_folder.read_spec); `projection_dim` belongs to CLIPTextModelWithProjection,
# which is refused; `bos/eos/pad_token_id` only choose transformers' pooled output, which the UNet never reads.
CLASS_NAMES = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}
CLIP_VOCAB_SIZE = 49408          # clip.Tokenizer's table: its ids run up to 49407
CLIP_CONTEXT_LENGTH = 77         # clip.Tokenizer frames every prompt in 77 positions


def _refuse(file, name: str, value, supported: str):
    raise UnsupportedModelError(f"{file}: {name}={value!r}, which this implementation does not have; "
                                f"supported: {supported}")


def _check_fixed(config: dict, fixed: dict, file) -> None:
    wrong = {k: config[k] for k, v in fixed.items() if k in config and config[k] != v}
    if wrong:
        raise UnsupportedModelError(
            f"{file}: sets {', '.join(f'{k}={v!r}' for k, v in wrong.items())}, which this implementation does not "
            f"have (it implements the Stable Diffusion 1.x/2.x text-to-image networks, where these are "
            f"{', '.join(f'{k}={fixed[k]!r}' for k in wrong)})")


def _require(config: dict, names: tuple, part: str, file) -> None:
    """Refuse a config without the settings that say the network's sizes (an emptied `{}`, another file)."""
    missing = [name for name in names if name not in config]
    if missing:
        raise CorruptFileError(
            f"{file}: a {part} config without {', '.join(missing)}; expected the config.json that diffusers or "
            f"transformers writes for the {part}, which sets {', '.join(names)}. Copy it again from the model's "
            f"repository (for the Hub cache: `hf download <repo> --force-download`).")


def _check_class(config: dict, part: str, file) -> None:
    name = config.get("_class_name", CLASS_NAMES[part])
    if name != CLASS_NAMES[part]:
        _refuse(file, "_class_name", name, f"{CLASS_NAMES[part]!r} (the SD 1.x/2.x {part})")


def _uniform(value, levels: int, name: str, file):
    """A per-level setting given as one value or a list."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UnsupportedModelError(f"{file}: {name}={value} differs between levels; this UNet has one value")
        return value[0]
    return value


def _text_time_embedding(config: dict, file) -> tuple[dict, int | None]:
    """SDXL's vector conditioning (`addition_embed_type="text_time"`): the config without its three keys,
    and the input width of the embedding (`projection_class_embeddings_input_dim`, our adm_in_channels)."""
    if config.get("addition_embed_type") != "text_time":
        return config, None
    if config.get("addition_time_embed_dim") != 256:
        _refuse(file, "addition_time_embed_dim", config.get("addition_time_embed_dim"), "256 (SDXL's time ids)")
    _require(config, ("projection_class_embeddings_input_dim",), "unet", file)
    rest = {k: v for k, v in config.items() if k not in ("addition_embed_type", "addition_time_embed_dim",
                                                          "projection_class_embeddings_input_dim")}
    return rest, config["projection_class_embeddings_input_dim"]


def _depths(value, attention_levels: tuple, levels: int, file) -> tuple:
    """`transformer_layers_per_block`, one int (SD) or one per level (SDXL: [1, 2, 10], level 0 without
    attention) -> (transformer_depth, transformer_depth_middle): one int, or a tuple with 0 at the levels
    without attention; the middle block has the last level's value, as diffusers' mid block (None when
    that is our default, the deepest level's depth)."""
    if not isinstance(value, (list, tuple)):
        return value, None
    if len(value) != levels:
        _refuse(file, "transformer_layers_per_block", value, f"one value per level ({levels})")
    used = {value[level] for level in attention_levels}
    depth = used.pop() if len(used) == 1 else tuple(value[level] if level in attention_levels else 0
                                                    for level in range(levels))
    default_middle = depth if isinstance(depth, int) else depth[-1]
    return depth, (None if value[-1] == default_middle else value[-1])


def unet_config_from_diffusers(config: dict, file) -> UNetConfig:
    """diffusers' unet/config.json -> UNetConfig."""
    _require(config, ("block_out_channels", "down_block_types", "up_block_types"), "unet", file)
    _check_class(config, "unet", file)
    config, adm_in_channels = _text_time_embedding(config, file)
    _check_fixed(config, _UNET_FIXED, file)
    channels = list(config["block_out_channels"])
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    kinds = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
    if any(d not in kinds for d in down) or up != [d.replace("Down", "Up") for d in reversed(down)]:
        raise UnsupportedModelError(f"{file}: down_block_types {down} / up_block_types {up} are not the mirrored "
                                    "CrossAttnDownBlock2D/DownBlock2D stacks of an SD 1.x/2.x UNet")
    if any(c % channels[0] for c in channels):
        raise UnsupportedModelError(f"{file}: block_out_channels {channels} are not multiples of the first")
    groups = config.get("norm_num_groups", 32)
    if groups is None or any(c % groups for c in channels):
        _refuse(file, "norm_num_groups", groups, f"a group count that divides every block_out_channels {channels}")
    attention_levels = tuple(i for i, d in enumerate(down) if kinds[d])
    # diffusers' `attention_head_dim` counts heads (a historical misnomer); `num_attention_heads` wins if set.
    # A single number is SD 1's fixed head count; a per-level list is SD 2's fixed head width.
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    per_level = isinstance(heads, (list, tuple))
    heads = list(heads) if per_level else [heads] * len(channels)
    levels = [*attention_levels, len(channels) - 1]                  # the middle block uses the last level's
    head_dims = {channels[i] // heads[i] for i in levels}
    uniform_width = len(head_dims) == 1 and all(channels[i] % heads[i] == 0 for i in levels)
    if uniform_width and (per_level or len({heads[i] for i in levels}) > 1):
        num_heads, head_dim = None, head_dims.pop()
    elif len({heads[i] for i in levels}) == 1 and all(channels[i] % heads[i] == 0 for i in levels):
        num_heads, head_dim = heads[levels[0]], None
    else:
        _refuse(file, "attention_head_dim", heads, "one head count for every level, or one head width "
                "(channels / heads) for every level, dividing the channels of each attention level")
    depth, depth_middle = _depths(config.get("transformer_layers_per_block", 1), attention_levels, len(channels), file)
    return UNetConfig(
        in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4),
        model_channels=channels[0], channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=_uniform(config.get("layers_per_block", 2), len(channels), "layers_per_block", file),
        attention_levels=attention_levels, num_heads=num_heads, head_dim=head_dim,
        context_dim=_uniform(config.get("cross_attention_dim", 1280), len(channels), "cross_attention_dim", file),
        transformer_depth=depth, transformer_depth_middle=depth_middle, adm_in_channels=adm_in_channels,
        use_linear_proj=bool(config.get("use_linear_projection", False)),
        norm_groups=groups, upcast_attention=bool(config.get("upcast_attention", False)))


def vae_config_from_diffusers(config: dict, file) -> AutoencoderConfig:
    """diffusers' vae/config.json -> AutoencoderConfig."""
    _require(config, ("block_out_channels",), "vae", file)
    _check_class(config, "vae", file)
    _check_fixed(config, _VAE_FIXED, file)
    channels = list(config["block_out_channels"])
    down, up = set(config.get("down_block_types", [])), set(config.get("up_block_types", []))
    if down - {"DownEncoderBlock2D"} or up - {"UpDecoderBlock2D"} or any(c % channels[0] for c in channels):
        raise UnsupportedModelError(f"{file}: not the KL-f8 autoencoder of SD 1.x/2.x "
                                    f"(blocks {sorted(down | up)}, block_out_channels {channels})")
    groups = config.get("norm_num_groups", 32)
    if groups is None or any(c % groups for c in channels):
        _refuse(file, "norm_num_groups", groups, f"a group count that divides every block_out_channels {channels}")
    return AutoencoderConfig(
        in_channels=config.get("in_channels", 3), out_channels=config.get("out_channels", 3), ch=channels[0],
        ch_mult=tuple(c // channels[0] for c in channels), num_res_blocks=config.get("layers_per_block", 2),
        z_channels=config.get("latent_channels", 4), embed_dim=config.get("latent_channels", 4), norm_groups=groups)


def text_2_config_from_transformers(config: dict, file) -> TextConfig:
    """SDXL's text_encoder_2/config.json (CLIPTextModelWithProjection, OpenCLIP bigG) -> TextConfig with its
    projection."""
    from dataclasses import replace
    architectures = config.get("architectures", ["CLIPTextModelWithProjection"])
    if architectures != ["CLIPTextModelWithProjection"]:
        _refuse(file, "architectures", architectures, "['CLIPTextModelWithProjection'] (SDXL's text_encoder_2)")
    tower = text_config_from_transformers({**config, "architectures": ["CLIPTextModel"]}, file)
    return replace(tower, projection_dim=config.get("projection_dim", tower.width))


def text_config_from_transformers(config: dict, file) -> TextConfig:
    """transformers' text_encoder/config.json -> TextConfig.

    OpenAI's CLIP (SD 1) uses quick-GELU, OpenCLIP (SD 2) exact GELU: the activation tells
    which tower, and so which of our two layouts, the folder holds. The MLP width is
    `intermediate_size` (4 x hidden_size in the published towers; None in TextConfig then).
    """
    _require(config, ("hidden_size", "num_attention_heads", "num_hidden_layers"), "text_encoder", file)
    _check_fixed(config, _TEXT_FIXED, file)
    width, activation = config["hidden_size"], config.get("hidden_act", "quick_gelu")
    if activation not in ("quick_gelu", "gelu"):
        _refuse(file, "hidden_act", activation, "'quick_gelu' (OpenAI CLIP, SD 1) or 'gelu' (OpenCLIP, SD 2)")
    heads = config["num_attention_heads"]
    if width % heads:
        _refuse(file, "num_attention_heads", heads, f"a head count that divides hidden_size={width}")
    vocab_size = config.get("vocab_size", CLIP_VOCAB_SIZE)
    if vocab_size != CLIP_VOCAB_SIZE:
        _refuse(file, "vocab_size", vocab_size, f"{CLIP_VOCAB_SIZE}, the rows of CLIP's token table, which "
                f"clip.Tokenizer's ids (up to {CLIP_VOCAB_SIZE - 1}) index")
    context_length = config.get("max_position_embeddings", CLIP_CONTEXT_LENGTH)
    if context_length < CLIP_CONTEXT_LENGTH:
        _refuse(file, "max_position_embeddings", context_length,
                f"at least {CLIP_CONTEXT_LENGTH}, the positions clip.Tokenizer fills for every prompt")
    mlp_width = config.get("intermediate_size", 4 * width)
    return TextConfig(layout="sd1" if activation == "quick_gelu" else "sd2", vocab_size=vocab_size,
                      context_length=context_length, width=width, layers=config["num_hidden_layers"], heads=heads,
                      activation=activation, skip_last_layers=0, layer_norm_eps=config.get("layer_norm_eps", 1e-5),
                      mlp_width=None if mlp_width == 4 * width else mlp_width)
