"""Golden fixtures for `ldm/`: diffusers' UNet2DConditionModel and AutoencoderKL as the reference.

Each fixture builds OUR model from a preset config with `weights.fill_random_(model, seed)`, moves the
weights to diffusers' layout with diffusers' own converters (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`), loads them into the diffusers model (strict), runs it on seeded inputs and
stores inputs and outputs. Inputs are drawn in float32, rounded to float16 and stored as float16, so
the files stay small and every test feeds both implementations exactly the same float32 values.
Each fixture also runs in float64 (the `dtype` argument, driven by make_fixtures.py), which measures
the float32 error of every stored output.

The full-size fixtures also store `published_keys`, {key: shape} of the published single-file layout
(prefix removed), derived from the *reference*, not from our model: diffusers' own state dict renamed by
the inverse of diffusers' converter (`published_unet_keys`, `published_vae_keys`), checked by running
the renamed keys forward through diffusers' converter and getting every reference tensor back once.

The reference models and the converters live in tests/parity.py, which the tests and the benchmarks share.
"""
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from parity import (
    UNET_PREFIX,
    VAE_PREFIX,
    diffusers_unet_config,
    diffusers_vae_config,
    random_model,
    reference_unet,
    reference_vae,
)

from ldm import AutoencoderConfig, AutoencoderKL, UNetConfig, UNetModel
from weights import presets

TIMESTEPS = [999, 421, 1]


# --- the UNet -------------------------------------------------------------------------------------

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def published_unet_key(key: str, c: UNetConfig) -> str:
    """The LDM name of a diffusers UNet key (the inverse of `convert_ldm_unet_checkpoint`)."""
    fixed = {d: ldm for d, ldm in DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].items()}
    if key in fixed:
        return fixed[key]
    per_level = c.num_res_blocks + 1                    # LDM blocks per level in output_blocks
    part, *rest = key.split(".")
    if part == "mid_block":
        kind, index, *tail = rest
        if kind == "attentions":
            return ".".join(["middle_block.1", *tail])
        return ".".join([f"middle_block.{2 * int(index)}", _UNET_RESNET.get(tail[0], tail[0]), *tail[1:]])
    level, kind, index, *tail = rest
    level, index = int(level), int(index)
    if part == "down_blocks":
        if kind == "downsamplers":                       # tail = ["conv", "weight"]
            return ".".join([f"input_blocks.{(level + 1) * per_level}.0.op", *tail[1:]])
        block = f"input_blocks.{1 + level * per_level + index}"
    else:
        assert part == "up_blocks", key
        attention = (len(c.channel_mult) - 1 - level) in c.attention_levels
        if kind == "upsamplers":
            return ".".join([f"output_blocks.{level * per_level + c.num_res_blocks}.{2 if attention else 1}", *tail])
        block = f"output_blocks.{level * per_level + index}"
    if kind == "attentions":
        return ".".join([block, "1", *tail])
    return ".".join([block, "0", _UNET_RESNET.get(tail[0], tail[0]), *tail[1:]])


def published_unet_keys(c: UNetConfig) -> dict:
    """{published key: shape} from diffusers' model, checked against diffusers' converter."""
    with torch.device("meta"):
        reference = UNet2DConditionModel(**diffusers_unet_config(c)).state_dict()
    published = {published_unet_key(k, c): v for k, v in reference.items()}
    assert len(published) == len(reference), "two diffusers keys got one published name"
    back = convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in published.items()}, diffusers_unet_config(c))
    assert back.keys() == reference.keys() and all(back[k] is reference[k] for k in back), \
        "the published names do not convert back to diffusers' keys one to one"
    return {k: list(v.shape) for k, v in sorted(published.items())}


def unet_fixture(preset: str, seed: int, height: int, width: int, tokens: int = 7, keys: bool = False,
                 dtype=torch.float32) -> dict:
    config = presets.get(preset).unet
    reference = reference_unet(random_model(UNetModel, config, seed)).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(TIMESTEPS), config.in_channels, height, width, generator=generator).half()
    context = torch.randn(len(TIMESTEPS), tokens, config.context_dim, generator=generator).half()
    timesteps = torch.tensor(TIMESTEPS)
    output = reference(x.to(dtype), timesteps, encoder_hidden_states=context.to(dtype)).sample
    values = {"x": x, "timesteps": timesteps, "context": context, "output": output, "seed": seed, "preset": preset}
    if keys:
        values["published_keys"] = published_unet_keys(config)
    return values


