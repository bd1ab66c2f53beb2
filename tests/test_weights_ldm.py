"""The paper's LDM (preset "ldm-txt2img-f8-large"): its preset, CompVis's schedule, and loading its two
published pickle sources (weights/ldm_txt2img.py) from fakes with the published key layouts.

Fakes are small (the loader builds whatever spec it is given; the preset's own numbers are checked
separately) and filled with deterministic random values; the Hub is offline (conftest.offline_cache).
"""
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from fakes import SCHEDULE_BUFFER_SHAPES, random_weights, write_hub_cache

import weights
from ldm import AutoencoderConfig, BERTConfig, UNetConfig
from samplers import DDIMSampler, NoiseSchedule
from weights import ldm_txt2img, pickle_checkpoint, presets
from weights.diffusers_keys import ldm_bert_to_diffusers, unet_to_diffusers, vae_to_diffusers
from weights.errors import PickleRefusedError
from weights.single_file import UNET_PREFIX, VAE_PREFIX

NAME = "ldm-txt2img-f8-large"
MIRROR, PORT = "omriav/blended-latent-diffusion-ldm", "CompVis/ldm-text2im-large-256"
VOCABULARY = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "stone", "##s", "."]
              + [f"w{i}" for i in range(54)])


@pytest.fixture
def small_preset(monkeypatch):
    """The preset with a small architecture of the same kinds, so that a fake file is megabytes, not 5.7 GB."""
    spec = replace(presets.get(NAME),
                   unet=UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                                   num_heads=2, context_dim=64),
                   vae=AutoencoderConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
                   text=BERTConfig(vocab_size=len(VOCABULARY), layers=2, width=64, mlp_width=256), image_size=64)
    monkeypatch.setitem(presets._PRESETS, NAME, spec)
    return spec


def vocab_bytes() -> bytes:
    return ("\n".join(VOCABULARY) + "\n").encode()


def pickled(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def ours(spec) -> dict:
    return {part: random_weights(spec, part) for part in ("unet", "vae", "text_encoder")}


def model_ckpt(spec) -> bytes:
    """model.ckpt as published: a Lightning dict whose state_dict holds the three networks and the DDPM buffers."""
    parts, state_dict = ours(spec), {}
    for part, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("text_encoder", ldm_txt2img.TEXT_PREFIX)):
        state_dict.update({prefix + k: v for k, v in parts[part].items()})
    state_dict.update({name: torch.rand(shape) for name, shape in SCHEDULE_BUFFER_SHAPES.items()})
    return pickled({"state_dict": state_dict, "global_step": 470000, "epoch": 3})


def port_files(spec) -> dict:
    """The diffusers port's files: diffusers/transformers names in .bin pickles, configs and the vocabulary."""
    parts = ours(spec)
    return {"unet/diffusion_pytorch_model.bin": pickled(unet_to_diffusers(parts["unet"], spec.unet)),
            "vqvae/diffusion_pytorch_model.bin": pickled(vae_to_diffusers(parts["vae"], spec.vae)),
            "bert/pytorch_model.bin": pickled(ldm_bert_to_diffusers(parts["text_encoder"], spec.text.layers)),
            "unet/config.json": json.dumps({"_class_name": "UNet2DConditionModel"}).encode(),
            "vqvae/config.json": json.dumps({"_class_name": "AutoencoderKL"}).encode(),
            "bert/config.json": json.dumps({"architectures": ["LDMBertModel"]}).encode(),
            "tokenizer/vocab.txt": vocab_bytes()}


def assert_weights_are_the_fakes(components, spec):
    for part, expected in ours(spec).items():
        got = getattr(components, part).state_dict()
        assert set(got) == set(expected), part
        assert all(torch.equal(got[k], v) for k, v in expected.items()), part


def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was read again: the cached .safetensors should have been used")
    monkeypatch.setattr(pickle_checkpoint, "read_pickle", refuse)
    monkeypatch.setattr(ldm_txt2img, "read_pickle", refuse)
    monkeypatch.setattr(torch, "load", refuse)


