"""Getting a preset's files from the Hugging Face Hub repositories that publish them.

Only the files the loader reads come down: the configs, the tokenizer tables and one
safetensors file per network (the `.fp16` variant when float16 is asked for, so half the
bytes). Everything goes through `huggingface_hub.snapshot_download`, so its cache
(`HF_HOME`, `HF_HUB_CACHE`), its progress bars, its token and `HF_HUB_OFFLINE` all work
as for any other Hub download.

A preset has one or more sources (`ModelSpec.sources`): repositories with the same files
under the same names. `fetch` tries them in two passes:

1. the cache: each source in turn, with no network. A source whose cache holds every file
   wins, so a cache filled from any source loads, online or offline, and nothing is downloaded;
2. the Hub (unless HF_HUB_OFFLINE is set): each source in turn. A source that is gone
   (a deleted repository answers 401, which huggingface_hub reports as RepositoryNotFoundError,
   "private or gated"), unreachable, or lacking files moves on to the next.

When none gives the files, the error names every source and what it answered, and says how
to get the files from the first source. It is an `OfflineError` when the Hub could not be
reached or HF_HUB_OFFLINE is set (with network the same call may work), and otherwise a
`SourcesUnavailableError` (every source answered, and none had the files).

Published layout (checked against the repositories' file listings; see weights/LOADING.md):

    model_index.json
    scheduler/scheduler_config.json
    unet/config.json            unet/diffusion_pytorch_model[.fp16].safetensors
    vae/config.json             vae/diffusion_pytorch_model[.fp16].safetensors
    text_encoder/config.json    text_encoder/model[.fp16].safetensors
    tokenizer/vocab.json  merges.txt  special_tokens_map.json  tokenizer_config.json
"""
from pathlib import Path

from .errors import OfflineError, SourcesUnavailableError, WeightsError

CONFIG_FILES = ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
                "text_encoder/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json")
WEIGHT_STEMS = {"unet": "unet/diffusion_pytorch_model", "vae": "vae/diffusion_pytorch_model",
                "text_encoder": "text_encoder/model"}
# What a source can answer, other than the files. "gone" and "incomplete" are final answers;
# "absent" (not cached, no network asked) and "unreachable" (network error, server error) may change.
FINAL_ANSWERS = ("gone", "incomplete")


class HubSourced:
    """What a spec with `sources` (Hub repositories holding the same files, tried in order) says of the first one."""

    @property
    def hub_repo(self) -> str | None:
        """The first source's repository: the one to name in download instructions."""
        return self.sources[0].repo if self.sources else None

    @property
    def single_file(self) -> str | None:
        """The published single file's path in the first source's repository."""
        return self.sources[0].single_file if self.sources else None


class Unusable(Exception):
    """One source did not give the files: `kind` (see FINAL_ANSWERS) and a short `answer` for the message."""

    def __init__(self, kind: str, answer: str):
        super().__init__(answer)
        self.kind, self.answer = kind, answer


def weight_files(fp16: bool) -> list[str]:
    suffix = ".fp16" if fp16 else ""
    return [f"{stem}{suffix}.safetensors" for stem in WEIGHT_STEMS.values()]


def fetch(spec, *, fp16: bool) -> Path:
    """The local folder (a snapshot in the Hub cache) holding the diffusers files of one of `spec.sources`.

    With fp16, a network whose source has no `.fp16` file falls back to the full-precision one.
    """
    from huggingface_hub import constants

    answers = {source.repo: [] for source in spec.sources}
    passes = [True] if constants.HF_HUB_OFFLINE else [True, False]
    for local_only in passes:
        for source in spec.sources:
            try:
                return complete_snapshot(source.repo, fp16, local_only)
            except Unusable as failure:
                answers[source.repo].append(failure)
    raise unavailable(spec, answers, fp16)


