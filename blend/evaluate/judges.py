"""The judges of precision: what recognises the prompt's class in the crop of a result.

A judge has `class_names` (C names) and `scores(results, box, mask)`: for results (N, 3, H, W)
in [−1, 1], the crop window `box` and the pixel mask (H, W) of 1 = edited, it gives (N, C)
scores, higher = more that class.

* `CLIPJudge`: zero-shot CLIP (Radford et al. 2021, §3.1.4): the cosine between the crop's
  image embedding and the text embedding of "a photo of a {name}" for each class name. Its
  default model is ViT-L/14, not the ViT-B/16 that ranks the results (§4.4), so that the
  judge is not the ranker; its default classes are the 1000 ImageNet names
  (data/imagenet_classes.txt, SOURCES.md beside it).
* `ToyJudge`: for the exact toy model (weights/toy.py) only. The toy paints the masked region
  with the same region of one of its twelve photographs, so the judge asks which photograph the
  edited pixels are nearest to (mean squared difference over the mask's pixels, each photograph
  resized to the result's size as the toy does) and answers that photograph's class. It reads the
  mask, not the crop: the crop's background would vote for the source photograph. It measures the
  toy, and nothing else.
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from clip.tokenizer import EOS_ID

from .metrics import Box, crop

DATA = Path(__file__).resolve().parent / "data"
IMAGENET_CLASSES_FILE = DATA / "imagenet_classes.txt"
TEMPLATE = "a photo of a {}"
DEFAULT_JUDGE = "ViT-L/14"


def imagenet_class_names() -> list:
    """The 1000 ImageNet class names, in class-index order."""
    return IMAGENET_CLASSES_FILE.read_text(encoding="utf-8").splitlines()


class CLIPJudge:
    """Zero-shot CLIP over `class_names` with `template` (module docstring)."""

    def __init__(self, model, class_names=None, template: str = TEMPLATE, batch_size: int = 100):
        self.model, self.template = model, template
        self.class_names = list(class_names or imagenet_class_names())
        self.name = f"CLIP {getattr(model, 'name', '?')}"
        self.batch_size = batch_size
        self._text = None

    def text_embeddings(self) -> torch.Tensor:
        """(C, D) unit vectors of the prompts "a photo of a {name}", computed once.

        The text tower is causal and pools at the first EOS, so the positions after the longest
        prompt's EOS change nothing: the ids are cut there (about 4× fewer positions than 77).
        """
        if self._text is None:
            ids = self.model.tokenizer([self.template.format(name) for name in self.class_names])   # (C, 77)
            length = int((ids == EOS_ID).int().argmax(dim=1).max()) + 1
            tower = self.model.text_encoder
            device = tower.text_projection.weight.device
            with torch.no_grad():
                self._text = torch.cat([F.normalize(tower.pooled_embedding(ids[i:i + self.batch_size, :length]
                                                                           .to(device)).float(), dim=-1)
                                        for i in range(0, len(ids), self.batch_size)])
        return self._text

    def scores(self, results: torch.Tensor, box: Box, mask: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            images = self.model.image_embeddings(crop(results, box))           # (N, D), unit
        return images @ self.text_embeddings().to(images.device).T              # (N, C) cosines


class ToyJudge:
    """The nearest of the toy's photographs in the crop, and its class (module docstring)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list):
        self.images, self.labels, self.class_names = images, labels, list(class_names)
        self.name = "toy (nearest of its photographs)"

    def scores(self, results: torch.Tensor, box: Box, mask: torch.Tensor) -> torch.Tensor:
        photos = self.images
        if tuple(photos.shape[-2:]) != tuple(results.shape[-2:]):
            photos = F.interpolate(photos, size=tuple(results.shape[-2:]), mode="bilinear", antialias=True,
                                   align_corners=False)
        edited = (mask > 0.5).expand(3, *mask.shape)                           # (3, H, W)
        ours = results.double()[:, edited]                                     # (N, D): the edited pixels
        theirs = photos.double()[:, edited]                                    # (P, D)
        distance = torch.cdist(ours, theirs) ** 2 / ours.shape[1]              # (N, P) mean squared difference
        scores = torch.full((len(results), len(self.class_names)), -torch.inf, dtype=torch.float64)
        for index in range(len(self.class_names)):
            own = distance[:, self.labels == index]
            if own.shape[1]:
                scores[:, index] = -own.min(dim=1).values
        return scores


def toy_images():
    """(images (N, 3, H, W), labels (N,), class names) of the toy model's data set."""
    from weights.toy import load_toy_images
    return load_toy_images()


def load_judge(name: str = DEFAULT_JUDGE, *, class_names=None, device="cpu"):
    """"toy" -> ToyJudge; any other name ("ViT-L/14", "ViT-B/16", "tiny", a model.safetensors) -> CLIPJudge."""
    if name == "toy":
        return ToyJudge(*toy_images())
    from weights import OfflineError
    from weights.clip_ranker import HUB_FILES, load_clip
    try:
        model = load_clip(name, device=device)
    except OfflineError as error:          # the loader's paragraph speaks of ranking; this one of judging
        repo, filename, _ = HUB_FILES[name]
        first = str(error).splitlines()[0].replace("used to rank the results", "the judge of precision")
        raise OfflineError(
            f"{first}\nTo fix it, either:\n"
            f"  - on a machine with network, run `hf download {repo} {filename}` and copy its cache directory "
            f"(HF_HOME) here; or\n"
            f"  - run `hf download {repo} {filename} --local-dir DIR` and pass --judge DIR/{filename}; or\n"
            f"  - judge with another CLIP you have (--judge ViT-B/16, a model.safetensors), or, for the toy model's "
            f"results only, --judge toy.") from None
    return CLIPJudge(model, class_names)
