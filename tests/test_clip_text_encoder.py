"""clip.TextEncoder against transformers' CLIPTextModel (SD 1), diffusers' SD 2 conversion and open_clip (SD 2).

The golden outputs come from tests/golden/fixtures_clip.py. Each fixture stores the
config, the seed of `weights.fill_random_` and the ids. So each test rebuilds the same
random tower here and holds its float32 output to helpers.assert_matches_golden's bound:
twice the sum of the two float32 errors (ours, measured here against the same tower in
float64; the reference's, measured by the fixture script), plus one rounding of the output.
"""
import dataclasses

import pytest
import torch
from helpers import assert_matches_golden, in_float64, load_golden, max_relative_error

from clip import TextConfig, TextEncoder
from clip.tokenizer import BOS_ID, EOS_ID
from weights import fill_random_, presets

# The GPU fp16 tests compare fp16 CUDA outputs with the fp32 reference. fp16 has a unit
# roundoff of 4.9e-4. On CPU, fp16 gave 1.3e-3 (tiny) to 2.8e-3 (ViT-H) after 12-23 blocks.
# 1e-2 leaves room for other kernels; a wrong weight or wrong order of operations gives O(1).
FP16_BOUND = 1e-2


def tower(golden: dict, **changes) -> TextEncoder:
    config = dataclasses.replace(TextConfig(**golden["config"]), **changes)
    return fill_random_(TextEncoder(config), golden["seed"]).eval()


def check(golden: dict, name: str, ours: TextEncoder, output) -> None:
    """output(tower) of our float32 tower against golden[name] (its float64 copy measures our float32 error)."""
    assert_matches_golden(golden, name, output(ours), output(in_float64(ours)))


def key_shapes(module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- parity, tiny
@pytest.mark.precision
@torch.no_grad()
def test_sd1_tiny_tower_matches_transformers_clip_text_model_fp32():
    golden = load_golden("clip_sd1_tiny")
    ours, ids = tower(golden), golden["ids"]
    check(golden, "context", ours, lambda model: model(ids))
    check(golden, "pooled", ours, lambda model: model.pooled_embedding(ids))
    projected = tower(golden, projection_dim=golden["projection_dim"])
    check(golden, "text_embeds", projected, lambda model: model.pooled_embedding(ids))


@pytest.mark.precision
@torch.no_grad()
def test_sd2_tiny_penultimate_context_matches_diffusers_conversion_and_open_clip_fp32():
    golden = load_golden("clip_sd2_tiny")
    ours, ids = tower(golden), golden["ids"]
    check(golden, "context", ours, lambda model: model(ids))                # diffusers -> CLIPTextModel
    check(golden, "context_open_clip", ours, lambda model: model(ids))      # open_clip's own blocks
    check(golden, "text_embeds", ours, lambda model: model.pooled_embedding(ids))
    check(golden, "text_embeds_open_clip", ours, lambda model: model.pooled_embedding(ids))


# ----------------------------------------------------------------------------- parity, full size
@pytest.mark.slow
@torch.no_grad()
def test_sd1_full_vit_l14_tower_matches_transformers_clip_text_model_fp32():
    golden = load_golden("clip_sd1_full")
    ours, ids = tower(golden), golden["ids"]
    assert ours.config == presets.get("sd-1.5").text
    check(golden, "context", ours, lambda model: model(ids))
    check(golden, "pooled", ours, lambda model: model.pooled_embedding(ids))


@pytest.mark.slow
@torch.no_grad()
def test_sd2_full_vit_h14_penultimate_context_matches_diffusers_23_layer_model_fp32():
    golden = load_golden("clip_sd2_full")
    ours, ids = tower(golden), golden["ids"]
    assert ours.config == presets.get("sd-2.1-base").text == presets.get("sd-2.1").text
    check(golden, "context", ours, lambda model: model(ids))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["clip_sd1_tiny", "clip_sd2_tiny",
                                  pytest.param("clip_sd1_full", marks=pytest.mark.slow),
                                  pytest.param("clip_sd2_full", marks=pytest.mark.slow)])
@torch.no_grad()
def test_fp16_on_gpu_stays_close_to_the_fp32_reference(name):
    golden = load_golden(name)
    ours = tower(golden).to("cuda", torch.float16)
    context = ours(golden["ids"].cuda()).float().cpu()
    assert torch.isfinite(context).all()
    assert max_relative_error(context, golden["context"]) <= FP16_BOUND


# ----------------------------------------------------------------------------- published keys
def test_sd1_state_dict_keys_and_shapes_equal_the_published_text_model_keys():
    for name in ("clip_sd1_tiny", "clip_sd1_full"):
        golden = load_golden(name)
        with torch.device("meta"):
            ours = TextEncoder(TextConfig(**golden["config"]))
        assert key_shapes(ours) == golden["published_keys"]
        # SD 1 files also carry text_model.embeddings.position_ids; the loader skips it, we hold no buffers
        assert "text_model.embeddings.position_ids" not in ours.state_dict() and list(ours.buffers()) == []


def test_sd2_state_dict_keys_and_shapes_equal_open_clip_with_projection_and_logit_scale():
    for name in ("clip_sd2_tiny", "clip_sd2_full"):
        golden = load_golden(name)
        with torch.device("meta"):
            ours = TextEncoder(TextConfig(**golden["config"]))
        assert key_shapes(ours) == golden["published_keys"]
        expected = {"text_projection", "logit_scale", "transformer.resblocks.0.attn.in_proj_weight"}
        assert expected <= set(golden["published_keys"])


