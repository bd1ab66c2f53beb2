"""Loading the paper's own model, CompVis's text-to-image LDM (preset "ldm-txt2img-f8-large").

It is published only as pickles, in two places (checked 2026-12-01):

    omriav/blended-latent-diffusion-ldm   model.ckpt (~5.7 GB), the original single-file layout:
                                              model.diffusion_model.*          the UNet (SD 1 layout, context 1280)
                                              first_stage_model.*              the KL-f8 autoencoder
                                              cond_stage_model.transformer.*   the BERT text encoder (ldm.bert)
                                          beside DDPM schedule buffers (single_file.SCHEDULE_BUFFERS)
    CompVis/ldm-text2im-large-256         the diffusers port: unet/ and vqvae/ (diffusion_pytorch_model.bin),
                                          bert/ (pytorch_model.bin, LDMBertModel names), tokenizer/vocab.txt

For these known sources, and only for them, a pickle is read with `torch.load(weights_only=True)`
(tensors only: nothing in the file is executed) and converted once to a `.safetensors` file beside
the download; every later load memory-maps that file. A pickle named by path elsewhere is still
refused unless `allow_pickle=True` (weights.pickle_checkpoint). The tokenizer's vocabulary comes
with the model files (the port's tokenizer/vocab.txt: bert-base-uncased's).
"""
from pathlib import Path

from .diffusers_keys import ldm_bert_from_diffusers, unet_from_diffusers, vae_from_diffusers
from .errors import OfflineError, SourcesUnavailableError, StateDictMismatchError, mismatch_message
from .hub import Unusable, snapshot
from .materialize import assign_weights, build_empty, open_safetensors
from .pickle_checkpoint import convert_checkpoint, read_pickle
from .single_file import UNET_PREFIX, VAE_PREFIX, is_non_weight

TEXT_PREFIX = "cond_stage_model.transformer."
PROBE = TEXT_PREFIX + "token_emb.weight"        # only this model's single files have it
PORT_WEIGHTS = {"unet": "unet/diffusion_pytorch_model", "vae": "vqvae/diffusion_pytorch_model",
                "text_encoder": "bert/pytorch_model"}
PORT_REPO = "CompVis/ldm-text2im-large-256"
PORT_FILES = ("unet/config.json", "vqvae/config.json", "bert/config.json", "tokenizer/vocab.txt")


def is_ldm_txt2img(tensors) -> bool:
    """Whether a single file's keys are this model's (its text encoder is the LDM's BERT)."""
    return PROBE in tensors


def looks_like_port(folder: Path) -> bool:
    return (folder / "bert").is_dir() and (folder / "vqvae").is_dir() and (folder / "unet").is_dir()


# ----------------------------------------------------------------------------- pickles, converted once
def cached_safetensors(pickle_file: Path) -> Path:
    """The `.safetensors` beside `pickle_file`, converted from it once (weights_only=True) if not there yet."""
    target = pickle_file.with_suffix(".safetensors")
    if not target.exists():
        convert_checkpoint(pickle_file, target)
    return target


def read_weights(stem: Path, *, convert: bool, allow_pickle: bool) -> tuple[Path, dict]:
    """(file, tensors) of `stem`.safetensors, else of `stem`.bin: converted once (convert=True, a known
    source) or read in memory (allow_pickle=True); else the pickle is refused."""
    safetensors, pickle_file = stem.with_suffix(".safetensors"), stem.with_suffix(".bin")
    if safetensors.exists():
        return safetensors, open_safetensors(safetensors)
    if pickle_file.exists() and convert:
        file = cached_safetensors(pickle_file)
        return file, open_safetensors(file)
    if pickle_file.exists() and allow_pickle:
        return pickle_file, read_pickle(pickle_file)
    if pickle_file.exists():
        from .pickle_checkpoint import refusal
        raise refusal(pickle_file)
    raise FileNotFoundError(f"{stem}.safetensors or .bin: missing; the diffusers port of the LDM has one per network")


# ----------------------------------------------------------------------------- building the networks
def split_single_file(tensors: dict, file) -> dict[str, dict]:
    """{"unet"|"vae"|"text_encoder": {our key: tensor}}; schedule buffers dropped, any other key an error."""
    prefixes = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_PREFIX}
    parts, stray = {part: {} for part in prefixes}, []
    for key, value in tensors.items():
        if is_non_weight(key):
            continue
        part = next((p for p, prefix in prefixes.items() if key.startswith(prefix)), None)
        if part is None:
            stray.append(key)
        else:
            parts[part][key[len(prefixes[part]):]] = value
    if stray:
        raise StateDictMismatchError(mismatch_message(file, "checkpoint", [], stray, {}))
    return parts


