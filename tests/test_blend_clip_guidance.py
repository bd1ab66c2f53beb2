"""blend/clip_guidance.py: the official Blended Diffusion CLIP loss, its warps, the guidance gradient, the ranking."""
import math

import pytest
import torch
import torch.nn.functional as F

from blend.clip_guidance import (
    CLIPGuidance,
    Warps,
    background_loss,
    clip_loss,
    clip_ranking_distance,
    draw_warps,
    range_loss,
    spherical_distance,
    warp_views,
)
from clip.preprocess import CLIP_MEAN, CLIP_STD
from samplers import GaussianDiffusion
from weights.clip_ranker import load_clip

SIZE = 40   # the images; the tiny CLIP judges 32 × 32 views


@pytest.fixture(scope="module")
def judge():
    return load_clip("tiny")


def images_and_mask(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, SIZE, SIZE, generator=generator) * 2 - 1
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 8:32, 10:30] = 1
    return images, mask


def test_warp_views_keeps_the_first_batch_unwarped_and_is_deterministic_given_the_generator():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    views = warp_views(images, 4, generator=torch.Generator().manual_seed(1))
    assert views.shape == (8, 3, 16, 16)
    assert torch.equal(views[:2], images)                          # [I1, I2, warped I1, warped I2, …]
    assert torch.equal(views, warp_views(images, 4, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(views, warp_views(images, 4, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(warp_views(images, 1), images)              # one view: no warp, no draw


def test_draw_warps_draws_kornias_distributions_in_the_documented_order():
    count, height, width = 500, 20, 30
    warps = draw_warps(count, (height, width), torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    u = [torch.rand(count, generator=generator) for _ in range(5)] + [torch.rand(count, 4, 2, generator=generator)]
    assert torch.equal(warps.affine_applied, u[0] < 0.7)
    torch.testing.assert_close(warps.angles, -15 + 30 * u[1])
    torch.testing.assert_close(warps.translations, torch.stack([(-0.1 + 0.2 * u[2]) * width,
                                                                (-0.1 + 0.2 * u[3]) * height], dim=1))
    assert torch.equal(warps.perspective_applied, u[4] < 0.7)
    corners = torch.tensor([[0.0, 0.0], [width - 1.0, 0.0], [width - 1.0, height - 1.0], [0.0, height - 1.0]])
    inwards = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    torch.testing.assert_close(warps.end_points, corners + torch.tensor([0.35 * width, 0.35 * height]) * u[5] * inwards)
    assert 0.6 < warps.affine_applied.float().mean() < 0.8 and warps.angles.abs().max() <= 15


def test_injected_warps_are_used_instead_of_drawn_ones():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    drawn = draw_warps(6, 16, torch.Generator().manual_seed(5))
    assert torch.equal(warp_views(images, 4, warps=drawn),
                       warp_views(images, 4, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(warp_views(images, 4, generator=torch.Generator().manual_seed(9), warps=Warps.identity(6, 16)),
                       images.tile(4, 1, 1, 1))
    with pytest.raises(ValueError, match="expected warps for 6 views"):
        warp_views(images, 4, warps=Warps.identity(4, 16))


def test_affine_warp_by_180_degrees_turns_the_view_upside_down():
    # kornia rotates about c = (W/2 − ½, H/2 − ½), so 180° takes pixel (x, y) to (W−1−x, H−1−y) exactly
    images = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    warps = Warps.identity(1, 12)
    warps = Warps(warps.size, torch.tensor([True]), torch.tensor([180.0]), warps.translations,
                  warps.perspective_applied, warps.end_points)
    torch.testing.assert_close(warp_views(images, 2, warps=warps)[1:], images.flip(-1, -2), rtol=0, atol=1e-5)


def test_perspective_warp_that_moves_no_corner_samples_kornias_grid():
    # kornia's warp_perspective builds its grid as x_j = 2j/(W−1) − 1 and samples with align_corners=False, so even
    # the identity homography zooms out by W/(W−1): reproduced, as the official augmentation runs it
    images = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    warps = Warps.identity(1, 10)
    warps = Warps(warps.size, warps.affine_applied, warps.angles, warps.translations, torch.tensor([True]),
                  warps.end_points)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 10), torch.linspace(-1, 1, 10), indexing="ij")
    expected = F.grid_sample(images, torch.stack([xs, ys], -1)[None], align_corners=False, padding_mode="zeros")
    torch.testing.assert_close(warp_views(images, 2, warps=warps)[1:], expected, rtol=0, atol=1e-6)


@pytest.mark.reference
def test_warps_match_kornias_random_affine_and_perspective_given_the_same_parameters():
    """kornia builds and inverts its matrices in float32, we in float64: a few float32 ulps of [0, 1] pixels."""
    augmentation = pytest.importorskip("kornia.augmentation")
    images = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    drawn = draw_warps(6, 24, torch.Generator().manual_seed(1))
    everywhere = torch.ones(6, dtype=torch.bool)
    warps = Warps(drawn.size, everywhere, drawn.angles, drawn.translations, everywhere, drawn.end_points)
    affine = augmentation.RandomAffine(degrees=15, translate=0.1, p=1.0, padding_mode="border")
    perspective = augmentation.RandomPerspective(0.7, p=1.0)
    affine_params = affine.forward_parameters(images.shape)
    affine_params.update(angle=warps.angles, translations=warps.translations)
    perspective_params = perspective.forward_parameters(images.shape)
    perspective_params.update(end_points=warps.end_points.float())
    expected = perspective(affine(images, params=affine_params), params=perspective_params)
    torch.testing.assert_close(warp_views(images, 2, warps=warps)[6:], expected, rtol=0, atol=1e-4)


def test_spherical_distance_is_half_the_squared_angle():
    # ‖û − v̂‖ = 2·sin(θ/2) for unit vectors at angle θ, so 2·arcsin(‖û − v̂‖/2)² = θ²/2, whatever the lengths
    generator = torch.Generator().manual_seed(0)
    u, v = torch.randn(5, 8, generator=generator, dtype=torch.float64), torch.randn(1, 8, dtype=torch.float64)
    angle = torch.arccos(F.cosine_similarity(u, v, dim=-1))
    torch.testing.assert_close(spherical_distance(3 * u, 0.5 * v), angle**2 / 2)
    assert spherical_distance(u, -u).allclose(torch.full((5,), math.pi**2 / 2, dtype=torch.float64))


def test_range_loss_is_the_per_image_mean_square_outside_minus_one_to_one():
    x0 = torch.tensor([[-3.0, 0.5], [1.5, 1.0]]).view(2, 1, 1, 2)
    torch.testing.assert_close(range_loss(x0), torch.tensor([(2.0**2 + 0) / 2, (0.5**2 + 0) / 2]))


def hand_clip_loss(judge, x_in, mask, text, num_views, warps):
    """The official clip_loss written out: mask, pool, views, [0, 1], CLIP normalisation, encode, d, means, sum."""
    pooled = F.adaptive_avg_pool2d(x_in * mask, judge.image_size)
    views = warp_views(pooled, num_views, warps=warps)
    pixels = (views + 1) / 2
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    embeddings = F.normalize(judge.image_encoder((pixels - mean) / std), dim=-1)
    angle = torch.arccos((embeddings @ F.normalize(text, dim=-1).T)[:, 0].clamp(-1, 1))
    distances = angle**2 / 2                                              # = 2·arcsin(‖û − v̂‖/2)²
    return distances.view(num_views, x_in.shape[0]).mean(0).sum()          # views [I1..IB, I1..IB, …]


def test_clip_loss_matches_the_official_computation_by_hand(judge):
    x_in, mask = images_and_mask(batch=3)
    text = judge.text_embeddings("a cat")
    warps = draw_warps(3 * 3, judge.image_size, torch.Generator().manual_seed(4))
    with torch.no_grad():
        loss = clip_loss(judge, x_in, mask, text, num_views=4, warps=warps)
        expected = hand_clip_loss(judge, x_in, mask, text, 4, warps)
    # arccos of the cosine here, 2·arcsin of the half chord there: equal up to float32 rounding of d ≈ 1.5
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(loss, clip_loss(judge, x_in, mask, text, num_views=4,
                                       generator=torch.Generator().manual_seed(4)).detach())


class RandomConvNet(torch.nn.Module):
    """A stand-in for ADM with (B, 6, H, W) output [ε | v] that depends on x and t."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x, timesteps, y=None):
        return torch.tanh(self.conv(x) * (1 + timesteps.view(-1, 1, 1, 1) / 1000))


def test_guidance_gradient_equals_autograd_of_the_written_out_loss(judge):
    diffusion = GaussianDiffusion.adm("100")
    model = RandomConvNet()
    x, mask = images_and_mask(batch=2, seed=1)
    source, _ = images_and_mask(batch=1, seed=2)
    text = judge.text_embeddings("a dog")
    index, num_views = torch.tensor([60, 60]), 3

    def mse_lpips(a, b):                       # any (B,) distance serves as the background loss's LPIPS
        return (a - b).abs().mean((1, 2, 3))

    guidance = CLIPGuidance(model, diffusion, judge, text, mask, source=source, num_views=num_views,
                            lpips=mse_lpips, generator=torch.Generator().manual_seed(7))
    gradient = guidance(x, index)

    # written out: forward #2, x̂0 = √(1/ᾱ)·x − √(1/ᾱ − 1)·ε (DDPM eq. 15), x_in, the three terms
    x_leaf = x.clone().requires_grad_()
    eps = model(x_leaf, torch.tensor([float(diffusion.timestep_map[60])] * 2))[:, :3]
    alpha_bar = float(diffusion.alphas_cumprod[60])
    pred_xstart = math.sqrt(1 / alpha_bar) * x_leaf - math.sqrt(1 / alpha_bar - 1) * eps
    fac = math.sqrt(1 - alpha_bar)
    x_in = pred_xstart * fac + x_leaf * (1 - fac)
    warps = draw_warps((num_views - 1) * 2, judge.image_size, torch.Generator().manual_seed(7))
    background = x_in * (1 - mask)
    loss = (hand_clip_loss(judge, x_in, mask, text, num_views, warps) * 1000
            + ((pred_xstart - pred_xstart.clamp(-1, 1)) ** 2).mean((1, 2, 3)).sum() * 50
            + mse_lpips(background, source.expand(2, -1, -1, -1)).sum() * 1000
            + ((background - source) ** 2).mean() * 10000)
    expected = -torch.autograd.grad(loss, x_leaf)[0]
    # x̂0's and x_in's coefficients are Python floats here and float32 in the guidance, a relative 2⁻²⁴ each, carried
    # through the chain: measured 1.5e-7 of the largest entry; 1e-5 of it leaves room for other kernels
    torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert set(guidance.losses) == {"clip", "range", "background"}


def test_guidance_draws_only_the_warps_and_none_without_the_clip_term(judge):
    diffusion, model = GaussianDiffusion.adm("100"), RandomConvNet()
    x, mask = images_and_mask(batch=2)
    text = judge.text_embeddings("a dog")
    generator = torch.Generator().manual_seed(11)
    CLIPGuidance(model, diffusion, judge, text, mask, num_views=3, generator=generator)(x, 40)
    after_one_call = torch.Generator().manual_seed(11)
    draw_warps(2 * 2, judge.image_size, after_one_call)
    assert torch.equal(generator.get_state(), after_one_call.get_state())
    CLIPGuidance(model, diffusion, judge, text, mask, clip_scale=0, generator=generator)(x, 40)
    assert torch.equal(generator.get_state(), after_one_call.get_state())


@pytest.mark.precision
def test_clip_input_is_the_official_mix_bit_for_bit():
    # official: out["pred_xstart"] * fac + x * (1 - fac), fac a numpy float64 scalar of the respaced table
    diffusion = GaussianDiffusion.adm("100")
    guidance = CLIPGuidance(None, diffusion, None, torch.ones(1, 4), torch.ones(1, 1, 8, 8))
    generator = torch.Generator().manual_seed(0)
    x0, x = torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 3, 8, 8, generator=generator)
    for index in (74, 40, 0):
        fac = diffusion.sqrt_one_minus_alphas_cumprod[index]
        official = x0 * fac + x * (1 - fac)
        assert torch.equal(guidance.clip_input(x0, x, torch.tensor([index, index])), official)


def test_background_loss_is_lpips_times_1000_plus_mse_times_10000_outside_the_mask():
    x_in, mask = images_and_mask(batch=2)
    source, _ = images_and_mask(batch=1, seed=3)
    lpips = lambda a, b: (a - b).pow(2).sum((1, 2, 3))    # noqa: E731
    outside, target = x_in * (1 - mask), source.expand(2, -1, -1, -1)
    expected = lpips(outside, target).sum() * 1000 + F.mse_loss(outside, target) * 10000
    torch.testing.assert_close(background_loss(x_in, source, mask, lpips), expected)


def test_clip_ranking_distance_is_the_official_unaugmented_distance(judge):
    images, mask = images_and_mask(batch=3)
    text = judge.text_embeddings("a cat")
    pixels = ((images + 1) / 2).clamp(0, 1) * mask                       # no CLIP normalisation, black outside
    resized = F.interpolate(pixels, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = spherical_distance(judge.image_encoder(resized), text)
    distances = clip_ranking_distance(judge, images, mask, text)
    assert distances.shape == (3,)
    torch.testing.assert_close(distances, expected)
