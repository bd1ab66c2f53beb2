"""CLIP guidance as Blended Diffusion's official code computes it (Avrahami, Lischinski & Fried, CVPR 2022).

At every step the sampler asks for g = −∇_{x_t} loss, and shifts its mean by Σ·g (`GaussianDiffusion.
condition_mean`). The loss is the sum of these terms (official `optimization/image_editor.py`, `cond_fn`):

    x̂0, Σ = p_mean_variance(model(x_t, t), x_t, t)        model forward #2, with gradients through the network
    x_in  = x̂0·f + x_t·(1 − f),  f = √(1 − ᾱ_t)           the official code's input to CLIP (see below)
    loss  = 1000 · clip_loss(x_in ⊙ m)                      the masked input against the prompt (below)
          +   50 · Σ_images range_loss(x̂0)                  keeps x̂0 in [−1, 1]
          (+ LPIPS·1000 + MSE·10000 on x_in ⊙ (1 − m))      Local CLIP-guided diffusion's background loss

The paper feeds x̂0 to CLIP. The official code feeds x_in, a mix that leans on x̂0 while the noise is high and on
x_t near the end; its author calls it "an experiment … you can also use pred_xstart directly" (omriav/
blended-diffusion issue #10). We reproduce the code.

clip_loss (official `clip_loss`, `augmentations.py`, `losses.py`):

    views = [P, P, …, P] with P = AdaptiveAvgPool(x_in ⊙ m) at the judge's size S (B images, 8 copies)
    views[B:] warped: a random affine (±15°, translation ≤ 0.1 of the size, p 0.7, border padding), then a random
        perspective (distortion 0.7, p 0.7): kornia's RandomAffine and RandomPerspective as the official code
        configures them, written here with affine_grid / grid_sample (`draw_warps`, `warp_views`)
    d     = spherical_distance(judge.image_encoder(normalise((views + 1)/2)), prompt embedding)
    clip_loss = Σ_{i<B} mean_k d[k·B + i]                   the mean over each image's views, summed over images

spherical_distance(u, v) = 2·arcsin(‖û − v̂‖/2)², the squared great-circle distance between the unit vectors.

A judge is a CLIP model, or anything shaped like one: `.image_size` (S), `.image_encoder(pixels)` from
CLIP-normalised (N, 3, S, S) pixels to (N, D) embeddings, and `.text_embeddings(prompts)` (n, D) unit vectors
(clip.CLIPModel; weights.toy.ToyJudge offline). `clip_ranking_distance` is the official ranking of the results.

Every random number (the warps) comes from the caller's generator, or from fixed `Warps` the caller injects.
"""
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clip.preprocess import CLIP_MEAN, CLIP_STD

# kornia.augmentation.RandomAffine(degrees=15, translate=0.1, p=0.7, padding_mode="border") and
# RandomPerspective(0.7, p=0.7), the official `ImageAugmentations`
AFFINE_DEGREES, AFFINE_TRANSLATE, AFFINE_PROBABILITY = 15.0, 0.1, 0.7
PERSPECTIVE_DISTORTION, PERSPECTIVE_PROBABILITY = 0.7, 0.7


