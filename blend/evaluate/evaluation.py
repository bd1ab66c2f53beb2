"""`evaluate(results_dirs, manifest)`: the paper's Table 1 numbers for folders that `python -m blend.batch` wrote.

A results folder holds one folder per manifest id, `<id>/result_<k>.png`, and `<id>/ranking.txt`
when the results were ranked (its first line after the comment names the best result). The
manifest gives each id's mask and prompt; the prompt is the class name (blend/evaluate/benchmark.py
writes it so). Every input is checked before any model is loaded: the folders, each id's results,
each mask, and that each prompt names one of the judge's classes. "Checked" means read: every result
and mask is decoded (a truncated PNG is refused), each mask must mark a pixel at its results' size,
and each crop must be large enough for LPIPS (`LPIPS_MIN_SIZE`) when --lpips-size 0 keeps it as it is.
"""
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import EditInputError
from ..images import images_to_tensor, read_image, read_mask
from ..manifest import ID_PATTERN, text_lines
from .judges import DEFAULT_JUDGE, TEMPLATE, imagenet_class_names, load_judge, toy_images
from .lpips import load_lpips
from .metrics import PADDING, crop, crop_box, diversity, hits, precision

RESULT_NAME = re.compile(r"result_(\d+)\.png")
LPIPS_SIZE = 224
# VGG16 halves the size at each of the four max-pools before relu5_3, so LPIPS needs 2**4 pixels a side.
LPIPS_MIN_SIZE = 16


class EvaluationError(ValueError):
    """A results folder, manifest or option that cannot be evaluated; the message says which and why."""


@dataclass(frozen=True)
class Input:
    """One manifest line: the id, its mask and prompt, and the class the prompt names."""
    line: int
    id: str
    mask: Path
    prompt: str
    class_name: str


def class_of(prompt: str, class_names: list) -> str | None:
    """The class a prompt names: the prompt itself, or after "a photo of a(n) " / "a(n) ", case-insensitive."""
    by_lower = {name.lower(): name for name in class_names}
    text = prompt.strip().lower()
    for prefix in ("a photo of a ", "a photo of an ", "a photo of the ", "an ", "a ", "the ", ""):
        if text.startswith(prefix) and text[len(prefix):].strip() in by_lower:
            return by_lower[text[len(prefix):].strip()]
    return None