# ----------------------------------------------------------------------------- the preset
def test_ldm_preset_has_the_official_scripts_defaults_and_the_txt2img_1p4b_architecture():
    spec = presets.get(NAME)
    assert isinstance(spec, presets.LDMSpec)
    assert (spec.image_size, spec.guidance_scale, spec.scale_factor, spec.prediction_type) == (256, 5.0, 0.18215,
                                                                                               "epsilon")
    assert spec.unet.context_dim == 1280 and spec.unet.num_heads == 8 and not spec.unet.use_linear_proj
    assert spec.text == BERTConfig() and (spec.text.width, spec.text.layers, spec.text.vocab_size) == (1280, 32, 30522)
    assert spec.z_init == "sample" and spec.timestep_spacing == "uniform"
    sampler = DDIMSampler(spec.build_schedule(), 50, spacing=spec.timestep_spacing, offset=spec.steps_offset)
    assert sampler.timesteps.tolist() == list(range(981, 0, -20))
    assert [s.repo for s in spec.sources] == [MIRROR, PORT] and spec.single_file == "model.ckpt"


@pytest.mark.precision
def test_ldm_schedule_is_compvis_float64_linear_stored_as_float32():
    """Bit for bit, by construction: the same operations in the same libraries as CompVis's make_beta_schedule
    (torch.linspace in float64, squared by torch) and register_schedule (numpy's cumprod and sqrt)."""
    schedule = presets.get(NAME).build_schedule()
    betas = (torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2).numpy()
    alphas_cumprod = np.cumprod(1.0 - betas)
    assert schedule.alphas_cumprod.dtype == torch.float32
    assert np.array_equal(schedule.alphas_cumprod.numpy(), alphas_cumprod.astype(np.float32))
    assert np.array_equal(schedule.q_sample_roots[0].numpy(), np.sqrt(alphas_cumprod).astype(np.float32))
    assert np.array_equal(schedule.q_sample_roots[1].numpy(), np.sqrt(1 - alphas_cumprod).astype(np.float32))
    sd = NoiseSchedule.scaled_linear()
    assert not torch.equal(schedule.alphas_cumprod, sd.alphas_cumprod)    # the last bits differ from SD's float32
    assert (schedule.alphas_cumprod - sd.alphas_cumprod).abs().max() < 1e-6


def test_ldm_build_tokenizer_reads_a_given_vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(vocab_bytes())
    ids = presets.get(NAME).build_tokenizer(path)(["a cats."])
    assert ids.shape == (1, 77) and ids[0, :6].tolist() == [2, 5, 6, 8, 9, 3]


def test_ldm_build_tokenizer_without_a_file_uses_the_models_downloaded_vocabulary(offline_cache):
    write_hub_cache(offline_cache, PORT, {"tokenizer/vocab.txt": vocab_bytes()})
    assert presets.get(NAME).build_tokenizer()(["stone"])[0, 1].item() == VOCABULARY.index("stone")


# ----------------------------------------------------------------------------- loading
def test_ldm_preset_loads_model_ckpt_converts_once_and_reloads_from_the_cached_safetensors(offline_cache,
                                                                                          small_preset, monkeypatch):
    snapshot = write_hub_cache(offline_cache, MIRROR, {"model.ckpt": model_ckpt(small_preset)})
    write_hub_cache(offline_cache, PORT, {"tokenizer/vocab.txt": vocab_bytes()})
    first = weights.load(NAME)
    assert (snapshot / "model.safetensors").is_file()
    assert_weights_are_the_fakes(first, small_preset)
    assert first.tokenizer(["a cat"])[0, :4].tolist() == [2, 5, 6, 3]
    converted = (snapshot / "model.safetensors").stat().st_mtime_ns
    no_unpickling(monkeypatch)
    second = weights.load(NAME)
    assert (snapshot / "model.safetensors").stat().st_mtime_ns == converted
    assert_weights_are_the_fakes(second, small_preset)


