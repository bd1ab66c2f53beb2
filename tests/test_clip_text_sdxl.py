"""SDXL's two text towers and tokenizers: the preset's ViT-L/14 and OpenCLIP ViT-bigG/14, at full size, against
transformers in-process (penultimate layer without the final norm; bigG's pooled text embedding), and the
second tokenizer against open_clip.tokenize.

Full size: ViT-L is 123 M parameters, bigG 695 M (2.8 GB in float32). One tower and its reference live at a
time, the reference sharing our tensors (`assign=True`), and both are freed before the next test.
"""
import gc

import pytest
import torch
from helpers import max_relative_error, open_clip_to_transformers

from clip import TextConfig, TextEncoder
from clip.tokenizer import EOS_ID
from weights import fill_random_, presets

SDXL = presets.get("sdxl-base-1.0")
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon, highly detailed, 8k"]


def random_tower(config: TextConfig, seed: int) -> TextEncoder:
    with torch.device("meta"):
        tower = TextEncoder(config)
    return fill_random_(tower.to_empty(device="cpu"), seed).eval()


def transformers_config(config: TextConfig, **extra):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(vocab_size=config.vocab_size, hidden_size=config.width,
                          intermediate_size=config.resolved_mlp_width, num_hidden_layers=config.layers,
                          num_attention_heads=config.heads, max_position_embeddings=config.context_length,
                          hidden_act=config.activation, layer_norm_eps=config.layer_norm_eps,
                          bos_token_id=49406, eos_token_id=EOS_ID, pad_token_id=1, **extra)


def on_cpu(reference):
    """A reference built on the meta device and loaded with assign=True still holds its `position_ids`
    buffer (not in the state dict) on meta: give it its value, arange(77)."""
    for module in reference.modules():
        if getattr(module, "position_ids", None) is not None and module.position_ids.is_meta:
            module.position_ids = torch.arange(module.position_ids.shape[-1])[None]
    return reference.eval()


def in_layout_of(reference, state: dict) -> dict:
    """`state` (transformers' keys without `text_model.`) under the names `reference` uses: transformers 5's
    CLIPTextModel drops the `text_model.` level, CLIPTextModelWithProjection keeps it."""
    names = set(reference.state_dict())
    return {k if k in names else "text_model." + k: v for k, v in state.items()}


@pytest.mark.slow
@pytest.mark.reference
@torch.no_grad()
def test_sdxl_vit_l14_context_is_transformers_penultimate_hidden_state_fp32():
    """Tower 0 (`conditioner.embedders.0.transformer.`): context = hidden_states[-2] of CLIPTextModel, no final norm."""
    from transformers import CLIPTextModel
    ours = random_tower(SDXL.text, seed=5)
    ids = SDXL.build_tokenizer()(PROMPTS)
    assert ids[0, -1] == EOS_ID                                # padded with 49407
    with torch.device("meta"):
        reference = CLIPTextModel(transformers_config(SDXL.text))
    state = {k.removeprefix("text_model."): v for k, v in ours.state_dict().items()}
    reference.load_state_dict(in_layout_of(reference, state), strict=True, assign=True)
    expected = on_cpu(reference)(ids, output_hidden_states=True).hidden_states[-2]
    error = max_relative_error(ours(ids), expected)
    print(f"SDXL ViT-L/14 context vs transformers hidden_states[-2]: {error:.2e}")
    assert error <= 1e-5
    final_norm = ours.text_model.final_layer_norm
    assert max_relative_error(final_norm(expected), expected) > 1e-2        # the final norm would show
    del ours, reference, state
    gc.collect()


