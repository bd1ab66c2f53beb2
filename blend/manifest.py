"""The manifest of `python -m blend.batch`: one edit per line, checked whole before any work.

A manifest is a JSON Lines file: each non-blank line is one JSON object

    {"id": "cat-01", "image": "images/01.jpg", "mask": "masks/01.png", "prompt": "a cat"}

with an optional "seed" (0 … 2**64 − 1), an optional "method" (blend.options.METHODS: "bld", "sdedit",
"repaint", "diffedit", "inpaint", "blended-diffusion" or "local-clip"; default: the command line's
--method) and optional per-item options that override the command line's, under the flags' names: for
the latent methods "steps", "guidance", "sampler", "size" and "mask-from"; for "bld" also "start",
"variant", "shrink", "reconstruction"; "strength" for "sdedit" and "inpaint", "jump-length" and
"jump-n-sample" for "repaint", "encode-ratio" for "diffedit"; for "blended-diffusion" and "local-clip",
"skip-timesteps", "respacing", "clip-guidance", "range-loss", "views", "ddim" and (local-clip only)
"background-loss"; "samples" for all. An option that the line's method does not take is refused, naming
the method that takes it (blend.options.METHOD_OPTIONS); the command line's options that the line's
method does not take do not apply to the line. Relative image and mask paths are taken from the
manifest's folder. A "sampler" that the line's (or the command line's) "variant" or method cannot run is
refused like any option out of range. Without "steps" (or with "steps": null) and without --steps, a line runs
the steps of the sampler it runs (blend.options.default_steps: 30 for "dpm++2m", 50 for the others and repaint).

"mask-from": a reference text ("" for the unconditional model): the item's mask is estimated from its
prompt against it (DiffEdit's step 1), written as <id>/mask-from.png. It replaces "mask": a line with
both is refused, and so is a line with "mask" when the command line gives --mask-from (for its method).
A "sdedit" line may leave "mask" out: SDEdit uses none (a mask given is what --rank and grid.png read).

Each method runs its own kind of model: --model when given (toy serves every method but inpaint), else
the method's default (blend.options.DEFAULT_MODELS: sd-2.1-base for bld, sdedit, repaint and diffedit,
sd-2-inpainting for inpaint, adm-256-uncond for the pixel methods).

  id      the item's folder name under --out: letters, digits and . _ - + = @ , (not first a dot),
          at most 200 characters, unique (also ignoring case, for case-insensitive file systems)
  seed    default: the first 8 bytes of SHA-256(id) read as a big-endian integer (`default_seed`),
          so that an item's result depends on its id and options only, not on which process runs it

Every line is checked (JSON, keys, types, and the merged options through blend.options'
`option_problem`), and every problem is reported with its line number. Whether an image can be
read is not checked here: an unreadable image or an empty mask fails that item only, at run time.

The file is read as JSON Lines defines it: UTF-8 (a leading byte-order mark, as Notepad and PowerShell
write, is accepted), lines end at "\n" (a "\r" before it is JSON whitespace), the last line may lack
its newline; blank lines are skipped. `text_lines` and `output_blocker` serve blend.evaluate too.
"""
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .options import (
    DEFAULT_MODELS,
    LATENT_METHODS,
    METHOD_OPTIONS,
    method_problem,
    option_problem,
    pixel_option_problem,
)

REQUIRED = ("id", "image", "mask", "prompt")
# A line's option keys (the flags' names) → the editor's keywords: edit()'s for the latent methods, edit_pixels()'s
# for the others
OVERRIDES = {"steps": "steps", "guidance": "guidance_scale", "start": "start", "samples": "num_samples",
             "variant": "variant", "sampler": "sampler", "shrink": "shrink", "reconstruction": "reconstruction",
             "size": "size", "strength": "strength", "jump-length": "jump_length", "jump-n-sample": "jump_n_sample",
             "encode-ratio": "encode_ratio", "mask-from": "mask_from"}
PIXEL_OVERRIDES = {"samples": "num_samples", "skip-timesteps": "skip_timesteps", "respacing": "respacing",
                   "clip-guidance": "clip_guidance_scale", "range-loss": "range_scale", "views": "num_views",
                   "ddim": "ddim", "background-loss": "background_loss"}
