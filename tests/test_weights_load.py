"""weights.load on local sources: "tiny", single files, diffusers folders, pickles, and every error.

The files are written by `tests/fakes.py` in the published layouts with deterministic
random weights, so each test knows exactly which values must come out.
"""
import os
import pickle
from dataclasses import replace
from pathlib import Path

import fakes
import pytest
import torch
from helpers import TINY, TINY_SD2, assert_same_outputs, file_holding, linux_only, source_modules
from safetensors.torch import load_file, save_file

import weights
from weights import diffusers_keys, presets, single_file


# ----------------------------------------------------------------------------- tiny
def test_tiny_is_the_deterministic_random_model_of_fill_random():
    loaded = weights.load("tiny")
    unet, vae, text_encoder = source_modules(TINY)
    for ours, theirs in ((loaded.unet, unet), (loaded.vae, vae), (loaded.text_encoder, text_encoder)):
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())
    assert loaded.spec == TINY and loaded.tokenizer.pad_id == 49407 and not loaded.unet.training


def test_tiny_comes_in_the_requested_dtype_and_prediction_type():
    loaded = weights.load("tiny", dtype=torch.float16, prediction_type="v_prediction")
    assert {p.dtype for m in (loaded.unet, loaded.vae, loaded.text_encoder) for p in m.parameters()} == {torch.float16}
    assert loaded.spec.prediction_type == "v"


# ----------------------------------------------------------------------------- single files
def test_single_file_with_ema_and_schedule_entries_loads_and_matches_the_modules_it_came_from(tmp_path):
    path = fakes.write_single_file(tmp_path / "tiny.safetensors", TINY, ema_copies=True)
    keys = load_file(path).keys()
    assert {"model_ema.decay", "alphas_cumprod",
            "cond_stage_model.transformer.text_model.embeddings.position_ids"} <= keys
    assert sum(k.startswith("model_ema.diffusion_model") for k in keys) > 50
    loaded = weights.load(path)
    assert loaded.spec.name == "tiny"
    assert_same_outputs(loaded, source_modules(TINY), loaded.tokenizer)


@linux_only
def test_single_file_weights_stay_memory_mapped_unless_the_dtype_changes(tmp_path):
    path = fakes.write_single_file(tmp_path / "tiny.safetensors", TINY)
    same = weights.load(path)                                   # the file is float32
    holders = {file_holding(p) for m in (same.unet, same.vae, same.text_encoder) for p in m.parameters()}
    assert holders == {str(path)}                               # every weight is a view of the mapped file
    halved = weights.load(path, dtype=torch.float16)
    assert {p.dtype for p in halved.unet.parameters()} == {torch.float16}
    assert all(file_holding(p) != str(path) for p in halved.unet.parameters())     # converted copies


def test_changing_a_loaded_weight_leaves_the_file_unchanged(tmp_path):
    path = fakes.write_single_file(tmp_path / "tiny.safetensors", TINY)
    before = path.read_bytes()
    with torch.no_grad():
        weights.load(path).unet.out[2].weight.fill_(7.0)           # copy-on-write: private to this process
    assert path.read_bytes() == before
    assert (weights.load(path).unet.out[2].weight != 7.0).all()


@pytest.mark.gpu
def test_single_file_loads_onto_the_gpu_in_float16(tmp_path):
    loaded = weights.load(fakes.write_single_file(tmp_path / "tiny.safetensors", TINY), dtype=torch.float16,
                          device="cuda")
    tensors = [t for m in (loaded.unet, loaded.vae, loaded.text_encoder) for t in m.state_dict().values()]
    assert {(t.device.type, t.dtype) for t in tensors} == {("cuda", torch.float16)}
    with torch.no_grad():
        context = loaded.text_encoder(loaded.tokenizer(["a cat"]).cuda())
        assert torch.isfinite(loaded.unet(torch.randn(1, 4, 8, 8, device="cuda"), 10, context)).all()