@dataclass(frozen=True)
class Warps:
    """The random warps of N views of size (H, W), in pixel coordinates (x right, y down, pixel centres at
    integers), with kornia's parameters (kornia 0.7 `AffineGenerator`, `PerspectiveGenerator`):

    affine_applied (N,) bool     whether the affine warp is applied (probability 0.7)
    angles (N,) degrees           rotation about the centre c = (W/2 − ½, H/2 − ½), uniform in [−15, 15]
    translations (N, 2) pixels    (t_x, t_y), uniform in [−0.1·W, 0.1·W] × [−0.1·H, 0.1·H]
    perspective_applied (N,) bool whether the perspective warp is applied (probability 0.7)
    end_points (N, 4, 2) pixels   where the corners (0, 0), (W−1, 0), (W−1, H−1), (0, H−1) go: each moves inwards
                                  by u·(0.7·W/2, 0.7·H/2) in x and y, u uniform in [0, 1] per coordinate
    """
    size: tuple[int, int]
    affine_applied: torch.Tensor
    angles: torch.Tensor
    translations: torch.Tensor
    perspective_applied: torch.Tensor
    end_points: torch.Tensor

    def __len__(self) -> int:
        return len(self.angles)

    @classmethod
    def identity(cls, count: int, size) -> "Warps":
        """`count` warps that leave every view as it is."""
        height, width = _pair(size)
        corners = _corners(height, width).float().expand(count, 4, 2).clone()
        return cls((height, width), torch.zeros(count, dtype=torch.bool), torch.zeros(count),
                   torch.zeros(count, 2), torch.zeros(count, dtype=torch.bool), corners)

    def affine_matrices(self) -> torch.Tensor:
        """(N, 3, 3) float64: destination-from-source pixel maps A = T(c + t)·R(θ)·T(−c) with
        R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]], θ = the angle (kornia `get_affine_matrix2d`, which rotates by
        −angle in `get_rotation_matrix2d`'s sign convention)."""
        height, width = self.size
        theta = torch.deg2rad(self.angles.double())
        center = torch.tensor([width / 2 - 0.5, height / 2 - 0.5], dtype=torch.float64)
        matrices = torch.zeros(len(self), 3, 3, dtype=torch.float64)
        matrices[:, 0, 0], matrices[:, 0, 1] = theta.cos(), -theta.sin()
        matrices[:, 1, 0], matrices[:, 1, 1] = theta.sin(), theta.cos()
        matrices[:, :2, 2] = center - (matrices[:, :2, :2] @ center) + self.translations.double()
        matrices[:, 2, 2] = 1
        return matrices

    def perspective_matrices(self) -> torch.Tensor:
        """(N, 3, 3) float64: the homographies taking the four corners to `end_points` (kornia
        `get_perspective_transform`), found by solving the 8×8 linear system of the four correspondences with
        h₃₃ = 1:  u·(h₃₁x + h₃₂y + 1) = h₁₁x + h₁₂y + h₁₃ and v·(h₃₁x + h₃₂y + 1) = h₂₁x + h₂₂y + h₂₃."""
        height, width = self.size
        source = _corners(height, width).expand(len(self), 4, 2)
        x, y = source[..., 0], source[..., 1]                                        # (N, 4)
        u, v = self.end_points.double()[..., 0], self.end_points.double()[..., 1]  # (N, 4)
        one, zero = torch.ones_like(x), torch.zeros_like(x)
        rows_u = torch.stack([x, y, one, zero, zero, zero, -x * u, -y * u], dim=-1)  # (N, 4, 8)
        rows_v = torch.stack([zero, zero, zero, x, y, one, -x * v, -y * v], dim=-1)  # (N, 4, 8)
        system = torch.cat([rows_u, rows_v], dim=1)                                  # (N, 8, 8)
        solution = torch.linalg.solve(system, torch.cat([u, v], dim=1))              # (N, 8)
        return torch.cat([solution, torch.ones(len(self), 1, dtype=torch.float64)], dim=1).view(-1, 3, 3)


def draw_warps(num_images: int, size, generator: torch.Generator | None = None) -> Warps:
    """Random warps for `num_images` views of `size` (S or (H, W)), drawn from `generator` in this order:

        1. (N,)      uniforms u; the affine warp is applied where u < 0.7
        2. (N,)      angles, −15 + 30·u degrees
        3. (N,)      t_x = (−0.1 + 0.2·u)·W
        4. (N,)      t_y = (−0.1 + 0.2·u)·H
        5. (N,)      uniforms u; the perspective warp is applied where u < 0.7
        6. (N, 4, 2) corner offsets u·(0.7·W/2, 0.7·H/2), signs pointing inwards

    These are kornia's distributions in kornia's order (Bernoulli(p), then `Uniform.rsample` = low + u·(high − low)).
    kornia draws from torch's global generator, and draws steps 2–4 and 6 only for the views it will warp; here
    every view gets all of them, so the number of draws does not depend on the coin flips. None draws from torch's
    global generator. The warps live on the CPU whatever the generator's device.
    """
    height, width = _pair(size)
    device = generator.device if generator is not None else torch.device("cpu")

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, device=device).cpu()

    affine_applied = uniform(num_images) < AFFINE_PROBABILITY
    angles = -AFFINE_DEGREES + uniform(num_images) * (2 * AFFINE_DEGREES)
    t_x = (-AFFINE_TRANSLATE + uniform(num_images) * (2 * AFFINE_TRANSLATE)) * width
    t_y = (-AFFINE_TRANSLATE + uniform(num_images) * (2 * AFFINE_TRANSLATE)) * height
    perspective_applied = uniform(num_images) < PERSPECTIVE_PROBABILITY
    magnitude = uniform(num_images, 4, 2)                                            # (N, 4, 2) in [0, 1)
    factor = torch.tensor([PERSPECTIVE_DISTORTION * width / 2, PERSPECTIVE_DISTORTION * height / 2])
    inwards = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])    # per corner, (x, y)
    end_points = _corners(height, width).float() + factor * magnitude * inwards
    return Warps((height, width), affine_applied, angles, torch.stack([t_x, t_y], dim=1), perspective_applied,
                 end_points)


