"""Shared test helpers: golden fixtures, the bound a stored golden is held to, and the markers' skips.

A result compared with a *stored* golden is held to `assert_matches_golden`'s bound, derived from
float32 rounding and measured, never fixed (tests/golden/precision.py says how). A *bitwise* claim is
made only in-process, against the reference that the test extras install (tests marked `reference`).
"""
import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from golden.precision import ERROR_SUFFIX, float32_draws, float32_error, golden_bound
from safetensors import safe_open
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "golden" / "data"
# The reference extra (setup.cfg) and open_clip_torch, which the Makefile installs beside it.
REFERENCE_PACKAGES = ("diffusers", "transformers", "open_clip", "scipy")


def load_golden(name: str) -> dict:
    """{name: tensor or JSON value} of tests/golden/data/<name>.safetensors (see tests/golden/make_fixtures.py)."""
    path = GOLDEN / f"{name}.safetensors"
    if not path.exists():
        pytest.fail(f"golden fixture {path} is missing: run `python tests/golden/make_fixtures.py --only {name}`")
    values = load_file(path)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    values.update({k[len("json."):]: json.loads(v) for k, v in metadata.items() if k.startswith("json.")})
    return values


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|a − e| / max|e|: the figure the parity tests bound."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def in_float64(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of `module`, for measuring the float32 error of its outputs."""
    return copy.deepcopy(module).double()


def schedule_in_float64(schedule):
    """A copy of `schedule` whose ᾱ table holds the same float32 values as float64 numbers, so that a
    float64 run takes every square root and product of a step in float64."""
    copied = copy.copy(schedule)
    copied.alphas_cumprod = schedule.alphas_cumprod.double()
    return copied


def run_in_float64(function, *args):
    """function(*args) with floating tensors in float64 and random draws in float32 (precision.float32_draws)."""
    args = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    with float32_draws():
        return function(*args)


def assert_matches_golden(golden: dict, name: str, ours32: torch.Tensor, ours64: torch.Tensor) -> float:
    """|ours − golden[name]| ≤ 2·(e_ours + e_ref) + u·max|golden| (tests/golden/precision.py).

    ours32 is our float32 result, ours64 the same computation in float64, both made here; e_ours is
    their distance, e_ref the float32 error the fixture script measured for the golden on its machine.
    Returns the difference found.
    """
    expected = golden[name]
    assert ours32.shape == expected.shape, f"{name}: shape {tuple(ours32.shape)}, golden {tuple(expected.shape)}"
    ours_error, reference_error = float32_error(ours32, ours64), golden[name + ERROR_SUFFIX].item()
    bound = golden_bound(expected, reference_error, ours_error)
    difference = (ours32.double() - expected.double()).abs().max().item()
    assert difference <= bound, (
        f"{name}: max|ours − golden| = {difference:.3g} exceeds what float32 rounding explains, {bound:.3g} "
        f"= 2·(e_ours {ours_error:.3g} + e_ref {reference_error:.3g}) + u·max|golden|")
    return difference


def missing_reference_packages() -> list:
    return [name for name in REFERENCE_PACKAGES if importlib.util.find_spec(name) is None]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    missing = missing_reference_packages()
    skip_reference = pytest.mark.skip(reason=f"needs the reference extra: {', '.join(missing)} not installed "
                                             f"(`make test` installs them)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "reference" in item.keywords and missing:
            item.add_marker(skip_reference)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache with the hub offline (HF_HUB_OFFLINE): tests fill it with fakes.write_hub_cache."""
    from huggingface_hub import constants
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
