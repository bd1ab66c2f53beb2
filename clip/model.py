"""CLIP as a whole: the image tower, the text tower with its projection, and the tokenizer.

CLIP (Radford et al. 2021) maps an image and a text into one space so that matching pairs
point the same way. Both embeddings are normalised to unit length and compared by the cosine:

    cos(image, text) = ⟨f(image), g(text)⟩ / (‖f(image)‖ · ‖g(text)‖)

The text side is clip.TextEncoder in its "sd1" layout (transformers' `text_model.*` names) with
a `text_projection`; its embedding is read at the first EOS (`pooled_embedding`). ViT-L/14's
text tower is SD 1's tower plus that projection; ViT-B/16's is a narrower one (512 wide, 8 heads).

| | image tower | text tower width / heads / blocks | shared width |
|---|---|---|---|
| ViT-B/16 | ViT-B, 16×16 patches | 512 / 8 / 12 | 512 |
| ViT-L/14 | ViT-L, 14×14 patches | 768 / 12 / 12 | 768 |

The parts keep the published names: `image_encoder.state_dict()` holds the `vision_model.*` and
`visual_projection.weight` keys of transformers' CLIPModel files, `text_encoder.state_dict()` the
`text_model.*` and `text_projection.weight` keys (weights/clip_ranker.py loads the files).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import IMAGE_CONFIGS, ImageConfig, ImageEncoder
from .preprocess import preprocess
from .text_encoder import TextConfig, TextEncoder
from .tokenizer import Tokenizer

TEXT_CONFIGS = {
    "ViT-B/16": TextConfig(width=512, layers=12, heads=8, projection_dim=512),
    "ViT-L/14": TextConfig(width=768, layers=12, heads=12, projection_dim=768),
    "tiny": TextConfig(width=32, layers=2, heads=4, projection_dim=24),
}
CLIP_NAMES = tuple(IMAGE_CONFIGS)


class CLIPModel(nn.Module):
    """CLIP's two towers and tokenizer: `image_embeddings(images)` and `text_embeddings(prompts)` give unit vectors."""

    def __init__(self, name: str = "ViT-B/16", image: ImageConfig | None = None, text: TextConfig | None = None):
        super().__init__()
        if (image is None or text is None) and name not in IMAGE_CONFIGS:
            raise ValueError(f"unknown CLIP model {name!r}; known: {', '.join(CLIP_NAMES)}")
        image, text = image or IMAGE_CONFIGS[name], text or TEXT_CONFIGS[name]
        if text.layout != "sd1" or text.resolved_projection_dim != image.projection_dim:
            raise ValueError(f"CLIP needs an 'sd1'-layout text tower projecting to the image tower's width "
                             f"{image.projection_dim}; got layout {text.layout!r}, projection "
                             f"{text.resolved_projection_dim}")
        self.name = name
        self.image_encoder = ImageEncoder(image)
        self.text_encoder = TextEncoder(text)
        self.tokenizer = Tokenizer("sd1")    # OpenAI's BPE; pooling at the first EOS makes the pad id irrelevant

    @property
    def image_size(self) -> int:
        return self.image_encoder.config.image_size

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images in [−1, 1], any size -> (N, D) unit vectors (preprocessed as CLIP was trained)."""
        weight = self.image_encoder.visual_projection.weight
        pixels = preprocess(images.to(weight.device), self.image_size).to(weight.dtype)
        return F.normalize(self.image_encoder(pixels).float(), dim=-1)

    def text_embeddings(self, prompts: str | list[str]) -> torch.Tensor:
        """Prompts -> (len(prompts), D) unit vectors."""
        ids = self.tokenizer([prompts] if isinstance(prompts, str) else list(prompts))
        device = self.text_encoder.text_projection.weight.device
        return F.normalize(self.text_encoder.pooled_embedding(ids.to(device)).float(), dim=-1)


def cosine_distance(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """1 − cos between each image (N, D) and each text (M, D): (N, M), in [0, 2]; lower is closer."""
    return 1 - F.normalize(image_embeddings.float(), dim=-1) @ F.normalize(text_embeddings.float(), dim=-1).T
