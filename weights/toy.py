"""An exact toy model: the optimal denoiser of a tiny data set of photographs, so that Algorithm 1 runs
meaningfully offline.

No trained Stable Diffusion weights can be had without a network, and an untrained network makes
noise. But for a *finite* data set {x_k} the best possible denoiser is known in closed form. If
x_0 is drawn uniformly from {x_k} and x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (DDPM eq. 4), Bayes' rule gives

    p(x_0 = x_k | x_t) = w_k,   w = softmax_k( −‖x_t − √ᾱ_t·x_k‖² / (2(1−ᾱ_t)) )
    E[x_0 | x_t]       = Σ_k w_k·x_k                          (the posterior mean)
    ε̂(x_t, t)          = (x_t − √ᾱ_t·E[x_0 | x_t]) / √(1−ᾱ_t)  (the forward process solved for ε)

and ε̂ is the minimiser of the DDPM training loss E‖ε − ε̂(x_t, t)‖², the network SD approximates.
At large t the weights are spread over the data; as t falls they become one-hot on one image.

It loads like any other model, `weights.load("toy")`, into the same `Components` with a spec
(`ToySpec`) that has the fields the editor reads. The parts, each stated for what it is:
  * data: weights/toy_photos/<class>_<n>.png, twelve 128×128 crops of scikit-image's sample photographs
    (blend/assets/SOURCES.md), two for each one-word class: astronaut, brick, cat, coffee, grass, rocket. Each is
    equally likely a priori. They are resized to whatever latent size the denoiser is called at.
  * "latent space" = pixel space: `IdentityAutoencoder` encodes and decodes x ↦ x, scale factor 1,
    so the latent of a 128×128 image is (3, 128, 128).
  * "tokenizer": a prompt ↦ the classes whose caption is one of its words (a plural "s" allowed);
    "" ↦ every class. A prompt naming no class is an error that lists the classes.
  * "text encoder": classes ↦ context (B, 1, K), a 0/1 vector over the K classes. It is the prior
    over the data: only images of the classes marked 1 take part in the sum. So ε_c comes from the
    prompt's images and ε_u (the context of "") from all images: classifier-free guidance
    ε_u + w·(ε_c − ε_u) has its usual meaning. With w > 1 it extrapolates away from the unconditional
    answer, which for a data set this small is one particular photograph; w = 1 samples the class.
"""
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clip.preprocess import CLIP_MEAN, CLIP_STD
from samplers import GaussianDiffusion, NoiseSchedule, linear_betas

TOY_PHOTOS = Path(__file__).resolve().parent / "toy_photos"


def load_toy_images(folder: Path = TOY_PHOTOS):
    """(images (N, 3, H, W) in [−1, 1], labels (N,) long, class names) from <class>_<n>.png files.

    x = level / 127.5 − 1 of each 8-bit RGB pixel (grey photographs are read as RGB).
    """
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no toy data set images (<class>_<n>.png) in {folder}")
    class_names = sorted({path.stem.rsplit("_", 1)[0] for path in paths})
    levels = np.stack([np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) for path in paths])
    images = torch.from_numpy(levels / 127.5 - 1).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    labels = torch.tensor([class_names.index(path.stem.rsplit("_", 1)[0]) for path in paths])
    return images, labels, class_names


