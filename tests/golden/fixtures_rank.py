"""Golden fixtures of CLIP ranking (`cd tests && python -m golden.make_fixtures --only rank`).

References:

* **Image towers:** transformers' `CLIPVisionModelWithProjection` (eager attention), whose
  state-dict keys are those of the published CLIPModel files under `vision_model.*` plus
  `visual_projection.weight`. Our `clip.ImageEncoder`, filled with
  `weights.fill_random_(module, seed)`, is loaded into it strictly, unchanged.
* **The pair:** transformers' `CLIPModel` with both of our towers loaded strictly (plus its own
  `logit_scale`): `get_image_features`, `get_text_features` and the cosine between them.
  transformers 5's CLIPModel keeps the `text_model.` prefix, as the published files do.
* **Architectures:** open_clip's own model configs `ViT-B-16.json` and `ViT-L-14.json`, read
  as JSON files (importing open_clip needs torchvision), are stored beside the configs we use.
* **Preprocessing:** transformers' `CLIPImageProcessorPil` (Pillow and NumPy; the default
  CLIPImageProcessor needs torchvision). Its defaults are stored, and it is run at a crop size
  of 32 instead of 224 to keep the fixture small: the size changes no step of the algorithm.

Full-size pixels are not stored (602 KB per 224 x 224 image): the test regenerates them from
the stored seed with `torch.randn`, the generator that also makes the weights.
"""
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clip import IMAGE_CONFIGS, ImageConfig, ImageEncoder, TextConfig, TextEncoder, Tokenizer
from clip.model import TEXT_CONFIGS
from weights import fill_random_

IMAGE_SEED, TEXT_SEED, PIXEL_SEED = 0, 1, 2
PROMPTS = ["a photo of a cat", "a red brick wall, seen from the side"]
BOS, EOS = 49406, 49407


# ----------------------------------------------------------------------------- references
def vision_config(config: ImageConfig):
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(
        hidden_size=config.width, intermediate_size=4 * config.width, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, image_size=config.image_size, patch_size=config.patch_size,
        projection_dim=config.projection_dim, hidden_act="quick_gelu", layer_norm_eps=config.layer_norm_eps,
        attention_dropout=0.0, attn_implementation="eager")


def text_config(config: TextConfig):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.width, intermediate_size=4 * config.width,
        num_hidden_layers=config.layers, num_attention_heads=config.heads,
        max_position_embeddings=config.context_length, hidden_act=config.activation,
        layer_norm_eps=config.layer_norm_eps, attention_dropout=0.0, projection_dim=config.projection_dim,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1, attn_implementation="eager")


def clip_model(image: ImageConfig, text: TextConfig, on_meta: bool = False):
    """transformers' CLIPModel of this architecture, eager attention in both towers."""
    import transformers
    config = transformers.CLIPConfig(text_config=text_config(text).to_dict(),
                                     vision_config=vision_config(image).to_dict(),
                                     projection_dim=image.projection_dim)
    with torch.device("meta" if on_meta else "cpu"):
        model = transformers.CLIPModel._from_config(config, attn_implementation="eager")
    assert model.text_model.config._attn_implementation == model.vision_model.config._attn_implementation == "eager"
    return model.eval()


def strict_load(module, state_dict):
    module.load_state_dict(state_dict, strict=True)
    return module.eval()


def key_shapes(module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def open_clip_config(name: str) -> dict:
    """open_clip's published architecture file model_configs/<name>.json."""
    package = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0])
    return json.loads((package / "model_configs" / f"{name}.json").read_text())


