"""Scoring edits as the paper's Table 1 does (§5): precision, diversity and a benchmark protocol.

    lpips.py       LPIPS (Zhang et al. 2018), v0.1 with the VGG16 backbone, in the lpips package's key layout
    metrics.py     the crop, precision (top-1 and top-5 hits) and diversity (mean pairwise LPIPS)
    judges.py      what recognises the class: zero-shot CLIP (ViT-L/14 by default), or the toy's nearest photograph
    benchmark.py   make-benchmark: random images, random masks, ImageNet class names as prompts
    evaluation.py  evaluate(results_dirs, manifest): the numbers of each results folder of python -m blend.batch
    report.py      the JSON report and the markdown table in the form of Table 1
    __main__.py    python -m blend.evaluate
"""
from .benchmark import BenchmarkError, make_benchmark
from .evaluation import EvaluationError, evaluate
from .judges import CLIPJudge, ToyJudge, imagenet_class_names, load_judge
from .lpips import LPIPS, load_lpips
from .metrics import Box, crop, crop_box, diversity, hits, precision
from .report import markdown_table, write_report

__all__ = ["LPIPS", "load_lpips", "evaluate", "EvaluationError", "make_benchmark", "BenchmarkError", "CLIPJudge",
           "ToyJudge", "load_judge", "imagenet_class_names", "Box", "crop", "crop_box", "diversity", "hits",
           "precision", "markdown_table", "write_report"]