def test_ldm_preset_falls_back_to_the_diffusers_port_and_converts_each_bin_once(offline_cache, small_preset,
                                                                               monkeypatch):
    snapshot = write_hub_cache(offline_cache, PORT, port_files(small_preset))
    first = weights.load(NAME)
    assert_weights_are_the_fakes(first, small_preset)
    for stem in ldm_txt2img.PORT_WEIGHTS.values():
        assert (snapshot / f"{stem}.safetensors").is_file()
    no_unpickling(monkeypatch)
    assert_weights_are_the_fakes(weights.load(NAME), small_preset)


def test_ldm_port_folder_by_path_is_refused_as_pickle_unless_allowed_and_then_not_converted(tmp_path, small_preset):
    for name, content in port_files(small_preset).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    with pytest.raises(PickleRefusedError, match="diffusion_pytorch_model.bin"):
        weights.load(tmp_path)
    assert_weights_are_the_fakes(weights.load(tmp_path, allow_pickle=True), small_preset)
    assert not list(tmp_path.rglob("*.safetensors"))        # only the known sources are converted


def test_ldm_model_ckpt_by_path_keeps_the_general_pickle_refusal(tmp_path, small_preset):
    path = tmp_path / "model.ckpt"
    path.write_bytes(model_ckpt(small_preset))
    (tmp_path / "vocab.txt").write_bytes(vocab_bytes())
    with pytest.raises(PickleRefusedError, match="refused by default"):
        weights.load(path)
    assert_weights_are_the_fakes(weights.load(path, allow_pickle=True), small_preset)


def test_ldm_corrupt_model_ckpt_names_the_file(offline_cache, small_preset):
    snapshot = write_hub_cache(offline_cache, MIRROR, {"model.ckpt": model_ckpt(small_preset)[:100_000]})
    write_hub_cache(offline_cache, PORT, {"tokenizer/vocab.txt": vocab_bytes()})
    with pytest.raises(PickleRefusedError, match="model.ckpt"):
        weights.load(NAME)
    assert not (snapshot / "model.safetensors").exists()      # nothing half-written


def test_ldm_preset_with_neither_source_cached_offline_names_both_repositories(offline_cache, small_preset):
    with pytest.raises(weights.errors.OfflineError, match=f"{MIRROR}.*{PORT}") as error:
        weights.load(NAME)
    assert f"hf download {MIRROR} model.ckpt" in str(error.value) and f"{PORT} tokenizer/vocab.txt" in str(error.value)
    assert "allow_pickle=True" in str(error.value)


# ----------------------------------------------------------------------------- the UNet at context 1280
@pytest.mark.slow
@pytest.mark.reference
def test_ldm_unet_parity_context_1280_fp32_against_diffusers_through_its_ldm_converter():
    """The preset's UNet (SD 1 layout, context 1280) against diffusers' UNet2DConditionModel holding the
    same random weights, moved by diffusers' own `convert_ldm_unet_checkpoint` (tests/parity.py)."""
    import gc

    from parity import random_model, reference_unet

    from ldm import UNetModel

    config = presets.get(NAME).unet
    ours = random_model(UNetModel, config, seed=11)
    reference = reference_unet(ours)                      # shares our tensors: one copy of the weights
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 32, 32, generator=generator)    # the LDM's 32×32 latents of 256² images
    context = torch.randn(2, 77, 1280, generator=generator)
    timesteps = torch.tensor([981, 1])
    with torch.no_grad():
        expected = reference(z, timesteps, encoder_hidden_states=context).sample
        del reference
        gc.collect()
        actual = ours(z, timesteps, context)
    relative = ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
    print(f"LDM UNet (context 1280) vs diffusers, full size fp32: max relative error {relative:.3g}")
    assert relative < 1e-5
