"""The preset "adm-256-uncond" (weights/adm.py): its fields and sources, and loading the published pickle —
hash checked, read with weights_only=True, converted once to safetensors in the Hub cache, reloaded without
unpickling — and `weights.load_pixel_model`.

No test downloads 2.2 GB: the fakes are pickles with the published key layout (OrderedDict of tensors,
torch.save) of a small ADMConfig, written into an offline Hub cache, and the preset's config and expected
hash are patched to the fake's.
"""
import collections
import hashlib
import io
from dataclasses import replace

import pytest
import torch
from fakes import write_hub_cache, write_refused_pickle
from safetensors.torch import save_file

import weights
from adm import ADM_256_UNCOND, ADMConfig, ADMUNet
from clip import CLIPModel
from weights import adm, pickle_checkpoint, presets
from weights.errors import (
    CorruptFileError,
    OfflineError,
    PickleRefusedError,
    StateDictMismatchError,
    UnknownSourceError,
    UnsupportedModelError,
)
from weights.materialize import build_empty
from weights.random_init import fill_random_

NAME = "adm-256-uncond"
MIRROR, MIRROR_FILE = "omriav/blended-diffusion", "checkpoints/256x256_diffusion_uncond.pt"
DIFFUSEIT, DIFFUSEIT_FILE = "sj98/DiffuseIT", "256x256_diffusion_uncond.pt"
# The published key naming scheme (time_embed.N, input_blocks.N.M.*, qkv, out.2) at a size that loads in ms.
SMALL = ADMConfig(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(16,), num_head_channels=32)


def fake_state_dict(config: ADMConfig = SMALL, seed: int = 3) -> collections.OrderedDict:
    """What the published file holds: an OrderedDict of float32 tensors under guided-diffusion's names."""
    return collections.OrderedDict(fill_random_(ADMUNet(config), seed).state_dict())