FLAG_KEYS = ("shrink", "ddim", "background-loss")   # true or false
ID_PATTERN = re.compile(r"[A-Za-z0-9_+=@,-][A-Za-z0-9._+=@,-]{0,199}")
RESERVED_IDS = ("failures.jsonl",)


class ManifestError(ValueError):
    """Bad manifest lines: `problems` holds one "MANIFEST line N: ..." sentence per problem."""

    def __init__(self, problems: list):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Item:
    """One edit of the manifest: `options` are the keyword arguments (command line, then the line's) of the
    method's editor: blend.edit for the latent methods, blend.pixel_editor.edit_pixels for the pixel methods.
    `mask` is None where the mask is estimated ("mask-from") or, for "sdedit", not given."""
    line: int
    id: str
    image: Path
    mask: Path | None
    prompt: str
    seed: int
    options: dict = field(default_factory=dict)
    method: str = "bld"


def default_seed(item_id: str) -> int:
    """The seed of an item without one: SHA-256 of the id (UTF-8), first 8 bytes, big-endian (0 … 2**64 − 1)."""
    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big")


def text_lines(path, what: str, expected: str) -> list:
    """The lines of the UTF-8 text file `path` (a BOM accepted), split at "\n" only, "\r" kept.

    Lines end at "\n" alone, as JSON Lines says: str.splitlines() would also cut at U+2028, U+0085 and
    others, which JSON allows raw inside a string. ValueError names the file, says what it is (`what`)
    and what was `expected`, when it is missing, a folder, unreadable or not UTF-8.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; expected {expected}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {what} {path}: {error.strerror or error}; expected {expected}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ValueError(f"{what} {path} is not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); "
                         f"expected {expected}: save it as UTF-8") from None
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def output_blocker(path) -> Path | None:
    """The file that `path` or one of its folders would have to be, or None: the nearest existing
    ancestor-or-self of `path` when that is not a folder (so "f/res" with f a file gives f, not f/res)."""
    path = Path(path)
    for place in (path, *path.parents):
        if place.exists() or place.is_symlink():
            return None if place.is_dir() else place
    return None


def read_manifest(path, options: dict, model="toy", method: str = "bld") -> list:
    """The items of the manifest at `path`, each with `options` overridden by its line.

    options: the command line's, as the editors' keywords (edit()'s and edit_pixels()'s); an item keeps those of
    its method. model: --model, or None for each method's default. method: --method, a line's default.
    Raises ManifestError naming every bad line, or the file, before anything is done.
    """
    path = Path(path)
    try:
        lines = text_lines(path, "the manifest", "a UTF-8 JSON Lines file, one edit per line")
    except ValueError as error:
        raise ManifestError([str(error)]) from None
    items, problems, seen = [], [], {}
    for number, text_line in enumerate(lines, start=1):
        if not text_line.strip():
            continue
        try:
            item = parse_line(text_line, number, path.parent, options, model, method)
        except ValueError as error:
            problems.append(f"{path} line {number}: {error}")
            continue
        items.append(item)
        earlier = seen.setdefault(item.id.casefold(), number)
        if earlier != number:
            problems.append(f"{path} line {number}: the id {item.id!r} is already used on line {earlier} (ids name "
                            f"folders, and may not differ only in case); give each item its own id")
    if not items and not problems:
        problems.append(f"{path}: the manifest has no items; expected one JSON object per line, like "
                        f'{{"id": "cat-01", "image": "photo.jpg", "mask": "mask.png", "prompt": "a cat"}}')
    if problems:
        raise ManifestError(problems)
    return items


def parse_line(text: str, number: int, folder: Path, options: dict, model, method: str = "bld") -> Item:
    """Line `number` of a manifest in `folder` as an Item; ValueError says what is wrong with it."""
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error}); expected one object per line, like "
                         f'{{"id": "cat-01", "image": "photo.jpg", "mask": "mask.png", "prompt": "a cat"}}') from None
    if not isinstance(entry, dict):
        raise ValueError(f"expected a JSON object with the keys {', '.join(REQUIRED)}, found a "
                         f"{type(entry).__name__}")
    missing = [key for key in REQUIRED if key not in entry and key != "mask"]
    if missing:
        raise ValueError(f"missing {', '.join(repr(key) for key in missing)}; every line needs "
                         f"{', '.join(REQUIRED)} (or \"mask-from\" in place of \"mask\")")
    options_keys = {**OVERRIDES, **PIXEL_OVERRIDES}
    unknown = sorted(set(entry) - set(REQUIRED) - {"seed", "method"} - set(options_keys))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(repr(key) for key in unknown)}; a line may hold "
                         f"{', '.join(REQUIRED)}, 'seed', 'method' and the options {', '.join(options_keys)} "
                         f"(--model, --rank and --dtype apply to the whole run)")
    for key in (*REQUIRED, "mask-from"):
        if key in entry and not isinstance(entry[key], str):
            raise ValueError(f'"{key}": expected a string, found {json.dumps(entry[key])}')
    item_id = entry["id"]
    if not ID_PATTERN.fullmatch(item_id) or item_id in RESERVED_IDS:
        raise ValueError(f'"id": {json.dumps(item_id)} cannot name a folder under --out; expected up to 200 letters, '
                         f"digits and . _ - + = @ , not starting with a dot (and not {', '.join(RESERVED_IDS)})")
    for key in ("image", "mask"):
        if key in entry and not entry[key].strip():
            raise ValueError(f'"{key}": expected a path to a file, found an empty string')
    for key in FLAG_KEYS:
        if key in entry and not isinstance(entry[key], bool):
            raise ValueError(f'"{key}": expected true or false, found {json.dumps(entry[key])}')
    method = entry.get("method", method)
    problem = method_problem(method, set(entry), manifest=True)
    if problem:
        raise ValueError(problem)
    overrides = OVERRIDES if method in LATENT_METHODS else PIXEL_OVERRIDES
    if isinstance(entry.get("respacing"), int) and not isinstance(entry["respacing"], bool):
        entry["respacing"] = str(entry["respacing"])   # "respacing": 100 as "100"
    keys = {keyword: key for key, keyword in overrides.items()}

    def taken(key: str) -> bool:  # an option that every method takes, or one that this line's method takes
        return key not in METHOD_OPTIONS or method in METHOD_OPTIONS[key][0]

    merged = {name: value for name, value in options.items() if name in keys and taken(keys[name])}
    merged.update({overrides[key]: value for key, value in entry.items() if key in overrides})
    seed = entry.get("seed", default_seed(item_id))
    model = model if model is not None else DEFAULT_MODELS[method]
    if method in LATENT_METHODS:
        checked = {name: value for name, value in merged.items() if name != "shrink"}
        problem = option_problem(**checked, seed=seed, model=model, method=method, manifest=True) \
            or mask_problem(entry, method, merged.get("mask_from"))
    else:
        problem = pixel_option_problem(**merged, method=method, seed=seed, model=model, manifest=True) \
            or (None if "mask" in entry else "missing 'mask'; every line of a pixel method needs one")
    if problem:
        raise ValueError(problem)
    mask = folder / Path(entry["mask"]).expanduser() if "mask" in entry else None
    return Item(number, item_id, folder / Path(entry["image"]).expanduser(), mask, entry["prompt"], seed, merged,
                method)


def mask_problem(entry: dict, method: str, mask_from) -> str | None:
    """Why a latent method's line has the wrong mask fields, or None: "mask" or "mask-from" (the line's, or the
    command line's --mask-from), not both; "sdedit" may have neither."""
    if "mask" in entry and mask_from is not None:
        where = '"mask-from"' if "mask-from" in entry else "the command line's --mask-from"
        return (f'"mask" and {where} were both given: "mask-from" estimates the mask from the prompt against its '
                f'reference text, in place of a painted one. Give one of them')
    if "mask" not in entry and mask_from is None and method != "sdedit":
        return (f"missing 'mask'; a line of \"method\": {json.dumps(method)} needs \"mask\" (white = edit) or "
                f'"mask-from" (a reference text, "" for the unconditional model); only "sdedit" runs without one')
    if mask_from is not None and mask_from.strip() == entry["prompt"].strip():
        return (f'"mask-from": {json.dumps(mask_from)} is the prompt itself: the mask is where the prompt and the '
                f'reference text predict different noise, so it would be empty. Give what the region shows now, or '
                f'"" for the unconditional model')
    return None
