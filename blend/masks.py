"""Masks: from the user's pixel mask to the latent mask m of Algorithm 1, and its progressive shrinking.

Convention (the official BLD code's): 1 (white) marks the region to edit, 0 the background to keep.
Masks are float tensors of 0s and 1s shaped (1, 1, h, w), so that they broadcast over a batch of latents.
"""
import torch
import torch.nn.functional as F

SHRINK_KERNEL_SIZES = (7, 5, 3, 1)  # paper §4.3; the official LDM code's `--mask_dilation_iterations 3`


def threshold_mask(mask: torch.Tensor) -> torch.Tensor:
    """1 where mask ≥ 0.5, else 0: a soft mask becomes binary, as the official script does."""
    return (mask >= 0.5).to(mask.dtype)


def resize_mask(mask: torch.Tensor, size: tuple) -> torch.Tensor:
    """Nearest-neighbour resize of a (1, 1, H, W) mask to size = (h, w), then the 0.5 threshold.

    "nearest-exact" samples each output pixel at its centre, source index ⌊(i + ½)·H/h⌋,
    which is what Pillow's `Image.NEAREST` (used by the official script) does.
    """
    return threshold_mask(F.interpolate(mask, size=tuple(size), mode="nearest-exact"))


def dilate_mask(mask: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Binary dilation of a (…, h, w) 0/1 mask with a kernel_size × kernel_size square (odd size).

    A pixel becomes 1 when any pixel of the square centred on it is 1; outside the
    image counts as 0 (scipy's `binary_dilation`, used by the official LDM code).
    Kernel size 1 returns the mask unchanged.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"the dilation kernel size must be odd and positive, got {kernel_size}")
    if kernel_size == 1:
        return mask
    shape = mask.shape
    flat = mask.reshape(-1, 1, *shape[-2:])  # (N, 1, h, w): max_pool2d wants a channel dimension
    dilated = F.max_pool2d(flat, kernel_size, stride=1, padding=kernel_size // 2)
    return dilated.reshape(shape)


def shrink_schedule(num_steps: int, kernel_sizes=SHRINK_KERNEL_SIZES) -> list:
    """The dilation kernel size for each of `num_steps` blending steps: progressive mask shrinking.

    Paper §4.3: early steps blend with a dilated mask, because a thin mask cannot hold
    a shape at the coarse early noise levels; later steps shrink it back to the original.
    The steps are split into len(kernel_sizes) equal parts (sizes differ by at most one),
    coarsest first. Parts are counted from the end, so the last step always uses the last
    kernel (1 = the mask itself), even when there are fewer steps than kernels.

        shrink_schedule(8)  ->  [7, 7, 5, 5, 3, 3, 1, 1]
        shrink_schedule(6)  ->  [7, 5, 5, 3, 1, 1]
    """
    parts = len(kernel_sizes)
    # Step i is (num_steps − 1 − i) steps from the end; part ⌊parts·that / num_steps⌋ counted from the end.
    return [kernel_sizes[parts - 1 - (parts * (num_steps - 1 - i)) // num_steps] for i in range(num_steps)]


def masks_for_steps(mask: torch.Tensor, kernel_sizes: list) -> list:
    """The latent mask of each step: `mask` dilated by that step's kernel size."""
    dilated = {k: dilate_mask(mask, k) for k in set(kernel_sizes)}
    return [dilated[k] for k in kernel_sizes]


def step_kernel_sizes(shrink: bool, kernel_sizes: list[int] | None, num_steps: int) -> list[int]:
    """The dilation kernel of each step: the caller's list, the default shrinking schedule, or all 1."""
    if kernel_sizes is not None:
        kernel_sizes = [int(k) for k in kernel_sizes]
        if len(kernel_sizes) != num_steps:
            raise ValueError(f"kernel_sizes needs one kernel size for each of the {num_steps} steps run, "
                             f"got {len(kernel_sizes)}")
        return kernel_sizes
    if not isinstance(shrink, bool):
        raise TypeError(f"shrink is True or False, got {shrink!r}; give an explicit schedule as kernel_sizes")
    return shrink_schedule(num_steps) if shrink else [1] * num_steps
