"""blend/evaluate/metrics.py and judges.py: the crop, precision on judges whose answers are known, diversity."""
import pytest
import torch

from blend.evaluate import Box, crop, crop_box, diversity, hits, precision
from blend.evaluate.judges import ToyJudge, imagenet_class_names, toy_images
from blend.evaluate.lpips import load_lpips
from blend.evaluate.metrics import bounding_box, pairwise_lpips


def mask_with(height, width, rows, columns):
    mask = torch.zeros(height, width)
    mask[rows[0]:rows[1], columns[0]:columns[1]] = 1
    return mask


def test_crop_is_the_bounding_box_squared_and_padded_by_ten_percent_about_its_centre():
    mask = mask_with(200, 300, (50, 90), (100, 160))          # 40 × 60 box, centre (70, 130)
    assert bounding_box(mask) == Box(50, 100, 40, 60)
    assert crop_box(mask) == Box(70 - 33, 130 - 33, 66, 66)   # side ⌈1.1 · 60⌉ = 66
    assert crop_box(mask, padding=0) == Box(40, 100, 60, 60)


@pytest.mark.parametrize("rows, columns, expected", [
    ((0, 20), (0, 30), Box(0, 0, 33, 33)),                  # top-left corner: flush with both borders
    ((60, 80), (70, 100), Box(47, 67, 33, 33)),             # bottom-right corner
    ((30, 50), (0, 30), Box(23, 0, 33, 33)),                # left border only: centred vertically
])
def test_crop_is_exact_for_masks_at_the_border(rows, columns, expected):
    mask = mask_with(80, 100, rows, columns)
    box = crop_box(mask)
    assert box == expected
    images = torch.arange(2 * 3 * 80 * 100, dtype=torch.float32).reshape(2, 3, 80, 100)
    window = crop(images, box)
    assert window.shape == (2, 3, 33, 33)
    assert torch.equal(window, images[:, :, expected.top:expected.top + 33, expected.left:expected.left + 33])
    inside = mask[expected.top:expected.top + 33, expected.left:expected.left + 33]
    assert inside.sum() == mask.sum()                       # the whole edited region is in the crop


def test_crop_of_a_mask_wider_than_the_image_allows_is_the_whole_axis():
    mask = mask_with(80, 100, (10, 70), (0, 100))
    assert crop_box(mask) == Box(0, 0, 80, 100)
    with pytest.raises(ValueError, match="empty"):
        crop_box(torch.zeros(8, 8))


class ColourJudge:
    """A stand-in classifier whose answer is known by hand: the crop's dominant channel (red cat, green dog, blue
    bird), fish and frog −9, lamp −10; it records the crops it was shown."""
    class_names = ["cat", "dog", "bird", "fish", "frog", "lamp"]

    def __init__(self):
        self.seen = []

    def scores(self, results, box, mask=None):
        crops = crop(results, box)
        self.seen.append(crops)
        means = crops.mean(dim=(2, 3))                                     # (N, 3)
        return torch.cat([means, torch.tensor([[-9.0, -9.0, -10.0]]).expand(len(means), 3)], dim=1)


def painted(colours, size=(40, 60), box=(10, 20, 10, 20)):
    """Results that are grey except the box, painted with each colour (in [−1, 1])."""
    images = torch.zeros(len(colours), 3, *size) - 0.5
    top, left, h, w = box
    for image, colour in zip(images, colours, strict=True):
        image[:, top:top + h, left:left + w] = torch.tensor(colour, dtype=torch.float32)[:, None, None]
    return images