def fetch_single_file(spec) -> Path:
    """The local path of `spec.single_file` from the first of `spec.sources` that gives it (cache first, as
    `fetch`). SDXL's preset loads this way: `sd_xl_base_1.0.safetensors` holds every network (in float16),
    and its VAE is the 1.0 one, which the repository's `vae/` folder is not."""
    from huggingface_hub import constants
    answers = {source.repo: [] for source in spec.sources}
    passes = [True] if constants.HF_HUB_OFFLINE else [True, False]
    for local_only in passes:
        for source in spec.sources:
            try:
                file = snapshot(source.repo, [source.single_file], local_only) / source.single_file
                if file.is_file():
                    return file
                raise Unusable("absent" if local_only else "incomplete",
                               f"{'the cache' if local_only else 'the repository'} lacks {source.single_file}")
            except Unusable as failure:
                answers[source.repo].append(failure)
    error = unavailable(spec, answers, fp16=False)
    message = str(error).split("\nTo fix it")[0] + (
        f"\nTo fix it, run `hf download {spec.hub_repo} {spec.single_file}` on a machine with network and copy "
        f"its cache (HF_HOME) here, or pass the downloaded file itself: weights.load('path/to/{spec.single_file}').")
    raise type(error)(message, error.attempts)


def fetch_files(repo: str, files: list[str]) -> Path:
    """The snapshot folder of `repo` holding `files`, from the cache or else the Hub (one repository, no
    alternatives: used for SDXL's fp16-fix VAE). Raises OfflineError or SourcesUnavailableError with the
    `hf download` command."""
    from huggingface_hub import constants
    failures = []
    for local_only in [True] if constants.HF_HUB_OFFLINE else [True, False]:
        try:
            folder = snapshot(repo, files, local_only)
            missing = [f for f in files if not (folder / f).is_file()]
            if not missing:
                return folder
            raise Unusable("absent" if local_only else "incomplete", f"lacks {', '.join(missing)}")
        except Unusable as failure:
            failures.append(failure)
    final = failures[-1].kind in FINAL_ANSWERS
    error = SourcesUnavailableError if final and not constants.HF_HUB_OFFLINE else OfflineError
    raise error(f"could not get {', '.join(files)} from {repo}: {'; '.join(f.answer for f in failures)}. On a machine "
                f"with network run `hf download {repo} {' '.join(files)}` and copy its cache (HF_HOME) here, or "
                f"download with --local-dir DIR and pass DIR.", [(repo, failures[-1].answer)])


def complete_snapshot(repo: str, fp16: bool, local_only: bool) -> Path:
    """`repo`'s snapshot folder if it holds every file `fetch` needs; else Unusable says what it lacks."""
    wanted = [*CONFIG_FILES, *weight_files(fp16)]
    folder = snapshot(repo, wanted, local_only)
    if fp16:
        fallback = [f"{stem}.safetensors" for stem in WEIGHT_STEMS.values()
                    if not (folder / f"{stem}.fp16.safetensors").is_file()]
        if fallback:
            folder = snapshot(repo, fallback, local_only)
            wanted = [f for f in wanted if not (f.endswith(".fp16.safetensors") and not (folder / f).is_file())]
            wanted += fallback
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        where = "the cache" if local_only else "the repository"
        raise Unusable("absent" if local_only else "incomplete",
                       f"{where} lacks {len(missing)} file(s): {', '.join(missing)}")
    return folder


