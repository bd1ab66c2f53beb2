"""The numbers of the paper's Table 1 for one input's results: the crop, precision and diversity.

    crop          the mask's bounding box, squared about its centre and padded by 10% of its side, moved
                  (not cut) to lie inside the image; the same window for every result of the input
    hit@k         the judge ranks the prompt's class among its k best for the crop (k = 1 counts; 5 is shown)
    precision     the share of results that are hits (batch precision: over all results of all inputs;
                  best-result precision: over the top-ranked result of each input)
    diversity     the mean LPIPS over the N·(N − 1)/2 pairs of one input's results, on the same crop;
                  the batch diversity averages it over the inputs

The paper (§5, Table 1) does not say which classifier, crop or LPIPS network it used: these are ours,
and each is an option of blend.evaluate.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PADDING = 0.10


@dataclass(frozen=True)
class Box:
    """A window of an image: rows [top, top + height), columns [left, left + width)."""
    top: int
    left: int
    height: int
    width: int


def bounding_box(mask: torch.Tensor) -> Box:
    """The smallest window holding every pixel of `mask` (H, W) above 0.5."""
    rows = torch.nonzero((mask > 0.5).any(dim=1)).flatten()
    columns = torch.nonzero((mask > 0.5).any(dim=0)).flatten()
    if len(rows) == 0:
        raise ValueError("the mask is empty: it marks no pixel to edit, so there is no edited region to crop")
    top, left = rows[0].item(), columns[0].item()
    return Box(top, left, rows[-1].item() + 1 - top, columns[-1].item() + 1 - left)


def crop_box(mask: torch.Tensor, padding: float = PADDING) -> Box:
    """The evaluation window of `mask` (H, W): its bounding box squared and padded, inside the image.

    side = ⌈(1 + padding) · max(box height, box width)⌉, centred on the box's centre, then shifted
    to lie within the image, so a mask at the border gets a window flush with that border. Along
    an axis shorter than the side, the window is the whole axis (the window is square whenever
    the image allows it).
    """
    height, width = mask.shape[-2:]
    box = bounding_box(mask)
    side = math.ceil((1 + padding) * max(box.height, box.width) - 1e-9)

    def place(start: int, length: int, extent: int) -> tuple[int, int]:
        size = min(side, extent)
        centre2 = 2 * start + length                                  # twice the centre, in pixels
        begin = (centre2 - size) // 2
        return min(max(begin, 0), extent - size), size

    top, crop_height = place(box.top, box.height, height)
    left, crop_width = place(box.left, box.width, width)
    return Box(top, left, crop_height, crop_width)


def crop(images: torch.Tensor, box: Box) -> torch.Tensor:
    """images[..., box] for (…, H, W) tensors."""
    return images[..., box.top:box.top + box.height, box.left:box.left + box.width]


def hits(scores: torch.Tensor, class_names: list, target: str, k: int) -> torch.Tensor:
    """(N,) bool: whether `target` is among the names of the k best-scoring classes of each row of scores (N, C).

    Names are compared, not indices, so classes that share a name (ImageNet's two "missile"s) count as one.
    """
    best = torch.topk(scores, k=min(k, scores.shape[1]), dim=1).indices          # (N, k)
    return torch.tensor([any(class_names[i] == target for i in row) for row in best.tolist()])


def precision(hit_flags) -> float:
    """The share of True among the flags (a list of bools or a bool tensor)."""
    flags = torch.as_tensor(hit_flags, dtype=torch.bool).flatten()
    if flags.numel() == 0:
        raise ValueError("precision of no results")
    return flags.float().mean().item()


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, h, w) -> (N, 3, size, size), bilinear with antialiasing; size 0 keeps the crop as it is."""
    if not size or tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def pairwise_lpips(lpips, crops: torch.Tensor) -> torch.Tensor:
    """The LPIPS distance of every pair i < j of crops (N, 3, h, w): (N·(N − 1)/2,), one backbone pass per crop."""
    taps = lpips.features(crops)
    first, second = torch.triu_indices(len(crops), len(crops), offset=1)
    return lpips.distance([t[first] for t in taps], [t[second] for t in taps])


def diversity(lpips, crops: torch.Tensor, size: int = 224) -> float | None:
    """Mean pairwise LPIPS of one input's result crops (N, 3, h, w) in [−1, 1], resized to size²; None if N < 2."""
    if len(crops) < 2:
        return None
    return pairwise_lpips(lpips, resize_square(crops, size)).double().mean().item()
