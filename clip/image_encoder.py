"""CLIP's image tower: a Vision Transformer (Dosovitskiy et al. 2021) as OpenAI trained it (Radford et al. 2021).

The ranking of paper §4.4 needs one number per result: how close the result's CLIP image
embedding lies to the prompt's CLIP text embedding. This file computes the image side:

    patches  = Conv_{P×P, stride P}(pixels)                     (B, C, S/P, S/P), no bias
    x_0      = [e_class ; flatten(patches)] + E_position        (B, 1 + (S/P)², C)
    x_0      = LN_pre(x_0)                                      CLIP's addition to ViT
    x_l      = x_{l-1} + Attention(LN_1(x_{l-1}))               every token sees every token
    x_l      = x_l + W_2 · quick_gelu(W_1 · LN_2(x_l) + b_1) + b_2
    embedding = W_proj · LN_post(x_L[:, 0])                     the class token only; no bias

The blocks are those of the text tower (clip/text_encoder.py) without the causal mask.

| | ViT-B/16 (the official LDM code's ranker) | ViT-L/14 (SD 1's CLIP) |
|---|---|---|
| patch P / image S | 16 / 224 (14² = 196 patches) | 14 / 224 (16² = 256 patches) |
| width / heads / blocks | 768 / 12 / 12 | 1024 / 16 / 24 |
| embedding width | 512 | 768 |

Attribute names follow transformers' CLIPModel, as the published `openai/clip-vit-base-patch16`
and `openai/clip-vit-large-patch14` files store it, so `state_dict()` keys equal that file's
`vision_model.*` keys plus `visual_projection.weight` (LN_pre is spelled `pre_layrnorm` there).
"""
from dataclasses import dataclass

import torch
from torch import nn

from .text_encoder import MLP, SelfAttention


@dataclass(frozen=True)
class ImageConfig:
    """A CLIP Vision Transformer; the defaults are OpenAI's ViT-B/16."""
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    projection_dim: int = 512            # the width of the embedding shared with the text tower
    layer_norm_eps: float = 1e-5

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """The class token plus one token per patch."""
        return 1 + self.grid_size ** 2


IMAGE_CONFIGS = {
    "ViT-B/16": ImageConfig(),
    "ViT-L/14": ImageConfig(patch_size=14, width=1024, layers=24, heads=16, projection_dim=768),
    # For tests and offline runs: 16 patches of 8x8, 2 blocks.
    "tiny": ImageConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, projection_dim=24),
}


class EncoderLayer(nn.Module):
    """x + Attention(LN_1(x)), then x + MLP(LN_2(x)): the text tower's block without the causal mask."""

    def __init__(self, config: ImageConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.self_attn = SelfAttention(config.width, config.heads, fused_qkv=False, causal=False)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = MLP(config.width, "quick_gelu", ("fc1", "fc2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ImageEncoder(nn.Module):
    """CLIP's image tower: `forward(pixels)` gives the (B, projection_dim) image embedding (not normalised).

    `pixels` are CLIP-normalised (B, 3, S, S) images: see clip.preprocess.
    """

    def __init__(self, config: str | ImageConfig = "ViT-B/16"):
        super().__init__()
        if isinstance(config, str):
            if config not in IMAGE_CONFIGS:
                raise ValueError(f"unknown CLIP image tower {config!r}; known: {', '.join(IMAGE_CONFIGS)}")
            config = IMAGE_CONFIGS[config]
        if config.image_size % config.patch_size or config.width % config.heads:
            raise ValueError(f"ImageConfig: image_size {config.image_size} must be a multiple of patch_size "
                             f"{config.patch_size}, and width {config.width} of heads {config.heads}")
        self.config = config
        width = config.width
        # transformers' CLIPVisionModel, as the published files store it: vision_model.{embeddings, ...}
        self.vision_model = nn.Module()
        embeddings = self.vision_model.embeddings = nn.Module()
        embeddings.class_embedding = nn.Parameter(torch.empty(width))
        embeddings.patch_embedding = nn.Conv2d(3, width, config.patch_size, stride=config.patch_size, bias=False)
        embeddings.position_embedding = nn.Embedding(config.num_positions, width)
        nn.init.normal_(embeddings.class_embedding, std=width ** -0.5)
        self.vision_model.pre_layrnorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.vision_model.encoder = nn.Module()
        self.vision_model.encoder.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))
        self.vision_model.post_layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.visual_projection = nn.Linear(width, config.projection_dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) CLIP-normalised pixels -> (B, projection_dim) image embedding."""
        size = self.config.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"expected CLIP-normalised pixels of shape (B, 3, {size}, {size}), got "
                             f"{tuple(pixels.shape)}; use clip.preprocess(images, {size}) to make them")
        vm = self.vision_model
        patch_embedding = vm.embeddings.patch_embedding
        patches = patch_embedding(pixels.to(patch_embedding.weight.dtype))    # (B, C, S/P, S/P)
        patches = patches.flatten(2).transpose(1, 2)                           # (B, (S/P)², C)
        class_token = vm.embeddings.class_embedding.expand(len(pixels), 1, -1)  # (B, 1, C)
        x = torch.cat([class_token, patches], dim=1) + vm.embeddings.position_embedding.weight
        x = vm.pre_layrnorm(x)                                                 # (B, 1 + (S/P)², C)
        for layer in vm.encoder.layers:
            x = layer(x)
        return self.visual_projection(vm.post_layernorm(x[:, 0]))              # (B, projection_dim)
