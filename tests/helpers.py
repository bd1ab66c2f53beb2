"""What the tests share: golden fixtures and the bound a stored golden is held to, random networks, the small
stand-ins of the published models, and the checks of how a loaded model holds its weights.

A result compared with a *stored* golden is held to `assert_matches_golden`'s bound, derived from float32
rounding and measured, never fixed (tests/golden/precision.py says how). A *bitwise* claim is made only
in-process, against the reference that the test extras install (tests marked `reference`). The fakes of
published files are in tests/fakes.py.
"""
import contextlib
import copy
import importlib.util
import json
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from golden.precision import ERROR_SUFFIX, float32_draws, float32_error, golden_bound
from parity import max_relative_error, random_model  # noqa: F401  (tests import them from here)
from safetensors import safe_open
from safetensors.torch import load_file

import fast
from clip import TextConfig
from ldm import UNetConfig, UNetModel
from weights import fill_random_, presets, single_file
from weights.load import TINY_MODEL_SEEDS
from weights.random_init import random_tensor

# --- golden fixtures --------------------------------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "golden" / "data"
# The reference extra (setup.cfg) and open_clip_torch, which the Makefile installs beside it.
REFERENCE_PACKAGES = ("diffusers", "transformers", "open_clip", "scipy", "guided_diffusion")


def load_golden(name: str) -> dict:
    """{name: tensor or JSON value} of tests/golden/data/<name>.safetensors (tests/golden/make_fixtures.py)."""
    path = GOLDEN / f"{name}.safetensors"
    if not path.exists():
        pytest.fail(f"golden fixture {path} is missing: run `cd tests && python -m golden.make_fixtures --only {name}`")
    values = load_file(path)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    values.update({k[len("json."):]: json.loads(v) for k, v in metadata.items() if k.startswith("json.")})
    return values


