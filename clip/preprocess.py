"""CLIP's image preprocessing in torch: resize the shortest side, centre crop, normalise.

OpenAI trained CLIP on images prepared with Pillow and torchvision, and transformers'
CLIPImageProcessor repeats those steps with Pillow and NumPy:

1. **Resize** so that the shortest side is S (224), bicubic. The long side becomes
   ⌊S · long / short⌋ (truncated, as both references compute it).
2. **Centre crop** S × S, starting at row ⌊(H − S)/2⌋ and column ⌊(W − S)/2⌋
   (transformers' rule; torchvision rounds the half pixel instead, a one-pixel shift
   when H − S or W − S is odd).
3. **Normalise** each channel: (x − mean) / std with the statistics of CLIP's training
   images, x in [0, 1].

Pillow's bicubic filter is the cubic convolution kernel with a = −0.5. When it shrinks
an image by a factor s it stretches the kernel by s (support 2s instead of 2), which
averages away what the smaller image cannot hold. `F.interpolate(..., mode="bicubic",
antialias=True)` computes the same weights (with antialias=False torch uses a = −0.75
and never stretches). Pillow resizes in two passes, width first, then height, and an
8-bit image is clipped to [0, 255] (and rounded) after each pass. We make the same two
passes and clip after each, in float, so the only difference left is Pillow's rounding
to whole grey levels (tests/test_clip_image_encoder.py bounds it).
"""
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP's per-channel statistics, RGB
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_shortest_side(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side equal to `size` and the aspect ratio kept (the longer side truncated)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_bicubic(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pillow's bicubic resize of (N, C, H, W) images in [0, 1]: width pass, clip, height pass, clip."""
    if images.shape[-1] != width:
        images = F.interpolate(images, size=(images.shape[-2], width), mode="bicubic", antialias=True,
                               align_corners=False).clamp(0, 1)
    if images.shape[-2] != height:
        images = F.interpolate(images, size=(height, width), mode="bicubic", antialias=True,
                               align_corners=False).clamp(0, 1)
    return images


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central size × size window of (…, H, W) images with H, W ≥ size."""
    height, width = images.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top:top + size, left:left + size]


def preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(N, 3, H, W) images in [−1, 1] -> (N, 3, size, size) CLIP-normalised float32 pixels."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
    x = ((images.float() + 1) / 2).clamp(0, 1)                           # [−1, 1] -> [0, 1]
    x = resize_bicubic(x, *resized_shortest_side(*x.shape[-2:], size))   # shortest side = size
    x = center_crop(x, size)                                              # (N, 3, size, size)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