def read_inputs(manifest, class_names: list) -> list:
    """The manifest's lines as Inputs, or EvaluationError naming every bad line."""
    manifest = Path(manifest)
    try:
        lines = text_lines(manifest, "the manifest", "a UTF-8 JSON Lines file, one edit per line")
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    inputs, problems = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
            item_id, mask, prompt = entry["id"], entry["mask"], entry["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            problems.append(f"{manifest} line {number}: expected a JSON object with id, mask and prompt")
            continue
        wrong = [key for key in ("id", "mask", "prompt") if not isinstance(entry[key], str) or not entry[key].strip()]
        if wrong:
            problems += [f'{manifest} line {number}: "{key}": expected a non-empty string, found '
                         f"{json.dumps(entry[key])}" for key in wrong]
            continue
        if not ID_PATTERN.fullmatch(item_id):
            problems.append(f'{manifest} line {number}: "id": {json.dumps(item_id)} cannot name a results folder; '
                            f"expected an id as python -m blend.batch takes it (blend/manifest.py)")
            continue
        name = class_of(prompt, class_names)
        if name is None:
            problems.append(f"{manifest} line {number}: the prompt {prompt!r} names none of the judge's "
                            f"{len(class_names)} classes (e.g. {', '.join(repr(c) for c in class_names[:3])}); "
                            f"make the manifest with `python -m blend.evaluate make-benchmark`, whose prompts are "
                            f"class names, or pass the judge and --classes that name them")
            continue
        inputs.append(Input(number, item_id, manifest.parent / Path(mask).expanduser(), prompt, name))
    if not inputs and not problems:
        problems.append(f"{manifest}: the manifest has no lines")
    if problems:
        raise EvaluationError("\n".join(problems))
    return inputs


def result_files(folder: Path) -> list:
    """result_<k>.png of one input's folder, by k."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := RESULT_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def best_result(folder: Path) -> str | None:
    """The file name ranking.txt puts first (the lowest CLIP distance), or None when the input was not ranked."""
    ranking = folder / "ranking.txt"
    if not ranking.is_file():
        return None
    for line in text_lines(ranking, "the ranking", "the ranking.txt that python -m blend.batch --rank writes"):
        if line.strip() and not line.startswith("#"):
            return line.split()[0]
    return None


def check_folders(results_dirs, inputs, allow_missing: bool) -> dict:
    """{results folder: {id: [result files]}}; EvaluationError lists what is missing (unless allowed)."""
    found, problems = {}, []
    for folder in map(Path, results_dirs):
        if not folder.is_dir():
            problems.append(f"{folder}: expected a results folder written by `python -m blend.batch`, found "
                            f"{'a file' if folder.exists() else 'nothing'}")
            continue
        found[folder] = {}
        missing = []
        for item in inputs:
            files = result_files(folder / item.id) if (folder / item.id).is_dir() else []
            if files:
                found[folder][item.id] = files
            else:
                missing.append(item.id)
        if missing and not allow_missing:
            problems.append(f"{folder}: no result_<k>.png for {len(missing)} of the manifest's {len(inputs)} ids "
                            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); run the manifest "
                            f"with `python -m blend.batch`, or pass --allow-missing to score the others")
        elif len(missing) == len(inputs):
            problems.append(f"{folder}: none of the manifest's ids has results")
    for item in inputs:
        if not item.mask.is_file():
            problems.append(f"{item.mask}: the mask of {item.id!r} (manifest line {item.line}) does not exist")
    if problems:
        raise EvaluationError("\n".join(problems))
    return found


def check_files(found: dict, inputs: list, padding: float, lpips_size: int) -> None:
    """Read every result, mask and ranking.txt that the scoring will read; EvaluationError lists each that cannot.

    Each input's results must share one size; its mask must mark a pixel at that size; with lpips_size 0,
    its crop must be at least LPIPS_MIN_SIZE a side.
    """
    problems = []
    for folder, files_of in found.items():
        for item in inputs:
            if item.id not in files_of:
                continue
            sizes = {}
            for path in files_of[item.id]:
                try:
                    sizes[path] = read_image(path).size
                except EditInputError:
                    problems.append(f"{path}: cannot read this result of {item.id!r} as an image "
                                    f"({why_unreadable(path)}); expected a PNG as python -m blend.batch writes it: "
                                    f"remove {folder / item.id} and run the batch again to redo the item")
            if len(set(sizes.values())) > 1:
                problems.append(f"{folder / item.id}: the results differ in size ("
                                f"{', '.join(sorted({f'{w}x{h}' for w, h in sizes.values()}))}); expected one size "
                                f"per input, as python -m blend.batch writes them")
                continue
            try:
                best_result(folder / item.id)
            except ValueError as error:
                problems.append(str(error))
            if not sizes:
                continue
            size = next(iter(sizes.values()))
            try:
                mask = torch.from_numpy(read_mask(item.mask, size))
            except EditInputError as error:
                problems.append(f"manifest line {item.line} ({item.id!r}): {error}")   # the error names the file
                continue
            box = crop_box(mask, padding)
            if lpips_size == 0 and len(files_of[item.id]) > 1 and min(box.height, box.width) < LPIPS_MIN_SIZE:
                problems.append(f"{item.mask}: the crop of {item.id!r} is {box.width}x{box.height}, smaller than the "
                                f"{LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} that LPIPS needs; pass --lpips-size "
                                f"{LPIPS_MIN_SIZE} or more (default {LPIPS_SIZE}) to resize the crops")
    if problems:
        raise EvaluationError("\n".join(dict.fromkeys(problems)))


def why_unreadable(path: Path) -> str:
    """Pillow's reason for not decoding the image file `path` (read_image's message says more than a list needs)."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:        # the reason is all that is wanted, whatever Pillow raised
        return str(error) or type(error).__name__
    return "its pixels are in a mode that is not RGB"