def warp_views(images: torch.Tensor, num_views: int, generator: torch.Generator | None = None,
               warps: Warps | None = None) -> torch.Tensor:
    """(B, C, S, S) images -> (num_views·B, C, S, S) views [I1..IB, I1..IB, …]: the first B as they are, the
    other (num_views − 1)·B warped (official `ImageAugmentations.forward`), by `warps` when given, else by
    `draw_warps((num_views − 1)·B, S, generator)`.

    Each warp samples the view at the inverse map, bilinearly, as kornia's `warp_affine` / `warp_perspective` do
    with align_corners=False: the matrix is taken to [−1, 1] coordinates with kornia's pixel normalisation
    x ↦ 2x/(W − 1) − 1, inverted, and sampled with `grid_sample`. The affine warp's grid is `affine_grid`'s
    (border padding); the perspective warp's grid is kornia's `create_meshgrid`, x_j = 2j/(W − 1) − 1, sampled with
    align_corners=False as kornia does, so a perspective warp also shrinks the view by (W − 1)/W about its
    centre (zero padding, kornia's default). A view whose warp is not applied is passed through untouched.
    """
    if num_views < 1:
        raise ValueError(f"num_views must be at least 1 (the un-warped view), got {num_views}")
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    views = images.tile(num_views, 1, 1, 1)                                          # (num_views·B, C, H, W)
    unwarped, rest = views[:batch], views[batch:]
    if len(rest) == 0:
        return unwarped
    if warps is None:
        warps = draw_warps(len(rest), (height, width), generator)
    if len(warps) != len(rest) or tuple(warps.size) != (height, width):
        raise ValueError(f"expected warps for {len(rest)} views ((num_views − 1)·B = ({num_views} − 1)·{batch}) of "
                         f"size {(height, width)}, got {len(warps)} of size {tuple(warps.size)}; draw them with "
                         f"draw_warps({len(rest)}, {(height, width)}, generator)")
    rest = _warp_affine(rest, warps)
    rest = _warp_perspective(rest, warps)
    return torch.cat([unwarped, rest])


def spherical_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """d(u, v) = 2·arcsin(‖û − v̂‖/2)², û = u/‖u‖, over the last dimension, broadcast (official `d_clip_loss`)."""
    u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    return (u - v).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def range_loss(x0: torch.Tensor) -> torch.Tensor:
    """(B,) per image mean over (C, H, W) of (x̂0 − clamp(x̂0, −1, 1))² (official `losses.range_loss`)."""
    return (x0 - x0.clamp(-1, 1)).pow(2).mean([1, 2, 3])


def clip_loss(judge, x_in: torch.Tensor, mask: torch.Tensor, text_embedding: torch.Tensor, num_views: int = 8,
              generator: torch.Generator | None = None, warps: Warps | None = None) -> torch.Tensor:
    """Σ_{i<B} mean over the views of image i of spherical_distance(judge(view), text) (official `clip_loss`).

    x_in (B, 3, H, W) in [−1, 1]; mask broadcastable to it (1 = edit); text_embedding (D,) or (1, D). Masked-out
    pixels become 0, grey once mapped to [0, 1]. Warps as `warp_views`.
    """
    masked = x_in * mask
    pooled = F.adaptive_avg_pool2d(masked, judge.image_size)                         # (B, 3, S, S)
    views = warp_views(pooled, num_views, generator, warps).add(1).div(2)             # (num_views·B, 3, S, S)
    distances = spherical_distance(encode_images(judge, clip_normalise(views)), text_embedding.reshape(1, -1))
    batch = x_in.shape[0]
    loss = distances[0::batch].mean()
    for i in range(1, batch):                      # the official sum, image by image, of the means over views
        loss = loss + distances[i::batch].mean()
    return loss


