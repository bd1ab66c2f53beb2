"""The Stable Diffusion UNet ε_θ(z_t, t, c) (LDM `ldm/modules/diffusionmodules/openaimodel.py` layout).

    emb = MLP(timestep_embedding(t))                          sinusoidal, cat[cos, sin]
          (+ label_emb(y) with SDXL's vector conditioning y: pooled text and size/crop embeddings)
    input_blocks:  conv_in, then per level: ResBlock (+ SpatialTransformer) × num_res_blocks, Downsample
    middle_block:  ResBlock, SpatialTransformer, ResBlock
    output_blocks: per level, deepest first: cat[h, skip] -> ResBlock (+ SpatialTransformer) × (num_res_blocks + 1),
                   Upsample after the last block of every level but the first
    out:           GroupNorm, SiLU, conv

Each input block's output is kept as a skip connection; each output block takes one back, last in
first out. Attribute names follow the published keys minus `model.diffusion_model.`
(`time_embed.0`, `input_blocks.N.M`, `middle_block.N`, `output_blocks.N.M`, `out.0`, `out.2`),
so `load_state_dict` needs no renaming.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SpatialTransformer


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of an SD UNet; the defaults are SD 1.x.

    Exactly one of `num_heads` (SD 1: 8 heads at every level) and `head_dim`
    (SD 2 and SDXL: 64 channels a head) is set.

    SDXL's flags follow Stability's `sgm` UNetModel: `transformer_depth` is one int for every
    level (SD 1/2: 1) or one int per level (SDXL: (0, 2, 10)); `transformer_depth_middle` is the
    middle block's depth (None: the deepest level's); `adm_in_channels` is the width of the vector
    conditioning y, embedded by `label_emb` (Linear, SiLU, Linear) and added to the time embedding.
    """
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple = (0, 1, 2)   # levels with a SpatialTransformer; the middle block always has one
    num_heads: int | None = 8
    head_dim: int | None = None
    context_dim: int = 768
    transformer_depth: int | tuple = 1    # blocks per SpatialTransformer: one int, or one per level
    transformer_depth_middle: int | None = None   # None: the deepest level's depth
    adm_in_channels: int | None = None    # SDXL: y (B, 2816) = [pooled text | 6 × 256 time-id embeddings]
    use_linear_proj: bool = False         # SD 2: proj_in/proj_out are Linear, not 1x1 conv
    norm_groups: int = 32
    upcast_attention: bool = False        # SD 2.1 768 runs attention in fp32

    def __post_init__(self):
        if (self.num_heads is None) == (self.head_dim is None):
            raise ValueError(f"UNetConfig needs exactly one of num_heads (SD 1) and head_dim (SD 2); "
                             f"got num_heads={self.num_heads}, head_dim={self.head_dim}")
        if not isinstance(self.transformer_depth, int) and len(self.transformer_depth) != len(self.channel_mult):
            raise ValueError(f"UNetConfig.transformer_depth needs one int per level ({len(self.channel_mult)}), "
                             f"got {self.transformer_depth}")
        for level in self.attention_levels:
            if self.depth_at(level) < 1:
                raise ValueError(f"UNetConfig: level {level} has attention but transformer depth "
                                 f"{self.depth_at(level)}; give it a depth of at least 1 or drop it from "
                                 f"attention_levels")

    def depth_at(self, level: int) -> int:
        """Transformer blocks in each SpatialTransformer of `level`."""
        if isinstance(self.transformer_depth, int):
            return self.transformer_depth
        return self.transformer_depth[level]

    @property
    def middle_depth(self) -> int:
        """Transformer blocks in the middle block's SpatialTransformer."""
        if self.transformer_depth_middle is not None:
            return self.transformer_depth_middle
        return self.depth_at(len(self.channel_mult) - 1)

    def heads_at(self, channels: int) -> int:
        """Number of attention heads of a SpatialTransformer with `channels` channels."""
        return self.num_heads if self.num_heads is not None else channels // self.head_dim

    @property
    def downsampling_factor(self) -> int:
        """2^(levels − 1): latent sides must be multiples of this (8 for SD)."""
        return 2 ** (len(self.channel_mult) - 1)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the timesteps, (B,) -> (B, dim) in float32.

    freq_i = max_period^(−i / (dim/2)),  i = 0 … dim/2 − 1
    emb(t) = cat[cos(t · freq), sin(t · freq)]     (cos first, as in LDM; Vaswani et al. §3.5)
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]          # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def vector_conditioning(pooled_text: torch.Tensor, time_ids: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """SDXL's y (sgm `ConcatTimestepEmbedderND`): (B, P) pooled text, (B, 6) time ids -> (B, P + 6·dim).

    y = [pooled text | emb(original_h) | emb(original_w) | emb(crop_top) | emb(crop_left)
                     | emb(target_h) | emb(target_w)],   emb = timestep_embedding(·, dim), cat[cos, sin]
    """
    batch = time_ids.shape[0]
    sizes = timestep_embedding(time_ids.flatten(), dim).reshape(batch, -1)   # (B·6, dim) -> (B, 6·dim)
    return torch.cat([pooled_text.float(), sizes.to(pooled_text.device)], dim=-1)


class ResBlock(nn.Module):
    """h = conv(SiLU(GroupNorm(x))) + Linear(SiLU(emb));  out = skip(x) + conv(SiLU(GroupNorm(h))).

    `skip_connection` is a 1×1 conv when the channel count changes, else the identity.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, norm_groups: int = 32):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            nn.GroupNorm(norm_groups, channels, eps=1e-5), nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(norm_groups, out_channels, eps=1e-5), nn.SiLU(),
            nn.Dropout(0.0),                                   # index 2 in the published layout; inactive here
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)                                  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = h + self.emb_layers(emb)[:, :, None, None]         # timestep injection: (B, C_out) -> (B, C_out, 1, 1)
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """A stride-2 3×3 conv (`op`): (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """LDM's container: hands the timestep embedding to ResBlocks and the context to SpatialTransformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """The conditional UNet of Stable Diffusion: (z_t, t, context) -> ε (or v) prediction."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        time_dim = 4 * c.model_channels

        def resblock(channels, out_channels):
            return ResBlock(channels, time_dim, out_channels, c.norm_groups)

        def transformer(channels, depth):
            heads = c.heads_at(channels)
            return SpatialTransformer(channels, heads, channels // heads, depth, c.context_dim,
                                      c.use_linear_proj, c.norm_groups, c.upcast_attention)

        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        if c.adm_in_channels is not None:   # SDXL: `label_emb.0.0`, `label_emb.0.2`, as sgm nests it
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(c.adm_in_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)))

        # Encoder: every block's output is a skip connection; remember their channel counts.
        self.input_blocks = nn.ModuleList([
            TimestepEmbedSequential(nn.Conv2d(c.in_channels, c.model_channels, 3, padding=1))])
        skip_channels = [c.model_channels]
        channels = c.model_channels
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [resblock(channels, mult * c.model_channels)]
                channels = mult * c.model_channels
                if level in c.attention_levels:
                    layers.append(transformer(channels, c.depth_at(level)))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(channels)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(channels)))
                skip_channels.append(channels)

        self.middle_block = TimestepEmbedSequential(
            resblock(channels, channels), transformer(channels, c.middle_depth), resblock(channels, channels))

        # Decoder: one block per skip connection, deepest level first.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for index in range(c.num_res_blocks + 1):
                layers = [resblock(channels + skip_channels.pop(), mult * c.model_channels)]
                channels = mult * c.model_channels
                if level in c.attention_levels:
                    layers.append(transformer(channels, c.depth_at(level)))
                if level != 0 and index == c.num_res_blocks:
                    layers.append(Upsample(channels))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(c.norm_groups, channels, eps=1e-5), nn.SiLU(),
            nn.Conv2d(channels, c.out_channels, 3, padding=1))

    def check_latent_size(self, height: int, width: int) -> None:
        """Raise ValueError unless both latent sides are multiples of the downsampling factor."""
        factor = self.config.downsampling_factor
        if height % factor or width % factor:
            def nearest(side):
                return max(factor, round(side / factor) * factor)
            raise ValueError(
                f"the UNet cannot take a {height}x{width} latent: both sides must be multiples of {factor} "
                f"(images: multiples of {8 * factor} px with SD's 8x autoencoder); "
                f"the nearest size that works is {nearest(height)}x{nearest(width)} "
                f"(image {8 * nearest(height)}x{8 * nearest(width)} px)")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | int, context: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C_in, H, W) latents, timesteps: (B,) ints or one int, context: (B, M, context_dim),
        y: (B, adm_in_channels), the vector conditioning of a UNet with `adm_in_channels` (SDXL), else None.

        emb = time_embed(timestep_embedding(t)) + label_emb(y)   (sgm `UNetModel.forward`)

        Returns (B, C_out, H, W). Inputs are cast to the weights' dtype, and so is the output.
        """
        self.check_latent_size(*x.shape[-2:])
        adm = self.config.adm_in_channels
        if (y is None) != (adm is None):
            raise ValueError(f"this UNet takes y of shape (B, {adm}) (SDXL's pooled text and time ids)" if adm
                             else "this UNet has no vector conditioning (adm_in_channels is None); pass y=None")
        if y is not None and tuple(y.shape) != (x.shape[0], adm):
            raise ValueError(f"expected y of shape ({x.shape[0]}, {adm}), got {tuple(y.shape)}")
        dtype = self.out[2].weight.dtype
        x, context = x.to(dtype), context.to(dtype)
        if not torch.is_tensor(timesteps) or timesteps.ndim == 0:
            timesteps = torch.full((x.shape[0],), int(timesteps), dtype=torch.long, device=x.device)
        emb = self.time_embed(timestep_embedding(timesteps.to(x.device), self.config.model_channels).to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(dtype))             # (B, 4·model_channels)

        skips = []
        h = x
        for block in self.input_blocks:                         # (B, C, H, W) -> … -> (B, 4C, H/8, W/8) for SD
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)  # concatenate the skip along channels
        return self.out(h)                                      # (B, C_out, H, W)
