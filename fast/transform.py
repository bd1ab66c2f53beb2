"""Speed for the reference networks, applied from outside them.

ldm/ and clip/ are the plain networks: one `nn.Conv2d` per convolution, GEGLU as one projection,
no in-place updates, no device branches. `optimize(module, device=..., dtype=...)` makes such a
network faster on one device without changing the map it computes. It changes the class of some
layers to a subclass that only overrides `forward`, so every parameter stays where it was: the
state dict has the same keys, shapes and values before and after, and `load_state_dict` works on
either. What it changes, and why (figures: benchmarks/README.md):

On the CPU
- `MatmulConv2d` for the 3×3 and 1×1 stride-1 convolutions. For every call oneDNN copies the
  weights into its own blocked layout; in the UNet's deepest levels (1280 channels at 8×8 or
  16×16) that copy costs more than the arithmetic. When the output has at least twice as many
  channels as there are positions (O ≥ 2·B·H·W), the convolution

      y[b, o, h, w] = bias[o] + Σ_{c, i, j} W[o, c, i, j] · x_pad[b, c, h + i, w + j]

  is computed as patches (B·H·W, C·k·k) times Wᵀ (C·k·k, O), reading W where it lies.
- `SplitGEGLU` and `ChunkedFeedForward`: the transformer's feed-forward fed through in chunks of
  1024 positions, with GEGLU's two halves as two products. At a 64×64 latent the 4C-wide
  intermediates would otherwise be 84 MB each, and fresh memory that large costs page faults on
  every call.

On every device
- Channels-last activations (NHWC strides) inside the UNet and the autoencoder: faster
  convolutions, and the transformer's (B, H·W, C) view of a feature map needs no copy. Inputs and
  outputs stay plain NCHW tensors.
- In-place residuals and SiLU in the autoencoder's blocks, where the tensor was just made: at
  512×512 every activation is 134 MB, and each saved buffer lowers the peak memory.
- `compile=True` also runs `module.compile()` (torch.compile of its forward; keys unchanged).

Inference only: the in-place updates keep autograd exact (tests/test_fast_equivalence.py runs
gradcheck through them), but the fast path is made for `torch.inference_mode()`.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ldm.attention import GEGLU, FeedForward
from ldm.autoencoder import Decoder, Encoder, ResnetBlock
from ldm.unet import UNetModel

# --- the CPU's convolutions and feed-forward ----------------------------------------------------


def conv_as_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A stride-1 k×k convolution with zero padding k // 2, as one matrix product.

    x: (B, C, H, W), weight: (O, C, k, k) -> (B, O, H, W), laid out channels-last (NHWC strides).
    """
    batch, channels, height, width = x.shape
    out_channels, _, k, _ = weight.shape
    pad = k // 2
    x = F.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad))      # (B, H + 2p, W + 2p, C)
    shifted = [x[:, i:i + height, j:j + width] for i in range(k) for j in range(k)]  # k·k × (B, H, W, C)
    # Order the patch entries as the weight lies in memory, so that it is read in place:
    if weight.is_contiguous():                                         # (O, C, k, k): channel-major
        patches, weight = torch.stack(shifted, dim=-1), weight.reshape(out_channels, -1)
    else:                                                              # channels-last weight: (O, k, k, C)
        patches, weight = torch.stack(shifted, dim=-2), weight.permute(0, 2, 3, 1).reshape(out_channels, -1)
    patches = patches.reshape(batch * height * width, channels * k * k)  # (B·H·W, C·k·k)
    weight = weight.t()                                                # (C·k·k, O)
    out = patches @ weight if bias is None else torch.addmm(bias, patches, weight)
    return out.view(batch, height, width, out_channels).permute(0, 3, 1, 2)  # (B, O, H, W), NHWC strides


