"""The errors `weights.load` raises. Each names the file or source and says what to do next.

All derive from `WeightsError`, so `except weights.WeightsError` catches every loading failure.
Each also derives from the built-in exception a caller would expect (FileNotFoundError,
ValueError, ConnectionError), so generic handlers still work.
"""


class WeightsError(Exception):
    """Base class of every error raised while loading weights."""


class UnknownSourceError(WeightsError, ValueError):
    """The source is neither a known model id nor an existing path."""


class NotAModelError(WeightsError, ValueError):
    """A path exists but holds no model this loader can read (wrong folder, wrong file type)."""


class CorruptFileError(WeightsError, ValueError):
    """A checkpoint or config file is empty, truncated or damaged (a safetensors header, a config.json)."""


class SourcesUnavailableError(WeightsError):
    """No source of a preset gave its files: each Hub repository was gone, gated, or lacked files.

    `attempts` holds (repository, what it answered) for every source tried, in order; the message
    names them all."""

    def __init__(self, message: str, attempts=()):
        super().__init__(message)
        self.attempts = list(attempts)


class OfflineError(SourcesUnavailableError, ConnectionError):
    """No source gave the files and the Hub could not be reached (or HF_HUB_OFFLINE is set):
    with network, or with a cache filled elsewhere, the same call may succeed."""


class PickleRefusedError(WeightsError, ValueError):
    """A pickle checkpoint (.ckpt, .pt, .bin) was given and pickles are refused by default."""


class StateDictMismatchError(WeightsError, ValueError):
    """The file's tensors do not match the module built for it: missing, unexpected or mis-shaped keys."""


class UnsupportedModelError(WeightsError, ValueError):
    """The files describe an architecture that this implementation does not have."""


def _first(names, count: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(names[:count])
    return shown + (f", ... ({len(names) - count} more)" if len(names) > count else "")


def mismatch_message(file, part: str, missing, unexpected, mis_shaped: dict) -> str:
    """A readable report of a strict-loading failure: counts and the first few names of each kind."""
    lines = [f"{file}: the {part} weights do not match the {part} built for them."]
    if missing:
        lines.append(f"  missing from the file ({len(missing)}): {_first(missing)}")
    if unexpected:
        lines.append(f"  unexpected in the file ({len(unexpected)}): {_first(unexpected)}")
    if mis_shaped:
        shown = [f"{k} file {tuple(f)} vs model {tuple(m)}" for k, (f, m) in sorted(mis_shaped.items())[:5]]
        more = f", ... ({len(mis_shaped) - 5} more)" if len(mis_shaped) > 5 else ""
        lines.append(f"  shape differs ({len(mis_shaped)}): " + "; ".join(shown) + more)
    lines.append("  Check that the file is a Stable Diffusion 1.x/2.x checkpoint of the kind named "
                 "(an inpainting, SDXL or LoRA file has other keys), or pass the right preset.")
    return "\n".join(lines)
