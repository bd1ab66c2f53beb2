"""clip.ImageEncoder, clip.CLIPModel and clip.preprocess against transformers (CLIPVisionModelWithProjection,
CLIPModel, CLIPImageProcessorPil) and Pillow.

The golden outputs come from tests/golden/fixtures_rank.py. Each fixture stores the configs
and the seeds of `weights.fill_random_`, so each test rebuilds the same random towers here and
bounds max|ours − reference| / max|reference| (fp32: 1e-5, as for the text towers).
"""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_matches_golden, in_float64, load_golden, max_relative_error
from PIL import Image

from clip import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_CONFIGS,
    CLIPModel,
    ImageConfig,
    ImageEncoder,
    TextConfig,
    TextEncoder,
    preprocess,
)
from clip.model import TEXT_CONFIGS
from clip.preprocess import resize_bicubic
from weights import fill_random_

NAMES = {"rank_tiny": "tiny", "rank_vit_b16": "ViT-B/16", "rank_vit_l14": "ViT-L/14"}


def towers(golden: dict):
    image, text = ImageConfig(**golden["image_config"]), TextConfig(**golden["text_config"])
    image_seed, text_seed, _ = golden["seeds"]
    return fill_random_(ImageEncoder(image), image_seed).eval(), fill_random_(TextEncoder(text), text_seed).eval()


def golden_pixels(golden: dict, config: ImageConfig) -> torch.Tensor:
    """The fixture's pixels: stored when small, else regenerated from its seed exactly as fixtures_rank does."""
    if "pixels" in golden:
        return golden["pixels"]
    generator = torch.Generator().manual_seed(golden["seeds"][2])
    return torch.randn((golden["pixel_count"], 3, config.image_size, config.image_size), generator=generator)


# ----------------------------------------------------------------------------- parity
# Each float32 output is held to helpers.assert_matches_golden's bound: twice the sum of the two float32
# errors (ours, measured against float64 copies of the towers; the reference's, stored by the fixture).
def features_and_cosine(image: ImageEncoder, text: TextEncoder, pixels: torch.Tensor, ids: torch.Tensor) -> dict:
    image_features, text_features = image(pixels), text.pooled_embedding(ids)   # the tower casts pixels to its dtype
    cosine = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    return {"image_features": image_features, "text_features": text_features, "cosine": cosine}


def check_pair(golden: dict, image: ImageEncoder, text: TextEncoder, pixels: torch.Tensor, names) -> dict:
    ours = features_and_cosine(image, text, pixels, golden["ids"])
    ours64 = features_and_cosine(in_float64(image), in_float64(text), pixels, golden["ids"])
    for name, ours_name in names.items():
        assert_matches_golden(golden, name, ours[ours_name], ours64[ours_name])


@pytest.mark.precision
@torch.no_grad()
def test_tiny_image_tower_matches_transformers_clip_vision_model_with_projection_fp32():
    golden = load_golden("rank_tiny")
    image, text = towers(golden)
    check_pair(golden, image, text, golden["pixels"], {"image_embeds": "image_features"})


@pytest.mark.precision
@torch.no_grad()
def test_tiny_pair_features_and_cosine_match_transformers_clip_model_fp32():
    golden = load_golden("rank_tiny")
    image, text = towers(golden)
    check_pair(golden, image, text, golden["pixels"],
               {"image_features": "image_features", "text_features": "text_features", "cosine": "cosine"})


@pytest.mark.slow
@torch.no_grad()
def test_vit_b16_image_and_text_towers_match_transformers_clip_model_fp32():
    golden = load_golden("rank_vit_b16")
    image, text = towers(golden)
    assert (image.config, text.config) == (IMAGE_CONFIGS["ViT-B/16"], TEXT_CONFIGS["ViT-B/16"])
    check_pair(golden, image, text, golden_pixels(golden, image.config),
               {"image_embeds": "image_features",        # CLIPVisionModelWithProjection
                "image_features": "image_features",      # CLIPModel.get_image_features
                "text_features": "text_features",        # CLIPModel.get_text_features
                "cosine": "cosine"})


