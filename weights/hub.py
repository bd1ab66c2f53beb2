"""Getting a preset's files from its published Hugging Face Hub repository.

Only the files the loader reads come down: the configs, the tokenizer tables and one
safetensors file per network (the `.fp16` variant when float16 is asked for, so half the
bytes). Everything goes through `huggingface_hub.snapshot_download`, so its cache
(`HF_HOME`, `HF_HUB_CACHE`), its progress bars, its token and `HF_HUB_OFFLINE` all work
as for any other Hub download. A second call finds the files in the cache and does not
download again.

Published layout (checked against the repositories' file listings; see weights/LOADING.md):

    model_index.json
    scheduler/scheduler_config.json
    unet/config.json            unet/diffusion_pytorch_model[.fp16].safetensors
    vae/config.json             vae/diffusion_pytorch_model[.fp16].safetensors
    text_encoder/config.json    text_encoder/model[.fp16].safetensors
    tokenizer/vocab.json  merges.txt  special_tokens_map.json  tokenizer_config.json
"""
from pathlib import Path

from .errors import OfflineError, WeightsError

CONFIG_FILES = ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
                "text_encoder/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json")
WEIGHT_STEMS = {"unet": "unet/diffusion_pytorch_model", "vae": "vae/diffusion_pytorch_model",
                "text_encoder": "text_encoder/model"}


def weight_files(fp16: bool) -> list[str]:
    suffix = ".fp16" if fp16 else ""
    return [f"{stem}{suffix}.safetensors" for stem in WEIGHT_STEMS.values()]


def fetch(spec, *, fp16: bool) -> Path:
    """The local folder (a snapshot in the Hub cache) holding `spec.hub_repo`'s diffusers files.

    With fp16, a network whose repository has no `.fp16` file falls back to the full-precision one.
    """
    wanted = [*CONFIG_FILES, *weight_files(fp16)]
    folder = _snapshot(spec, wanted)
    if fp16:
        fallback = [f"{stem}.safetensors" for stem in WEIGHT_STEMS.values()
                    if not (folder / f"{stem}.fp16.safetensors").is_file()]
        if fallback:
            folder = _snapshot(spec, fallback)
            wanted = [f for f in wanted if not (f.endswith(".fp16.safetensors") and not (folder / f).is_file())]
            wanted += fallback
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        raise OfflineError(_missing_message(spec, missing, None))
    return folder


def _snapshot(spec, files: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, \
        RepositoryNotFoundError

    try:
        return Path(snapshot_download(spec.hub_repo, allow_patterns=list(files)))
    except LocalEntryNotFoundError as error:
        raise OfflineError(_missing_message(spec, files, error)) from None
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise WeightsError(f"the Hub repository {spec.hub_repo!r} of preset {spec.name!r} could not be opened "
                           f"({type(error).__name__}). If it is gated, accept its licence on huggingface.co and log "
                           f"in with `hf auth login`; if it moved, pass a local folder or single file instead.") \
            from None
    except HfHubHTTPError as error:
        raise WeightsError(f"downloading {spec.hub_repo!r} failed: {error}. Retry later, or pass a local path.") \
            from None


def _missing_message(spec, files, error) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set, so nothing is downloaded"
    elif error is not None:
        reason = f"the Hub could not be reached or lacks them ({str(error).splitlines()[0]})"
    else:
        reason = "they are neither in the cache nor in the repository"
    shown = " ".join(files)
    return (
        f"could not get {len(files)} file(s) of {spec.hub_repo} for preset {spec.name!r}: {reason}. "
        f"The Hugging Face cache at {constants.HF_HUB_CACHE} does not hold them.\n"
        f"To fix it, either:\n"
        f"  - on a machine with network, run `hf download {spec.hub_repo} {shown}` (or weights.load({spec.name!r})) "
        f"and copy its cache directory (HF_HOME) here; or\n"
        f"  - download into a folder with `hf download {spec.hub_repo} {shown} --local-dir DIR` and call "
        f"weights.load('DIR'); or\n"
        f"  - load a single-file checkpoint you have: weights.load('path/to/{spec.single_file}').")
