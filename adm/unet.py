"""OpenAI's ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", §3), in pixel space.

It follows guided-diffusion (GD) `guided_diffusion/unet.py` `UNetModel` and `guided_diffusion/nn.py`, as Blended
Diffusion loads it (`create_model` with its overrides, `use_fp16` aside):

    emb = time_embed(timestep_embedding(t))  (+ label_emb(y) for a class-conditional model)
    input_blocks:  conv, then per level: ResBlock (+ AttentionBlock) × num_res_blocks, then a down-sampling ResBlock
    middle_block:  ResBlock, AttentionBlock, ResBlock
    output_blocks: per level, deepest first: cat[h, skip] → ResBlock (+ AttentionBlock) × (num_res_blocks + 1),
                   an up-sampling ResBlock after the last block of every level but the first
    out:           GroupNorm, SiLU, zero-initialised conv → (B, 6, H, W) = [ε | v]

The 6 output channels are ε and v, the variance interpolation of Improved DDPM eq. 15:
log Σ = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1)/2 (the sampler reads it, not this network).

ADM's architecture changes against the DDPM UNet (Dhariwal & Nichol §3), kept here as published:
attention at the 32, 16 and 8 feature-map sides with 64 channels a head (in GD's legacy q/k/v layout),
the BigGAN residual block for up- and down-sampling, and adaptive group norm ("scale-shift norm").
Attribute names are the published keys (`time_embed.0`, `input_blocks.N.M.in_layers.0`, `…qkv`, `out.2`),
so the published file loads with a strict `load_state_dict`.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The parts ADM and the LDM UNet (its descendant) share to the letter: GD's `nn.timestep_embedding` (cos first),
# and the conv Downsample/Upsample of resblock_updown=False (GD's `Downsample`/`Upsample` with use_conv=True).
from ldm.unet import Downsample, Upsample, timestep_embedding


@dataclass(frozen=True)
class ADMConfig:
    """Architecture of an ADM UNet; the defaults are the published 256×256 unconditional model
    (`256x256_diffusion_uncond.pt`: GD README flags, the same as Blended Diffusion's `image_editor.py` overrides).

    attention_resolutions are feature-map sides in pixels, as the scripts' "32,16,8": attention runs where the
    feature map is that large, i.e. at the downsampling rates image_size // r (GD `script_util.create_model`).
    Heads: channels // num_head_channels when num_head_channels is set (ADM: 64), else num_heads.
    out_channels 6 is GD's learn_sigma=True: [ε | v]. num_classes (the 512 model: 1000) adds `label_emb`.
    channel_mult may hold fractions (the 512 model's first level is 0.5); widths are int(mult · model_channels).
    """
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6
    num_res_blocks: int = 2
    attention_resolutions: tuple = (32, 16, 8)
    channel_mult: tuple = (1, 1, 2, 2, 4, 4)
    num_head_channels: int | None = 64
    num_heads: int = 4
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    num_classes: int | None = None

    def __post_init__(self):
        bad = [r for r in self.attention_resolutions if self.image_size % r]
        if bad:
            raise ValueError(f"ADMConfig: attention resolutions must divide image_size {self.image_size}, "
                             f"got {bad}; give them as feature-map sides in pixels, e.g. (32, 16, 8)")

    @property
    def attention_rates(self) -> set:
        """The downsampling rates with attention, {image_size // r} (GD `create_model`'s attention_ds)."""
        return {self.image_size // r for r in self.attention_resolutions}

    def heads_at(self, channels: int) -> int:
        """Number of heads of an AttentionBlock with `channels` channels (GD `AttentionBlock.__init__`)."""
        if self.num_head_channels is None:
            return self.num_heads
        if channels % self.num_head_channels:
            raise ValueError(f"ADMConfig: {channels} channels do not split into heads of {self.num_head_channels}")
        return channels // self.num_head_channels

    @property
    def downsampling_factor(self) -> int:
        """2^(levels − 1): image sides must be multiples of this (32 for the 256 model)."""
        return 2 ** (len(self.channel_mult) - 1)


class GroupNormFloat32(nn.GroupNorm):
    """GroupNorm(32, C) computed in (at least) float32 and cast back: GD `nn.GroupNorm32`, which ADM's fp16
    sampling relies on. The affine parameters join the input in float32, so a model cast to bfloat16 or float16
    as a whole still normalises in float32; a float64 model stays float64 (GD's `.float()` would fail on it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        return F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype),
                            self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNormFloat32:
    """GD `nn.normalization`: 32 groups, eps 1e-5."""
    return GroupNormFloat32(32, channels)


def zero_initialised(module: nn.Module) -> nn.Module:
    """GD `nn.zero_module`: the last conv of every residual branch starts at zero, so each block starts as identity."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def resample(x: torch.Tensor, direction: str | None) -> torch.Tensor:
    """BigGAN-style resampling without parameters (GD `Upsample`/`Downsample` with use_conv=False):
    "down": 2×2 average pool, (B, C, H, W) -> (B, C, H/2, W/2); "up": nearest ×2 -> (B, C, 2H, 2W)."""
    if direction == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    if direction == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x


class ResBlock(nn.Module):
    """GD `unet.ResBlock`, with scale-shift norm (adaptive group norm, Dhariwal & Nichol §3):

        h = conv(resample(SiLU(GN(x))));  [scale | shift] = Linear(SiLU(emb))
        h = conv(dropout(SiLU(GN(h)·(1 + scale) + shift)));  out = skip(resample(x)) + h

    Without scale-shift norm, the embedding is added instead: h = out_layers(h + Linear(SiLU(emb))).
    `direction` "down"/"up" makes it the BigGAN up/down-sampling block: both paths resampled, on the residual
    path between the first SiLU and conv. `skip_connection` is a 1×1 conv when the width changes.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float,
                 use_scale_shift_norm: bool, direction: str | None = None):
        super().__init__()
        self.direction, self.use_scale_shift_norm = direction, use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),   # the conv is `out_layers.3`
            zero_initialised(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = resample(self.in_layers[:-1](x), self.direction)         # (B, C_in, H', W'), H' = H/2, H or 2H
        x = resample(x, self.direction)
        h = self.in_layers[-1](h)                                      # (B, C_out, H', W')
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]   # (B, 2·C_out or C_out, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def legacy_qkv_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """GD `QKVAttentionLegacy` (the published ADM models use it: use_new_attention_order=False):
    (B, H·3·ch, T) -> (B, H·ch, T).

    The qkv conv's output channels are laid out head-major, per head [q | k | v] (ch channels each); GD's
    `QKVAttention` reads [all q | all k | all v] instead, and on these weights gives another answer.
    Per head: a = v · softmax(qᵀk / √ch), with q and k each scaled by 1/√√ch before the product
    (GD: "more stable with f16 than dividing afterwards"), the softmax taken in float32.
    """
    batch, width, length = qkv.shape
    ch = width // (3 * num_heads)
    q, k, v = qkv.reshape(batch * num_heads, 3 * ch, length).split(ch, dim=1)   # each (B·H, ch, T)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)                 # (B·H, T, T)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    attended = torch.einsum("bts,bcs->bct", weight, v)                          # (B·H, ch, T)
    return attended.reshape(batch, -1, length)


class AttentionBlock(nn.Module):
    """GD `unet.AttentionBlock`: x + proj_out(attention(qkv(GN(x)))) over the H·W positions; `qkv` and the
    zero-initialised `proj_out` are 1×1 Conv1d, as published."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_initialised(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)                                      # (B, C, H·W)
        h = self.proj_out(legacy_qkv_attention(self.qkv(self.norm(x)), self.num_heads))
        return (x + h).reshape(batch, channels, *spatial)                       # (B, C, H, W)


class TimestepEmbedSequential(nn.Sequential):
    """GD's container: hands the timestep embedding to its ResBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The ADM UNet: (x_t, t[, y]) -> [ε | v] (GD `unet.UNetModel`, plain float: no fp16 torso, no checkpointing)."""

    def __init__(self, config: ADMConfig):
        super().__init__()
        self.config = c = config
        time_dim = 4 * c.model_channels

        def resblock(channels, out_channels, direction=None):
            return ResBlock(channels, time_dim, out_channels, c.dropout, c.use_scale_shift_norm, direction)

        def downsample(channels):
            return resblock(channels, channels, "down") if c.resblock_updown else Downsample(channels)

        def upsample(channels):
            return resblock(channels, channels, "up") if c.resblock_updown else Upsample(channels)

        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        if c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes, time_dim)

        # Encoder: every block's output is a skip connection; remember their widths. rate = 2^level.
        channels = input_channels = int(c.channel_mult[0] * c.model_channels)
        self.input_blocks = nn.ModuleList([
            TimestepEmbedSequential(nn.Conv2d(c.in_channels, channels, 3, padding=1))])
        skip_channels, rate = [channels], 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [resblock(channels, int(mult * c.model_channels))]
                channels = int(mult * c.model_channels)
                if rate in c.attention_rates:
                    layers.append(AttentionBlock(channels, c.heads_at(channels)))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(channels)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(downsample(channels)))
                skip_channels.append(channels)
                rate *= 2

        self.middle_block = TimestepEmbedSequential(
            resblock(channels, channels), AttentionBlock(channels, c.heads_at(channels)), resblock(channels, channels))

        # Decoder: one block per skip connection, deepest level first.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for index in range(c.num_res_blocks + 1):
                layers = [resblock(channels + skip_channels.pop(), int(mult * c.model_channels))]
                channels = int(mult * c.model_channels)
                if rate in c.attention_rates:
                    layers.append(AttentionBlock(channels, c.heads_at(channels)))
                if level != 0 and index == c.num_res_blocks:
                    layers.append(upsample(channels))
                    rate //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(channels), nn.SiLU(),
                                 zero_initialised(nn.Conv2d(input_channels, c.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | int | float,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C_in, H, W) images in [−1, 1]; timesteps: (B,) original timesteps 0 … 999, int or float
        (one number: the same for the whole batch); y: (B,) class labels for a class-conditional model, else None.

        emb = time_embed(timestep_embedding(t)) + label_emb(y)   (GD `UNetModel.forward`)

        Returns (B, out_channels, H, W) in the weights' dtype (x is cast to it). Differentiable in x.
        """
        c = self.config
        factor = c.downsampling_factor
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"the ADM UNet takes images whose sides are multiples of {factor}, "
                             f"got {tuple(x.shape[-2:])}; resize or pad the image (the model was trained at "
                             f"{c.image_size}x{c.image_size})")
        if (y is None) != (c.num_classes is None):
            raise ValueError(f"this UNet is class-conditional: pass y, (B,) labels in 0 … {c.num_classes - 1}"
                             if c.num_classes else "this UNet is unconditional (num_classes is None); pass y=None")
        if y is not None and tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"expected y of shape ({x.shape[0]},), got {tuple(y.shape)}")
        dtype = self.out[2].weight.dtype
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, c.model_channels).to(dtype))   # (B, 4·model_channels)
        if y is not None:
            emb = emb + self.label_emb(y)

        skips = []
        h = x.to(dtype)
        for block in self.input_blocks:                          # 256 model: (B, 3, H, W) -> … -> (B, 1024, H/32, W/32)
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)   # concatenate the skip along channels
        return self.out(h)                                       # (B, out_channels, H, W)
