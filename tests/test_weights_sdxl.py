"""Loading SDXL base 1.0: the single file's layout (`conditioner.embedders.0.transformer.`,
`conditioner.embedders.1.model.`, its non-weights) and the preset through the Hub cache, on a small
SDXL-shaped model standing in for the preset (no full-size SDXL network is ever allocated here)."""
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

import weights
from ldm.unet import vector_conditioning
from weights import fakes, presets, single_file
from weights.errors import StateDictMismatchError, UnsupportedModelError
from weights.random_init import random_tensor

SDXL = presets.get("sdxl-base-1.0")
SMALL = replace(
    SDXL,
    unet=replace(SDXL.unet, model_channels=32, transformer_depth=(0, 1, 2), head_dim=8, context_dim=16 + 32,
                 adm_in_channels=32 + 6 * 256),
    vae=presets.get("tiny").vae,
    text=replace(SDXL.text, width=16, layers=2, heads=2),
    text_2=replace(SDXL.text_2, width=32, layers=2, heads=4, projection_dim=32))
PREFIXES = {"unet": single_file.UNET_PREFIX, "vae": single_file.VAE_PREFIX, **single_file.SDXL_TEXT_PREFIXES}


def sdxl_file_tensors(spec=SMALL) -> dict:
    """An SDXL single file's tensors: every network under its published prefix, random values by name,
    plus the non-weights the published file carries (ViT-L's position ids, the denoiser's σ table)."""
    tensors = {}
    builders = {"unet": spec.build_unet, "vae": spec.build_vae, "text_encoder": spec.build_text_encoder,
                "text_encoder_2": spec.build_text_encoder_2}
    for part, build in builders.items():
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in build().state_dict().items()}
        tensors.update({PREFIXES[part] + k: random_tensor(k, s, seed=len(part)).half() for k, s in shapes.items()})
    tensors[PREFIXES["text_encoder"] + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    tensors["denoiser.sigmas"] = torch.rand(1000)
    return tensors


@pytest.fixture
def small_sdxl_preset(monkeypatch):
    monkeypatch.setitem(presets._PRESETS, "sdxl-base-1.0", SMALL)
    return SMALL


def test_sdxl_preset_facts():
    assert (SDXL.image_size, SDXL.guidance_scale, SDXL.scale_factor, SDXL.prediction_type) == (1024, 5.0, 0.13025,
                                                                                            "epsilon")
    assert SDXL.unet.context_dim == SDXL.text.width + SDXL.text_2.width == 2048
    assert SDXL.unet.adm_in_channels == SDXL.text_2.projection_dim + 6 * SDXL.time_embedding_dim == 2816
    assert SDXL.single_file == "sd_xl_base_1.0.safetensors"
    assert SDXL.hub_repo == "stabilityai/stable-diffusion-xl-base-1.0"
    assert SDXL.build_tokenizer().pad_id == 49407 and SDXL.build_tokenizer_2().pad_id == 0


def test_sdxl_single_file_loads_both_towers_under_their_prefixes(tmp_path, small_sdxl_preset):
    path = tmp_path / "sd_xl_base_1.0.safetensors"
    tensors = sdxl_file_tensors()
    save_file(tensors, str(path))
    loaded = weights.load(path, dtype=torch.float32)
    assert loaded.spec.name == "sdxl-base-1.0" and loaded.text_encoder_2 is not None
    assert loaded.tokenizer.pad_id == 49407 and loaded.tokenizer_2.pad_id == 0
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for key, value in getattr(loaded, part).state_dict().items():
            assert torch.equal(value, tensors[PREFIXES[part] + key].float()), (part, key)
    ids = loaded.tokenizer_2(["a cat"])
    with torch.no_grad():
        context = torch.cat([loaded.text_encoder(loaded.tokenizer(["a cat"])), loaded.text_encoder_2(ids)], dim=-1)
        y = vector_conditioning(loaded.text_encoder_2.pooled_embedding(ids), torch.tensor([[64, 64, 0, 0, 64, 64]]))
        output = loaded.unet(torch.randn(1, 4, 8, 8), 500, context, y)
    assert output.shape == (1, 4, 8, 8) and torch.isfinite(output).all()


def test_sdxl_single_file_refuses_a_stray_key_and_a_missing_tower(tmp_path, small_sdxl_preset):
    tensors = sdxl_file_tensors()
    stray = dict(tensors, **{"conditioner.embedders.2.model.weight": torch.zeros(1)})
    save_file(stray, str(tmp_path / "stray.safetensors"))
    with pytest.raises(StateDictMismatchError, match="conditioner.embedders.2.model.weight"):
        weights.load(tmp_path / "stray.safetensors")
    without = {k: v for k, v in tensors.items() if not k.startswith("conditioner.embedders.1.")}
    save_file(without, str(tmp_path / "refiner_like.safetensors"))
    with pytest.raises(UnsupportedModelError, match="conditioner.embedders.1.model."):
        weights.load(tmp_path / "refiner_like.safetensors")


def test_sdxl_preset_loads_the_single_file_from_the_hub_cache_offline(offline_cache, small_sdxl_preset):
    tensors = sdxl_file_tensors()
    fakes.write_hub_cache(offline_cache, SDXL.hub_repo, {SDXL.single_file: tensors})
    loaded = weights.load("sdxl-base-1.0", dtype=torch.bfloat16)
    assert loaded.spec.name == "sdxl-base-1.0" and loaded.unet.label_emb[0][0].weight.dtype == torch.bfloat16
    assert loaded.text_encoder_2.text_projection.shape == (32, 32)


def test_sdxl_preset_offline_with_an_empty_cache_names_the_file_and_the_command(offline_cache, small_sdxl_preset):
    with pytest.raises(weights.errors.OfflineError) as failure:
        weights.load("sdxl-base-1.0")
    message = str(failure.value)
    assert "stabilityai/stable-diffusion-xl-base-1.0" in message
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0 sd_xl_base_1.0.safetensors" in message