def judge_classes(judge, class_names=None) -> list:
    """The names the judge chooses among, known before it is loaded."""
    if judge == "toy":
        return toy_images()[2]
    return list(class_names or imagenet_class_names())


def score_input(item: Input, files: list, judge, lpips, *, padding: float, lpips_size: int, ranker=None) -> dict:
    """The numbers of one input of one results folder."""
    images = [read_image(path) for path in files]
    if len({image.size for image in images}) != 1:
        raise EvaluationError(f"{files[0].parent}: the results differ in size; expected one size per input")
    results = images_to_tensor(images)                                            # (N, 3, H, W) in [−1, 1]
    with warnings.catch_warnings():                                               # check_files warned once
        warnings.simplefilter("ignore")
        mask = torch.from_numpy(read_mask(item.mask, images[0].size))             # (H, W), 1 = edited
    box = crop_box(mask, padding)
    scores = judge.scores(results, box, mask)                                     # (N, C)
    top1 = hits(scores, judge.class_names, item.class_name, 1)
    top5 = hits(scores, judge.class_names, item.class_name, 5)
    names = [path.name for path in files]
    best, ranked_by = best_result(files[0].parent), "ranking.txt"
    if best is None and ranker is not None:        # rank here, as python -m blend --rank does (paper §4.4)
        from ..rank import rank
        best, ranked_by = names[rank(results, item.prompt, item.mask, ranker=ranker)[0][0]], f"CLIP {ranker.name}"
    return {"id": item.id, "prompt": item.prompt, "class": item.class_name, "results": names,
            "box": [box.top, box.left, box.height, box.width],
            "top1": [judge.class_names[i] for i in scores.argmax(dim=1).tolist()],
            "hits": top1.tolist(), "hits_top5": top5.tolist(), "best": best, "ranked_by": ranked_by if best else None,
            "best_hit": bool(top1[names.index(best)]) if best in names else None,
            "diversity": diversity(lpips, crop(results, box), lpips_size)}


def summarise(name: str, folder: Path, per_input: list) -> dict:
    """Batch precision (top-1, top-5), batch diversity and best-result precision of one results folder."""
    all_hits = [h for record in per_input for h in record["hits"]]
    all_top5 = [h for record in per_input for h in record["hits_top5"]]
    diversities = [r["diversity"] for r in per_input if r["diversity"] is not None]
    best = [r["best_hit"] for r in per_input if r["best_hit"] is not None]
    return {"name": name, "folder": str(folder), "inputs": len(per_input), "results": len(all_hits),
            "batch_precision": precision(all_hits), "batch_precision_top5": precision(all_top5),
            "batch_diversity": sum(diversities) / len(diversities) if diversities else None,
            "best_result_precision": precision(best) if best else None, "ranked_inputs": len(best),
            "per_input": per_input}


