"""Scoring edits as the paper's Table 1 does: precision, diversity (LPIPS) and a benchmark protocol."""
from .lpips import LPIPS, load_lpips

__all__ = ["LPIPS", "load_lpips"]