# --- the autoencoder ----------------------------------------------------------------------------

_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def published_vae_key(key: str, c: AutoencoderConfig) -> str:
    """The LDM name of a diffusers VAE key (the inverse of `convert_ldm_vae_checkpoint`)."""
    fixed = {d: ldm for d, ldm in DIFFUSERS_TO_LDM_MAPPING["vae"].items()}
    if key in fixed:
        return fixed[key]
    coder, part, *rest = key.split(".")
    if part == "mid_block":
        kind, index, *tail = rest
        if kind == "attentions":
            name, parameter = ".".join(tail[:-1]), tail[-1]
            return f"{coder}.mid.attn_1.{_VAE_ATTENTION[name]}.{parameter}"
        return ".".join([f"{coder}.mid.block_{int(index) + 1}", *tail])
    level, kind, index, *tail = rest
    if part == "up_blocks":                             # diffusers counts decoder levels deepest first
        level = len(c.ch_mult) - 1 - int(level)
    stage = "down" if part == "down_blocks" else "up"
    if kind in ("downsamplers", "upsamplers"):
        return ".".join([f"{coder}.{stage}.{level}.{stage}sample", *tail])
    tail = ["nin_shortcut" if t == "conv_shortcut" else t for t in tail]
    return ".".join([f"{coder}.{stage}.{level}.block.{index}", *tail])


def published_vae_keys(c: AutoencoderConfig) -> dict:
    """{published key: shape} from diffusers' model; the attention q/k/v/proj_out are 1×1 convs in LDM."""
    with torch.device("meta"):
        reference = DiffusersAutoencoderKL(**diffusers_vae_config(c)).state_dict()
    published = {}
    for key, value in reference.items():
        name = published_vae_key(key, c)
        if ".attn_1." in name and name.endswith("weight") and not name.endswith("norm.weight"):
            value = value[:, :, None, None]              # Linear (C, C) in diffusers, Conv2d (C, C, 1, 1) in LDM
        published[name] = value
    assert len(published) == len(reference), "two diffusers keys got one published name"
    back = convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in published.items()}, diffusers_vae_config(c))
    # every reference tensor comes back at its own key (the attention weights as views of it)
    assert back.keys() == reference.keys() and all(
        back[k] is reference[k] or back[k]._base is reference[k] for k in back), \
        "the published names do not convert back to diffusers' keys one to one"
    return {k: list(v.shape) for k, v in sorted(published.items())}


def vae_fixture(preset: str, seed: int, batch: int, height: int, width: int, keys: bool = False,
                dtype=torch.float32) -> dict:
    config = presets.get(preset).vae
    reference = reference_vae(random_model(AutoencoderKL, config, seed)).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    image = (2 * torch.rand(batch, config.in_channels, height, width, generator=generator) - 1).half()
    # unscaled latents of realistic size: SD's z · 0.18215 has about unit variance
    z = (torch.randn(batch, config.embed_dim, height // 8, width // 8, generator=generator) / 0.18215).half()
    posterior = reference.encode(image.to(dtype)).latent_dist
    values = {
        "image": image, "mean": posterior.mean, "logvar": posterior.logvar,
        "sample": posterior.sample(generator=torch.Generator().manual_seed(seed + 1)), "sample_seed": seed + 1,
        "z": z, "decoded": reference.decode(z.to(dtype)).sample, "seed": seed, "preset": preset,
    }
    if keys:
        values["published_keys"] = published_vae_keys(config)
    return values


FIXTURES = {   # each runs in float32 (stored) and float64 (for the float32 errors, see make_fixtures.py)
    "ldm_unet_tiny": lambda dtype=torch.float32: unet_fixture("tiny", seed=11, height=16, width=24, dtype=dtype),
    "ldm_unet_sd15": lambda dtype=torch.float32: unet_fixture("sd-1.5", seed=12, height=16, width=24, keys=True,
                                                             dtype=dtype),
    "ldm_unet_sd21_base": lambda dtype=torch.float32: unet_fixture("sd-2.1-base", seed=13, height=16, width=24,
                                                                  keys=True, dtype=dtype),
    "ldm_vae_tiny": lambda dtype=torch.float32: vae_fixture("tiny", seed=14, batch=2, height=40, width=48, dtype=dtype),
    "ldm_vae_sd": lambda dtype=torch.float32: vae_fixture("sd-1.5", seed=15, batch=1, height=40, width=48, keys=True,
                                                         dtype=dtype),
}