def in_float64(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of `module`, for measuring the float32 error of its outputs."""
    return copy.deepcopy(module).double()


def schedule_in_float64(schedule):
    """A copy of `schedule` whose ᾱ table holds the same float32 values as float64 numbers, so that a
    float64 run takes every square root and product of a step in float64."""
    copied = copy.copy(schedule)
    copied.alphas_cumprod = schedule.alphas_cumprod.double()
    return copied


def run_in_float64(function, *args):
    """function(*args) with floating tensors in float64 and random draws in float32 (precision.float32_draws)."""
    args = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    with float32_draws():
        return function(*args)


def assert_matches_golden(golden: dict, name: str, ours32: torch.Tensor, ours64: torch.Tensor) -> float:
    """|ours − golden[name]| ≤ 2·(e_ours + e_ref) + u·max|golden| (tests/golden/precision.py).

    ours32 is our float32 result, ours64 the same computation in float64, both made here; e_ours is
    their distance, e_ref the float32 error the fixture script measured for the golden on its machine.
    Returns the difference found.
    """
    expected = golden[name]
    assert ours32.shape == expected.shape, f"{name}: shape {tuple(ours32.shape)}, golden {tuple(expected.shape)}"
    ours_error, reference_error = float32_error(ours32, ours64), golden[name + ERROR_SUFFIX].item()
    bound = golden_bound(expected, reference_error, ours_error)
    difference = (ours32.double() - expected.double()).abs().max().item()
    assert difference <= bound, (
        f"{name}: max|ours − golden| = {difference:.3g} exceeds what float32 rounding explains, {bound:.3g} "
        f"= 2·(e_ours {ours_error:.3g} + e_ref {reference_error:.3g}) + u·max|golden|")
    return difference


def missing_reference_packages() -> list:
    return [name for name in REFERENCE_PACKAGES if importlib.util.find_spec(name) is None]


# --- manifests for python -m blend.batch -----------------------------------------------------------------------

def write_manifest(folder: Path, *lines: dict) -> str:
    """A blend.batch manifest in `folder`, one line per dict, each over the example photo and mask at 32² (written
    beside it as photo.png and mask.png) with the prompt "a cat"; returns its path."""
    from PIL import Image

    from blend.cli import EXAMPLE_IMAGE, EXAMPLE_MASK
    Image.open(EXAMPLE_IMAGE).convert("RGB").resize((32, 32), Image.LANCZOS).save(folder / "photo.png")
    Image.open(EXAMPLE_MASK).convert("L").resize((32, 32), Image.NEAREST).save(folder / "mask.png")
    manifest = folder / "edits.jsonl"
    manifest.write_text("".join(json.dumps({"image": "photo.png", "mask": "mask.png", "prompt": "a cat", **line})
                                + "\n" for line in lines))
    return str(manifest)


# --- random networks and small stand-ins ------------------------------------------------------------------------

# An SD-shaped UNet (4 levels, so 8x downsampling, attention at levels 1 and 2) small enough for shape tests.
SMALL_4_LEVEL = UNetConfig(model_channels=32, channel_mult=(1, 1, 2, 2), num_res_blocks=1, attention_levels=(1, 2),
                           num_heads=2, context_dim=32)


UNET_PREFIX = "model.diffusion_model."


SDXL = presets.get("sdxl-base-1.0")


# The same code path as the full UNet: three levels, attention at 1 and 2 with per-level depths (the middle
# block takes the deepest level's, as in SDXL and as diffusers requires), Linear projections, head_dim,
# y = [pooled (32) | 6 × 256].
SMALL_SDXL = replace(SDXL.unet, model_channels=32, transformer_depth=(0, 1, 2), head_dim=8, context_dim=48,
                     adm_in_channels=32 + 6 * 256)


def diffusers_sdxl_config(c: UNetConfig) -> dict:
    """UNet2DConditionModel's arguments for an SDXL-shaped config, as diffusers' single-file loader derives
    them from sd_xl_base.yaml (`create_unet_diffusers_config_from_ldm`)."""
    levels = range(len(c.channel_mult))
    block_out_channels = [c.model_channels * m for m in c.channel_mult]
    depths = [c.depth_at(i) for i in levels]
    return dict(
        sample_size=128, in_channels=c.in_channels, out_channels=c.out_channels,
        down_block_types=["CrossAttnDownBlock2D" if i in c.attention_levels else "DownBlock2D" for i in levels],
        up_block_types=["CrossAttnUpBlock2D" if i in c.attention_levels else "UpBlock2D" for i in reversed(levels)],
        block_out_channels=block_out_channels, layers_per_block=c.num_res_blocks, cross_attention_dim=c.context_dim,
        attention_head_dim=[c.heads_at(ch) for ch in block_out_channels],   # diffusers' name for the head count
        use_linear_projection=c.use_linear_proj, norm_num_groups=c.norm_groups,
        transformer_layers_per_block=depths, reverse_transformer_layers_per_block=None,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=c.adm_in_channels)


def converted(state_dict: dict, c: UNetConfig) -> dict:
    """Our state dict (published keys) through diffusers' own LDM -> diffusers converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    return convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in state_dict.items()}, diffusers_sdxl_config(c))


def random_small_sdxl(seed: int = 0) -> UNetModel:
    with torch.device("meta"):
        model = UNetModel(SMALL_SDXL)
    return fill_random_(model.to_empty(device="cpu"), seed).eval()


SMALL_SDXL_SPEC = replace(
    SDXL,
    unet=replace(SDXL.unet, model_channels=32, transformer_depth=(0, 1, 2), head_dim=8, context_dim=16 + 32,
                 adm_in_channels=32 + 6 * 256),
    vae=presets.get("tiny").vae,
    text=replace(SDXL.text, width=16, layers=2, heads=2),
    text_2=replace(SDXL.text_2, width=32, layers=2, heads=4, projection_dim=32))
SDXL_FILE_PREFIXES = {"unet": single_file.UNET_PREFIX, "vae": single_file.VAE_PREFIX, **single_file.SDXL_TEXT_PREFIXES}


def sdxl_file_tensors(spec=SMALL_SDXL_SPEC) -> dict:
    """An SDXL single file's tensors: every network under its published prefix, random values by name,
    plus the non-weights the published file carries (ViT-L's position ids, the denoiser's σ table)."""
    tensors = {}
    builders = {"unet": spec.build_unet, "vae": spec.build_vae, "text_encoder": spec.build_text_encoder,
                "text_encoder_2": spec.build_text_encoder_2}
    for part, build in builders.items():
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in build().state_dict().items()}
        tensors.update({SDXL_FILE_PREFIXES[part] + k: random_tensor(k, s, seed=len(part)).half()
                        for k, s in shapes.items()})
    tensors[SDXL_FILE_PREFIXES["text_encoder"] + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    tensors["denoiser.sigmas"] = torch.rand(1000)
    return tensors


# --- reference key maps ---------------------------------------------------------------------------------------

def open_clip_to_transformers(state_dict: dict) -> dict:
    """open_clip's text keys (SDXL's `conditioner.embedders.1.model.*`) -> CLIPTextModelWithProjection's
    (transformers 5: no `text_model.` prefix). in_proj rows are [q; k; v]; text_projection is used as
    x @ P, transformers' Linear as x @ Wᵀ, so W = Pᵀ; logit_scale has no counterpart."""
    blocks = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
              "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    out = {"embeddings.token_embedding.weight": state_dict["token_embedding.weight"],
           "embeddings.position_embedding.weight": state_dict["positional_embedding"],
           "final_layer_norm.weight": state_dict["ln_final.weight"],
           "final_layer_norm.bias": state_dict["ln_final.bias"],
           "text_projection.weight": state_dict["text_projection"].T}
    for key, value in state_dict.items():
        if not key.startswith("transformer.resblocks."):
            continue
        _, _, index, rest = key.split(".", 3)
        layer = f"encoder.layers.{index}."
        if rest.startswith("attn.in_proj_"):
            kind = rest.rsplit("_", 1)[1]                      # weight or bias
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                out[f"{layer}self_attn.{name}.{kind}"] = part
            continue
        module, kind = rest.rsplit(".", 1)
        out[f"{layer}{blocks[module]}.{kind}"] = value
    return out