def test_single_file_missing_key_fails_with_file_name_count_and_key(tmp_path):
    tensors = load_file(fakes.write_single_file(tmp_path / "full.safetensors", TINY))
    del tensors["model.diffusion_model.out.2.bias"]
    save_file(tensors, tmp_path / "damaged.safetensors")
    with pytest.raises(weights.StateDictMismatchError) as error:
        weights.load(tmp_path / "damaged.safetensors")
    message = str(error.value)
    assert str(tmp_path / "damaged.safetensors") in message and "unet" in message
    assert "missing from the file (1): out.2.bias" in message


def test_single_file_unexpected_and_misshaped_keys_fail_with_both_listed(tmp_path):
    tensors = load_file(fakes.write_single_file(tmp_path / "full.safetensors", TINY))
    tensors["first_stage_model.encoder.extra.weight"] = torch.zeros(3)
    tensors["first_stage_model.quant_conv.bias"] = torch.zeros(5)
    save_file(tensors, tmp_path / "odd.safetensors")
    with pytest.raises(weights.StateDictMismatchError) as error:
        weights.load(tmp_path / "odd.safetensors")
    message = str(error.value)
    assert "the vae weights" in message and "unexpected in the file (1): encoder.extra.weight" in message
    assert "shape differs (1): quant_conv.bias file (5,) vs model (8,)" in message


def test_single_file_key_of_no_network_is_reported_not_ignored(tmp_path):
    tensors = load_file(fakes.write_single_file(tmp_path / "full.safetensors", TINY))
    tensors.update({f"lora_unet_down_{i}.alpha": torch.zeros(1) for i in range(7)})
    save_file(tensors, tmp_path / "stray.safetensors")
    with pytest.raises(weights.StateDictMismatchError, match=r"unexpected in the file \(7\): lora_unet_down_0.alpha, "
                                                             r".*\(2 more\)"):
        weights.load(tmp_path / "stray.safetensors")


@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_safetensors_fails_naming_the_file_and_saying_download_again(tmp_path, cut):
    path = fakes.write_single_file(tmp_path / "model.safetensors", TINY)
    data = path.read_bytes()
    path.write_bytes(data[:6] if cut == "header" else data[:len(data) // 2])
    with pytest.raises(weights.CorruptFileError) as error:
        weights.load(path)
    assert str(path) in str(error.value) and "download it again" in str(error.value)


def test_text_file_named_safetensors_is_reported_as_not_readable(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("<html>404 Not Found</html>" * 5)
    with pytest.raises(weights.CorruptFileError, match=r"model.safetensors: not a readable safetensors file"):
        weights.load(path)


def test_safetensors_with_a_misaligned_tensor_is_still_read_correctly(tmp_path):
    """A view into the mapping needs offsets that are multiples of the element size; other files are read."""
    import json
    header = json.dumps({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [2, 10]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes([7, 9]) +
                     torch.tensor([1.5, -2.0]).numpy().tobytes())
    tensors = weights.materialize.open_safetensors(path)
    assert tensors["a"].tolist() == [7, 9] and tensors["b"].tolist() == [1.5, -2.0]


def _meta(shape):
    return torch.empty(shape, device="meta")


def _probe_tensors(spec):
    tensors = {k: _meta(v) for k, v in single_file.probe_shapes(spec).items()}
    context = spec.unet.context_dim
    tensors[single_file.UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = _meta((320, context))
    return tensors


def test_sd1_and_sd2_are_told_apart_by_keys_and_shapes():
    for name, family in (("sd-1.5", "sd1"), ("sd-2.1", "sd2"), ("tiny", "sd1")):
        tensors = _probe_tensors(presets.get(name))
        assert single_file.detect_family(tensors, "f") == family
        assert single_file.choose_preset(family, Path("x.safetensors"), {k: tuple(v.shape) for k, v in tensors.items()},
                                         "v" if name == "sd-2.1" else None, presets) == name


def test_sd2_prediction_type_comes_from_the_argument_or_the_published_file_name_else_a_warning():
    shapes = {k: tuple(v.shape) for k, v in _probe_tensors(presets.get("sd-2.1")).items()}
    choose = single_file.choose_preset
    assert choose("sd2", Path("v2-1_768-ema-pruned.safetensors"), shapes, None, presets) == "sd-2.1"
    assert choose("sd2", Path("v2-1_512-ema-pruned.safetensors"), shapes, None, presets) == "sd-2.1-base"
    assert choose("sd2", Path("v2-1_768-ema-pruned.safetensors"), shapes, "epsilon", presets) == "sd-2.1-base"
    with pytest.warns(UserWarning, match="cannot be read from the weights.*prediction_type='v'"):
        assert choose("sd2", Path("my-finetune.safetensors"), shapes, None, presets) == "sd-2.1-base"


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update({"conditioner.embedders.0.transformer.x": _meta(1)}), "SDXL"),
    (lambda t: t.update({single_file.PROBES["unet"]: _meta((320, 5, 3, 3))}), "5 input channels"),
    (lambda t: [t.pop(k) for k in list(t) if k.startswith("cond_stage_model")], "not a full SD 1.x/2.x"),
    (lambda t: t.update({single_file.UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                         _meta((320, 1024))}), "cross-attends to width 1024"),
])
def test_checkpoints_of_other_models_are_refused_with_what_they_are(change, message):
    tensors = _probe_tensors(presets.get("sd-1.5"))
    change(tensors)
    with pytest.raises(weights.UnsupportedModelError, match=message):
        single_file.detect_family(tensors, "f")


def test_single_file_of_sizes_no_preset_has_is_refused(tmp_path):
    odd = replace(TINY, unet=replace(TINY.unet, model_channels=64))
    with pytest.raises(weights.UnsupportedModelError, match="match no preset.*diffusers folder"):
        weights.load(fakes.write_single_file(tmp_path / "odd.safetensors", odd))


# ----------------------------------------------------------------------------- pickles
def _write_ckpt(tmp_path, extra=None) -> Path:
    tensors = load_file(fakes.write_single_file(tmp_path / "src.safetensors", TINY))
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tensors, "global_step": 470000, **(extra or {})}, path)
    return path