@pytest.mark.slow
@torch.no_grad()
def test_vit_l14_image_tower_and_projected_sd1_text_tower_match_transformers_fp32():
    golden = load_golden("rank_vit_l14")
    image, text = towers(golden)
    assert (image.config, text.config) == (IMAGE_CONFIGS["ViT-L/14"], TEXT_CONFIGS["ViT-L/14"])
    pixels = golden_pixels(golden, image.config)
    assert_matches_golden(golden, "image_embeds", image(pixels), in_float64(image)(pixels))
    del image
    ids = golden["ids"]
    assert_matches_golden(golden, "text_embeds", text.pooled_embedding(ids), in_float64(text).pooled_embedding(ids))


# fp16 has a unit roundoff of 4.9e-4; on CPU the tiny tower in fp16 gave 1.0e-3. As for the text towers,
# 1e-2 leaves room for other kernels, while a wrong weight or order of operations gives O(1).
FP16_BOUND = 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("fixture", ["rank_tiny", pytest.param("rank_vit_b16", marks=pytest.mark.slow),
                                     pytest.param("rank_vit_l14", marks=pytest.mark.slow)])
@torch.no_grad()
def test_fp16_image_tower_on_gpu_stays_close_to_the_fp32_reference(fixture):
    golden = load_golden(fixture)
    image, _ = towers(golden)
    embedding = image.to("cuda", torch.float16)(golden_pixels(golden, image.config).cuda()).float().cpu()
    assert torch.isfinite(embedding).all()
    assert max_relative_error(embedding, golden["image_embeds"]) <= FP16_BOUND


# ----------------------------------------------------------------------------- architecture and keys
@pytest.mark.parametrize("fixture", list(NAMES))
def test_both_towers_hold_exactly_the_published_clip_model_keys_and_shapes(fixture):
    with torch.device("meta"):
        image, text = ImageEncoder(IMAGE_CONFIGS[NAMES[fixture]]), TextEncoder(TEXT_CONFIGS[NAMES[fixture]])
    ours = {k: list(v.shape) for module in (image, text) for k, v in module.state_dict().items()}
    published = dict(load_golden(fixture)["published_keys"])
    assert published.pop("logit_scale") == []           # CLIP's temperature: the ranking loader ignores it
    assert ours == published
    assert all(k.startswith(("vision_model.", "visual_projection.")) for k in image.state_dict())


@pytest.mark.parametrize("fixture", ["rank_vit_b16", "rank_vit_l14"])
def test_presets_equal_open_clips_published_architecture_files(fixture):
    official = load_golden(fixture)["open_clip_config"]
    image, text = IMAGE_CONFIGS[NAMES[fixture]], TEXT_CONFIGS[NAMES[fixture]]
    vision_cfg, text_cfg = official["vision_cfg"], official["text_cfg"]
    assert image.projection_dim == text.projection_dim == official["embed_dim"]
    assert (image.image_size, image.patch_size, image.width, image.layers) == \
        (vision_cfg["image_size"], vision_cfg["patch_size"], vision_cfg["width"], vision_cfg["layers"])
    assert image.heads == image.width // vision_cfg.get("head_width", 64)   # open_clip's default head width: 64
    assert (text.width, text.heads, text.layers, text.context_length, text.vocab_size) == \
        (text_cfg["width"], text_cfg["heads"], text_cfg["layers"], text_cfg["context_length"], text_cfg["vocab_size"])
    assert text.activation == "quick_gelu"   # OpenAI's weights were trained with quick-GELU in both towers


def test_vit_l14_text_tower_is_sd1s_tower_plus_a_projection():
    from weights import presets
    assert dataclasses.replace(TEXT_CONFIGS["ViT-L/14"], projection_dim=None) == presets.get("sd-1.5").text


# ----------------------------------------------------------------------------- equations
def tiny_image_tower(seed=3) -> ImageEncoder:
    return fill_random_(ImageEncoder("tiny"), seed).eval()


@torch.no_grad()
def test_image_attention_has_no_mask_so_the_last_patch_changes_the_class_token():
    model = tiny_image_tower()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[..., 24:, 24:] += 1                                          # the last 8x8 patch only
    assert (model(x) - model(changed)).abs().max() > 1e-3


@pytest.mark.precision
@torch.no_grad()
def test_embedding_is_the_projected_post_layer_norm_of_the_class_token():
    model = tiny_image_tower()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    vm, captured = model.vision_model, {}
    vm.encoder.layers[-1].register_forward_hook(lambda module, inputs, output: captured.update(last=output))
    embedding = model(x)
    expected = vm.post_layernorm(captured["last"][:, 0]) @ model.visual_projection.weight.T
    assert torch.equal(embedding, expected)


