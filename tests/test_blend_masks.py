"""blend/masks.py: the latent mask (official script's rule), dilation (scipy's), the shrinking schedule (§4.3)."""
import numpy as np
import pytest
import torch
from PIL import Image

from blend.masks import dilate_mask, masks_for_steps, resize_mask, shrink_schedule


@pytest.mark.parametrize("num_steps", [4, 8, 37, 38, 50, 100])
def test_shrink_schedule_quarters_coarsest_first(num_steps):
    schedule = shrink_schedule(num_steps)
    assert len(schedule) == num_steps
    assert schedule == sorted(schedule, reverse=True), "kernels must only shrink"
    counts = [schedule.count(k) for k in (7, 5, 3, 1)]
    assert sum(counts) == num_steps and max(counts) - min(counts) <= 1, counts  # four equal parts
    assert schedule[0] == 7 and schedule[-1] == 1


def test_shrink_schedule_examples_and_few_steps():
    assert shrink_schedule(8) == [7, 7, 5, 5, 3, 3, 1, 1]
    assert shrink_schedule(38)[:10] == [7] * 9 + [5]
    assert shrink_schedule(2) == [5, 1]          # fewer steps than kernels: the last step still uses the mask
    assert shrink_schedule(1) == [1]
    assert shrink_schedule(6, kernel_sizes=(3, 1)) == [3, 3, 3, 1, 1, 1]


def random_sparse_mask() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 1, 16, 12, generator=generator) > 0.93).float()
    mask[..., 0, 0] = 1  # a corner pixel: outside the image counts as 0
    return mask


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
def test_dilate_mask_is_max_over_the_square_window(kernel_size):
    mask, r = random_sparse_mask(), kernel_size // 2
    grid = mask[0, 0]
    expected = torch.tensor([[float(grid[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].any())
                              for j in range(grid.shape[1])] for i in range(grid.shape[0])])
    assert torch.equal(dilate_mask(mask, kernel_size)[0, 0], expected)


@pytest.mark.reference
@pytest.mark.parametrize("kernel_size", [3, 7])
def test_dilate_mask_matches_scipy_binary_dilation(kernel_size):
    from scipy import ndimage  # what the official LDM code dilates with (the reference extra)
    mask = random_sparse_mask()
    expected = ndimage.binary_dilation(mask[0, 0].numpy(), structure=np.ones((kernel_size, kernel_size)))
    assert torch.equal(dilate_mask(mask, kernel_size)[0, 0], torch.from_numpy(expected).float())


def test_dilate_mask_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd"):
        dilate_mask(torch.zeros(1, 1, 4, 4), 4)


def test_resize_mask_matches_official_pil_nearest_then_threshold():
    # The official script: Image.open(mask).convert("L").resize((64, 64), NEAREST) / 255, then ≥ 0.5 -> 1.
    generator = torch.Generator().manual_seed(1)
    grey = (torch.rand(1, 1, 75, 101, generator=generator) * 255).round()
    pil = Image.fromarray(grey[0, 0].numpy().astype(np.uint8)).resize((13, 9), Image.NEAREST)
    expected = torch.from_numpy((np.asarray(pil) / 255 >= 0.5).astype(np.float32))
    assert torch.equal(resize_mask(grey / 255, (9, 13))[0, 0], expected)


def test_masks_for_steps_dilates_each_step():
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 4, 4] = 1
    masks = masks_for_steps(mask, [7, 3, 1])
    assert [int(m.sum()) for m in masks] == [49, 9, 1]
