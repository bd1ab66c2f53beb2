"""OpenAI's unconditional ImageNet 256² diffusion model (ADM, Dhariwal & Nichol 2021), the network Blended
Diffusion edits with: its preset "adm-256-uncond" (`AdmSpec`) and `load_pixel_model`, which loads it with its
CLIP judge.

The weights are published only as a pickle, `256x256_diffusion_uncond.pt`: an OrderedDict of float32 tensors
saved by torch.save (2.21 GB; SHA-256 a37c32ff…78b1, the file OpenAI published on openaipublic in July 2021).
The preset's sources, tried in this order (their Hub pages, checked 2026-12-07):

    omriav/blended-diffusion   checkpoints/256x256_diffusion_uncond.pt   Blended Diffusion's authors' copy, the
                                                                        download their README links since 2024-06
    sj98/DiffuseIT             256x256_diffusion_uncond.pt              its page gives SHA-256 a37c32ff…78b1

Loading the preset:

1. the file comes from the Hugging Face cache, else the Hub (`weights.hub.fetch_single_file`: every source's
   cache first, then each source online);
2. the first time, with no converted file beside it: its SHA-256 is checked against the spec's (streamed, so
   2.2 GB never sit in memory); the pickle is read with `torch.load(weights_only=True, map_location="cpu")`,
   which rebuilds tensors and nothing else (nothing in the file is executed); its keys and shapes are checked
   against `ADMUNet` built on the meta device; then it is written once as `256x256_diffusion_uncond.safetensors`
   beside it in the cache (`weights.pickle_checkpoint.convert_checkpoint`: through a temporary file, never over
   an existing one), as the paper's LDM is (weights/ldm_txt2img.py);
3. the `.safetensors` is memory-mapped and assigned into the meta-built network (weights/materialize.py).

Every later load does 1 and 3 only: no hashing, no unpickling.

A path is the user's own file. A `.safetensors` is read as it is; a `.pt`/`.pth`/`.ckpt`/`.bin` is read with
`torch.load(weights_only=True)` in memory, neither converted nor hashed (its bytes need not be OpenAI's: a
fine-tuned copy loads too). Either is checked key by key and shape by shape against the preset's network.
"""
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from adm import ADMConfig, ADMUNet
from samplers import GaussianDiffusion

from .errors import (
    CorruptFileError,
    NotAModelError,
    SourcesUnavailableError,
    StateDictMismatchError,
    UnknownSourceError,
    UnsupportedModelError,
)
from .hub import HubSourced, fetch_single_file
from .materialize import assign_weights, build_empty, open_safetensors
from .pickle_checkpoint import PICKLE_SUFFIXES, convert_checkpoint, read_pickle

if TYPE_CHECKING:
    from .presets import HubSource

NAME = "adm-256-uncond"
OPENAI_SHA256 = "a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1"  # 256x256_diffusion_uncond.pt
HASH_CHUNK = 16 * 2**20          # bytes read at a time while hashing


@dataclass(frozen=True)
class AdmSpec(HubSourced):
    """A pixel-space ADM model: its network, the diffusion it was trained with, where its weights come from.

    The fields a run reads: `image_size` (the side it was trained at), `respacing` (Blended Diffusion's default
    number of steps, "100"), `judge` (the CLIP model that guides and ranks, "ViT-B/16" as in BD).
    """
    name: str
    unet: ADMConfig
    image_size: int = 256
    sources: "tuple[HubSource, ...]" = ()   # Hub repositories holding the same file, tried in this order
    sha256: str | None = None               # of the published pickle; checked before it is converted
    respacing: str = "100"
    judge: str = "ViT-B/16"
    num_train_timesteps: int = 1000
    notes: str = field(default="", compare=False)

    # No text tower and no autoencoder. `text` is None so that code that looks through every preset for a
    # latent model's text tower (weights.single_file.choose_preset) passes this one by.
    text = None

    @property
    def size_multiple(self) -> int:
        """What each side of an image must divide by: 2^(levels − 1), 32 for the 256² model."""
        return self.unet.downsampling_factor

    def build_unet(self) -> ADMUNet:
        """The network, randomly initialised (2.2 GB in float32: build it under weights.materialize.build_empty
        to get shapes only)."""
        return ADMUNet(self.unet)

    def build_diffusion(self, respacing: str | None = None) -> GaussianDiffusion:
        """The linear-β diffusion over `num_train_timesteps` steps, respaced to `respacing` (default the spec's)."""
        return GaussianDiffusion.adm(respacing=respacing or self.respacing, num_timesteps=self.num_train_timesteps)