def background_loss(x_in: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, lpips, lpips_scale: float = 1000.0,
                    mse_scale: float = 10000.0) -> torch.Tensor:
    """LPIPS(x_in ⊙ (1 − m), x)·1000 summed over images + MSE(x_in ⊙ (1 − m), x)·10000, against the whole source
    x (official `--background_preservation_loss`; the masked region is a constant with no gradient). A zero scale
    drops its term, as the official code does."""
    background = x_in * (1 - mask)
    target = source.expand_as(background)
    loss = torch.zeros((), device=x_in.device)
    if lpips_scale:
        loss = loss + lpips(background, target).sum() * lpips_scale
    if mse_scale:
        loss = loss + F.mse_loss(background, target) * mse_scale
    return loss


class CLIPGuidance:
    """g(x_t, t) = −∇_{x_t} loss (module docstring): the official `cond_fn`, for `condition_mean` / `condition_score`.

    model(x, timesteps) -> (B, 6, H, W) [ε | v]; diffusion: samplers.GaussianDiffusion; judge: a CLIP-like model;
    prompt_embedding (D,) or (1, D); mask (1, 1, H, W) of 0/1 (1 = edit); source (1, 3, H, W) in [−1, 1], read
    only by the background loss, which is on when `lpips` (a callable (x, y) -> (B,) distances, such as
    blend.evaluate.lpips.LPIPS) is given. A zero scale drops its term, as the official code does.

    Random numbers: each call draws the warps of its (num_views − 1)·B views from `generator` (`draw_warps`'s
    order), and nothing else; none when clip_scale is 0. `warps` injects them instead: a `Warps` used at every
    call, or a function of the (B,) index tensor that returns the call's `Warps`.
    The last call's loss terms, detached, are in `losses`.
    """

    def __init__(self, model, diffusion, judge, prompt_embedding: torch.Tensor, mask: torch.Tensor, *,
                 source: torch.Tensor | None = None, clip_scale: float = 1000.0, range_scale: float = 50.0,
                 num_views: int = 8, lpips=None, lpips_scale: float = 1000.0, mse_scale: float = 10000.0,
                 generator: torch.Generator | None = None,
                 warps: Warps | Callable[[torch.Tensor], Warps] | None = None):
        if lpips is not None and source is None:
            raise ValueError("the background loss compares x_in with the source image: pass source= (1, 3, H, W) "
                             "with lpips=, or leave lpips=None for no background loss")
        self.model, self.diffusion, self.judge = model, diffusion, judge
        self.prompt_embedding, self.mask, self.source = prompt_embedding, mask, source
        self.clip_scale, self.range_scale, self.num_views = clip_scale, range_scale, num_views
        self.lpips, self.lpips_scale, self.mse_scale = lpips, lpips_scale, mse_scale
        self.generator, self.warps = generator, warps
        self.losses: dict[str, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, index) -> torch.Tensor:
        return self.guidance(x, index)

    def clip_input(self, pred_xstart: torch.Tensor, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """x_in = x̂0·f + x_t·(1 − f), f = √(1 − ᾱ_t) of the respaced schedule (official `cond_fn`; the paper's
        x_in is x̂0, issue #10). f and 1 − f are taken in float64 and rounded to float32 once, as the official
        code's numpy scalar is."""
        table = torch.from_numpy(self.diffusion.sqrt_one_minus_alphas_cumprod)[index.cpu()]  # (B,) float64
        shape = (-1,) + (1,) * (x.ndim - 1)
        fac = table.float().view(shape).to(x.device)
        rest = (1 - table).float().view(shape).to(x.device)
        return pred_xstart * fac + x * rest

    def guidance(self, x: torch.Tensor, index) -> torch.Tensor:
        """−∇_x loss at x_t (B, 3, H, W) and respaced `index` ((B,) long, or an int for the whole batch)."""
        index = torch.as_tensor(index, device=x.device, dtype=torch.long).expand(x.shape[0])
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            output = self.model(x, self.diffusion.model_timesteps(index))           # forward #2, (B, 6, H, W)
            out = self.diffusion.p_mean_variance(output, x, index)
            x_in = self.clip_input(out.pred_xstart, x, index)
            terms = {}
            if self.clip_scale:
                warps = self.warps(index) if callable(self.warps) else self.warps
                terms["clip"] = clip_loss(self.judge, x_in, self.mask, self.prompt_embedding, self.num_views,
                                          self.generator, warps) * self.clip_scale
            if self.range_scale:
                terms["range"] = range_loss(out.pred_xstart).sum() * self.range_scale
            if self.lpips is not None:
                terms["background"] = background_loss(x_in, self.source, self.mask, self.lpips, self.lpips_scale,
                                                      self.mse_scale)
            self.losses = {name: term.detach() for name, term in terms.items()}
            loss = sum(terms.values(), torch.zeros((), device=x.device))
            if not loss.requires_grad:                # every term dropped: no guidance
                return torch.zeros_like(x)
            return -torch.autograd.grad(loss, x)[0]


@torch.no_grad()
def clip_ranking_distance(judge, images: torch.Tensor, mask: torch.Tensor,
                          prompt_embedding: torch.Tensor) -> torch.Tensor:
    """(N,) spherical distances of the masked results to the prompt: the official `unaugmented_clip_distance`.

    images (N, 3, H, W) in [−1, 1] are mapped to [0, 1] and clamped, masked (the background turns black),
    resized bilinearly to the judge's size and encoded with NO CLIP normalisation, as the official code does
    (its torchvision 0.10 resizes tensors without antialiasing). Lower is better.
    """
    pixels = mask * images.add(1).div(2).clamp(0, 1)                                 # (N, 3, H, W)
    size = (judge.image_size, judge.image_size)
    resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=False)
    return spherical_distance(encode_images(judge, resized), prompt_embedding.reshape(1, -1))


