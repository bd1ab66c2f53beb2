"""The weights of LPIPS (blend.evaluate.LPIPS): torchvision's VGG16 ImageNet backbone and the lpips heads.

    lpips_backbone("vgg16")                      timm/vgg16.tv_in1k, model.safetensors (~553 MB): torchvision's
                                                 VGG16 ImageNet weights (IMAGENET1K_V1), as timm publishes them
    lpips_backbone("path/to/file.safetensors")   a local copy, in timm's or torchvision's layout
    lpips_heads(path)                            the linear heads, {lin<l>.model.1.weight: (1, C_l, 1, 1)}

The backbone file's keys are VGG16's `features.<n>.weight|bias` for the 13 convolutions
n = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, plus the classifier, which LPIPS does not
use: `pre_logits.fc1|fc2.*` and `head.fc.*` in timm's file (torchvision's `classifier.0|3|6.*`,
reshaped), or `classifier.*` in torchvision's own. They become LPIPS' names by the slice that
holds layer n: `features.5.weight` -> `net.slice2.5.weight` (blend/evaluate/lpips.py). Any other key,
a missing convolution or a shape that differs is an error naming the file. Hub files come through
`huggingface_hub.hf_hub_download`, so its cache, token and `HF_HUB_OFFLINE` apply.
"""
from pathlib import Path

from .errors import NotAModelError, StateDictMismatchError, UnknownSourceError
from .hub import download_file
from .materialize import open_safetensors

HUB_FILES = {"vgg16": ("timm/vgg16.tv_in1k", "model.safetensors", "553 MB")}
CONVOLUTIONS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
                14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
                28: (512, 512)}                        # features index -> (out, in) channels of its 3×3 kernel
SLICE_ENDS = (4, 9, 16, 23, 30)                        # slice k holds features [SLICE_ENDS[k-2], SLICE_ENDS[k-1])
CLASSIFIER_PREFIXES = ("pre_logits.", "head.", "classifier.")
HEAD_CHANNELS = (64, 128, 256, 512, 512)


def lpips_name(features_key: str) -> str:
    """`features.<n>.<weight|bias>` -> `net.slice<k>.<n>.<weight|bias>`, k the slice holding layer n."""
    _, index, kind = features_key.split(".")
    number = next(k for k, end in enumerate(SLICE_ENDS, start=1) if int(index) < end)
    return f"net.slice{number}.{index}.{kind}"


def expected_backbone_shapes() -> dict:
    shapes = {}
    for index, (out_channels, in_channels) in CONVOLUTIONS.items():
        shapes[f"features.{index}.weight"] = (out_channels, in_channels, 3, 3)
        shapes[f"features.{index}.bias"] = (out_channels,)
    return shapes


def lpips_backbone(source: str | Path = "vgg16") -> dict:
    """{net.slice<k>.<n>.weight|bias: tensor} of VGG16's 13 convolutions, from a name or a local file."""
    if isinstance(source, str) and source in HUB_FILES:
        path = download(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UnknownSourceError(f"{str(source)!r} is neither an LPIPS backbone name ({', '.join(HUB_FILES)}) "
                                     f"nor an existing file (looked for {path.resolve()})")
        if path.suffix != ".safetensors":
            raise NotAModelError(f"{path}: expected a VGG16 .safetensors file, such as "
                                 f"{HUB_FILES['vgg16'][1]} of {HUB_FILES['vgg16'][0]}")
    tensors = open_safetensors(path)
    expected = expected_backbone_shapes()
    unknown = sorted(k for k in tensors if k not in expected and not k.startswith(CLASSIFIER_PREFIXES))
    missing = sorted(expected.keys() - tensors.keys())
    shaped = sorted(k for k in expected.keys() & tensors.keys() if tuple(tensors[k].shape) != expected[k])
    if unknown or missing or shaped:
        lines = [f"{path}: not the VGG16 that LPIPS needs (torchvision's `features` layers, as in "
                 f"{HUB_FILES['vgg16'][1]} of {HUB_FILES['vgg16'][0]})."]
        for label, keys in (("missing from the file", missing), ("unexpected in the file", unknown),
                            ("shape differs", shaped)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}")
        raise StateDictMismatchError("\n".join(lines))
    return {lpips_name(key): tensors[key].float() for key in expected}


def lpips_heads(path: str | Path) -> dict:
    """{lin<l>.model.1.weight: (1, C_l, 1, 1)} from the vendored heads file."""
    path = Path(path)
    tensors = open_safetensors(path)
    expected = {f"lin{index}.model.1.weight": (1, channels, 1, 1) for index, channels in enumerate(HEAD_CHANNELS)}
    found = {key: tuple(tensor.shape) for key, tensor in tensors.items()}
    if found != expected:
        raise StateDictMismatchError(f"{path}: expected the five LPIPS v0.1 VGG heads {expected}, found {found}; "
                                     f"remake it with blend/evaluate/data/make_lpips_heads.py")
    return {key: tensor.float() for key, tensor in tensors.items()}


def download(name: str) -> Path:
    """The local path of `name`'s published file, from the Hugging Face cache or the Hub."""
    repo, filename, size = HUB_FILES[name]
    return download_file(repo, filename, size=size,
                         what="torchvision's VGG16 ImageNet weights, the backbone of LPIPS, which measures the "
                              "diversity of the results",
                         pass_it=f"--lpips DIR/{filename} (Python: load_lpips('DIR/{filename}'))",
                         otherwise="use --lpips random (random backbone weights: the command runs, but its "
                                   "diversity is not a perceptual distance)")