class ToyDenoiser(torch.nn.Module):
    """ε̂(z_t, t, context) of the posterior mean over the data (module docstring); the UNet's call signature."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, schedule: NoiseSchedule):
        super().__init__()
        self.register_buffer("images", images)   # (N, 3, H, W) in [−1, 1]
        self.register_buffer("labels", labels)   # (N,) class index of each image
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.clone())

    def data_at(self, size) -> torch.Tensor:
        """The data set resized to `size` = (h, w) (bilinear, antialiased), flattened: (N, 3·h·w)."""
        images = self.images
        if tuple(images.shape[-2:]) != tuple(size):
            images = F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
        return images.flatten(1)

    def posterior_mean(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] = Σ_k w_k·x_k over the images of the classes marked in context (B, 1, K)."""
        data = self.data_at(z_t.shape[-2:]).double()                             # (N, D)
        x = z_t.flatten(1).double()                                              # (B, D)
        alpha_bar = self.alphas_cumprod[t.long()].double()[:, None]              # (B, 1)
        # ‖x_t − √ᾱ·x_k‖² = ‖x_t‖² − 2√ᾱ·x_t·x_k + ᾱ·‖x_k‖², in float64: the expanded terms nearly cancel
        squared_distance = ((x**2).sum(1, keepdim=True) - 2 * alpha_bar.sqrt() * (x @ data.T)
                            + alpha_bar * (data**2).sum(1)[None])                 # (B, N)
        log_prior = torch.log(context[:, 0, :].double()[:, self.labels])         # (B, N): −inf off-class
        log_weights = log_prior - squared_distance / (2 * (1 - alpha_bar))       # log w_k + const
        weights = torch.softmax(log_weights, dim=1)                              # (B, N); stable for any scale
        return (weights @ data).reshape(z_t.shape).to(z_t.dtype)

    def forward(self, z_t: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """ε̂ = (z_t − √ᾱ_t·E[x_0|z_t]) / √(1−ᾱ_t), for z_t (B, 3, h, w), timesteps (B,), context (B, 1, K)."""
        timesteps = torch.as_tensor(timesteps, device=z_t.device).expand(z_t.shape[0])
        alpha_bar = self.alphas_cumprod[timesteps.long()].to(z_t.dtype)[:, None, None, None]
        x0 = self.posterior_mean(z_t, timesteps, context)
        return (z_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


class IdentityAutoencoder(torch.nn.Module):
    """The toy's "autoencoder": E(x) = x and D(z) = z, so its latent space is pixel space (scale factor 1)."""

    class Posterior:
        """A point mass at x: its mean and its samples are x."""

        def __init__(self, x: torch.Tensor):
            self.mean = x

        def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
            return self.mean

    def encode(self, x: torch.Tensor) -> "IdentityAutoencoder.Posterior":
        return self.Posterior(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class ToyTokenizer:
    """Prompts ↦ (B, K) 0/1 rows: the classes whose caption is a word of the prompt; "" ↦ all classes."""

    def __init__(self, class_names: list):
        self.class_names = list(class_names)

    def __call__(self, prompts) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return torch.stack([self.classes_of(prompt) for prompt in prompts])

    def classes_of(self, prompt: str) -> torch.Tensor:
        if not prompt.strip():
            return torch.ones(len(self.class_names))  # unconditional: every image
        words = set(re.findall(r"[a-z]+", prompt.lower()))
        words |= {word[:-1] for word in words if word.endswith("s")}  # "cats" names the class "cat"
        row = torch.tensor([float(name in words) for name in self.class_names])
        if row.sum() == 0:
            raise ValueError(f"the toy model knows only the classes {', '.join(self.class_names)}; "
                             f"the prompt {prompt!r} names none of them. Use one of those words, e.g. 'a cat'.")
        return row


class ToyTextEncoder(torch.nn.Module):
    """(B, K) class rows ↦ context (B, 1, K): the prior over classes that `ToyDenoiser` reads."""

    def forward(self, class_rows: torch.Tensor) -> torch.Tensor:
        return class_rows.float()[:, None, :]


@dataclass(frozen=True)
class ToySpec:
    """The toy's spec: the fields of weights.presets.ModelSpec that describe how to run a model."""
    name: str = "toy"
    prediction_type: str = "epsilon"
    scale_factor: float = 1.0        # identity autoencoder: z = x
    image_size: int = 128            # the side of the data set's images
    size_multiple: int = 1           # no network divides the image: any working size runs
    steps_offset: int = 1            # SD's timesteps [981, 961, …, 1]
    timestep_spacing: str = "leading"
    z_init: str = "mean"             # the identity's posterior is a point mass: mean = sample
    guidance_scale: float = 1.0      # the conditional model is exact; w > 1 extrapolates (module docstring)
    notes: str = "exact posterior-mean denoiser of 12 photographs, in pixel space"

    def build_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.scaled_linear()  # SD's β schedule


def load_toy(*, device="cpu", folder: Path = TOY_PHOTOS):
    """(unet, vae, text_encoder, tokenizer, spec) of the toy model over the images in `folder`.

    The denoiser computes in float64 whatever the caller's dtype (module docstring), so there is no dtype.
    """
    images, labels, class_names = load_toy_images(folder)
    spec = ToySpec()
    denoiser = ToyDenoiser(images, labels, spec.build_schedule()).to(device)
    return denoiser, IdentityAutoencoder(), ToyTextEncoder(), ToyTokenizer(class_names), spec


# ---- Blended Diffusion's toy: the unconditional pixel model on ADM's schedule, and a differentiable judge ----
#
# Blended Diffusion steers an UNCONDITIONAL pixel model (OpenAI's ADM) with CLIP. Its toy is the same exact
# denoiser with the context "every class" (the posterior mean over all photographs, so it knows no prompt), on
# ADM's linear β schedule, wrapped in ADM's call and output; and a judge that, like CLIP, says how well the
# masked region matches the prompt, differentiably, so that its gradient steers the sampler to the prompt's class.


def adm_linear_schedule() -> NoiseSchedule:
    """ADM's schedule: linear β from 1e-4 to 0.02 over 1000 steps, with ᾱ_t = Π(1 − β_s) taken with numpy's
    cumprod in float64, the very table samplers.GaussianDiffusion keeps (its `alphas_cumprod` before respacing)."""
    betas = linear_betas()                                                   # (1000,) float64 numpy
    schedule = NoiseSchedule(torch.from_numpy(betas))
    schedule.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas))      # (1000,) float64
    return schedule


class ToyPixelModel(torch.nn.Module):
    """The toy's ADM: forward(x, timesteps, y=None) -> (B, 6, H, W) = [ε̂ | v], unconditional.

    ε̂ is `ToyDenoiser`'s with the context of every class, the exact ε-prediction for the data set of all the
    photographs. timesteps are ADM's original timesteps (0..999, float as the respaced sampler passes them). y
    (ADM's class label) is ignored: the model is unconditional.

    v is the learned-range variance channel (Improved DDPM eq. 15: log Σ = ((v+1)/2)·log β_t + ((1−v)/2)·log β̃_t).
    We output v = −1, Σ = β̃_t, the posterior variance q(x_{t−1} | x_t, x_0): the exact reverse variance when x_0
    is known, which it nearly is here (the posterior over a dozen photographs is one-hot for all but the noisiest
    steps; DDPM §3.2 names β̃_t the optimum for a deterministic x_0, β_t the one for x_0 ~ N(0, I)).
    """
    VARIANCE_V = -1.0

    def __init__(self, denoiser: ToyDenoiser, num_classes: int):
        super().__init__()
        self.denoiser = denoiser
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y=None) -> torch.Tensor:
        every_class = torch.ones(x.shape[0], 1, self.num_classes, device=x.device)   # (B, 1, K)
        eps = self.denoiser(x, timesteps, every_class)                                # (B, 3, H, W)
        return torch.cat([eps, torch.full_like(eps, self.VARIANCE_V)], dim=1)         # (B, 6, H, W)


