"""A small KL autoencoder with SD's 8× layout, trained for about a minute on one or two photographs.

Notebooks 04 and 05 use it to show what an 8× latent loses, and what the background reconstruction
of paper §4.2 recovers, without downloading Stable Diffusion's autoencoder. The network is
`ldm.AutoencoderKL` itself, only much narrower: 8 base channels instead of 128 and one res block per
level instead of two, but 4 latent channels at 1/8 of the image size, as in SD.

It is trained as a plain autoencoder on the posterior mean μ(x) = E(x).mean,

    L = mean ‖D(μ(x)) − x‖²,

on random crops of the photographs, with Adam and a one-cycle learning rate. LDM also adds a KL term
of weight 1e-6, a perceptual loss and a GAN; sampling z ~ q(z|x) from a freshly initialised posterior,
whose σ starts near 1, would drown the first few hundred steps in noise, and a KL weight of 1e-6 is
too small to matter here. A minute of CPU is far from SD's training, so the reconstructions are much
blurrier than SD's; the kind of loss (fine detail first) is the same.

The trained weights are cached in the system's temporary folder, keyed by this file, the photographs
and the arguments, so that running a notebook again skips the training.
"""
import hashlib
import inspect
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ldm import AutoencoderConfig, AutoencoderKL

CONFIG = AutoencoderConfig(ch=8, ch_mult=(1, 2, 4, 8), num_res_blocks=1, norm_groups=4)
CACHE = Path(tempfile.gettempdir()) / "bld_notebooks"


def random_crops(photos: torch.Tensor, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`count` size×size crops of random images of photos (N, 3, H, W), flipped left-right half of the time."""
    crops = []
    for _ in range(count):
        photo = photos[int(torch.randint(0, len(photos), (1,), generator=generator))][None]
        top = int(torch.randint(0, photo.shape[-2] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, photo.shape[-1] - size + 1, (1,), generator=generator))
        crop = photo[0, :, top:top + size, left:left + size]
        crops.append(crop.flip(-1) if torch.rand(1, generator=generator) < 0.5 else crop)
    return torch.stack(crops)


def train_tiny_autoencoder(photos: torch.Tensor, steps: int = 400, crop: int = 128, batch: int = 1,
                           lr: float = 3e-3, seed: int = 0, use_cache: bool = True):
    """An `AutoencoderKL(CONFIG)` trained on crops of photos (N, 3, H, W) in [−1, 1].

    Returns (vae in eval mode, list of the training losses). Adam with a one-cycle learning rate.
    """
    key = hashlib.sha1(inspect.getsource(inspect.getmodule(train_tiny_autoencoder)).encode()
                       + photos.numpy().tobytes() + repr((steps, crop, batch, lr, seed)).encode()
                       + torch.__version__.encode()).hexdigest()[:16]
    path = CACHE / f"tiny_autoencoder_{key}.pt"
    vae = AutoencoderKL(CONFIG)
    if use_cache and path.exists():
        saved = torch.load(path, weights_only=True)
        vae.load_state_dict(saved["state_dict"])
        return vae.eval(), saved["losses"]

    torch.manual_seed(seed)
    vae = AutoencoderKL(CONFIG)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    losses = []
    for _ in range(steps):
        x = random_crops(photos, batch, crop, generator)                 # (batch, 3, crop, crop)
        loss = F.mse_loss(vae.decode(vae.encode(x).mean), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval()
    if use_cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")  # written whole, then renamed: no torn reads
        torch.save({"state_dict": vae.state_dict(), "losses": losses}, partial)
        os.replace(partial, path)
    return vae, losses