def test_pickle_checkpoint_is_refused_by_default_with_how_to_convert(tmp_path):
    path = _write_ckpt(tmp_path)
    with pytest.raises(weights.PickleRefusedError) as error:
        weights.load(path)
    message = str(error.value)
    assert str(path) in message and "convert_checkpoint" in message and "allow_pickle=True" in message


def test_pickle_checkpoint_loads_with_allow_pickle_and_converts_to_safetensors(tmp_path):
    path = _write_ckpt(tmp_path)
    modules = source_modules(TINY)
    assert_same_outputs(weights.load(path, allow_pickle=True), modules, TINY.build_tokenizer())
    converted = weights.convert_checkpoint(path)
    assert converted == tmp_path / "model.safetensors"
    assert_same_outputs(weights.load(converted), modules, TINY.build_tokenizer())


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_even_with_allow_pickle(tmp_path):
    payload = _RunsCode()
    payload.marker = tmp_path / "ran"
    path = _write_ckpt(tmp_path, {"callback": payload})
    with pytest.raises(weights.PickleRefusedError, match="weights_only=True.*refused"):
        weights.load(path, allow_pickle=True)
    assert not (tmp_path / "ran").exists()
    pickle.loads(pickle.dumps(0))                       # (pickle itself still works: nothing was patched)


@pytest.mark.parametrize("kind", fakes.REFUSED_PICKLE_KINDS)
def test_pickle_torch_load_refuses_is_named_with_what_it_met_and_none_of_torchs_advice_to_run_it(tmp_path, kind):
    path = fakes.write_refused_pickle(tmp_path / "model.ckpt", kind)
    with pytest.raises(weights.PickleRefusedError) as error:
        weights.load(path, allow_pickle=True)
    message = str(error.value)
    found = {"class instance": "GLOBAL fakes.PickledObject", "__reduce__ call": "system",
             "legacy non-zip": "GLOBAL fakes.PickledObject", "plain pickle.dump": "a plain pickle.dump file",
             "bare tensor": "holds a single tensor of shape (3,), not a dict of named tensors"}[kind]
    assert message.startswith(f"{path}: ") and found in message and "expected" in message
    assert "\n" not in message and "\x1b" not in message and "`weights_only` set to `False`" not in message
    assert not (tmp_path / "model.ckpt.ran").exists()