class ToyJudge(torch.nn.Module):
    """A differentiable stand-in for CLIP with the judge interface of blend.clip_guidance:

        image_encoder(pixels) = Σ_{k in class c} w_k, for each class c,   w = softmax_k(−dist_k / temperature)
        dist_k = mean over the masked region of (view − r_k)²,            r_k = photograph k as the view sees it
        text_embeddings(prompts) = the unit vector on the prompt's class(es) (ToyTokenizer's row, normalised)

    so the spherical distance between a view and a prompt is small exactly when the view is nearest the prompt's
    photographs. The pixels arrive CLIP-normalised (N, 3, S, S); the judge undoes the normalisation and maps back
    to [−1, 1], where the masked-out region is 0, as the views are made. r_k is photograph k resized (bilinear,
    antialiased) to the mask's size, multiplied by the mask and average-pooled to S, the path `clip_loss` takes x_in
    along. The judge must be told the mask: `set_mask(mask)` (1, 1, H, W), 1 = edit, before judging; None (the
    default) judges the whole image. The distances are taken in float64.

    temperature 0.3: a mean squared difference of 0.3 per masked pixel is one nat of evidence. On a central region
    the photographs of one class differ by 0.00–0.04 and those of two classes by 0.1–0.7, so the judge ranks the
    classes rightly without saturating. A colder judge saturates on views of the wrong class, where its gradient
    vanishes and guidance stalls: in guided 32×32 toy edits (2 views, 75 steps, 24 samples), 21 of 24 samples
    reached the prompt's class at 0.2 and 23 of 24 at 0.3; at 0.01 none of 10 did.
    """
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list, *, temperature: float = 0.3,
                 image_size: int = 224):
        super().__init__()
        self.register_buffer("images", images)   # (N, 3, H, W) in [−1, 1]
        self.register_buffer("labels", labels)   # (N,) class index of each image
        self.tokenizer = ToyTokenizer(class_names)
        self.temperature = temperature
        self.image_size = image_size             # S, the side of the views; CLIP's 224 by default
        self.set_mask(None)

    def set_mask(self, mask: torch.Tensor | None) -> "ToyJudge":
        """Judge only the region where mask (1, 1, H, W) is 1, at the size H × W of the images to be edited."""
        self.mask = None if mask is None else mask.float()
        self._references = None
        return self

    def references(self) -> torch.Tensor:
        """(N, 3, S, S): each photograph as `clip_loss` would present it, masked and pooled to S (kept until
        `set_mask`, or until S or the device changes)."""
        key = (self.image_size, self.images.device)
        if self._references is not None and self._references[0] == key:
            return self._references[1]
        size = tuple(self.mask.shape[-2:]) if self.mask is not None else (self.image_size, self.image_size)
        photos = self.images
        if tuple(photos.shape[-2:]) != size:
            photos = F.interpolate(photos, size=size, mode="bilinear", antialias=True, align_corners=False)
        if self.mask is not None:
            photos = F.adaptive_avg_pool2d(photos * self.mask.to(photos.device), self.image_size)
        self._references = (key, photos.double())
        return self._references[1]

    def image_encoder(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) CLIP-normalised views -> (N, K) class probabilities (class docstring)."""
        mean = torch.tensor(CLIP_MEAN, dtype=torch.float64, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=torch.float64, device=pixels.device).view(1, 3, 1, 1)
        views = ((pixels.double() * std + mean) * 2 - 1).flatten(1)                    # (N, D) in [−1, 1]
        references = self.references().flatten(1)                                     # (M, D)
        # ‖v − r‖² = ‖v‖² − 2·v·r + ‖r‖², then a mean over the masked pixels: ÷ (D · masked fraction)
        squared = ((views**2).sum(1, keepdim=True) - 2 * views @ references.T
                   + (references**2).sum(1)[None])                                     # (N, M)
        fraction = 1.0 if self.mask is None else float(self.mask.mean().clamp_min(1e-12))
        distances = squared / (views.shape[1] * fraction)
        weights = torch.softmax(-distances / self.temperature, dim=1)                  # (N, M)
        classes = F.one_hot(self.labels, len(self.tokenizer.class_names)).double()     # (M, K)
        return (weights @ classes).to(pixels.dtype)                                    # (N, K)

    def text_embeddings(self, prompts) -> torch.Tensor:
        """Prompts -> (n, K) unit vectors on the classes each prompt names ("" names every class)."""
        return F.normalize(self.tokenizer(prompts).to(self.images.device), dim=-1)


@dataclass(frozen=True)
class ToyPixelSpec:
    """The pixel toy's spec: the fields a Blended Diffusion run reads (as weights.adm.AdmSpec's)."""
    name: str = "toy"
    image_size: int = 128            # the side of the data set's images; any size runs
    respacing: str = "100"           # the official script's
    judge: str = "toy"
    notes: str = "exact unconditional posterior-mean denoiser of 12 photographs on ADM's schedule, and a toy judge"

    def build_diffusion(self, respacing: str | None = None):
        """samplers.GaussianDiffusion with ADM's linear schedule, respaced (`respacing` or the spec's "100")."""
        return GaussianDiffusion.adm(respacing or self.respacing)


def load_toy_pixel(*, device="cpu", folder: Path = TOY_PHOTOS):
    """(model, judge, spec) of Blended Diffusion's toy over the images in `folder`: ToyPixelModel, ToyJudge (tell
    it the mask with `judge.set_mask`), ToyPixelSpec."""
    images, labels, class_names = load_toy_images(folder)
    denoiser = ToyDenoiser(images, labels, adm_linear_schedule())
    model = ToyPixelModel(denoiser, len(class_names)).to(device)
    judge = ToyJudge(images, labels, class_names).to(device)
    return model, judge, ToyPixelSpec()