@dataclass
class PixelComponents:
    """A loaded pixel-space model: the network (x_t, t) -> (B, 6, H, W) = [ε | v], the judge (a
    clip.CLIPModel-like object that guides and ranks), and the spec (AdmSpec, or the toy's)."""
    model: nn.Module
    judge: object
    spec: object


def load_pixel_model(source: str | Path = NAME, *, dtype: torch.dtype | None = None,
                     device: str | torch.device = "cpu", judge: str | Path | None = None) -> PixelComponents:
    """The model that Blended Diffusion and Local CLIP-guided diffusion run on, with its judge.

    source: "adm-256-uncond" (the preset: the cache, else the Hub), "toy" (weights.toy's exact model of a dozen
        photographs and its differentiable judge: offline, seconds), or a path to ADM 256² weights
        (`.safetensors`, or a `.pt` pickle read with torch.load(weights_only=True)).
    dtype: of the network's and the CLIP judge's weights (default float32). The toy computes in float64 whatever
        is asked.
    judge: None for the model's own (the preset's spec.judge, "ViT-B/16"; the toy's judge), else a name or a
        file for weights.clip_ranker.load_clip ("ViT-B/16", "ViT-L/14", "tiny", a .safetensors).

    Nothing is trained here: every parameter has requires_grad False, so a guidance gradient with respect to
    the image does not also accumulate 550 M parameter gradients.
    """
    from .clip_ranker import load_clip

    if isinstance(source, str) and source == "toy":
        from .toy import load_toy_pixel
        model, toy_judge, spec = load_toy_pixel(device=device)
        chosen = toy_judge if judge is None else load_clip(judge, dtype=dtype, device=device)
    else:
        model, spec = load_adm(source, dtype=dtype, device=device)
        chosen = load_clip(judge if judge is not None else spec.judge, dtype=dtype, device=device)
    for network in (model, chosen):
        if isinstance(network, nn.Module):
            network.requires_grad_(False).eval()
    return PixelComponents(model, chosen, spec)


def load_adm(source: str | Path = NAME, *, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu") -> tuple[ADMUNet, AdmSpec]:
    """(network, spec) from the preset's name or a file of its weights (module docstring)."""
    from . import presets

    dtype, device = dtype or torch.float32, torch.device(device)
    if isinstance(source, str) and source in presets.NAMES:
        spec = presets.get(source)
        if not isinstance(spec, AdmSpec):
            raise UnsupportedModelError(f"{source!r} is a latent diffusion model, not a pixel-space one: load it "
                                        f"with weights.load({source!r}) and edit with --method bld; Blended "
                                        f"Diffusion and Local CLIP-guided diffusion run on {NAME!r} or 'toy'")
        network = build_empty(spec.build_unet)       # parameters on meta: shapes, no memory
        file = converted(fetch(spec), spec, network)
        tensors = open_safetensors(file)
    else:
        spec = presets.get(NAME)
        network = build_empty(spec.build_unet)
        file = Path(source).expanduser()
        tensors = read_local(file, source)
        spec = replace(spec, notes=f"weights from {file}")
    check_tensors(tensors, network, spec, file)
    network = assign_weights(network, tensors, file=file, part="ADM UNet", dtype=dtype, device=device)
    return network, spec


# ----------------------------------------------------------------------------- the preset's file
def fetch(spec: AdmSpec) -> Path:
    """The published pickle from the first source that gives it: the cache, else the Hub."""
    try:
        return fetch_single_file(spec)
    except SourcesUnavailableError as error:    # keep what each source answered, say how to go on
        tried = str(error).split("\nTo fix it")[0]
        name = Path(spec.single_file).name
        raise type(error)(
            f"{tried}\nTo fix it, either:\n"
            f"  - on a machine with network, run `hf download {spec.hub_repo} {spec.single_file}` and copy its "
            f"cache directory (HF_HOME) here; or\n"
            f"  - download the file (`hf download {spec.hub_repo} {spec.single_file} --local-dir DIR`, or OpenAI's "
            f"{name} from wherever you have it) and pass its path: weights.load_pixel_model('DIR/{spec.single_file}')"
            f" (python -m blend: --model DIR/{spec.single_file}); or\n"
            f"  - run offline on the toy model: weights.load_pixel_model('toy') (python -m blend: --model toy).",
            error.attempts) from None


def converted(pickle_file: Path, spec: AdmSpec, network: nn.Module) -> Path:
    """The `.safetensors` beside `pickle_file`; the first time, the pickle is hashed, read, checked and converted.

    Two processes converting at once: the second finds the name taken when it links its file
    (convert_checkpoint never overwrites) and uses the first one's file, which was complete when linked.
    """
    target = pickle_file.with_suffix(".safetensors")
    if target.exists():
        return target
    if spec.sha256 is not None:
        check_sha256(pickle_file, spec.sha256, spec)
    check_tensors(read_pickle(pickle_file), network, spec, pickle_file)   # memory-mapped: reads the shapes only
    try:
        convert_checkpoint(pickle_file, target)
    except FileExistsError:
        if not target.exists():
            raise
    return target


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, read HASH_CHUNK bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, spec: AdmSpec) -> None:
    """Refuse a download whose bytes are not the published file's, before anything reads it as a checkpoint."""
    found = sha256_of(path)
    if found != expected:
        size = path.stat().st_size
        raise CorruptFileError(
            f"{path}: not the published {Path(spec.single_file).name} of {spec.name!r}: its SHA-256 is {found} "
            f"({size:,} bytes), expected {expected}. The download was probably cut short or damaged, or the "
            f"repository now holds another file. Nothing was converted. Delete it and download it again "
            f"(`hf download {spec.hub_repo} {spec.single_file} --force-download`); if the hash still differs, "
            f"get OpenAI's 256x256_diffusion_uncond.pt elsewhere (another source: "
            f"{', '.join(f'{s.repo}/{s.single_file}' for s in spec.sources[1:]) or 'none listed'}) and pass its "
            f"path to weights.load_pixel_model.")


