"""The KL autoencoder of Stable Diffusion (LDM `ldm/models/autoencoder.py` and `diffusionmodules/model.py`).

    encode:  x (B, 3, H, W) -> Encoder -> quant_conv -> moments (B, 8, H/8, W/8) -> N(mean, exp(logvar))
    decode:  z (B, 4, H/8, W/8) -> post_quant_conv -> Decoder -> x̂ (B, 3, H, W), roughly in [−1, 1]

The latents here are *unscaled*. The diffusion model works on scale_factor · z (0.18215 for SD 1.x and
2.x, `weights.presets`); multiplying after `encode` and dividing before `decode` is the caller's job.

Attribute names follow the published keys minus `first_stage_model.` (`encoder.down.N.block.M`,
`encoder.mid.attn_1.q`, `decoder.up.N.upsample`, ...). As in LDM, `decoder.up[0]` is the full-resolution
level, which the decoder runs last. Every GroupNorm has 32 groups and eps 1e-6.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import multi_head_attention
from .distributions import DiagonalGaussian
from .unet import Upsample  # nearest ×2 then a 3×3 conv: the same layer, and the same keys, in both networks


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of the SD KL-f8 autoencoder; the defaults are SD 1.x and 2.x."""
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple = (1, 2, 4, 4)          # 2**(len-1) = 8x downsampling
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    norm_groups: int = 32


class ResnetBlock(nn.Module):
    """out = shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))); no timestep input.

    `nin_shortcut` is a 1×1 conv when the channel count changes, else the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels == out_channels:
            self.nin_shortcut = nn.Identity()
        else:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h·w positions, q/k/v/proj_out as 1×1 convs, with a residual."""

    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        h = self.norm(x)
        # (B, C, h, w) -> (B, h·w, C)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))
        h = multi_head_attention(q, k, v, heads=1)
        h = self.proj_out(h.transpose(1, 2).unflatten(2, (height, width)))  # (B, h·w, C) -> (B, C, h, w)
        return x + h


class Downsample(nn.Module):
    """Pad right and bottom by one, then a stride-2 3×3 conv with no padding: (H, W) -> (⌊H/2⌋, ⌊W/2⌋).

    The padding (0, 1, 0, 1) is asymmetric; a symmetric padding of 1 would shift the latent grid.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class DownLevel(nn.Module):
    """One encoder resolution: `block.M` ResnetBlocks, then `downsample` (absent at the last level)."""

    def __init__(self, blocks: list, downsample: Downsample | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(nn.Module):
    """One decoder resolution: `block.M` ResnetBlocks, then `upsample` (absent at level 0)."""

    def __init__(self, blocks: list, upsample: Upsample | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class MidBlock(nn.Module):
    """`block_1`, `attn_1`, `block_2` at the lowest resolution."""

    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, norm_groups)
        self.attn_1 = AttnBlock(channels, norm_groups)
        self.block_2 = ResnetBlock(channels, channels, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """x (B, 3, H, W) -> (B, 2·z_channels, H/8, W/8): the moments [mean, logvar] before `quant_conv`."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        channels = c.ch
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.ch_mult):
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(channels, c.ch * mult, c.norm_groups))
                channels = c.ch * mult
            last = level == len(c.ch_mult) - 1
            self.down.append(DownLevel(blocks, None if last else Downsample(channels)))
        self.mid = MidBlock(channels, c.norm_groups)
        self.norm_out = nn.GroupNorm(c.norm_groups, channels, eps=1e-6)
        self.conv_out = nn.Conv2d(channels, 2 * c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:                                 # halves H and W at every level but the last
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> x̂ (B, 3, 8h, 8w)."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        channels = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, channels, 3, padding=1)
        self.mid = MidBlock(channels, c.norm_groups)
        levels = []
        for level in reversed(range(len(c.ch_mult))):          # built deepest first ...
            blocks = []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, c.ch * c.ch_mult[level], c.norm_groups))
                channels = c.ch * c.ch_mult[level]
            levels.append(UpLevel(blocks, None if level == 0 else Upsample(channels)))
        self.up = nn.ModuleList(reversed(levels))               # ... but indexed by level, as published
        self.norm_out = nn.GroupNorm(c.norm_groups, channels, eps=1e-6)
        self.conv_out = nn.Conv2d(channels, c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):                         # doubles H and W at every level but level 0
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _float32_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) computed in float32 with float32 copies of its weights; the module itself is unchanged."""
    weights = {name: p.float() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, weights, (x.float(),))


class AutoencoderKL(nn.Module):
    """The KL-regularised autoencoder: `encode(x)` -> DiagonalGaussian, `decode(z)` -> image."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.z_channels, 2 * c.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, kernel_size=1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x: (B, 3, H, W) in [−1, 1] -> q(z|x) over unscaled latents (B, embed_dim, H/8, W/8)."""
        x = x.to(self.quant_conv.weight.dtype)
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor, upcast_fp16: bool = True) -> torch.Tensor:
        """z: (B, embed_dim, h, w) unscaled latents -> (B, 3, 8h, 8w), roughly in [−1, 1], in the weights' dtype.

        With float16 weights the decoder's activations can pass fp16's largest value (65504) and come out
        inf/NaN, so by default it runs in float32 (float32 copies of the weights, made per call) and only
        the image is cast back to float16. bfloat16 has float32's range and runs as it is.
        """
        dtype = self.post_quant_conv.weight.dtype
        if upcast_fp16 and dtype == torch.float16:
            h = _float32_call(self.post_quant_conv, z)
            return _float32_call(self.decoder, h).to(dtype)
        return self.decoder(self.post_quant_conv(z.to(dtype)))