def test_empty_ckpt_is_named_as_an_empty_file_not_an_index_error(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"")
    with pytest.raises(weights.CorruptFileError, match=r"model.ckpt: the file is empty \(0 bytes\), not a "
                                                        r"checkpoint; expected .* download or copy it again"):
        weights.load(tmp_path / "model.ckpt", allow_pickle=True)


# ----------------------------------------------------------------------------- diffusers folders
@pytest.mark.parametrize("spec", [TINY, TINY_SD2], ids=["sd1", "sd2"])
def test_diffusers_folder_loads_and_matches_the_modules_it_came_from(tmp_path, spec):
    folder = fakes.write_diffusers_folder(tmp_path / "model", spec)
    loaded = weights.load(folder)
    assert loaded.spec.prediction_type == spec.prediction_type and loaded.spec.unet == spec.unet
    assert loaded.spec.text == fakes.diffusers_spec_of(spec).text       # SD 2: the 23-of-24-block tower
    assert loaded.tokenizer.pad_id == (0 if spec.text.layout == "sd2" else 49407)
    assert_same_outputs(loaded, source_modules(spec), loaded.tokenizer)


def test_sd2_folder_has_no_clip_projection_so_pooled_embedding_is_nan_not_wrong(tmp_path):
    loaded = weights.load(fakes.write_diffusers_folder(tmp_path / "model", TINY_SD2))
    assert torch.isnan(loaded.text_encoder.pooled_embedding(loaded.tokenizer(["a cat"]))).all()
    assert torch.isfinite(loaded.text_encoder(loaded.tokenizer(["a cat"]))).all()


def test_folder_prefers_fp16_variant_for_float16_and_full_precision_otherwise(tmp_path):
    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY)
    full = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    save_file({k: torch.zeros_like(v, dtype=torch.float16) for k, v in full.items()},
              folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert all(p.abs().sum() == 0 for p in weights.load(folder, dtype=torch.float16).unet.parameters())
    assert any(p.abs().sum() > 0 for p in weights.load(folder).unet.parameters())
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()          # only the variant is left
    assert {p.dtype for p in weights.load(folder).unet.parameters()} == {torch.float32}


def test_folder_with_legacy_vae_attention_names_loads(tmp_path):
    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY)
    file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in load_file(file).items():
        for new, old in legacy.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        renamed[key] = value
    assert any(".query." in k for k in renamed)
    save_file(renamed, file)
    assert_same_outputs(weights.load(folder), source_modules(TINY), TINY.build_tokenizer())


def test_pickled_folder_weights_are_refused_by_default(tmp_path):
    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY)
    file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(file), file.with_suffix(".bin"))
    file.unlink()
    with pytest.raises(weights.PickleRefusedError, match="diffusion_pytorch_model.bin"):
        weights.load(folder)
    assert weights.load(folder, allow_pickle=True).spec.unet == TINY.unet


def test_folder_that_is_not_a_model_says_what_it_holds_and_what_is_expected(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"")
    with pytest.raises(weights.NotAModelError) as error:
        weights.load(tmp_path / "photos")
    assert "photos is not a model folder" in str(error.value) and "cat.png" in str(error.value)
    assert "model_index.json, unet/, vae/" in str(error.value)

    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY)
    with pytest.raises(weights.NotAModelError, match=r"one component of a model.*pass the model folder"):
        weights.load(folder / "unet")


def test_damaged_config_json_fails_naming_it(tmp_path):
    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY)
    (folder / "unet" / "config.json").write_text("{ not json")
    with pytest.raises(weights.CorruptFileError, match=r"unet/config.json: not valid JSON"):
        weights.load(folder)


