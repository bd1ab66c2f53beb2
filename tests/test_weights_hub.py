"""Presets from the Hub, offline: a fake cache laid out like the published repositories.

The cache holds each preset's repository id with the published file names (configs,
tokenizer tables, full and .fp16 safetensors, and files the loader must not fetch),
filled with tiny deterministic random weights. huggingface_hub is then run with
HF_HUB_OFFLINE, as on a machine that downloaded once and went offline.
"""
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

import weights
from weights import fakes, presets
from test_weights_load import TINY, TINY_SD2, assert_same_outputs, file_holding, linux_only, source_modules

ROOT = Path(__file__).resolve().parent.parent
# What each preset's fake repository holds: the tiny stand-in of its architecture.
STAND_INS = {"sd-1.5": TINY,
             "sd-2.1-base": replace(TINY_SD2, prediction_type="epsilon",
                                    unet=replace(TINY_SD2.unet, upcast_attention=False)),
             "sd-2.1": TINY_SD2}
# Published files the loader must never fetch (a pickle, the safety checker, the single file).
NOT_NEEDED = {"unet/diffusion_pytorch_model.bin": b"not a pickle", "safety_checker/config.json": b"{}",
              "feature_extractor/preprocessor_config.json": b"{}"}


def write_repository(cache: Path, name: str, drop=()) -> Path:
    spec, stand_in = presets.get(name), STAND_INS[name]
    files = fakes.diffusers_files(stand_in) | fakes.diffusers_files(stand_in, torch.float16, ".fp16")
    files |= NOT_NEEDED | {spec.single_file: b"stands for the 2-5 GB single file"}
    return fakes.write_hub_cache(cache, spec.hub_repo, {k: v for k, v in files.items() if k not in drop})


@pytest.mark.parametrize("name", ["sd-1.5", "sd-2.1-base", "sd-2.1"])
def test_preset_loads_offline_from_a_cache_laid_out_like_its_hub_repository(offline_cache, name):
    write_repository(offline_cache, name)
    loaded = weights.load(name)
    spec = presets.get(name)
    assert (loaded.spec.name, loaded.spec.hub_repo, loaded.spec.prediction_type) == \
        (name, spec.hub_repo, spec.prediction_type)
    assert loaded.spec.unet == STAND_INS[name].unet                       # the sizes come from config.json
    assert loaded.tokenizer.pad_id == (49407 if name == "sd-1.5" else 0)
    assert_same_outputs(loaded, source_modules(STAND_INS[name]), loaded.tokenizer)


def test_repository_ids_are_the_current_published_ones():
    assert [presets.get(n).hub_repo for n in ("sd-1.5", "sd-2.1-base", "sd-2.1")] == [
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/stable-diffusion-2-1-base",
        "stabilityai/stable-diffusion-2-1"]


def test_only_configs_tokenizer_and_one_weight_file_per_network_are_requested(offline_cache, monkeypatch):
    write_repository(offline_cache, "sd-1.5")
    requested = []
    real = huggingface_hub.snapshot_download

    def recording(repo_id, **kwargs):
        requested.append((repo_id, sorted(kwargs["allow_patterns"])))
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    weights.load("sd-1.5", dtype=torch.float16)
    configs = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
               "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
               "tokenizer/vocab.json", "unet/config.json", "vae/config.json"]
    fp16 = ["text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert requested == [("stable-diffusion-v1-5/stable-diffusion-v1-5", sorted(configs + fp16))]
    requested.clear()
    weights.load("sd-1.5")
    assert requested[0][1] == sorted(configs + [f.replace(".fp16", "") for f in fp16])


@linux_only
def test_float16_uses_the_fp16_files_memory_mapped(offline_cache):
    snapshot = write_repository(offline_cache, "sd-1.5")
    loaded = weights.load("sd-1.5", dtype=torch.float16)
    blob = str((snapshot / "unet" / "diffusion_pytorch_model.fp16.safetensors").resolve())
    assert {file_holding(p) for p in loaded.unet.parameters()} == {blob}


def test_float16_falls_back_to_full_precision_where_the_repository_has_no_fp16_file(offline_cache):
    write_repository(offline_cache, "sd-2.1-base", drop={"text_encoder/model.fp16.safetensors"})
    loaded = weights.load("sd-2.1-base", dtype=torch.float16)
    assert {p.dtype for p in loaded.text_encoder.parameters()} == {torch.float16}


def test_offline_without_the_repository_says_how_to_get_the_files(offline_cache):
    with pytest.raises(weights.OfflineError) as error:
        weights.load("sd-1.5")
    message = str(error.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message and "HF_HUB_OFFLINE is set" in message
    assert str(offline_cache) in message
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5 model_index.json" in message
    assert "--local-dir DIR` and call weights.load('DIR')" in message
    assert "weights.load('path/to/v1-5-pruned-emaonly.safetensors')" in message


def test_offline_with_an_incomplete_snapshot_names_the_missing_files(offline_cache):
    write_repository(offline_cache, "sd-2.1", drop={"vae/diffusion_pytorch_model.safetensors",
                                                    "vae/diffusion_pytorch_model.fp16.safetensors"})
    with pytest.raises(weights.OfflineError, match=r"(?s)could not get 1 file\(s\) of stabilityai/stable-diffusion-2-1 "
                                                   r"for preset 'sd-2.1'.*vae/diffusion_pytorch_model.safetensors"):
        weights.load("sd-2.1")


def test_unreachable_hub_falls_back_to_the_cache_and_else_says_so(offline_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")     # nothing listens there
    with pytest.raises(weights.OfflineError, match="the Hub could not be reached"):
        weights.load("sd-2.1")
    write_repository(offline_cache, "sd-2.1")
    assert weights.load("sd-2.1").spec.name == "sd-2.1"


def test_hf_home_and_hf_hub_offline_from_the_environment_are_respected(tmp_path):
    write_repository(tmp_path / "home" / "hub", "sd-1.5")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    code = "import weights; c = weights.load('sd-1.5'); print(c.spec.name, c.spec.notes)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("sd-1.5 Hub snapshot ") and str(tmp_path / "home" / "hub") in done.stdout
    env["HF_HOME"] = str(tmp_path / "empty")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "OfflineError" in done.stderr and "HF_HUB_OFFLINE is set" in done.stderr
