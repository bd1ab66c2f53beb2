"""The default dtype: bfloat16 for SD and SDXL on a CPU that computes bf16 natively, float32 everywhere else,
and the run says which it chose."""
import pytest
import torch
from fakes import write_diffusers_folder, write_single_file
from helpers import TINY

import blend.editor as editor
from weights import precision


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)


@pytest.mark.parametrize("name", ["sd-1.5", "sd-2.1-base", "sd-2.1", "sdxl-base-1.0"])
def test_sd_and_sdxl_presets_default_to_bfloat16_on_a_cpu_with_native_bf16(native_bf16, name):
    assert precision.default_dtype(name, "cpu") == torch.bfloat16
    assert precision.default_dtype(name, "cuda") is None          # a GPU caller picks float16 itself
    assert precision.default_dtype(name, torch.device("cuda", 0)) is None


@pytest.mark.parametrize("name", ["tiny", "toy", "ldm-txt2img-f8-large"])
def test_the_ldm_the_toy_and_tiny_stay_float32(native_bf16, name):
    assert precision.default_dtype(name, "cpu") is None


def test_without_native_bf16_everything_stays_float32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.default_dtype("sd-1.5", "cpu") is None


def test_files_and_folders_are_told_apart_by_their_keys_and_layout(native_bf16, tmp_path):
    single = write_single_file(tmp_path / "finetune.safetensors", TINY)
    folder = write_diffusers_folder(tmp_path / "folder", TINY)
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"not read")
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"no header")
    assert precision.default_dtype(single, "cpu") == torch.bfloat16
    assert precision.default_dtype(folder, "cpu") == torch.bfloat16
    assert precision.default_dtype(pickled, "cpu") is None          # a pickle is not opened to find out
    assert precision.default_dtype(other, "cpu") is None            # unreadable: weights.load reports it
    assert precision.default_dtype(tmp_path / "missing.safetensors", "cpu") is None


def test_cpu_has_native_bf16_asks_torch_first(monkeypatch):
    monkeypatch.undo()   # conftest makes every test see a CPU without bf16; this one tests the real check
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert precision.cpu_has_native_bf16()


def test_a_run_prints_the_dtype_it_chose(native_bf16, tmp_path, capsys):
    single = write_single_file(tmp_path / "finetune.safetensors", TINY)
    loaded = editor.load_model(str(single), device="cpu")
    assert loaded.unet.out[2].weight.dtype == torch.bfloat16
    assert capsys.readouterr().err.startswith("dtype: bfloat16 (this CPU computes bfloat16 natively")
    loaded = editor.load_model(str(single), dtype=torch.float32, device="cpu")
    assert loaded.unet.out[2].weight.dtype == torch.float32
    assert capsys.readouterr().err.strip() == "dtype: float32"