def clip_normalise(pixels: torch.Tensor) -> torch.Tensor:
    """(x − mean)/std per channel, x in [0, 1], with CLIP's statistics (clip/preprocess.py)."""
    mean = torch.tensor(CLIP_MEAN, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def encode_images(judge, pixels: torch.Tensor) -> torch.Tensor:
    """judge.image_encoder(pixels) in float32, the pixels cast to the encoder's dtype when it has weights."""
    encoder = judge.image_encoder
    weight = next(encoder.parameters(), None) if isinstance(encoder, torch.nn.Module) else None
    if weight is not None:
        pixels = pixels.to(weight.dtype)
    return encoder(pixels).float()


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _corners(height: int, width: int) -> torch.Tensor:
    """(1, 4, 2) float64 corner pixels (x, y): top-left, top-right, bottom-right, bottom-left (kornia's order)."""
    return torch.tensor([[[0.0, 0.0], [width - 1.0, 0.0], [width - 1.0, height - 1.0], [0.0, height - 1.0]]],
                        dtype=torch.float64)


def _pixel_to_normalised(height: int, width: int) -> torch.Tensor:
    """kornia `normal_transform_pixel`: x ↦ 2x/(W − 1) − 1, y ↦ 2y/(H − 1) − 1, as a (3, 3) float64 matrix."""
    return torch.tensor([[2.0 / (width - 1), 0.0, -1.0], [0.0, 2.0 / (height - 1), -1.0], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def _source_from_destination(matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 3, 3) destination-from-source pixel maps -> source-from-destination maps in [−1, 1] coordinates."""
    normalise = _pixel_to_normalised(height, width)
    return torch.linalg.inv(normalise @ matrices @ torch.linalg.inv(normalise))


def _warp_affine(views: torch.Tensor, warps: Warps) -> torch.Tensor:
    """kornia `warp_affine` (bilinear, border padding, align_corners=False) where `affine_applied`."""
    applied = warps.affine_applied.to(views.device)
    if not applied.any():
        return views
    height, width = views.shape[-2:]
    inverse = _source_from_destination(warps.affine_matrices(), height, width)[:, :2]  # (N, 2, 3)
    grid = F.affine_grid(inverse.to(views.device, views.dtype), list(views.shape), align_corners=False)
    warped = F.grid_sample(views, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(applied.view(-1, 1, 1, 1), warped, views)


def _warp_perspective(views: torch.Tensor, warps: Warps) -> torch.Tensor:
    """kornia `warp_perspective` (bilinear, zero padding, align_corners=False, its meshgrid) where applied."""
    applied = warps.perspective_applied.to(views.device)
    if not applied.any():
        return views
    height, width = views.shape[-2:]
    inverse = _source_from_destination(warps.perspective_matrices(), height, width)   # (N, 3, 3)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height, dtype=torch.float64),
                            torch.linspace(-1, 1, width, dtype=torch.float64), indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(1, -1, 3)       # (1, H·W, 3)
    mapped = points @ inverse.transpose(1, 2)                                         # (N, H·W, 3)
    grid = (mapped[..., :2] / mapped[..., 2:]).view(-1, height, width, 2)            # (N, H, W, 2): (x, y)
    warped = F.grid_sample(views, grid.to(views.device, views.dtype), mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return torch.where(applied.view(-1, 1, 1, 1), warped, views)