def is_same_size_conv(conv: nn.Conv2d) -> bool:
    """A stride-1, square, odd k×k convolution with zero padding k // 2: the output has the input's size."""
    k = conv.kernel_size[0]
    return (conv.kernel_size == (k, k) and k % 2 == 1 and conv.padding == (k // 2, k // 2)
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


class MatmulConv2d(nn.Conv2d):
    """`nn.Conv2d` (same `weight` and `bias`), as `conv_as_matmul` when O ≥ 2·B·H·W on the CPU.

    The threshold was measured on every 3×3 convolution of the SD UNet at batch 2 and 8, in float32 and
    bfloat16 (benchmarks/README.md): with fewer channels oneDNN's convolution is as fast or faster.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        if x.device.type == "cpu" and self.out_channels >= 2 * batch * height * width:
            return conv_as_matmul(x, self.weight, self.bias)
        return super().forward(x)


class SplitGEGLU(GEGLU):
    """GEGLU with a and g as two products: contiguous halves, which GELU and the product read faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.proj.out_features // 2
        weight, bias = self.proj.weight, self.proj.bias
        a = F.linear(x, weight[:half], bias[:half])            # (..., C_in) -> (..., C_out)
        out = F.gelu(F.linear(x, weight[half:], bias[half:]))
        out *= a                                                # in place: out was just made
        return out


class ChunkedFeedForward(FeedForward):
    """The feed-forward over `chunk_size` positions at a time (positions are independent)."""
    chunk_size = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])                       # (B, N, C) -> (B·N, C)
        if rows.shape[0] <= self.chunk_size:
            return self.net(x)
        return torch.cat([self.net(chunk) for chunk in rows.split(self.chunk_size)]).view(x.shape)


# --- channels-last and in-place, every device ---------------------------------------------------

class ChannelsLastUNet(UNetModel):
    """The UNet with NHWC activations inside; takes and returns plain tensors."""

    def forward(self, x, timesteps, context, y=None):
        return super().forward(x.contiguous(memory_format=torch.channels_last), timesteps, context, y).contiguous()


class ChannelsLastEncoder(Encoder):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


class ChannelsLastDecoder(Decoder):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(z.contiguous(memory_format=torch.channels_last)).contiguous()


class InPlaceResnetBlock(ResnetBlock):
    """ResnetBlock with SiLU and the residual computed in place on the fresh norm and conv outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        h += self.nin_shortcut(x)
        return h


# --- the transform ------------------------------------------------------------------------------

EVERY_DEVICE = {UNetModel: ChannelsLastUNet, Encoder: ChannelsLastEncoder, Decoder: ChannelsLastDecoder,
                ResnetBlock: InPlaceResnetBlock}
CPU_ONLY = {GEGLU: SplitGEGLU, FeedForward: ChunkedFeedForward}
OPTIMIZED_CLASSES = {*EVERY_DEVICE.values(), *CPU_ONLY.values(), MatmulConv2d}


def swaps_for(device: torch.device) -> dict:
    """{plain class: fast subclass} for the device."""
    return {**EVERY_DEVICE, **CPU_ONLY} if device.type == "cpu" else dict(EVERY_DEVICE)


def optimize(module: nn.Module, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
             compile: bool = False) -> nn.Module:
    """Move `module` to device and dtype (if given) and make it fast there, in place; returns it.

    Layers of an exact plain class get their fast subclass (module docstring); anything else is
    left as it is, so a text tower or a user's own network passes through unchanged. The state
    dict, the parameters and the map computed stay the same. Applying it twice changes nothing more.
    """
    if device is not None or dtype is not None:
        module.to(device=device, dtype=dtype)
    device = torch.device(device) if device is not None else next(module.parameters(), torch.empty(0)).device
    swaps = swaps_for(device)
    for layer in module.modules():
        fast = swaps.get(type(layer))
        if fast is not None:
            layer.__class__ = fast
        elif type(layer) is nn.Conv2d and device.type == "cpu" and is_same_size_conv(layer):
            layer.__class__ = MatmulConv2d
    module.fast_path = device.type
    if compile:
        module.compile()
    return module


def is_optimized(module: nn.Module) -> bool:
    """Whether `optimize` was applied to `module`."""
    return getattr(module, "fast_path", None) is not None