def evaluate(results_dirs, manifest, *, names=None, judge: str = DEFAULT_JUDGE, class_names=None,
             lpips: str = "vgg16", padding: float = PADDING, lpips_size: int = LPIPS_SIZE,
             allow_missing: bool = False, rank: str | None = None, device="cpu", judge_model=None,
             lpips_model=None) -> dict:
    """Score each results folder against the manifest; returns the report that blend.evaluate.report renders.

    judge: "ViT-L/14" (default), "ViT-B/16", "tiny", a CLIP model.safetensors, or "toy" (the toy model's
        results only); or an already built judge as judge_model. class_names: the judge's classes
        (default: the 1000 ImageNet names). lpips: "vgg16" (default), a VGG16 .safetensors, "random";
        or an already built blend.evaluate.LPIPS as lpips_model. rank: a CLIP name or file that ranks the
        results of inputs without a ranking.txt (default: those inputs have no best result).
    """
    results_dirs = [Path(d) for d in results_dirs]
    if not results_dirs:
        raise EvaluationError("expected at least one results folder")
    names = list(names) if names else [d.name or str(d) for d in results_dirs]
    if len(names) != len(results_dirs):
        raise EvaluationError(f"--names: {len(names)} names for {len(results_dirs)} results folders; expected one "
                              f"name per folder, comma-separated")
    if not all(name.strip() for name in names):
        raise EvaluationError(f"--names: found an empty name in {','.join(names)!r}; expected one name per folder")
    problem = device_problem(device)
    if problem:
        raise EvaluationError(problem)
    if not 0 <= padding <= 10:
        raise EvaluationError(f"--padding {padding}: expected a fraction of the crop's side in [0, 10]")
    if lpips_size != 0 and not LPIPS_MIN_SIZE <= lpips_size:
        raise EvaluationError(f"--lpips-size {lpips_size}: expected 0 (the crops as they are) or a side of at least "
                              f"{LPIPS_MIN_SIZE} pixels, the least that VGG16's four poolings leave a pixel of")
    from clip import CLIP_NAMES
    if judge_model is None and judge not in ("toy", *CLIP_NAMES) and not Path(judge).is_file():
        raise EvaluationError(f"--judge {judge!r}: expected toy, {', '.join(CLIP_NAMES)} or an existing CLIP "
                              f"model.safetensors")
    if lpips_model is None and lpips not in ("vgg16", "random") and not Path(lpips).is_file():
        raise EvaluationError(f"--lpips {lpips!r}: expected vgg16, random or an existing VGG16 .safetensors file")
    if rank is not None and rank not in CLIP_NAMES and not Path(rank).is_file():
        raise EvaluationError(f"--rank {rank!r}: expected {', '.join(CLIP_NAMES)} "
                              "or an existing CLIP model.safetensors")
    classes = judge_model.class_names if judge_model is not None else judge_classes(judge, class_names)
    inputs = read_inputs(manifest, classes)
    found = check_folders(results_dirs, inputs, allow_missing)
    check_files(found, inputs, padding, lpips_size)
    judge_model = judge_model or load_judge(judge, class_names=class_names, device=device)   # before any work
    lpips_model = lpips_model or load_lpips(lpips, device=device)
    ranker = None
    if rank is not None:
        from weights.clip_ranker import load_clip
        ranker = load_clip(rank, device=device)
    runs = []
    for name, folder in zip(names, results_dirs, strict=True):
        per_input = [score_input(item, found[folder][item.id], judge_model, lpips_model, padding=padding,
                                 lpips_size=lpips_size, ranker=ranker) for item in inputs if item.id in found[folder]]
        runs.append(summarise(name, folder, per_input))
    settings = {"manifest": str(manifest), "judge": getattr(judge_model, "name", str(judge)),
                "classes": len(judge_model.class_names), "template": TEMPLATE if judge != "toy" else None,
                "crop": f"mask bounding box, squared, padded by {padding:.0%}, inside the image",
                "lpips": f"LPIPS v0.1, VGG16 backbone {lpips_model_source(lpips, lpips_model)}",
                "lpips_size": lpips_size}
    return {"settings": settings, "runs": runs}


def device_problem(device) -> str | None:
    """Why the models cannot go to `device` (a torch device name), or None."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        return f"--device {device!r}: expected cpu, cuda or cuda:N"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            return f"--device {device}: this machine has {count} CUDA GPU(s); pass --device cpu or one it has"
    return None


def lpips_model_source(lpips, model) -> str:
    if lpips == "random":
        return "with random weights (not a perceptual distance)"
    if lpips == "vgg16":
        return "torchvision ImageNet (timm/vgg16.tv_in1k)"
    return str(lpips)
