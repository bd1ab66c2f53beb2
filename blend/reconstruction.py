"""Background reconstruction (paper §4.2): undo the autoencoder's loss of detail outside the mask.

Algorithm 1 keeps the background exact in latent space, but D(z) is lossy: decoded, the kept
region no longer equals the source photograph x. Three remedies, best and slowest first:

  decoder fine-tuning   a copy of D, tuned on this one image (paper §4.2; official LDM code)
  latent optimisation   z itself tuned, D fixed (the official code's cheaper "latents" mode)
  pixel paste           x̂⊙m + x⊙(1−m): exact background, visible seams

Both optimisations minimise, with images in [−1, 1], x̂ = D(z) the edited image, m the pixel mask,

    L = MSE(D'(z')⊙m, x̂⊙m) + λ·MSE(D'(z')⊙(1−m), x⊙(1−m)),   λ = 100

i.e. keep the edit inside the mask and match the source outside it. The loaded decoder is never
changed. `vae.decode` takes latents in E's units (the editor divides by the scale factor first).
"""
import copy

import torch
import torch.nn.functional as F

MODES = ("none", "pixel", "latent", "decoder")


def background_loss(decoded, edited, source, mask, preservation_weight: float = 100.0) -> torch.Tensor:
    """L = MSE(D(z)⊙m, x̂⊙m) + λ·MSE(D(z)⊙(1−m), x⊙(1−m)) (paper §4.2; mean over all elements)."""
    keep_edit = F.mse_loss(decoded * mask, edited * mask)
    keep_background = F.mse_loss(decoded * (1 - mask), source * (1 - mask))
    return keep_edit + preservation_weight * keep_background


def paste_background(edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x̂⊙m + x⊙(1−m): the source's pixels outside the mask (the official code's "pixel" mode)."""
    return edited * mask + source * (1 - mask)


def decoder_parameters(vae) -> list:
    """The decoder's parameters, the ones §4.2 tunes; a ValueError when there are none (the toy's identity)."""
    parameters = list(vae.decoder.parameters()) if hasattr(vae, "decoder") else []
    if not parameters:
        raise ValueError(f"decoder fine-tuning needs a decoder with weights; this autoencoder ({type(vae).__name__}) "
                         "has none. Use 'latent' or 'pixel' reconstruction.")
    return parameters


def finetune_decoder(vae, z: torch.Tensor, edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                     steps: int = 75, lr: float = 1e-4) -> torch.Tensor:
    """Decode z with a copy of the decoder tuned for 75 Adam steps (lr 1e-4) on `background_loss`.

    z: (B, 4, h, w) unscaled latents; edited = vae.decode(z), source: (1 or B, 3, H, W) in [−1, 1];
    mask: (1, 1, H, W) pixel mask, 1 = edit. Each image of the batch gets its own copy.
    Returns the decoded images, (B, 3, H, W).
    """
    decoder_parameters(vae)   # before any copy is made
    results = []
    for index in range(z.shape[0]):
        tuned = copy.deepcopy(vae).to(torch.float32)  # the loaded decoder stays untouched; Adam wants fp32
        parameters = decoder_parameters(tuned)
        tuned.requires_grad_(False)
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(parameters, lr=lr)
        results.append(_optimise(tuned, z[index:index + 1].float(), edited[index:index + 1].float(),
                                 _row(source, index).float(), mask.float(), optimizer, steps))
    return torch.cat(results).to(z.dtype)


def optimise_latent(vae, z: torch.Tensor, edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                    steps: int = 75, lr: float = 0.1) -> torch.Tensor:
    """Decode a copy of z tuned for `steps` Adam steps (lr 0.1) on `background_loss`; D stays fixed.

    Shapes as in `finetune_decoder`. Returns the decoded images, (B, 3, H, W).
    """
    latent = z.detach().clone().requires_grad_(True)
    frozen = [p for p in vae.parameters() if p.requires_grad] if isinstance(vae, torch.nn.Module) else []
    for parameter in frozen:
        parameter.requires_grad_(False)  # only z learns; restored below
    try:
        optimizer = torch.optim.Adam([latent], lr=lr)
        return _optimise(vae, latent, edited, source, mask, optimizer, steps)
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


def _optimise(vae, z, edited, source, mask, optimizer, steps: int) -> torch.Tensor:
    """`steps` steps of `optimizer` on background_loss(vae.decode(z), …); returns the final decode."""
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            background_loss(vae.decode(z), edited, source, mask).backward()
            optimizer.step()
    with torch.no_grad():
        return vae.decode(z).detach()


def _row(images: torch.Tensor, index: int) -> torch.Tensor:
    """Row `index` of a batch, or the single image of a batch of one."""
    return images[:1] if images.shape[0] == 1 else images[index:index + 1]