def build(spec, parts: dict, files: dict, tokenizer, *, dtype, device) -> tuple:
    """(unet, vae, text_encoder, tokenizer, spec): each network built empty and given its tensors, strictly."""
    builders = {"unet": spec.build_unet, "vae": spec.build_vae, "text_encoder": spec.build_text_encoder}
    networks = [assign_weights(build_empty(builders[part]), parts.pop(part), file=files[part], part=part,
                               dtype=dtype, device=device) for part in ("unet", "vae", "text_encoder")]
    return (*networks, tokenizer, spec)


def load_single_file(file: Path, tensors: dict, spec, *, vocab_file=None, dtype, device) -> tuple:
    """The model from its single file (model.ckpt converted, or any .safetensors of that layout)."""
    parts = split_single_file(tensors, file)
    del tensors
    return build(spec, parts, dict.fromkeys(parts, file), spec.build_tokenizer(vocab_file), dtype=dtype,
                 device=device)


def load_port(folder: Path, spec, *, convert: bool, allow_pickle: bool, dtype, device) -> tuple:
    """The model from the diffusers port's folder (unet/, vqvae/, bert/, tokenizer/vocab.txt)."""
    files, parts = {}, {}
    renames = {"unet": lambda t: unet_from_diffusers(t, spec.unet), "vae": lambda t: vae_from_diffusers(t, spec.vae),
               "text_encoder": lambda t: ldm_bert_from_diffusers(t, spec.text.layers)}
    for part, stem in PORT_WEIGHTS.items():
        files[part], tensors = read_weights(folder / stem, convert=convert, allow_pickle=allow_pickle)
        parts[part] = renames[part](tensors)
    return build(spec, parts, files, spec.build_tokenizer(folder / "tokenizer" / "vocab.txt"), dtype=dtype,
                 device=device)


# ----------------------------------------------------------------------------- the Hub
def _from_sources(spec, wanted: dict) -> tuple[str, Path]:
    """(repo, snapshot folder) of the first of `wanted` = {repo: files} whose files are cached, else downloaded."""
    from huggingface_hub import constants

    answers = {repo: [] for repo in wanted}
    for local_only in ([True] if constants.HF_HUB_OFFLINE else [True, False]):
        for repo, files in wanted.items():
            try:
                folder = snapshot(repo, list(files), local_only)
                missing = [f for f in files if not (folder / f).is_file()]
                if missing:
                    raise Unusable("absent" if local_only else "incomplete", f"lacks {', '.join(missing)}")
                return repo, folder
            except Unusable as failure:
                answers[repo].append(failure)
    tried = "; ".join(f"{repo}: {'; '.join(f.answer for f in failures)}" for repo, failures in answers.items())
    vocab_repo, vocab_file = spec.vocab_source
    fetch = " and ".join(f"`hf download {repo} {' '.join(files)}`"
                         for repo, files in [next(iter(wanted.items())), (vocab_repo, [vocab_file])])
    message = (f"could not get the files of {spec.name!r} - {tried}. On a machine with network, run "
               f"weights.load({spec.name!r}) (or {fetch}) and copy the Hugging Face cache (HF_HOME) here; or "
               f"download the diffusers port with `hf download {PORT_REPO} --local-dir DIR` and load DIR with "
               f"allow_pickle=True (python -m blend: --allow-pickle).")
    offline = constants.HF_HUB_OFFLINE or any(f[-1].kind not in ("gone", "incomplete") for f in answers.values())
    attempts = [(repo, "; ".join(f.answer for f in failures)) for repo, failures in answers.items()]
    raise (OfflineError if offline else SourcesUnavailableError)(message, attempts)


def fetch_vocabulary(spec) -> Path:
    """The model's vocab.txt, from the Hub cache (downloaded once, ~230 kB)."""
    repo, file = spec.vocab_source
    return _from_sources(spec, {repo: [file]})[1] / file


def load_preset(spec, *, dtype, device) -> tuple:
    """The preset's files from its sources in order (the author mirror's model.ckpt, then the diffusers
    port), each pickle converted once to a .safetensors beside it in the Hub cache."""
    single, port = spec.sources
    wanted = {single.repo: [single.single_file], port.repo: [*PORT_FILES, *(f"{s}.bin" for s in PORT_WEIGHTS.values())]}
    repo, folder = _from_sources(spec, wanted)
    if repo == single.repo:
        file = cached_safetensors(folder / single.single_file)
        return load_single_file(file, open_safetensors(file), spec, vocab_file=fetch_vocabulary(spec), dtype=dtype,
                                device=device)
    return load_port(folder, spec, convert=True, allow_pickle=False, dtype=dtype, device=device)
