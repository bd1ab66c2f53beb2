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
- `PackedConv2d`, in float32, for every 3×3 convolution (stride 1 or 2) with at most 4 output
  positions per output channel (B·H_out·W_out ≤ 4·O): the weight is copied into oneDNN's blocked
  layout once, on the layer's first call at an input shape, and every later call at that shape
  runs oneDNN's convolution on that copy. That is what OpenVINO does, and where its lead over us
  came from (benchmarks/README.md). The copy is memory of its own, kept beside the parameter (up
  to the size of the 3×3 weights: 2.2 GB for SD 1.5's UNet in float32); `optimize(...,
  prepack=False)` does without it. It is made again when the weight is replaced or changed in
  place or the input shape changes, and dropped with the layer. Where it does not apply (autograd,
  other dtypes, many positions per channel) the layer runs as `MatmulConv2d` or as `nn.Conv2d`.
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
import weakref

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


def onednn_can_prepack() -> bool:
    """Whether this torch build has oneDNN's convolution on a pre-packed weight (torch.compile's freezing uses it)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))


def is_packable_conv(conv: nn.Conv2d) -> bool:
    """A 3×3 convolution, no groups or dilation, zero padding (1×1 convolutions were measured too: at 2560 -> 1280
    channels and 8×8 oneDNN's packed kernel took 20× as long as a matrix product, so they stay as they are)."""
    return (conv.kernel_size == (3, 3) and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


PACKED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()   # layer -> (key, packed weight)


class PackedConv2d(MatmulConv2d):
    """`nn.Conv2d` (same `weight` and `bias`) through oneDNN on a weight packed once into its blocked layout.

    It applies in float32 without autograd when B·H_out·W_out ≤ 4·O: at fewer channels per position the
    per-call copy of the weight that it saves is a small part of the time. The threshold and the gains were
    measured on every 3×3 convolution of the SD UNet at batch 2 (benchmarks/README.md). Otherwise the layer
    runs as `MatmulConv2d` (a same-size convolution) or as `nn.Conv2d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packs(x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.packed_weight(x.shape), self.bias, list(self.padding), list(self.stride), list(self.dilation),
                self.groups, "none", [], None)
        if is_same_size_conv(self):
            return super().forward(x)
        return nn.Conv2d.forward(self, x)

    def packs(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32 or x.ndim != 4:
            return False
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, self.weight, self.bias)):
            return False
        height, width = (
            (side + 2 * pad - k) // stride + 1
            for side, pad, k, stride in zip(x.shape[-2:], self.padding, self.kernel_size, self.stride, strict=True))
        return x.shape[0] * height * width <= 4 * self.out_channels

    def packed_weight(self, input_shape: torch.Size) -> torch.Tensor:
        """The weight in oneDNN's blocked layout for inputs of input_shape, made on first use and again when the
        weight or the input shape changes. The layout oneDNN picks depends on the input's shape: a weight packed
        for no shape in particular ran 1.8–6× slower than oneDNN on the plain weight at four of the UNet's shapes
        (1920 -> 1280 channels at 8×8: 1119 ms, against 188 unpacked and 40 packed for the shape). One copy is
        kept, for the latest shape."""
        weight = self.weight
        try:
            version = weight._version
        except RuntimeError:                                    # an inference tensor: it has no version counter
            version = -1
        key = (weight.data_ptr(), version, tuple(weight.shape), tuple(input_shape))
        cached = PACKED.get(self)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight.detach().to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation),
                    self.groups, list(input_shape))
            PACKED[self] = cached = (key, packed)
        return cached[1]


def packing_bytes(module: nn.Module) -> int:
    """Bytes the packed copies of module's `PackedConv2d` layers may still add: the float32 CPU weights of
    those not packed yet (an upper bound: a layer packs only at few positions per channel)."""
    return sum(layer.weight.numel() * layer.weight.element_size() for layer in module.modules()
               if isinstance(layer, PackedConv2d) and layer not in PACKED
               and layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu")


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
OPTIMIZED_CLASSES = {*EVERY_DEVICE.values(), *CPU_ONLY.values(), MatmulConv2d, PackedConv2d}


def swaps_for(device: torch.device) -> dict:
    """{plain class: fast subclass} for the device."""
    return {**EVERY_DEVICE, **CPU_ONLY} if device.type == "cpu" else dict(EVERY_DEVICE)


def optimize(module: nn.Module, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
             compile: bool = False, prepack: bool = True) -> nn.Module:
    """Move `module` to device and dtype (if given) and make it fast there, in place; returns it.

    Layers of an exact plain class get their fast subclass (module docstring); anything else is
    left as it is, so a text tower or a user's own network passes through unchanged. The state
    dict, the parameters and the map computed stay the same. Applying it twice changes nothing more.
    prepack=False leaves out `PackedConv2d` (and its copies of the weights); with compile=True it is
    left out too, as torch.compile packs weights its own way.
    """
    if device is not None or dtype is not None:
        module.to(device=device, dtype=dtype)
    device = torch.device(device) if device is not None else next(module.parameters(), torch.empty(0)).device
    swaps = swaps_for(device)
    prepack = prepack and not compile and device.type == "cpu" and onednn_can_prepack()
    for layer in module.modules():
        fast = swaps.get(type(layer))
        if fast is not None:
            layer.__class__ = fast
        elif type(layer) is nn.Conv2d and device.type == "cpu":
            if prepack and is_packable_conv(layer):
                layer.__class__ = PackedConv2d
            elif is_same_size_conv(layer):
                layer.__class__ = MatmulConv2d
    module.fast_path = device.type
    if compile:
        module.compile()
    return module


def is_optimized(module: nn.Module) -> bool:
    """Whether `optimize` was applied to `module`."""
    return getattr(module, "fast_path", None) is not None
