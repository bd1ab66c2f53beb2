"""LPIPS, the learned perceptual distance (Zhang, Isola, Efros, Shechtman, Wang, CVPR 2018), v0.1, VGG16 backbone.

Two images are compared through the features a classification network computes from them
(eq. 1 of the paper):

    x̃        = (x − shift) / scale                     x in [−1, 1]; per channel (lpips' ScalingLayer)
    f_l(x̃)   = VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3     l = 0 … 4
    f̂_l      = f_l / (‖f_l‖ + 1e-10)                   unit length over the channels, at each position
    d(x, y)  = Σ_l  mean_{h,w}  Σ_c w_{l,c} · (f̂_l(x) − f̂_l(y))²_{c,h,w}

w_l ≥ 0 are the learned linear heads (a 1×1 convolution without bias, one per tap), fitted to
human judgements of which of two distortions looks closer. The backbone is torchvision's VGG16
trained on ImageNet; the heads are the lpips package's v0.1 `vgg.pth`
(blend/evaluate/data/lpips_vgg_v0.1.safetensors, BSD-2, LICENSE.lpips).

Attribute names follow the lpips package, so `state_dict()` keys equal its `LPIPS(net="vgg")`:

    scaling_layer.shift, scaling_layer.scale     (1, 3, 1, 1) constants
    net.slice1.{0,2}.*                           VGG16 `features` layers 0–3   → relu1_2
    net.slice2.{5,7}.*                           layers 4–8   (pool, 2 convs)  → relu2_2
    net.slice3.{10,12,14}.*                      layers 9–15                   → relu3_3
    net.slice4.{17,19,21}.*                      layers 16–22                  → relu4_3
    net.slice5.{24,26,28}.*                      layers 23–29                  → relu5_3
    lin{0..4}.model.1.weight                     (1, C_l, 1, 1) heads; index 0 is lpips' dropout

Each slice keeps the layer numbers of VGG16's `features`, so `net.slice2.5.weight` is
`features.5.weight` of the published backbone (weights/vgg.py loads it).
"""
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from weights.random_init import fill_random_

# VGG16, configuration "D" of Simonyan & Zisserman (2015): 3×3 convolutions (padding 1) with ReLU,
# "M" = 2×2 max-pooling, stride 2. The last pool (features.30) is not needed by LPIPS.
VGG16_CONFIGURATION = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# The `features` layer ranges [start, end) of the five slices; each ends on the ReLU that LPIPS taps.
SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
TAP_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)   # lpips' ScalingLayer: ImageNet mean and std, in [−1, 1] units
SCALE = (0.458, 0.448, 0.450)
EPSILON = 1e-10                    # lpips' normalize_tensor


def vgg16_features() -> list:
    """VGG16's `features` layers 0–29, in order, as torchvision numbers them."""
    layers, channels = [], 3
    for width in VGG16_CONFIGURATION:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU()]
            channels = width
    return layers


class ScalingLayer(nn.Module):
    """x̃ = (x − shift) / scale, per channel."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class VGG16Taps(nn.Module):
    """VGG16's features cut into five slices: `forward(x̃)` gives the five tapped activations."""

    def __init__(self):
        super().__init__()
        layers = vgg16_features()
        for number, (start, end) in enumerate(SLICES, start=1):
            setattr(self, f"slice{number}", nn.Sequential(OrderedDict(
                (str(index), layers[index]) for index in range(start, end))))

    def forward(self, x: torch.Tensor) -> list:
        taps = []
        for number in range(1, len(SLICES) + 1):
            x = getattr(self, f"slice{number}")(x)
            taps.append(x)                          # (B, C_l, H / 2^l, W / 2^l)
        return taps


class LinearHead(nn.Module):
    """Σ_c w_c · d_c: a 1×1 convolution to one channel, without bias. `model.0` (lpips' dropout) is the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, squared_difference: torch.Tensor) -> torch.Tensor:
        return self.model(squared_difference)


def unit_normalise(features: torch.Tensor) -> torch.Tensor:
    """f / (‖f‖₂ over the channels + 1e-10), at each position."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + EPSILON)


class LPIPS(nn.Module):
    """`forward(x, y)`: the LPIPS distance between images x, y (B, 3, H, W) in [−1, 1], as a (B,) tensor.

    `features(x)` and `distance(features_x, features_y)` split the computation, so that the
    pairwise distances of N images cost N backbone passes, not N·(N − 1).
    """

    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Taps()
        for index, channels in enumerate(TAP_CHANNELS):
            setattr(self, f"lin{index}", LinearHead(channels))

    def features(self, x: torch.Tensor) -> list:
        """The five unit-normalised taps f̂_l of images x (B, 3, H, W) in [−1, 1]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects RGB images of shape (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
        weight = self.net.slice1[0].weight
        return [unit_normalise(tap) for tap in self.net(self.scaling_layer(x.to(weight.device, weight.dtype)))]

    def distance(self, features_x: list, features_y: list) -> torch.Tensor:
        """Σ_l mean_{h,w} lin_l((f̂_l(x) − f̂_l(y))²): (B,) distances from two lists of taps."""
        total = 0
        for index, (fx, fy) in enumerate(zip(features_x, features_y, strict=True)):
            head = getattr(self, f"lin{index}")
            total = total + head((fx - fy) ** 2).mean(dim=(2, 3))          # (B, 1): the spatial mean
        return total[:, 0]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS compares images of one shape; got {tuple(x.shape)} and {tuple(y.shape)}")
        return self.distance(self.features(x), self.features(y))


HEADS_FILE = Path(__file__).resolve().parent / "data" / "lpips_vgg_v0.1.safetensors"
RANDOM_BACKBONE_SEED = 7


def load_lpips(backbone: str | Path = "vgg16", *, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS with the vendored v0.1 heads and a VGG16 backbone: "vgg16" (torchvision's ImageNet weights from
    the Hub, weights/vgg.py), a local .safetensors file of them, or "random" (deterministic random weights:
    the numbers are then not a perceptual distance; for offline runs and tests)."""
    from weights.vgg import lpips_backbone, lpips_heads

    model = LPIPS()
    state = dict(model.state_dict())
    state.update(lpips_heads(HEADS_FILE))
    if backbone == "random":
        state.update({f"net.{key}": value for key, value in
                      fill_random_(VGG16Taps(), RANDOM_BACKBONE_SEED).state_dict().items()})
    else:
        state.update(lpips_backbone(backbone))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)
