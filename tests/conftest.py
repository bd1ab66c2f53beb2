"""Shared test helpers: golden fixtures and the markers' skips."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "golden" / "data"


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


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


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