def test_presets_build_towers_with_the_published_keys():
    for preset, name in (("sd-1.5", "clip_sd1_full"), ("sd-2.1-base", "clip_sd2_full"), ("sd-2.1", "clip_sd2_full")):
        with torch.device("meta"):
            built = presets.get(preset).build_text_encoder()
        assert key_shapes(built) == load_golden(name)["published_keys"], preset


# ----------------------------------------------------------------------------- equations
def tiny(layout: str, **changes) -> TextEncoder:
    base = {"sd1": TextConfig(layout="sd1", width=32, layers=2, heads=4),
            "sd2": TextConfig(layout="sd2", width=32, layers=3, heads=4, activation="gelu", skip_last_layers=1)}
    return fill_random_(TextEncoder(dataclasses.replace(base[layout], **changes)), seed=1).eval()


def random_ids(batch=2, eos_at=20, pad_id=EOS_ID, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, 77), pad_id, dtype=torch.long)
    ids[:, 0] = BOS_ID
    ids[:, 1:eos_at] = torch.randint(0, BOS_ID, (batch, eos_at - 1), generator=generator)
    ids[:, eos_at] = EOS_ID
    return ids


@pytest.mark.parametrize("layout", ["sd1", "sd2"])
@torch.no_grad()
def test_causal_mask_changing_a_later_token_never_changes_earlier_outputs(layout):
    model = tiny(layout)
    ids = random_ids()
    changed = ids.clone()
    changed[:, 9] = (changed[:, 9] + 1) % BOS_ID
    before, after = model(ids), model(changed)
    assert torch.equal(before[:, :9], after[:, :9])                     # positions 0..8 see only 0..8
    assert (before[:, 9:] - after[:, 9:]).abs().amax(dim=-1).min() > 1e-4   # every later position changes


@pytest.mark.parametrize("layout", ["sd1", "sd2"])
@torch.no_grad()
def test_pad_id_changes_outputs_after_eos_but_not_up_to_eos(layout):
    model = tiny(layout)
    padded_with_eos, padded_with_zero = random_ids(pad_id=EOS_ID), random_ids(pad_id=0)
    a, b = model(padded_with_eos), model(padded_with_zero)
    assert torch.equal(a[:, :21], b[:, :21])                            # BOS .. EOS at 20: identical
    assert (a[:, 21:] - b[:, 21:]).abs().amax(dim=-1).min() > 1e-4      # every pad position differs


@torch.no_grad()
def test_sd2_context_is_the_penultimate_block_then_ln_final():
    full = tiny("sd2")                                                  # 3 blocks, skip 1
    shorter = TextEncoder(dataclasses.replace(full.config, layers=2, skip_last_layers=0)).eval()
    shorter.load_state_dict({k: v for k, v in full.state_dict().items() if ".resblocks.2." not in k})
    ids = random_ids(pad_id=0)
    assert torch.equal(full(ids), full.hidden_states(ids, skip_last_layers=1))
    assert torch.equal(full(ids), shorter(ids))
    assert not torch.allclose(full(ids), full.hidden_states(ids, skip_last_layers=0))


@torch.no_grad()
def test_pooled_embedding_reads_the_first_eos_and_uses_all_blocks():
    model = tiny("sd2")
    ids = random_ids(pad_id=0)
    last = model.hidden_states(ids, skip_last_layers=0)
    assert torch.equal(model.pooled_embedding(ids), last[:, 20] @ model.text_projection)
    sd1 = tiny("sd1")
    ids = random_ids(pad_id=EOS_ID)                                      # every pad is an EOS too
    assert torch.equal(sd1.pooled_embedding(ids), sd1.hidden_states(ids)[:, 20])
    with pytest.raises(ValueError, match=r"rows without: \[0, 1\]"):
        sd1.pooled_embedding(torch.zeros(2, 77, dtype=torch.long))


@pytest.mark.precision
@torch.no_grad()
def test_quick_gelu_is_x_sigmoid_1_702x_and_gelu_is_erf_gelu():
    from clip.text_encoder import ACTIVATIONS
    x = torch.linspace(-4, 4, 101)
    assert torch.equal(ACTIVATIONS["quick_gelu"](x), x * torch.sigmoid(1.702 * x))
    torch.testing.assert_close(ACTIVATIONS["gelu"](x), 0.5 * x * (1 + torch.erf(x / 2 ** 0.5)))


def test_bad_configs_and_ids_are_rejected_with_what_was_expected():
    with pytest.raises(ValueError, match="layout must be one of"):
        TextEncoder(TextConfig(layout="sdxl"))
    with pytest.raises(ValueError, match="not divisible by heads"):
        TextEncoder(TextConfig(width=30, heads=4, layers=1))
    with pytest.raises(ValueError, match=r"skip_last_layers must be in \[0, 2\)"):
        TextEncoder(TextConfig(width=32, heads=4, layers=2, skip_last_layers=2))
    with pytest.raises(ValueError, match=r"shape \(B, L <= 77\), got \(1, 78\)"):
        tiny("sd1")(torch.zeros(1, 78, dtype=torch.long))