@pytest.mark.parametrize("part", ["unet", "vae", "text_encoder"])
@pytest.mark.parametrize("content, message", [
    (b"", r"config.json: the file is empty \(0 bytes\); expected a JSON object \{\.\.\.\}\. Copy it again"),
    (b" \n", r"config.json: the file is empty \(2 bytes of white space\)"),
    (b"{ not json", r"config.json: not valid JSON \(.*\); expected a JSON object \{\.\.\.\}\. The file is damaged"),
    (b"[1, 2]", r"config.json: JSON holding a list \('\[1, 2\]'\), not an object \{\.\.\.\}\. Copy it again"),
    (b"{}", r"config.json: a {part} config without [a-z_]+.*; expected the config.json .* Copy it again"),
], ids=["empty", "white space", "not JSON", "a list", "an empty object"])
def test_folder_config_json_empty_damaged_or_not_an_object_is_named_with_what_to_do(tmp_path, part, content, message):
    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY)
    (folder / part / "config.json").write_bytes(content)
    with pytest.raises(weights.CorruptFileError, match=f"{part}/" + message.replace("{part}", part)):
        weights.load(folder)


def test_folder_with_an_architecture_we_do_not_have_is_refused(tmp_path):
    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY)
    config = fakes.unet_config(TINY) | {"class_embed_type": "timestep"}
    (folder / "unet" / "config.json").write_text(__import__("json").dumps(config))
    with pytest.raises(weights.UnsupportedModelError, match="class_embed_type='timestep'"):
        weights.load(folder)


def _edit_config(folder: Path, part: str, **changes) -> None:
    import json
    file = folder / part / ("scheduler_config.json" if part == "scheduler" else "config.json")
    file.write_text(json.dumps(json.loads(file.read_text()) | changes))


def test_folder_text_mlp_width_is_read_from_intermediate_size(tmp_path):
    spec = replace(TINY, text=replace(TINY.text, mlp_width=37))       # not 4 x 32
    folder = fakes.write_diffusers_folder(tmp_path / "model", spec)
    assert '"intermediate_size": 37' in (folder / "text_encoder" / "config.json").read_text()
    loaded = weights.load(folder)
    assert loaded.spec.text.mlp_width == 37
    assert loaded.text_encoder.text_model.encoder.layers[0].mlp.fc1.out_features == 37
    assert_same_outputs(loaded, source_modules(spec), loaded.tokenizer)


def test_folder_image_size_is_the_unet_sample_size_times_the_vae_downsampling(tmp_path):
    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY)
    _edit_config(folder, "unet", sample_size=12)
    _edit_config(folder, "vae", sample_size=999, scaling_factor=0.5)
    spec = weights.load(folder).spec
    assert (spec.image_size, spec.scale_factor) == (12 * 8, 0.5)


@pytest.mark.parametrize("part, changes, message", [
    ("unet", {"norm_num_groups": 24}, r"unet/config.json: norm_num_groups=24.*divides every block_out_channels"),
    ("unet", {"attention_head_dim": 5}, r"unet/config.json: attention_head_dim=\[5, 5\].*dividing the channels"),
    ("unet", {"_class_name": "UNet2DModel"}, r"unet/config.json: _class_name='UNet2DModel'.*UNet2DConditionModel"),
    ("unet", {"in_channels": 5}, r"unet/config.json: in_channels=5, out_channels=4, but .*latent_channels=4"),
    ("unet", {"cross_attention_dim": 64}, r"cross_attention_dim=64, but .*text_encoder/config.json has hidden_size=32"),
    ("vae", {"norm_num_groups": 5}, r"vae/config.json: norm_num_groups=5"),
    ("vae", {"_class_name": "AutoencoderTiny"}, r"vae/config.json: _class_name='AutoencoderTiny'.*AutoencoderKL"),
    ("text_encoder", {"architectures": ["CLIPTextModelWithProjection"]},
     r"text_encoder/config.json: sets architectures=\['CLIPTextModelWithProjection'\].*\['CLIPTextModel'\]"),
    ("text_encoder", {"hidden_act": "gelu_new"}, r"text_encoder/config.json: hidden_act='gelu_new'.*quick_gelu"),
    ("text_encoder", {"num_attention_heads": 5}, r"num_attention_heads=5.*divides hidden_size=32"),
    ("text_encoder", {"vocab_size": 1000}, r"text_encoder/config.json: vocab_size=1000.*supported: 49408"),
    ("text_encoder", {"max_position_embeddings": 64}, r"max_position_embeddings=64.*at least 77"),
], ids=["unet-norm_num_groups", "unet-attention_head_dim", "unet-_class_name", "unet-in_channels",
        "unet-cross_attention_dim", "vae-norm_num_groups", "vae-_class_name", "text-architectures", "text-hidden_act",
        "text-num_attention_heads", "text-vocab_size", "text-max_position_embeddings"])