def test_bad_names_configs_and_pixel_shapes_are_rejected_with_what_was_expected():
    with pytest.raises(ValueError, match="unknown CLIP image tower 'ViT-H/14'; known: ViT-B/16, ViT-L/14"):
        ImageEncoder("ViT-H/14")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ImageEncoder(ImageConfig(image_size=30, patch_size=8))
    with pytest.raises(ValueError, match=r"shape \(B, 3, 32, 32\), got \(1, 3, 64, 64\)"):
        tiny_image_tower()(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="unknown CLIP model"):
        CLIPModel("RN50")


# ----------------------------------------------------------------------------- preprocessing
# transformers' CLIPImageProcessorPil resizes 8-bit images with Pillow, which rounds to a whole grey level
# and clips after each of its two passes (width, then height); we compute the same passes in float.
# Bound, in [0, 1] units: the first pass's rounding (≤ 0.5/255) goes through the second pass's weights,
# whose absolute values sum to at most 1.27 (bicubic a = −0.5, normalised, any scale factor; the maximum
# over scale factors 0.05..8 and sub-pixel offsets, computed numerically), then the second pass rounds again:
# (0.5 · 1.27 + 0.5) / 255. Pillow's 22-bit fixed-point weights add under 1e-4 grey levels.
# Measured: 1.01 / 255. On these images a single pass without the clip in between gives 12.7 / 255,
# bilinear 38, torch's non-antialiased bicubic (a = −0.75) 108, and rounding the crop offset (torchvision's
# rule, one pixel off here) 190.
PILLOW_ROUNDING_BOUND = (0.5 * 1.27 + 0.5) / 255


@pytest.mark.precision
def test_preprocess_matches_transformers_clip_image_processor_within_pillows_rounding():
    golden = load_golden("rank_preprocess")
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    for index in range(5):
        image = golden[f"image_{index}"]                                          # (H, W, 3) uint8
        ours = preprocess(image.permute(2, 0, 1)[None].float() / 127.5 - 1, golden["size"])
        reference = golden[f"pixels_{index}"]
        assert ours.shape == reference.shape == (1, 3, golden["size"], golden["size"])
        error_in_grey_levels = ((ours - reference) * std).abs().max().item()     # undo the division by std
        assert error_in_grey_levels <= PILLOW_ROUNDING_BOUND, (index, error_in_grey_levels * 255)


def test_preprocess_defaults_are_clip_image_processors():
    defaults = load_golden("rank_preprocess")["defaults"]
    assert defaults["shortest_edge"] == IMAGE_CONFIGS["ViT-B/16"].image_size == IMAGE_CONFIGS["ViT-L/14"].image_size
    assert defaults["crop"] == [224, 224] and defaults["do_center_crop"] and defaults["do_normalize"]
    assert defaults["resample"] == Image.BICUBIC
    assert tuple(defaults["mean"]) == CLIP_MEAN and tuple(defaults["std"]) == CLIP_STD
    assert defaults["rescale_factor"] == pytest.approx(1 / 255)


@pytest.mark.parametrize("shape, size", [((300, 250), (268, 224)), ((100, 100), (224, 224)), ((61, 97), (32, 50)),
                                         ((224, 301), (224, 224))])
def test_resize_equals_pillows_float_bicubic_at_clip_sizes(shape, size):
    # Pillow's float ("F") images are resized with the same filter but without rounding; values in
    # [0.2, 0.8] stay inside [0, 1] after any bicubic pass (1.27 · 0.3 < 0.5), so the clips do nothing.
    # What is left is float32 summation order (measured: at most 1.9e-5).
    rng = np.random.default_rng(sum(shape))
    channel = rng.uniform(0.2, 0.8, shape).astype(np.float32)
    reference = np.asarray(Image.fromarray(channel, mode="F").resize(size[::-1], Image.BICUBIC))
    ours = resize_bicubic(torch.from_numpy(channel)[None, None], *size)[0, 0].numpy()
    assert np.abs(ours - reference).max() <= 5e-5


def test_preprocess_maps_minus_one_to_one_onto_clip_normalised_values_and_crops_the_centre():
    image = torch.full((1, 3, 224, 300), -1.0)
    image[..., 38:262] = 1.0                                 # the centre 224 columns white, the margins black
    pixels = preprocess(image)
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels[0, :, :, :], white.view(3, 1, 1).expand(3, 224, 224))
