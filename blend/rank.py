"""Ranking the results by CLIP (paper §4.4): the official LDM code's `_get_sorted_results_by_CLIP`.

Blended Latent Diffusion makes several results per edit; some fail. The paper ranks them by
how well the edited region alone matches the prompt:

    masked  = result ⊙ m                      in [0, 1]: the background turns black
    score   = 1 − cos(f(masked), g(prompt))    f, g: CLIP's image and text embeddings

and shows the lowest score first. m is the pixel mask (1 = edited), thresholded at 0.5 as
the official code does. The official code resizes the masked result straight to 224 × 224
(bilinear); we prepare it as CLIP was trained (clip/preprocess.py: shortest side to 224,
bicubic, centre crop), which is the same crop for square images. Its ranker is ViT-B/16.
"""
import torch
from PIL import Image

from clip import CLIPModel, cosine_distance

from .images import images_to_tensor, read_mask


def rank(images: list | torch.Tensor, prompt: str, mask, clip_model: str = "ViT-B/16", *,
         ranker: CLIPModel | None = None) -> tuple[list[int], list[float]]:
    """Order `images` by the CLIP distance of their masked region to `prompt`, best (lowest) first.

    images: a list of PIL images, or an (N, 3, H, W) tensor in [−1, 1].
    mask: a path, PIL image, array or tensor at the images' size (another size is resized, nearest), 1 = edited,
        read by blend.images.read_mask.
    clip_model: the CLIP model's name, "ViT-B/16" (default, the official code's), "ViT-L/14", "tiny" (random
        weights, for tests), or a local model.safetensors of either; loaded by weights.clip_ranker.load_clip.
        Unused when `ranker`, an already built clip.CLIPModel, is given.
    Returns (order, scores): order[k] is the index in `images` of the k-th best result and
    scores[k] its distance 1 − cos, so scores ascend. Equal scores keep the input order.
    """
    pixels = as_batch(images)                                                    # (N, 3, H, W)
    pixel_mask = torch.from_numpy(read_mask(mask, (pixels.shape[-1], pixels.shape[-2])))  # (H, W) of 0/1
    masked = masked_result(pixels, pixel_mask)
    if ranker is None:               # after the inputs are checked: a bad mask fails before any download
        from weights.clip_ranker import load_clip  # only ranking with a named model needs the loader
        ranker = load_clip(clip_model)
    with torch.no_grad():
        distances = cosine_distance(ranker.image_embeddings(masked), ranker.text_embeddings([prompt]))[:, 0]
    order = torch.argsort(distances.cpu(), stable=True)
    return order.tolist(), distances.cpu()[order].tolist()


def masked_result(images: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """result ⊙ m in [0, 1] units, kept in [−1, 1]: (x + 1)·m − 1, so the background becomes black (−1)."""
    m = pixel_mask.to(images.device, images.dtype)
    return (images + 1) * m - 1


def as_batch(images) -> torch.Tensor:
    """A list of PIL images (one size) or an (N, 3, H, W) tensor -> an (N, 3, H, W) float tensor in [−1, 1]."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        return images.float()
    images = list(images)
    if not images or not all(isinstance(image, Image.Image) for image in images):
        raise ValueError("expected a non-empty list of PIL images or an (N, 3, H, W) tensor")
    if len({image.size for image in images}) != 1:
        raise ValueError(f"all images must have one size to share the mask; got {sorted({i.size for i in images})}")
    return images_to_tensor(images)