def pickled(state_dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


FAKE = pickled(fake_state_dict())
FAKE_SHA256 = sha256(FAKE)




@pytest.fixture
def small_preset(monkeypatch):
    """The preset with the small architecture and the fake's hash; returns a function to set another hash."""
    def use(sha=FAKE_SHA256, config=SMALL):
        spec = replace(presets.get(NAME), unet=config, sha256=sha)
        monkeypatch.setitem(presets._PRESETS, NAME, spec)
        return spec
    return use


def assert_is_the_fake(model, expected=None):
    expected = fake_state_dict() if expected is None else expected
    got = model.state_dict()
    assert isinstance(model, ADMUNet) and list(got) == list(expected)
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def no_unpickling_or_hashing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the pickle was hashed or read again: the cached .safetensors should have been used")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle_checkpoint, "read_pickle", refuse)
    monkeypatch.setattr(adm, "read_pickle", refuse)
    monkeypatch.setattr(adm, "sha256_of", refuse)


# ----------------------------------------------------------------------------- the preset
def test_adm_preset_has_the_published_model_bd_defaults_sources_and_openai_hash():
    spec = presets.get(NAME)
    assert isinstance(spec, weights.AdmSpec) and spec.name == NAME
    assert spec.unet == ADM_256_UNCOND == ADMConfig()
    assert (spec.image_size, spec.respacing, spec.judge, spec.num_train_timesteps) == (256, "100", "ViT-B/16", 1000)
    assert [(s.repo, s.single_file) for s in spec.sources] == [(MIRROR, MIRROR_FILE), (DIFFUSEIT, DIFFUSEIT_FILE)]
    assert (spec.hub_repo, spec.single_file) == (MIRROR, MIRROR_FILE)
    assert spec.sha256 == "a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1"
    assert spec.size_multiple == 32
    assert NAME in presets.NAMES and NAME in weights.MODEL_NAMES and weights.spec_of(NAME) is spec


def test_adm_preset_build_unet_is_the_published_network_with_six_output_channels():
    """On meta (2.2 GB in float32 otherwise): 552,814,086 parameters under the published names."""
    network = build_empty(presets.get(NAME).build_unet)
    assert isinstance(network, ADMUNet)
    assert sum(p.numel() for p in network.parameters()) == 552_814_086
    shapes = {k: tuple(v.shape) for k, v in network.state_dict(keep_vars=True).items()}
    assert shapes["time_embed.0.weight"] == (1024, 256) and shapes["input_blocks.0.0.weight"] == (256, 3, 3, 3)
    assert shapes["middle_block.1.qkv.weight"] == (3 * 1024, 1024, 1) and shapes["out.2.weight"] == (6, 256, 3, 3)


def test_adm_preset_builds_the_respaced_diffusion_100_steps_by_default():
    spec = presets.get(NAME)
    assert spec.build_diffusion().num_steps == 100
    assert spec.build_diffusion(respacing="25").num_steps == 25


# ----------------------------------------------------------------------------- the preset's file
def test_adm_preset_converts_the_pickle_once_and_reloads_without_unpickling_or_hashing(offline_cache, small_preset,
                                                                                      monkeypatch):
    small_preset()
    snapshot = write_hub_cache(offline_cache, MIRROR, {MIRROR_FILE: FAKE})
    converted = snapshot / "checkpoints" / "256x256_diffusion_uncond.safetensors"
    first, spec = adm.load_adm(NAME)
    assert converted.is_file()
    assert_is_the_fake(first)
    assert spec is presets.get(NAME)
    written = converted.stat().st_mtime_ns
    no_unpickling_or_hashing(monkeypatch)
    second, _ = adm.load_adm(NAME)
    assert converted.stat().st_mtime_ns == written
    assert_is_the_fake(second)


def test_adm_preset_takes_the_second_source_when_only_it_is_cached(offline_cache, small_preset):
    small_preset()
    snapshot = write_hub_cache(offline_cache, DIFFUSEIT, {DIFFUSEIT_FILE: FAKE})
    model, _ = adm.load_adm(NAME)
    assert_is_the_fake(model)
    assert (snapshot / "256x256_diffusion_uncond.safetensors").is_file()


def test_adm_preset_refuses_a_file_with_another_hash_naming_it_and_both_hashes(offline_cache, small_preset):
    expected = "0" * 64
    small_preset(sha=expected)
    snapshot = write_hub_cache(offline_cache, MIRROR, {MIRROR_FILE: FAKE})
    with pytest.raises(CorruptFileError) as error:
        adm.load_adm(NAME)
    message = str(error.value)
    assert str(snapshot / MIRROR_FILE) in message and expected in message and sha256(FAKE) in message
    assert f"hf download {MIRROR} {MIRROR_FILE} --force-download" in message and "Nothing was converted" in message
    assert not list(snapshot.rglob("*.safetensors"))


def test_adm_preset_refuses_a_truncated_download_by_its_hash(offline_cache, small_preset):
    small_preset()
    snapshot = write_hub_cache(offline_cache, MIRROR, {MIRROR_FILE: FAKE[:50_000]})
    with pytest.raises(CorruptFileError, match="256x256_diffusion_uncond.pt: not the published"):
        adm.load_adm(NAME)
    assert not list(snapshot.rglob("*.safetensors"))


def test_adm_preset_refuses_a_corrupt_pickle_naming_it_and_writes_nothing(offline_cache, small_preset):
    """A damaged file whose hash is the expected one (the spec's hash patched to it): the reader refuses it."""
    corrupt = FAKE[:50_000]
    small_preset(sha=sha256(corrupt))
    snapshot = write_hub_cache(offline_cache, MIRROR, {MIRROR_FILE: corrupt})
    with pytest.raises(PickleRefusedError, match="256x256_diffusion_uncond.pt"):
        adm.load_adm(NAME)
    assert not list(snapshot.rglob("*.safetensors"))


def test_adm_preset_checks_keys_and_shapes_before_converting(offline_cache, small_preset):
    other = pickled(fake_state_dict(replace(SMALL, num_classes=10)))     # class-conditional: label_emb.weight
    small_preset(sha=sha256(other))
    snapshot = write_hub_cache(offline_cache, MIRROR, {MIRROR_FILE: other})
    with pytest.raises(StateDictMismatchError, match="(?s)256x256_diffusion_uncond.pt.*label_emb.weight.*"
                                                     "class-conditional"):
        adm.load_adm(NAME)
    assert not list(snapshot.rglob("*.safetensors"))


def test_adm_preset_uses_the_file_another_process_converted_meanwhile(offline_cache, small_preset, monkeypatch):
    small_preset()
    snapshot = write_hub_cache(offline_cache, MIRROR, {MIRROR_FILE: FAKE})

    def converted_by_another_process(source, target):
        pickle_checkpoint.convert_checkpoint(source, target)         # the other process links its file first
        raise FileExistsError(f"{target} already exists")
    monkeypatch.setattr(adm, "convert_checkpoint", converted_by_another_process)
    model, _ = adm.load_adm(NAME)
    assert_is_the_fake(model)
    assert (snapshot / "checkpoints" / "256x256_diffusion_uncond.safetensors").is_file()


def test_adm_preset_offline_without_a_cached_source_names_both_and_the_ways_on(offline_cache, small_preset):
    small_preset()
    with pytest.raises(OfflineError, match=f"{MIRROR}.*{DIFFUSEIT}") as error:
        weights.load_pixel_model(NAME, judge="tiny")
    message = str(error.value)
    assert f"hf download {MIRROR} {MIRROR_FILE}" in message
    assert "weights.load_pixel_model('DIR/" in message and "load_pixel_model('toy')" in message
    assert "weights.load(" not in message                      # the latent loader cannot take this file
    assert [repo for repo, _ in error.value.attempts] == [MIRROR, DIFFUSEIT]


# ----------------------------------------------------------------------------- files given by path
def test_adm_local_pickle_and_safetensors_load_checked_but_neither_hashed_nor_converted(tmp_path, small_preset):
    small_preset(sha="0" * 64)                                  # a local file is the user's: its hash is not checked
    (tmp_path / "mine.pt").write_bytes(FAKE)
    save_file(fake_state_dict(), str(tmp_path / "mine.safetensors"))
    for name in ("mine.pt", "mine.safetensors"):
        model, spec = adm.load_adm(tmp_path / name)
        assert_is_the_fake(model)
        assert spec.name == NAME and str(tmp_path / name) in spec.notes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pt", "mine.safetensors"]


def test_adm_local_file_of_another_model_is_refused_naming_the_file_and_keys(tmp_path, small_preset):
    small_preset()
    wider = replace(SMALL, model_channels=64)
    save_file(fake_state_dict(wider), str(tmp_path / "wider.safetensors"))
    with pytest.raises(StateDictMismatchError, match=r"(?s)wider.safetensors.*shape differs.*input_blocks.0.0.weight "
                                                     r"file \(64, 3, 3, 3\) vs model \(32, 3, 3, 3\)"):
        adm.load_adm(tmp_path / "wider.safetensors")


def test_adm_local_truncated_pickle_is_refused_naming_it(tmp_path, small_preset):
    small_preset()
    (tmp_path / "cut.pt").write_bytes(FAKE[:50_000])
    with pytest.raises(PickleRefusedError, match="cut.pt"):
        adm.load_adm(tmp_path / "cut.pt")


def test_adm_local_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, small_preset):
    small_preset()
    path = write_refused_pickle(tmp_path / "evil.pt", "__reduce__ call")
    with pytest.raises(PickleRefusedError, match="evil.pt"):
        adm.load_adm(path)
    assert not (tmp_path / "evil.pt.ran").exists()