# ----------------------------------------------------------------------------- inputs and our towers
def pixels(config: ImageConfig, count: int, seed: int = PIXEL_SEED) -> torch.Tensor:
    """CLIP-normalised pixels: N(0, 1) noise, which is what normalised images look like to the first layer."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((count, 3, config.image_size, config.image_size), generator=generator)


def token_ids() -> torch.Tensor:
    """The prompts (our tokenizer, checked against transformers' in fixtures_clip) plus one random row."""
    ids = Tokenizer("sd1")(PROMPTS)
    generator = torch.Generator().manual_seed(TEXT_SEED)
    random_row = torch.full((1, 77), EOS, dtype=torch.long)
    random_row[0, 0] = BOS
    random_row[0, 1:30] = torch.randint(0, BOS, (29,), generator=generator)
    return torch.cat([ids, random_row])


def image_tower(config: ImageConfig) -> ImageEncoder:
    return fill_random_(ImageEncoder(config), IMAGE_SEED).eval()


def text_tower(config: TextConfig) -> TextEncoder:
    return fill_random_(TextEncoder(config), TEXT_SEED).eval()


def _vision_reference(image: ImageConfig, ours: ImageEncoder, x: torch.Tensor, dtype=torch.float32):
    from transformers import CLIPVisionModelWithProjection
    reference = strict_load(CLIPVisionModelWithProjection(vision_config(image)), ours.state_dict()).to(dtype)
    return reference(pixel_values=x.to(dtype)).image_embeds


def _pair_fixture(name: str, pixel_count: int, store_pixels: bool, dtype=torch.float32) -> dict:
    """Both towers of `name` vs CLIPVisionModelWithProjection and CLIPModel."""
    image, text = IMAGE_CONFIGS[name], TEXT_CONFIGS[name]
    ours_image, ours_text = image_tower(image), text_tower(text)
    x, ids = pixels(image, pixel_count), token_ids()
    values = {"image_config": dataclasses.asdict(image), "text_config": dataclasses.asdict(text),
              "seeds": [IMAGE_SEED, TEXT_SEED, PIXEL_SEED], "pixel_count": pixel_count, "ids": ids,
              "image_embeds": _vision_reference(image, ours_image, x, dtype)}
    if store_pixels:
        values["pixels"] = x
    pair = clip_model(image, text)
    strict_load(pair, {**ours_image.state_dict(), **ours_text.state_dict(), "logit_scale": pair.logit_scale})
    pair = pair.to(dtype)
    image_features = pair.get_image_features(pixel_values=x.to(dtype))
    text_features = pair.get_text_features(input_ids=ids)
    values["image_features"] = image_features.pooler_output if hasattr(image_features, "pooler_output") \
        else image_features
    values["text_features"] = text_features.pooler_output if hasattr(text_features, "pooler_output") \
        else text_features
    output = pair(pixel_values=x.to(dtype), input_ids=ids)
    values["cosine"] = output.logits_per_image / pair.logit_scale.exp()     # (images, texts)
    values["published_keys"] = key_shapes(pair)
    return values


def rank_tiny(dtype=torch.float32):
    """The tiny pair (2-block ViT on 32 px, 2-block text tower, 24-wide embeddings) vs transformers."""
    return _pair_fixture("tiny", pixel_count=3, store_pixels=True, dtype=dtype)


def rank_vit_b16(dtype=torch.float32):
    """OpenAI ViT-B/16 (the official LDM ranker): image tower and text tower with projection vs transformers."""
    values = _pair_fixture("ViT-B/16", pixel_count=1, store_pixels=False, dtype=dtype)
    values["open_clip_config"] = open_clip_config("ViT-B-16")
    return values


def rank_vit_l14(dtype=torch.float32):
    """OpenAI ViT-L/14: the 24-block image tower vs CLIPVisionModelWithProjection, text embeds, published keys."""
    from transformers import CLIPTextModelWithProjection
    image, text = IMAGE_CONFIGS["ViT-L/14"], TEXT_CONFIGS["ViT-L/14"]
    ours_image = image_tower(image)
    values = {"image_config": dataclasses.asdict(image), "text_config": dataclasses.asdict(text),
              "seeds": [IMAGE_SEED, TEXT_SEED, PIXEL_SEED], "pixel_count": 1,
              "image_embeds": _vision_reference(image, ours_image, pixels(image, 1), dtype)}
    del ours_image
    ids = token_ids()[:1]
    ours_text = text_tower(text)
    # transformers 5's CLIPTextModelWithProjection holds the text model as `text_model` with unprefixed inner keys,
    # so the published `text_model.*` names load as they are.
    reference = strict_load(CLIPTextModelWithProjection(text_config(text)), ours_text.state_dict()).to(dtype)
    values["ids"], values["text_embeds"] = ids, reference(input_ids=ids).text_embeds
    values["published_keys"] = key_shapes(clip_model(image, text, on_meta=True))
    values["open_clip_config"] = open_clip_config("ViT-L-14")
    return values


# ----------------------------------------------------------------------------- preprocessing
# (height, width) of the test images and what each exercises at a crop size of 32
PREPROCESS_SHAPES = [
    (45, 61),    # shrink, landscape: the long side truncated (32 * 61 / 45 = 43.4 -> 43), crop offset 5
    (27, 20),    # enlarge, portrait: 43 x 32
    (32, 45),    # shortest side already 32: no resize, crop only, odd margin 13 -> column 6
    (97, 40),    # shrink 2.5x, portrait: 77 x 32
    (33, 33),    # square, shrink by one pixel
]
PREPROCESS_SIZE = 32


def preprocess_inputs() -> list:
    """Seeded 8-bit RGB images: pure noise for the first two, a gradient plus noise for the rest."""
    rng = np.random.default_rng(0)
    images = []
    for index, (height, width) in enumerate(PREPROCESS_SHAPES):
        noise = rng.integers(0, 256, (height, width, 3))
        if index >= 2:
            ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
            noise = 0.7 * ramp + 0.3 * noise
        images.append(np.clip(np.round(noise), 0, 255).astype(np.uint8))
    return images


def rank_preprocess():
    """transformers' CLIPImageProcessorPil (Pillow bicubic, crop, mean/std): its defaults and outputs at 32 px."""
    from transformers import CLIPImageProcessorPil
    defaults = CLIPImageProcessorPil()
    values = {"defaults": {"shortest_edge": defaults.size.shortest_edge,
                           "crop": [defaults.crop_size.height, defaults.crop_size.width],
                           "resample": int(defaults.resample), "mean": list(defaults.image_mean),
                           "std": list(defaults.image_std), "rescale_factor": defaults.rescale_factor,
                           "do_center_crop": defaults.do_center_crop, "do_normalize": defaults.do_normalize},
              "size": PREPROCESS_SIZE}
    processor = CLIPImageProcessorPil(size={"shortest_edge": PREPROCESS_SIZE},
                                      crop_size={"height": PREPROCESS_SIZE, "width": PREPROCESS_SIZE})
    for index, array in enumerate(preprocess_inputs()):
        values[f"image_{index}"] = torch.from_numpy(array)
        values[f"pixels_{index}"] = processor(images=[Image.fromarray(array)], return_tensors="pt").pixel_values
    return values


FIXTURES = {
    "rank_tiny": rank_tiny,
    "rank_vit_b16": rank_vit_b16,
    "rank_vit_l14": rank_vit_l14,
    "rank_preprocess": rank_preprocess,
}