def snapshot(repo: str, files: list[str], local_only: bool) -> Path:
    """snapshot_download of `files`, with each way it can fail turned into an Unusable answer."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo, allow_patterns=list(files), local_files_only=local_only))
    except IncompleteSnapshotError as error:
        raise Unusable("absent", f"the cached snapshot is incomplete ({first_line(error)})") from None
    except LocalEntryNotFoundError as error:
        if local_only:
            raise Unusable("absent", "not in the cache") from None
        if constants.HF_HUB_OFFLINE:
            raise Unusable("absent", "not in the cache, and HF_HUB_OFFLINE is set") from None
        raise Unusable("unreachable", f"the Hub could not be reached ({first_line(error)})") from None
    except HfHubHTTPError as error:     # RepositoryNotFoundError and GatedRepoError included
        status = error.response.status_code if getattr(error, "response", None) is not None else None
        if isinstance(error, RepositoryNotFoundError) or status in (401, 404):
            raise Unusable("gone", f"the Hub answered {status} ({type(error).__name__}): the repository is gone, "
                                   f"or private or gated") from None
        raise Unusable("unreachable", f"the Hub answered {status} ({first_line(error)})") from None


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def unavailable(spec, answers: dict, fp16: bool) -> SourcesUnavailableError:
    """The error when no source gave the files: every source and what it answered, then how to fix it."""
    from huggingface_hub import constants

    attempts = [(repo, "; ".join(f.answer for f in failures)) for repo, failures in answers.items()]
    final = all(failures[-1].kind in FINAL_ANSWERS for failures in answers.values())
    offline = constants.HF_HUB_OFFLINE or not final
    tried = "; ".join(f"{repo}: {answer}" for repo, answer in attempts)
    first = spec.hub_repo
    shown = " ".join([*CONFIG_FILES, *weight_files(fp16)])
    lines = [f"could not get the files of preset {spec.name!r} from any of its {len(attempts)} source(s) - {tried}.",
             f"The Hugging Face cache at {constants.HF_HUB_CACHE} holds no complete copy from any of them."]
    if constants.HF_HUB_OFFLINE:
        lines.append("HF_HUB_OFFLINE is set, so nothing is downloaded.")
    if any(failures[-1].kind == "gone" for failures in answers.values()):
        lines.append("A repository that answers 401 or 404 was deleted, or is private or gated (for a gated one, "
                     "accept its licence on huggingface.co and log in with `hf auth login`).")
    lines += [
        "To fix it, either:",
        f"  - on a machine with network, run `hf download {first} {shown}` (or weights.load({spec.name!r})) "
        f"and copy its cache directory (HF_HOME) here; or",
        f"  - download into a folder with `hf download {first} {shown} --local-dir DIR` and call "
        f"weights.load('DIR'); or",
        f"  - load a single-file checkpoint you have: weights.load('path/to/{spec.single_file}')."]
    return (OfflineError if offline else SourcesUnavailableError)("\n".join(lines), attempts)


def download_file(repo: str, filename: str, *, what: str, size: str, pass_it: str, otherwise: str) -> Path:
    """The local path of one published file, from the Hugging Face cache or the Hub, or one paragraph saying why not.

    what: what the file is and what it is for ("CLIP ViT-B/16, used to rank the results"); pass_it: how to
    give a downloaded copy instead ("blend.rank(..., clip_model='DIR/model.safetensors')"); otherwise: the
    last way out ("rank with another model you have, or do not rank").
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo, filename))
    except LocalEntryNotFoundError as error:
        if constants.HF_HUB_OFFLINE:
            reason = "HF_HUB_OFFLINE is set, so nothing is downloaded"
        else:
            reason = f"the Hub could not be reached ({str(error).splitlines()[0]})"
        raise OfflineError(
            f"could not get {filename} of {repo} ({what}, {size}): {reason}, and the Hugging Face cache at "
            f"{constants.HF_HUB_CACHE} does not hold it.\n"
            f"To fix it, either:\n"
            f"  - on a machine with network, run `hf download {repo} {filename}` and copy its cache "
            f"directory (HF_HOME) here; or\n"
            f"  - run `hf download {repo} {filename} --local-dir DIR` and pass the file itself: {pass_it}; or\n"
            f"  - {otherwise}.") from None
    except (RepositoryNotFoundError, GatedRepoError, EntryNotFoundError) as error:
        raise WeightsError(f"{filename} of the Hub repository {repo} ({what}) could not be opened "
                           f"({type(error).__name__}). If it moved, download the file yourself and pass its "
                           f"path: {pass_it}.") from None
    except HfHubHTTPError as error:
        raise WeightsError(f"downloading {filename} of {repo} failed: {error}. Retry later, or pass a local "
                           f"path.") from None