# ----------------------------------------------------------------------------- a file given by path
def read_local(path: Path, source) -> dict[str, torch.Tensor]:
    """The tensors of the user's own weights file: `.safetensors` memory-mapped, a pickle with weights_only=True."""
    if path.is_file() and path.suffix == ".safetensors":
        return open_safetensors(path)
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        return read_pickle(path)
    if path.is_file():
        raise NotAModelError(f"{path}: not a weights file this loader reads; expected ADM 256² weights as "
                             f".safetensors or as a torch.save'd .pt (OpenAI's 256x256_diffusion_uncond.pt)")
    raise UnknownSourceError(f"{str(source)!r} is neither a pixel-space model name ({NAME!r}, 'toy') nor an "
                             f"existing file (looked for {path.resolve()})")


# ----------------------------------------------------------------------------- keys and shapes
def check_tensors(tensors: dict, network: nn.Module, spec: AdmSpec, file) -> None:
    """Strict: the file's keys and shapes are exactly those of `network` (built on meta: no memory is read)."""
    expected = {k: tuple(v.shape) for k, v in network.state_dict(keep_vars=True).items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    shaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if not (missing or unexpected or shaped):
        return
    lines = [f"{file}: not the weights of {spec.name!r} (OpenAI's unconditional 256² ADM): its tensors do not "
             f"match the network built for them."]
    for label, keys in (("missing from the file", missing), ("unexpected in the file", unexpected)):
        if keys:
            lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}")
    if shaped:
        shown = "; ".join(f"{k} file {found[k]} vs model {expected[k]}" for k in shaped[:5])
        lines.append(f"  shape differs ({len(shaped)}): {shown}{', ...' if len(shaped) > 5 else ''}")
    if "label_emb.weight" in unexpected:
        lines.append("  It has a class embedding (label_emb): a class-conditional ADM (256x256_diffusion.pt or "
                     "512x512_diffusion.pt), which this preset is not.")
    lines.append("  Pass 256x256_diffusion_uncond.pt (guided-diffusion's unconditional ImageNet 256² model), or "
                 "its .safetensors conversion.")
    raise StateDictMismatchError("\n".join(lines))


def latent_editor_refusal(name: str) -> UnsupportedModelError:
    """The error weights.load gives for a pixel-space preset: the latent editor needs an autoencoder and a
    text encoder, which ADM has not."""
    return UnsupportedModelError(
        f"{name} is a pixel-space model for --method blended-diffusion/local-clip: it has no autoencoder and no "
        f"text encoder, so Blended Latent Diffusion (--method bld, weights.load) cannot run it. Use "
        f"`python -m blend --method blended-diffusion --model {name}` or weights.load_pixel_model({name!r}); "
        f"for --method bld pick a latent model (sd-2.1-base, ldm-txt2img-f8-large, toy, ...).")
