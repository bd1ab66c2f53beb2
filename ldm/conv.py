"""A Conv2d that computes deep, small feature maps as one matrix product on the CPU.

The same layer as `nn.Conv2d` (same `weight` and `bias`, same keys), only faster where oneDNN is slow:
for every call oneDNN copies the weights into its own blocked layout, and in the deepest UNet levels
(1280 channels at 8×8 or 16×16) that copy costs more than the arithmetic. There the convolution

    y[b, o, h, w] = bias[o] + Σ_{c, i, j} W[o, c, i, j] · x_pad[b, c, h + i, w + j]

is computed instead as patches (B·H·W, C·k·k) times Wᵀ (C·k·k, O), reading W where it lies.
The switch is made when the output has at least as many channels as there are positions
(O ≥ B·H·W): then the weights outweigh the patches that have to be gathered. The sums are the
same up to floating-point order (measured: relative differences of about 1e-6).
"""
import torch
import torch.nn.functional as F
from torch import nn


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


class Conv2d(nn.Conv2d):
    """`nn.Conv2d`, with `conv_as_matmul` on the CPU when O ≥ B·H·W (stride 1, "same" padding only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        k = self.kernel_size[0]
        if (x.device.type == "cpu" and self.out_channels >= batch * height * width
                and self.kernel_size == (k, k) and k % 2 == 1 and self.padding == (k // 2, k // 2)
                and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros"):
            return conv_as_matmul(x, self.weight, self.bias)
        return super().forward(x)