def test_folder_config_numbers_our_networks_cannot_express_are_refused_by_field_name(tmp_path, part, changes,
                                                                                    message):
    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY)
    _edit_config(folder, part, **changes)
    with pytest.raises(weights.UnsupportedModelError, match=message):
        weights.load(folder)


def test_folder_tokenizer_that_is_not_clips_table_is_refused_by_name(tmp_path):
    """clip.Tokenizer holds CLIP's 49408-entry table; a test pipeline's 1000-entry one cannot be expressed."""
    import json
    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY)
    small = {f"t{i}": i for i in range(998)} | {"<|startoftext|>": 998, "<|endoftext|>": 999}
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(small))
    with pytest.raises(weights.UnsupportedModelError,
                       match=r"tokenizer/vocab.json: a vocabulary of 1000 entries with <\|startoftext\|>=998"):
        weights.load(folder)


# ----------------------------------------------------------------------------- ids and paths
def test_unknown_id_lists_the_known_ones():
    with pytest.raises(weights.UnknownSourceError) as error:
        weights.load("sd-9")
    assert "'sd-9' is neither a known model id" in str(error.value)
    assert f"Known ids: {', '.join(weights.MODEL_NAMES)}." in str(error.value)
    assert {"toy", "tiny", "sd-1.5", "sd-2.1-base", "sd-2.1"} <= set(weights.MODEL_NAMES)


def test_missing_file_is_named():
    with pytest.raises(weights.UnknownSourceError, match=r"nowhere/v1-5.safetensors: no such file"):
        weights.load("nowhere/v1-5.safetensors")


def test_bad_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        weights.load("tiny", prediction_type="sample")


# ----------------------------------------------------------------------------- the key table
@pytest.mark.parametrize("name", ["sd-1.5", "sd-2.1"])
def test_key_table_round_trips_every_full_size_key(name):
    spec = presets.get(name)
    for part, config, forward, backward in (
            ("unet", spec.unet, diffusers_keys.unet_from_diffusers, diffusers_keys.unet_to_diffusers),
            ("vae", spec.vae, diffusers_keys.vae_from_diffusers, diffusers_keys.vae_to_diffusers)):
        ours = weights.materialize.build_empty(getattr(spec, f"build_{part}")).state_dict()
        theirs = backward(ours, config)
        assert len(theirs) == len(ours)
        back = forward(theirs, config)
        assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_convert_checkpoint_never_overwrites_an_existing_safetensors(tmp_path):
    path = _write_ckpt(tmp_path)
    existing = tmp_path / "model.safetensors"
    existing.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"model\.safetensors already exists.*another target"):
        weights.convert_checkpoint(path)
    assert existing.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "model.safetensors", "src.safetensors"]
    other = weights.convert_checkpoint(path, tmp_path / "other.safetensors")    # what the message says to do
    assert_same_outputs(weights.load(other), source_modules(TINY), TINY.build_tokenizer())


def test_convert_checkpoint_interrupted_mid_write_leaves_no_partial_target(tmp_path, monkeypatch):
    import safetensors.torch
    path = _write_ckpt(tmp_path)
    real_save_file = safetensors.torch.save_file

    def interrupted(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 1000)       # the first bytes of a file, then Ctrl-C
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        weights.convert_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "src.safetensors"]
    monkeypatch.setattr(safetensors.torch, "save_file", real_save_file)
    converted = weights.convert_checkpoint(path)                                   # the retry just works
    assert_same_outputs(weights.load(converted), source_modules(TINY), TINY.build_tokenizer())