def test_adm_unknown_source_is_refused_with_the_pixel_model_names(tmp_path):
    with pytest.raises(UnknownSourceError, match="'adm-256-uncond', 'toy'"):
        weights.load_pixel_model(str(tmp_path / "nowhere.pt"))


# ----------------------------------------------------------------------------- load_pixel_model
def test_load_pixel_model_gives_model_judge_and_spec_with_no_parameter_gradients(tmp_path, small_preset):
    small_preset()
    (tmp_path / "mine.pt").write_bytes(FAKE)
    loaded = weights.load_pixel_model(tmp_path / "mine.pt", judge="tiny", dtype=torch.float64)
    assert isinstance(loaded, weights.PixelComponents)
    assert_is_the_fake(loaded.model, {k: v.double() for k, v in fake_state_dict().items()})
    assert isinstance(loaded.judge, CLIPModel) and next(loaded.judge.parameters()).dtype == torch.float64
    for network in (loaded.model, loaded.judge):
        assert not any(p.requires_grad for p in network.parameters()) and not network.training
    with torch.no_grad():
        out = loaded.model(torch.zeros(1, 3, 32, 32, dtype=torch.float64), torch.tensor([500]))
    assert out.shape == (1, 6, 32, 32)


def test_load_pixel_model_toy_is_the_toys_model_judge_and_spec():
    loaded = weights.load_pixel_model("toy")
    assert loaded.spec.name == "toy" and loaded.spec.image_size == 128
    assert type(loaded.judge).__name__ == "ToyJudge" and type(loaded.model).__name__ == "ToyPixelModel"


def test_load_pixel_model_refuses_a_latent_preset():
    with pytest.raises(UnsupportedModelError, match="'sd-1.5' is a latent diffusion model.*weights.load"):
        weights.load_pixel_model("sd-1.5")


def test_weights_load_refuses_the_pixel_space_preset_for_the_latent_editor():
    with pytest.raises(UnsupportedModelError, match="adm-256-uncond is a pixel-space model for --method "
                                                    "blended-diffusion/local-clip"):
        weights.load(NAME)


def test_fake_has_the_published_pickle_layout():
    """The fakes are what OpenAI's file is: a torch.save'd OrderedDict of float32 tensors, nothing else."""
    data = torch.load(io.BytesIO(FAKE), weights_only=True)
    assert type(data) is collections.OrderedDict and all(v.dtype == torch.float32 for v in data.values())
    assert set(data) == set(build_empty(lambda: ADMUNet(SMALL)).state_dict())
