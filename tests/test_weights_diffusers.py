"""The diffusers layout against diffusers itself: folders written by its own save_pretrained, and its full-size keys.

Reference tests: they need the reference extra (diffusers, transformers).
"""
import json

import fakes
import pytest
import torch
from helpers import max_relative_error

import weights
from weights import diffusers_keys, fill_random_, presets
from weights.materialize import build_empty

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.reference

# Two small pipelines shaped like SD 1 and SD 2 (per-level heads of width 16, Linear projections,
# fp32 attention, GELU text tower whose tokenizer pads with "!", v-prediction).
SMALL = {
    "sd1": dict(unet=dict(attention_head_dim=2, use_linear_projection=False, upcast_attention=False),
                text=dict(hidden_act="quick_gelu", num_hidden_layers=2, intermediate_size=128), pad="<|endoftext|>",
                prediction="epsilon"),
    # An MLP width that is not 4 x 32, read from intermediate_size, in open_clip's layout.
    "sd2": dict(unet=dict(attention_head_dim=[2, 4], use_linear_projection=True, upcast_attention=True),
                text=dict(hidden_act="gelu", num_hidden_layers=3, intermediate_size=37), pad="!",
                prediction="v_prediction"),
}
# Left out on purpose, where clip/ follows the original stacks and transformers 5 does not: HTML entities
# (ftfy unescapes them) and "!" in SD 2 prompts (transformers makes the pad token "!" special, open_clip does not).
PROMPTS = ["a photo of a cat on a sofa", "", "A Red-Eyed tree frog, 4K, it's (very) detailed.",
           " ".join(["lots of words"] * 40)]
BOUND = 1e-5          # max|ours − diffusers| / max|diffusers|, float32


def save_small_pipeline(folder, kind: str):
    """A StableDiffusionPipeline built and saved by diffusers/transformers, weights from fill_random_."""
    setting = SMALL[kind]
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        **setting["unet"])
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=32, num_attention_heads=4, max_position_embeddings=77, vocab_size=49408, **setting["text"]))
    return _save(folder, unet, vae, text_encoder, setting["pad"], setting["prediction"])


def clip_tokenizer(folder, pad: str):
    """transformers' CLIPTokenizer on CLIP's published tables (tests/fakes.py writes them byte for byte)."""
    for name, content in fakes.tokenizer_files("sd1").items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return transformers.CLIPTokenizer(str(folder / "tokenizer" / "vocab.json"),
                                      str(folder / "tokenizer" / "merges.txt"), pad_token=pad)


def _save(folder, unet, vae, text_encoder, pad: str, prediction: str):
    for seed, module in enumerate((unet, vae, text_encoder)):
        fill_random_(module, seed)
    tokenizer = clip_tokenizer(folder.parent / f"{folder.name}-tables", pad)
    scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        prediction_type=prediction, steps_offset=1, skip_prk_steps=True,
                                        set_alpha_to_one=False)
    pipeline = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return pipeline


def save_tiny_test_pipeline(folder, vocab_size: int = 49408):
    """The tiny pipeline of diffusers' own tests (StableDiffusionPipelineFastTests.get_dummy_components, the
    shape of hf-internal-testing/tiny-stable-diffusion-pipe), built from its configs and saved by diffusers.

    UNet: block_out_channels (32, 64), layers_per_block 2, cross-attention at level 1 only, cross_attention_dim
    32, sample_size 32, and the defaults attention_head_dim 8 (8 heads of width 8 at 64 channels) and
    norm_num_groups 32 (GroupNorm(32, 32): one channel a group at the first level). VAE: block_out_channels
    [32, 64] (2x downsampling), latent_channels 4, norm_num_groups 32. Text: hidden_size 32, intermediate_size
    37 (not 4 x 32), 4 heads, 5 layers. Its tokenizer (hf-internal-testing/tiny-random-clip, 1000 entries)
    is one clip.Tokenizer cannot express, so it is replaced by CLIP's own, and vocab_size by 49408 to match
    (the loader refuses both 1000s by name: test_weights_load.py).
    """
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32)
    vae = diffusers.AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=vocab_size))
    return _save(folder, unet, vae, text_encoder, "<|endoftext|>", "epsilon")


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
@torch.no_grad()
def test_folder_saved_by_diffusers_loads_and_gives_diffusers_outputs(tmp_path, kind):
    pipeline = save_small_pipeline(tmp_path / "model", kind)
    ours = weights.load(tmp_path / "model")
    assert ours.spec.prediction_type == {"sd1": "epsilon", "sd2": "v"}[kind]
    assert ours.spec.text.layout == kind and ours.spec.unet.use_linear_proj == (kind == "sd2")

    with pytest.warns(UserWarning, match="dropped the last 45 tokens"):
        ids = ours.tokenizer(PROMPTS)
    reference_ids = pipeline.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                                       return_tensors="pt").input_ids
    assert torch.equal(ids, reference_ids)

    context = ours.text_encoder(ids)
    assert max_relative_error(context, pipeline.text_encoder(ids).last_hidden_state) < BOUND

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([999, 500, 20, 1])
    eps = ours.unet(latents, timesteps, context)
    assert max_relative_error(eps, pipeline.unet(latents, timesteps, encoder_hidden_states=context).sample) < BOUND

    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    assert max_relative_error(ours.vae.encode(image).mean, pipeline.vae.encode(image).latent_dist.mean) < BOUND
    assert max_relative_error(ours.vae.decode(latents[:1]), pipeline.vae.decode(latents[:1]).sample) < BOUND