# --- loading: the modules the fakes were made from, and where a loaded tensor lives ----------------------------

TINY = presets.get("tiny")


# An SD-2-shaped tiny model: open_clip text layout with a skipped last block, head_dim attention,
# Linear proj_in/proj_out, v-prediction.
TINY_SD2 = replace(TINY, name="tiny-sd2", prediction_type="v",
                   unet=replace(TINY.unet, num_heads=None, head_dim=16, use_linear_proj=True, upcast_attention=True),
                   text=TextConfig(layout="sd2", width=32, layers=3, heads=4, activation="gelu", skip_last_layers=1))


def source_modules(spec):
    """The modules the fake files were made from: fill_random_ with the loader's seeds, on the fast path
    as `weights.load` gives them (so that the outputs are comparable bit for bit)."""
    return (fast.optimize(fill_random_(spec.build_unet(), TINY_MODEL_SEEDS["unet"]).eval()),
            fast.optimize(fill_random_(spec.build_vae(), TINY_MODEL_SEEDS["vae"]).eval()),
            fast.optimize(fill_random_(spec.build_text_encoder(), TINY_MODEL_SEEDS["text_encoder"]).eval()))


@torch.no_grad()
def outputs(unet, vae, text_encoder, tokenizer):
    generator = torch.Generator().manual_seed(0)
    ids = tokenizer(["a photo of a cat", ""])
    context = text_encoder(ids)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    image = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    return {"context": context, "eps": unet(latents, torch.tensor([999, 1]), context),
            "mean": vae.encode(image).mean, "decoded": vae.decode(latents[:1])}


def assert_same_outputs(loaded, modules, tokenizer):
    got, want = outputs(loaded.unet, loaded.vae, loaded.text_encoder, tokenizer), outputs(*modules, tokenizer)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


def mapped_files() -> dict[str, list[tuple[int, int]]]:
    """{file: [(start, end)]} of this process's file mappings (Linux /proc/self/maps)."""
    ranges = {}
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.setdefault(fields[5], []).append((start, end))
    return ranges


def file_holding(tensor: torch.Tensor) -> str | None:
    address = tensor.data_ptr()
    for path, spans in mapped_files().items():
        if any(start <= address < end for start, end in spans):
            return path
    return None


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


# --- the paint-and-edit server --------------------------------------------------------------------------------

@contextlib.contextmanager
def running_edit_server(components, out: Path):
    """blend.app's server for `components` on a free loopback port, serving in a thread until the block ends."""
    from blend.app import EditServer
    server = EditServer(components, components.spec.name, out, port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.close()
        thread.join(10)