@pytest.mark.slow
@pytest.mark.reference
@torch.no_grad()
def test_sdxl_vit_big_g14_context_and_pooled_match_transformers_with_projection_fp32():
    """Tower 1 (`conditioner.embedders.1.model.`): context = hidden_states[-2] without ln_final; pooled =
    ln_final(last block)[EOT] @ text_projection = CLIPTextModelWithProjection's text_embeds."""
    from transformers import CLIPTextModelWithProjection
    ours = random_tower(SDXL.text_2, seed=6)
    ids = SDXL.build_tokenizer_2()(PROMPTS)
    assert ids[0, -1] == 0                                     # padded with 0
    with torch.device("meta"):
        reference = CLIPTextModelWithProjection(transformers_config(SDXL.text_2, projection_dim=1280))
    reference.load_state_dict(in_layout_of(reference, open_clip_to_transformers(ours.state_dict())), strict=True,
                              assign=True)
    result = on_cpu(reference)(ids, output_hidden_states=True)
    context_error = max_relative_error(ours(ids), result.hidden_states[-2])
    pooled_error = max_relative_error(ours.pooled_embedding(ids), result.text_embeds)
    print(f"SDXL bigG context vs hidden_states[-2]: {context_error:.2e}; pooled vs text_embeds: {pooled_error:.2e}")
    assert context_error <= 1e-5 and pooled_error <= 1e-5
    del ours, reference, result
    gc.collect()


def test_sdxl_towers_have_the_published_keys_and_sizes():
    with torch.device("meta"):
        tower_0, tower_1 = SDXL.build_text_encoder(), SDXL.build_text_encoder_2()
    keys_0, keys_1 = tower_0.state_dict(), tower_1.state_dict()
    assert all(k.startswith("text_model.") for k in keys_0) and "text_projection.weight" not in keys_0
    assert "text_model.encoder.layers.11.self_attn.q_proj.weight" in keys_0
    assert {"token_embedding.weight", "positional_embedding", "text_projection", "logit_scale", "ln_final.weight",
            "transformer.resblocks.31.attn.in_proj_weight", "transformer.resblocks.31.mlp.c_fc.weight"} <= set(keys_1)
    assert keys_1["text_projection"].shape == (1280, 1280) and keys_1["transformer.resblocks.0.mlp.c_fc.weight"].shape \
        == (5120, 1280)
    assert sum(v.numel() for v in keys_0.values()) == 123_060_480
    assert sum(v.numel() for v in keys_1.values()) == 694_659_841


def test_sdxl_context_is_the_penultimate_block_without_the_final_norm():
    for layout in ("sd1", "sd2"):
        config = TextConfig(layout=layout, width=32, layers=3, heads=4, skip_last_layers=1, context_final_norm=False)
        tower = random_tower(config, seed=0)
        ids = torch.tensor([[49406, 320, 1125, EOS_ID] + [0] * 73])
        with torch.no_grad():
            context = tower(ids)
            assert torch.equal(context, tower.hidden_states(ids, 1, final_norm=False))
            assert max_relative_error(tower.hidden_states(ids, 1), context) > 1e-2
            normed_last = tower.hidden_states(ids, 0)          # pooled: all blocks, then the final norm
            pooled = tower.pooled_embedding(ids)
            expected = normed_last[0, 3] @ tower.text_projection if layout == "sd2" else normed_last[0, 3]
            torch.testing.assert_close(pooled[0], expected)


@pytest.mark.reference
def test_sdxl_tokenizer_2_equals_open_clip_tokenize_and_tokenizer_pads_with_eos():
    from golden.fixtures_clip import _open_clip_tokenizer_module
    prompts = PROMPTS + ["", "Déjà vu &amp; naïve café — emoji 🐱!!", "word " * 100]
    expected = _open_clip_tokenizer_module().tokenize(prompts)
    ours = SDXL.build_tokenizer_2()
    assert ours.pad_id == 0 and torch.equal(ours(prompts), expected)
    first = SDXL.build_tokenizer()
    assert first.pad_id == EOS_ID and (first([""])[0, 2:] == EOS_ID).all()
    with pytest.raises(ValueError, match="one text tower"):
        presets.get("sd-1.5").build_tokenizer_2()