@torch.no_grad()
def test_diffusers_tiny_test_pipeline_loads_and_gives_diffusers_outputs(tmp_path):
    """Every architecture number comes from config.json: 8 heads, one attention level, 32 norm groups at
    32 channels, a 2-level VAE, and a text MLP 37 wide. Both models run in this process, in float32, on the
    same weights; the bound BOUND = 1e-5 of max|ours - theirs| / max|theirs| is float32 rounding: the two
    implementations sum in different orders (convolutions as matrix products, fused attention), each of
    the few dozen layers adding a relative error of order sqrt(K) * 2^-24 ~ 1.5e-6 for sums of K <= 600
    terms. Measured with torch 2.13 on a CPU: text 0 (bitwise: the same ops in the same order), UNet 9e-7,
    VAE encoder 1.3e-6, decoder 1.5e-6; a wrong architecture number gives errors of order 1."""
    pipeline = save_tiny_test_pipeline(tmp_path / "tiny-pipe")
    ours = weights.load(tmp_path / "tiny-pipe")
    unet, text = ours.spec.unet, ours.spec.text
    assert (unet.model_channels, unet.channel_mult, unet.attention_levels, unet.num_heads, unet.norm_groups) == \
        (32, (1, 2), (1,), 8, 32)
    assert (text.width, text.mlp_width, text.heads, text.layers, text.layout) == (32, 37, 4, 5, "sd1")
    assert ours.vae.encoder.down[0].block[0].norm1.num_groups == 32 and ours.spec.vae.ch_mult == (1, 2)
    assert ours.spec.image_size == 64 and ours.spec.scale_factor == 0.18215      # 32 latents x 2

    ids = ours.tokenizer(PROMPTS[:3])
    assert torch.equal(ids, pipeline.tokenizer(PROMPTS[:3], padding="max_length", max_length=77, truncation=True,
                                               return_tensors="pt").input_ids)
    context = ours.text_encoder(ids)
    assert max_relative_error(context, pipeline.text_encoder(ids).last_hidden_state) < BOUND

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 16, 16, generator=generator)
    timesteps = torch.tensor([999, 500, 1])
    eps = ours.unet(latents, timesteps, context)
    assert max_relative_error(eps, pipeline.unet(latents, timesteps, encoder_hidden_states=context).sample) < BOUND

    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    assert max_relative_error(ours.vae.encode(image).mean, pipeline.vae.encode(image).latent_dist.mean) < BOUND
    assert max_relative_error(ours.vae.decode(latents[:1]), pipeline.vae.decode(latents[:1]).sample) < BOUND


def test_diffusers_tiny_test_pipeline_with_its_1000_token_text_tower_is_refused_by_name(tmp_path):
    save_tiny_test_pipeline(tmp_path / "tiny-pipe", vocab_size=1000)
    with pytest.raises(weights.UnsupportedModelError, match=r"text_encoder/config.json: vocab_size=1000.*49408"):
        weights.load(tmp_path / "tiny-pipe")


def test_diffusers_saved_text_encoder_keys_are_unprefixed_and_still_load(tmp_path):
    """transformers 5 writes `embeddings.*` where the published files have `text_model.embeddings.*`."""
    save_small_pipeline(tmp_path / "model", "sd1")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model" / "text_encoder" / "model.safetensors"), "pt") as f:
        saved = list(f.keys())
    prefixed = sum(k.startswith("text_model.") for k in saved)
    assert prefixed in (0, len(saved))
    assert weights.load(tmp_path / "model").spec.text.layers == 2


def _meta_state(module_class, config: dict) -> dict:
    with torch.device("meta"):
        module = module_class.from_config(config) if hasattr(module_class, "from_config") else module_class(config)
    return module.state_dict()


def _shapes(tensors: dict) -> dict:
    return {k: tuple(v.shape) for k, v in tensors.items()}


@pytest.mark.parametrize("name", ["sd-1.5", "sd-2.1"])
def test_key_table_maps_full_size_diffusers_models_onto_ours(name):
    """Every key of diffusers' full-size UNet, VAE and transformers' text tower lands on ours, shapes equal.

    The diffusers models are built from our published-style configs (tests/fakes.py), so this also
    checks that those configs describe the same architecture to diffusers.
    """
    spec = presets.get(name)
    unet = _meta_state(diffusers.UNet2DConditionModel, fakes.unet_config(spec))
    assert _shapes(diffusers_keys.unet_from_diffusers(unet, spec.unet)) == _shapes(
        build_empty(spec.build_unet).state_dict())

    vae = _meta_state(diffusers.AutoencoderKL, fakes.vae_config(spec))
    assert _shapes(diffusers_keys.vae_from_diffusers(vae, spec.vae)) == _shapes(
        build_empty(spec.build_vae).state_dict())

    text_config = fakes.text_config(spec)
    text = _meta_state(transformers.CLIPTextModel, transformers.CLIPTextConfig(**text_config))
    parsed = diffusers_keys.text_config_from_transformers(text_config, "config.json")
    assert parsed == fakes.diffusers_spec_of(spec).text
    ours = build_empty(lambda: spec.build_text_encoder().__class__(parsed)).state_dict()
    absent = {"text_projection", "logit_scale"} if spec.text.layout == "sd2" else set()
    assert _shapes(diffusers_keys.text_from_transformers(text, parsed)) == {
        k: v for k, v in _shapes(ours).items() if k not in absent}
    assert diffusers_keys.unet_config_from_diffusers(json.loads(json.dumps(fakes.unet_config(spec))), "f") == spec.unet
    assert diffusers_keys.vae_config_from_diffusers(fakes.vae_config(spec), "f") == spec.vae
