"""The LDM's BERT text encoder (ldm/bert.py) against x-transformers 0.10.2 (CompVis's vendored release)
and against diffusers' LDMBertModel, through the key table of weights/diffusers_keys.py.

Full size (32 blocks of width 1280, ~0.5 B parameters) with the deterministic random weights of
weights.random_init; one network is built at a time and freed before the next.
"""
import gc

import pytest
import torch
from helpers import max_relative_error

from ldm import BERTConfig, BERTTextEncoder
from weights.diffusers_keys import ldm_bert_from_diffusers, ldm_bert_table
from weights.random_init import fill_random_, random_tensor

SEED = 7


def _ids(batch: int = 2) -> torch.Tensor:
    """WordPiece-shaped ids: [CLS] … [SEP] then padding 0, as the tokenizer frames a prompt."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.zeros(batch, 77, dtype=torch.long)
    for row, length in enumerate((9, 77)[:batch]):
        ids[row, :length] = torch.randint(999, 30522, (length,), generator=generator)
        ids[row, 0], ids[row, length - 1] = 101, 102
    return ids


@torch.no_grad()
def _ours(config: BERTConfig, ids: torch.Tensor) -> torch.Tensor:
    encoder = fill_random_(BERTTextEncoder(config), SEED).eval()
    out = encoder(ids)
    del encoder
    gc.collect()
    return out


def test_bert_state_dict_keys_are_the_published_layout():
    encoder = BERTTextEncoder(BERTConfig(layers=2, width=64, mlp_width=256, vocab_size=100))
    keys = set(encoder.state_dict())
    assert {"token_emb.weight", "pos_emb.emb.weight", "norm.weight", "norm.bias", "to_logits.weight",
            "attn_layers.layers.0.0.weight", "attn_layers.layers.0.1.to_q.weight",
            "attn_layers.layers.0.1.to_out.bias", "attn_layers.layers.1.1.net.0.0.weight",
            "attn_layers.layers.3.1.net.2.bias"} <= keys
    assert not any(k.endswith(("to_q.bias", "to_k.bias", "to_v.bias")) for k in keys)
    assert len(keys) == 6 + 2 * (2 + 4 + 1) + 2 * (2 + 4)


def test_bert_has_no_attention_mask_padding_changes_every_position():
    torch.manual_seed(0)
    encoder = fill_random_(BERTTextEncoder(BERTConfig(layers=2, width=64, mlp_width=256, vocab_size=200)), 1)
    ids = torch.zeros(1, 77, dtype=torch.long)
    ids[0, :3] = torch.tensor([101, 150, 102])
    other = ids.clone()
    other[0, 50] = 7                     # a change in the padding reaches the prompt's positions
    with torch.no_grad():
        assert not torch.allclose(encoder(ids)[0, :3], encoder(other)[0, :3])


@pytest.mark.slow
@pytest.mark.reference
def test_bert_parity_full_size_fp32_against_x_transformers_0_10_2():
    from importlib.metadata import version

    x_transformers = pytest.importorskip("x_transformers")
    assert version("x-transformers") == "0.10.2", "the reference is the release CompVis vendored (setup.cfg pins it)"
    config, ids = BERTConfig(), _ids()
    ours = _ours(config, ids)
    reference = x_transformers.TransformerWrapper(num_tokens=30522, max_seq_len=77,
                                                  attn_layers=x_transformers.Encoder(dim=1280, depth=32)).eval()
    assert set(reference.state_dict()) == set(BERTTextEncoder(BERTConfig(layers=32, width=8, mlp_width=8,
                                                                          vocab_size=8)).state_dict())
    fill_random_(reference, SEED)
    with torch.no_grad():
        expected = reference(ids, return_embeddings=True)
    del reference
    gc.collect()
    assert ours.shape == (2, 77, 1280)
    error = max_relative_error(ours, expected)
    print(f"BERT vs x-transformers 0.10.2, full size fp32: max relative error {error:.3g}")
    assert error < 1e-5


@pytest.mark.slow
@pytest.mark.reference
def test_bert_parity_full_size_fp32_against_diffusers_ldmbert_through_the_key_table():
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    config, ids = BERTConfig(), _ids()
    ours = _ours(config, ids)
    reference = LDMBertModel(LDMBertConfig()).eval()
    names = {theirs: ours for ours, theirs in ldm_bert_from_diffusers(
        {k: k for k in reference.state_dict()}, config.layers).items()}      # diffusers name -> ours
    assert set(names.values()) == set(BERTTextEncoder(BERTConfig(width=8, mlp_width=8, vocab_size=8)).state_dict())
    with torch.no_grad():
        for name, parameter in reference.named_parameters():   # each gets the value of our tensor it maps to
            parameter.copy_(random_tensor(names[name], parameter.shape, SEED))
        expected = reference(ids).last_hidden_state
    del reference
    gc.collect()
    error = max_relative_error(ours, expected)
    print(f"BERT vs diffusers LDMBertModel, full size fp32: max relative error {error:.3g}")
    assert error < 1e-5


def test_ldm_bert_key_table_maps_every_key_one_to_one():
    config = BERTConfig(layers=3, width=64, mlp_width=256, vocab_size=100)
    ours = BERTTextEncoder(config).state_dict()
    table = ldm_bert_table(config.layers)
    theirs = {f"{row[0]}.{leaf}" for row in table for leaf in ("weight", "bias")}
    mapped = ldm_bert_from_diffusers({k: None for k in theirs}, config.layers)
    assert set(ours) <= set(mapped)                 # every key of ours has a diffusers name
    assert len(mapped) == len(theirs)               # and no two diffusers names land on one of ours
