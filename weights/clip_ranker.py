"""The CLIP model that ranks edits (paper §4.4): `load_clip(source)` -> clip.CLIPModel.

    load_clip("ViT-B/16")                     openai/clip-vit-base-patch16, model.safetensors (~600 MB)
    load_clip("ViT-L/14")                     openai/clip-vit-large-patch14, model.safetensors (~1.7 GB)
    load_clip("path/to/model.safetensors")    a local copy of either; the architecture is read from its shapes
    load_clip("tiny")                         deterministic random weights, for tests and offline runs

The published files are transformers' CLIPModel, whose keys split into our two towers:

    vision_model.*, visual_projection.weight    -> CLIPModel.image_encoder   (clip.ImageEncoder)
    text_model.*,   text_projection.weight      -> CLIPModel.text_encoder    (clip.TextEncoder, "sd1" layout)
    logit_scale                                 ignored: CLIP's softmax temperature; ranking needs no logits
    {text,vision}_model.embeddings.position_ids ignored when present: integer buffers 0..n−1 that older
                                                transformers saved with the weights

Any other key, a missing key or a shape that differs is an error naming the file. Hub
files come through `huggingface_hub.hf_hub_download`, so its cache, token and
`HF_HUB_OFFLINE` behave as for any other Hub download.
"""
from functools import partial
from pathlib import Path

import torch

from clip import CLIP_NAMES, IMAGE_CONFIGS, CLIPModel, ImageEncoder, TextEncoder
from clip.model import TEXT_CONFIGS

from .errors import NotAModelError, StateDictMismatchError, UnknownSourceError
from .hub import download_file
from .materialize import assign_weights, build_empty, open_safetensors
from .random_init import fill_random_

# name -> (Hub repository, file, size of the file for messages)
HUB_FILES = {
    "ViT-B/16": ("openai/clip-vit-base-patch16", "model.safetensors", "600 MB"),
    "ViT-L/14": ("openai/clip-vit-large-patch14", "model.safetensors", "1.7 GB"),
}
IGNORED_KEYS = ("logit_scale", "text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
TINY_CLIP_SEEDS = {"image_encoder": 5, "text_encoder": 6}
PARTS = {"image_encoder": ("vision_model.", "visual_projection."), "text_encoder": ("text_model.", "text_projection.")}


def load_clip(source: str | Path = "ViT-B/16", *, dtype: torch.dtype | None = None,
              device: str | torch.device = "cpu") -> CLIPModel:
    """A CLIP model for ranking, from a name ("ViT-B/16", "ViT-L/14", "tiny") or a local .safetensors file."""
    dtype, device = dtype or torch.float32, torch.device(device)
    if source == "tiny":
        model = CLIPModel("tiny")
        for part, seed in TINY_CLIP_SEEDS.items():
            fill_random_(getattr(model, part), seed)
        return model.to(device=device, dtype=dtype).eval()
    if isinstance(source, str) and source in HUB_FILES:
        name, path = source, download(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UnknownSourceError(f"{str(source)!r} is neither a CLIP model name ({', '.join(CLIP_NAMES)}) nor "
                                     f"an existing file (looked for {path.resolve()})")
        if path.suffix != ".safetensors":
            raise NotAModelError(f"{path}: expected a transformers CLIPModel .safetensors file, such as "
                                 f"model.safetensors of {' or '.join(repo for repo, _, _ in HUB_FILES.values())}")
        name = None
    tensors = open_safetensors(path)
    parts = split_parts(tensors, path)
    name = name or detect_architecture(parts, path)
    model = build_empty(lambda: CLIPModel(name))
    for part, part_tensors in parts.items():
        expected = _shapes(getattr(model, part))
        if _shapes_of(part_tensors) != expected:
            raise StateDictMismatchError(_mismatch(path, name, part, part_tensors, expected))
        assign_weights(getattr(model, part), part_tensors, file=path, part=f"CLIP {part}", dtype=dtype, device=device)
    return model.eval()


def split_parts(tensors: dict, file) -> dict:
    """{"image_encoder": {...}, "text_encoder": {...}} from a CLIPModel file's tensors, IGNORED_KEYS dropped."""
    parts = {part: {} for part in PARTS}
    unknown = []
    for key, tensor in tensors.items():
        if key in IGNORED_KEYS:
            continue
        part = next((p for p, prefixes in PARTS.items() if key.startswith(prefixes)), None)
        if part is None:
            unknown.append(key)
        else:
            parts[part][key] = tensor
    absent = [part for part, part_tensors in parts.items() if not part_tensors]
    if unknown or absent:
        raise NotAModelError(f"{file}: not a transformers CLIPModel file: {len(unknown)} key(s) belong to neither "
                             f"tower ({', '.join(sorted(unknown)[:5])}); tower(s) without weights: "
                             f"{', '.join(absent) or 'none'}. Expected vision_model.*, visual_projection.weight, "
                             f"text_model.*, text_projection.weight (and logit_scale), as in "
                             f"{HUB_FILES['ViT-B/16'][0]}/{HUB_FILES['ViT-B/16'][1]}.")
    return parts


def detect_architecture(parts: dict, file) -> str:
    """The name of the CLIP model whose key shapes the file's tensors have exactly."""
    found = {part: _shapes_of(tensors) for part, tensors in parts.items()}
    for name in CLIP_NAMES:                     # "tiny" too: files of the test architecture load as well
        towers = {"image_encoder": build_empty(partial(ImageEncoder, IMAGE_CONFIGS[name])),
                  "text_encoder": build_empty(partial(TextEncoder, TEXT_CONFIGS[name]))}
        if all(_shapes(towers[part]) == shapes for part, shapes in found.items()):
            return name
    patch = found["image_encoder"].get("vision_model.embeddings.patch_embedding.weight")
    raise NotAModelError(f"{file}: a CLIPModel file, but not of an architecture this loader has "
                         f"({', '.join(CLIP_NAMES)}); its patch embedding is {patch}. Ranking supports OpenAI's "
                         f"ViT-B/16 and ViT-L/14.")


def download(name: str) -> Path:
    """The local path of `name`'s published file, from the Hugging Face cache or the Hub."""
    repo, filename, size = HUB_FILES[name]
    return download_file(repo, filename, what=f"CLIP {name}, used to rank the results", size=size,
                         pass_it=f"blend.rank(..., clip_model='DIR/{filename}')",
                         otherwise="rank with another model you have, or do not rank")


def _shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _shapes_of(tensors: dict) -> dict:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _mismatch(file, name: str, part: str, tensors: dict, expected: dict) -> str:
    found = _shapes_of(tensors)
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    shaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    lines = [f"{file}: the weights of CLIP {name}'s {part} do not match it."]
    for label, keys in (("missing from the file", missing), ("unexpected in the file", unexpected),
                        ("shape differs", shaped)):
        if keys:
            lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}")
    lines.append(f"  Check that the file is {HUB_FILES[name][1]} of {HUB_FILES[name][0]} (transformers' CLIPModel).")
    return "\n".join(lines)
