"""Loading SDXL base 1.0: the single file's layout (`conditioner.embedders.0.transformer.`,
`conditioner.embedders.1.model.`, its non-weights) and the preset through the Hub cache, on a small
SDXL-shaped model standing in for the preset (no full-size SDXL network is ever allocated here)."""

import fakes
import pytest
import torch
from helpers import SDXL_FILE_PREFIXES, SMALL_SDXL_SPEC, sdxl_file_tensors
from safetensors.torch import save_file

import weights
from ldm.unet import vector_conditioning
from weights import presets
from weights.errors import StateDictMismatchError, UnsupportedModelError
from weights.random_init import random_tensor

SDXL = presets.get("sdxl-base-1.0")


@pytest.fixture
def small_sdxl_preset(monkeypatch):
    monkeypatch.setitem(presets._PRESETS, "sdxl-base-1.0", SMALL_SDXL_SPEC)
    return SMALL_SDXL_SPEC


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
            assert torch.equal(value, tensors[SDXL_FILE_PREFIXES[part] + key].float()), (part, key)
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


# ----------------------------------------------------------------------------- diffusers folders
def sdxl_folder_files(spec=SMALL_SDXL_SPEC) -> tuple[dict, dict]:
    """({relative path: bytes or tensors} of a StableDiffusionXLPipeline folder of `spec`, as published:
    both towers complete (text_encoder 12 blocks, text_encoder_2 a CLIPTextModelWithProjection), the
    tokenizer_2 padding with "!"; {part: our state dict} the weights came from)."""
    import json

    from helpers import open_clip_to_transformers

    from weights import diffusers_keys as keys
    ours = {}
    for part, build in {"unet": spec.build_unet, "vae": spec.build_vae, "text_encoder": spec.build_text_encoder,
                        "text_encoder_2": spec.build_text_encoder_2}.items():
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in build().state_dict().items()}
        ours[part] = {k: random_tensor(k, s, seed=len(part)) for k, s in shapes.items()}
    channels = [spec.unet.model_channels * m for m in spec.unet.channel_mult]
    unet = dict(fakes.unet_config(spec), _diffusers_version="0.19.0.dev0", addition_embed_type="text_time",
                addition_embed_type_num_heads=64, addition_time_embed_dim=256, num_attention_heads=None,
                projection_class_embeddings_input_dim=spec.unet.adm_in_channels, sample_size=128,
                attention_head_dim=[c // spec.unet.head_dim for c in channels], upcast_attention=None,
                transformer_layers_per_block=[1, *spec.unet.transformer_depth[1:]])
    text_2 = dict(fakes.text_config(spec), architectures=["CLIPTextModelWithProjection"], hidden_act="gelu",
                  hidden_size=spec.text_2.width, intermediate_size=4 * spec.text_2.width,
                  num_attention_heads=spec.text_2.heads, num_hidden_layers=spec.text_2.layers,
                  projection_dim=spec.text_2.projection_dim, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    configs = {
        "model_index.json": {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
                             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                             "tokenizer_2": ["transformers", "CLIPTokenizer"]},
        "scheduler/scheduler_config.json": {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012,
                                            "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                            "interpolation_type": "linear", "num_train_timesteps": 1000,
                                            "prediction_type": "epsilon", "sample_max_value": 1.0,
                                            "steps_offset": 1, "timestep_spacing": "leading",
                                            "trained_betas": None, "use_karras_sigmas": False},
        "unet/config.json": unet,
        "vae/config.json": dict(fakes.vae_config(spec), scaling_factor=0.13025, force_upcast=True),
        "text_encoder/config.json": dict(fakes.text_config(spec), num_hidden_layers=spec.text.layers),
        "text_encoder_2/config.json": text_2}
    files = {path: json.dumps(value, indent=2).encode() for path, value in configs.items()}
    files.update(fakes.tokenizer_files("sd1"))
    files.update({path.replace("tokenizer/", "tokenizer_2/"): content
                  for path, content in fakes.tokenizer_files("sd2").items()})
    transformers_2 = open_clip_to_transformers(ours["text_encoder_2"])
    files.update({
        "unet/diffusion_pytorch_model.safetensors": keys.unet_to_diffusers(ours["unet"], spec.unet),
        "vae/diffusion_pytorch_model.safetensors": keys.vae_to_diffusers(ours["vae"], spec.vae),
        "text_encoder/model.safetensors": dict(ours["text_encoder"]),
        "text_encoder_2/model.safetensors": {k if k.startswith("text_projection") else "text_model." + k: v
                                             for k, v in transformers_2.items()}})
    return files, ours


def write_files(folder, files: dict):
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            save_file({k: v.contiguous() for k, v in content.items()}, str(path))
    return folder


def test_sdxl_diffusers_folder_loads_both_towers_and_tokenizers(tmp_path):
    files, ours = sdxl_folder_files()
    loaded = weights.load(write_files(tmp_path / "sdxl", files))
    spec = loaded.spec
    assert (spec.unet, spec.text, spec.text_2) == (SMALL_SDXL_SPEC.unet, SMALL_SDXL_SPEC.text, SMALL_SDXL_SPEC.text_2)
    assert (spec.scale_factor, spec.image_size, spec.guidance_scale) == (0.13025, 1024, 5.0)
    assert loaded.tokenizer.pad_id == 49407 and loaded.tokenizer_2.pad_id == 0
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        state = getattr(loaded, part).state_dict()
        for key, value in ours[part].items():
            if key == "logit_scale":                       # no counterpart in transformers: NaN, never used
                assert torch.isnan(state[key]).all()
                continue
            assert torch.equal(state[key].reshape(value.shape), value), (part, key)


def test_sdxl_folder_whose_unet_does_not_attend_to_both_towers_is_refused(tmp_path):
    import json
    files, _ = sdxl_folder_files()
    config = json.loads(files["unet/config.json"])
    files["unet/config.json"] = json.dumps(dict(config, cross_attention_dim=16)).encode()
    with pytest.raises(UnsupportedModelError, match="attends to both towers"):
        weights.load(write_files(tmp_path / "sdxl", files))


# ----------------------------------------------------------------------------- the fp16-fix VAE
def fp16_fix_files(spec=SMALL_SDXL_SPEC) -> tuple[dict, dict]:
    """madebyollin/sdxl-vae-fp16-fix's layout: a diffusers AutoencoderKL folder at the repository's root."""
    import json

    from weights import diffusers_keys as keys
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in spec.build_vae().state_dict().items()}
    ours = {k: random_tensor(k, s, seed=99) for k, s in shapes.items()}
    config = dict(fakes.vae_config(spec), scaling_factor=0.13025, force_upcast=False)
    return {"config.json": json.dumps(config).encode(),
            "diffusion_pytorch_model.safetensors": keys.vae_to_diffusers(ours, spec.vae)}, ours


def test_fp16_fix_vae_loads_from_the_hub_cache_offline(offline_cache):
    from weights.load import FP16_FIX_VAE_REPO, load_vae
    files, ours = fp16_fix_files()
    fakes.write_hub_cache(offline_cache, FP16_FIX_VAE_REPO, files)
    vae = load_vae("fp16-fix", dtype=torch.float16)
    state = vae.state_dict()
    assert all(torch.equal(state[k].reshape(v.shape), v.half()) for k, v in ours.items())
    assert vae.config == SMALL_SDXL_SPEC.vae


def test_fp16_fix_vae_offline_with_an_empty_cache_names_the_command(offline_cache):
    from weights.load import load_vae
    with pytest.raises(weights.errors.OfflineError, match="hf download madebyollin/sdxl-vae-fp16-fix config.json"):
        load_vae("fp16-fix")


def test_edit_with_the_fp16_fix_vae_decodes_with_it_without_the_float32_detour(tmp_path, offline_cache,
                                                                               small_sdxl_preset, monkeypatch):
    import numpy as np
    from PIL import Image

    from blend import edit
    from ldm import AutoencoderKL
    from weights.load import FP16_FIX_VAE_REPO
    files, _ = fp16_fix_files()
    fakes.write_hub_cache(offline_cache, FP16_FIX_VAE_REPO, files)
    path = tmp_path / "sd_xl_base_1.0.safetensors"
    save_file(sdxl_file_tensors(), str(path))
    components = weights.load(path)
    calls = []
    decode = AutoencoderKL.decode

    def spy(self, z, upcast_fp16=True):
        calls.append((self is components.vae, upcast_fp16))
        return decode(self, z, upcast_fp16)

    monkeypatch.setattr(AutoencoderKL, "decode", spy)
    image = Image.fromarray((np.random.default_rng(0).random((32, 64, 3)) * 255).astype(np.uint8))
    mask = np.zeros((32, 64), dtype=np.uint8)
    mask[8:24, 8:40] = 255
    options = dict(model=components, steps=4, num_samples=1, size=64, device="cpu")
    fixed = edit(image, Image.fromarray(mask), "a cat", vae="fp16-fix", **options)
    assert calls == [(False, False)]                         # the fp16-fix VAE, in its own precision
    calls.clear()
    own = edit(image, Image.fromarray(mask), "a cat", **options)
    assert calls == [(True, True)]                           # the model's own, float16 upcast inside
    assert np.abs(np.asarray(fixed[0], float) - np.asarray(own[0], float)).max() > 0