def test_precision_counts_results_whose_top1_is_the_prompts_class_on_a_judge_known_by_hand():
    judge = ColourJudge()
    results = painted([(1, -1, -0.9), (-1, 1, -1), (1, 0.5, -1), (-0.9, -1, 1)])  # cat, dog, cat (dog 2nd), bird
    mask = mask_with(40, 60, (10, 20), (20, 30))
    box = crop_box(mask)
    scores = judge.scores(results, box)
    top1 = hits(scores, judge.class_names, "cat", 1)
    assert top1.tolist() == [True, False, True, False]
    assert precision(top1) == 0.5
    assert hits(scores, judge.class_names, "dog", 1).tolist() == [False, True, False, False]
    assert hits(scores, judge.class_names, "dog", 2).tolist() == [False, True, True, False]
    assert hits(scores, judge.class_names, "bird", 2).tolist() == [True, False, False, True]
    assert hits(scores, judge.class_names, "lamp", 5).tolist() == [False] * 4   # −10: last of the six
    assert judge.seen[0].shape[-2:] == (11, 11)                                 # ⌈1.1 · 10⌉, taken from the results


def test_precision_compares_names_so_classes_that_share_one_count_once():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet paper"
    missiles = [i for i, n in enumerate(names) if n == "missile"]
    assert missiles == [657, 744]
    scores = torch.zeros(1, 1000)
    scores[0, 744] = 1
    assert hits(scores, names, "missile", 1).tolist() == [True]


class SquaredDifference:
    """A stand-in LPIPS: its one 'tap' is the image, its distance the mean squared difference."""

    def features(self, x):
        return [x]

    def distance(self, fx, fy):
        return ((fx[0] - fy[0]) ** 2).mean(dim=(1, 2, 3))


def test_diversity_is_the_mean_over_pairs_of_the_distance():
    base = torch.zeros(1, 3, 8, 8)
    delta = 0.1
    crops = torch.cat([base + k * delta for k in range(3)])      # pairs (0,1), (0,2), (1,2): δ², 4δ², δ²
    assert diversity(SquaredDifference(), crops, size=0) == pytest.approx(2 * delta**2, rel=1e-6)
    assert diversity(SquaredDifference(), crops[:1], size=0) is None


@pytest.fixture(scope="module")
def lpips():
    model = load_lpips("random")
    yield model
    del model


def test_diversity_is_zero_for_identical_results_and_grows_with_a_known_perturbation(lpips):
    generator = torch.Generator().manual_seed(3)
    base = torch.rand(1, 3, 48, 48, generator=generator) * 2 - 1
    noise = torch.randn(4, 3, 48, 48, generator=generator)
    assert diversity(lpips, base.repeat(4, 1, 1, 1), size=64) == 0
    values = [diversity(lpips, (base + scale * noise).clamp(-1, 1), size=64) for scale in (0.02, 0.05, 0.1, 0.2)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
    pairs = pairwise_lpips(lpips, base.repeat(3, 1, 1, 1) + torch.tensor([0.0, 0.1, 0.3])[:, None, None, None])
    with torch.no_grad():
        assert pairs[0].item() == pytest.approx(lpips(base, base + 0.1).item(), rel=1e-5)   # (0, 1), (0, 2), (1, 2)


def test_toy_judge_names_the_class_of_the_photograph_pasted_in_the_crop():
    images, labels, classes = toy_images()
    judge = ToyJudge(images, labels, classes)
    mask = mask_with(128, 128, (30, 80), (40, 100))
    box = crop_box(mask)
    results = images[:1].repeat(len(images), 1, 1, 1).clone()       # background: photograph 0
    results[:, :, 30:80, 40:100] = images[:, :, 30:80, 40:100]      # region: photograph k
    answers = judge.scores(results, box, mask).argmax(dim=1)
    assert answers.tolist() == labels.tolist()


def test_clip_judge_text_embeddings_cut_after_the_last_eos_equal_the_full_77_positions():
    from blend.evaluate import CLIPJudge
    from weights import load_clip
    model = load_clip("tiny")
    names = ["cat", "great white shark", "toilet paper", "a rather long class name with many words in it"]
    judge = CLIPJudge(model, names, batch_size=3)
    with torch.no_grad():
        full = model.text_embeddings([f"a photo of a {name}" for name in names])
    assert (judge.text_embeddings() - full).abs().max().item() <= 1e-5
