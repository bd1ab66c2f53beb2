"""pytest's hooks and fixtures: the skips of the gpu and reference markers, an offline Hub cache, a fixed seed,
float32 as every model's default dtype, and torch's rounding moved on purpose when BLD_TORCH_ROUNDING=one-ulp-off.

What the tests share besides is in tests/helpers.py (goldens, bounds, stand-ins) and tests/fakes.py.
"""
import os

import pytest
import torch
from golden.precision import OneUlpOff
from helpers import missing_reference_packages

# BLD_TORCH_ROUNDING=one-ulp-off runs every test under golden.precision.OneUlpOff: torch's square roots,
# exponentials and powers rounded the other way for about half of their results (.ci/run's second run of the
# precision tests). A bit-for-bit claim that survives it holds whatever the CPU's torch rounds to.
ROUNDINGS = {"": None, "one-ulp-off": OneUlpOff}


def pytest_configure(config):
    """Enter the rounding mode for the whole session (module constants and fixtures of every scope see it)."""
    rounding = os.environ.get("BLD_TORCH_ROUNDING", "")
    if rounding not in ROUNDINGS:
        raise pytest.UsageError(f"BLD_TORCH_ROUNDING must be unset or 'one-ulp-off', got {rounding!r}")
    if ROUNDINGS[rounding] is not None:
        config.torch_rounding = ROUNDINGS[rounding]()
        config.torch_rounding.__enter__()


def pytest_unconfigure(config):
    if getattr(config, "torch_rounding", None) is not None:
        config.torch_rounding.__exit__(None, None, None)


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


@pytest.fixture(autouse=True)
def _float32_by_default(monkeypatch):
    """Every test sees a CPU without native bfloat16, so that a model's default dtype (float32) is the same on
    every machine; the tests of the bf16 default (tests/test_weights_precision.py) patch it back."""
    from weights import precision
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    yield
