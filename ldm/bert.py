"""The text encoder of CompVis's text-to-image LDM (txt2img-f8-large): `BERTEmbedder`'s transformer.

Despite CompVis's name it is no pretrained BERT: it is an x-transformers 0.10.2 encoder trained
with the LDM, over bert-base-uncased's WordPiece ids (`ldm.wordpiece`). Configuration
(`configs/latent-diffusion/txt2img-1p4B-eval.yaml`): TransformerWrapper(num_tokens 30522,
max_seq_len 77, attn_layers=Encoder(dim 1280, depth 32)), read with `return_embeddings=True`:

    h = token_emb(ids) + pos_emb(0 … 76)                       learned absolute positions, unscaled
    for each of 32 blocks:
        h = h + Attention(LayerNorm(h))                         8 heads × 64 = 512 inner; q, k, v
                                                                without bias, to_out with bias
        h = h + Linear(GELU(Linear(LayerNorm(h))))              1280 → 5120 → 1280, exact GELU
    context = LayerNorm(h)                                      (B, 77, 1280)

There is **no attention mask**: the padding tokens attend and are attended, as the original runs.
Attribute names are the published keys under `cond_stage_model.transformer.`, so that state dict
loads without renaming: `attn_layers.layers.{2i}` is block i's attention as (norm, attention),
`attn_layers.layers.{2i+1}` its feed-forward as (norm, feed-forward). `to_logits` is kept for the
checkpoint's sake and never used.
"""
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BERTConfig:
    vocab_size: int = 30522       # bert-base-uncased's WordPiece vocabulary
    max_seq_len: int = 77
    width: int = 1280
    layers: int = 32
    heads: int = 8
    head_dim: int = 64            # x-transformers' default: inner width heads·64 = 512, not `width`
    mlp_width: int = 5120         # x-transformers' FeedForward: mult 4


class AbsolutePositionalEmbedding(nn.Module):
    """One learned vector per position, added to the token embedding as it is (no scaling)."""

    def __init__(self, width: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, width)

    def forward(self, length: int, device) -> torch.Tensor:
        return self.emb(torch.arange(length, device=device))[None]           # (1, L, width)


class Attention(nn.Module):
    """softmax(q kᵀ / √64) v over 8 heads (Vaswani et al. 2017, eq. 1), unmasked."""

    def __init__(self, width: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_k = nn.Linear(width, inner, bias=False)
        self.to_v = nn.Linear(width, inner, bias=False)
        self.to_out = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape                                           # x: (B, L, width)
        q, k, v = (f(x).reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)
                   for f in (self.to_q, self.to_k, self.to_v))              # (B, heads, L, 64)
        weights = (q @ k.transpose(-1, -2) * self.head_dim**-0.5).softmax(dim=-1)  # (B, heads, L, L)
        out = (weights @ v).transpose(1, 2).reshape(batch, length, -1)      # (B, L, 512)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Linear(width → 4·width), exact GELU, Linear back: keys `net.0.0` and `net.2` (`net.1` was dropout)."""

    def __init__(self, width: int, mlp_width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Sequential(nn.Linear(width, mlp_width), nn.GELU()), nn.Identity(),
                                 nn.Linear(mlp_width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionLayers(nn.Module):
    """x-transformers' Encoder: pre-norm residual layers, alternating attention and feed-forward."""

    def __init__(self, config: BERTConfig):
        super().__init__()
        layers = []
        for _ in range(config.layers):
            layers.append(nn.ModuleList([nn.LayerNorm(config.width),
                                         Attention(config.width, config.heads, config.head_dim)]))
            layers.append(nn.ModuleList([nn.LayerNorm(config.width), FeedForward(config.width, config.mlp_width)]))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block in self.layers:
            x = x + block(norm(x))                                           # h = h + f(LayerNorm(h))
        return x


class BERTTextEncoder(nn.Module):
    """ids (B, 77) of WordPiece tokens -> the LDM's text context (B, 77, 1280)."""

    def __init__(self, config: BERTConfig = BERTConfig()):
        super().__init__()
        self.config = config
        self.token_emb = nn.Embedding(config.vocab_size, config.width)
        self.pos_emb = AbsolutePositionalEmbedding(config.width, config.max_seq_len)
        self.attn_layers = AttentionLayers(config)
        self.norm = nn.LayerNorm(config.width)
        self.to_logits = nn.Linear(config.width, config.vocab_size)         # in the checkpoint; unused

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        if length > self.config.max_seq_len:
            raise ValueError(f"the text encoder has {self.config.max_seq_len} positions; got {length} tokens")
        x = self.token_emb(ids) + self.pos_emb(length, ids.device).to(self.token_emb.weight.dtype)  # (B, L, 1280)
        return self.norm(self.attn_layers(x))                                # (B, L, 1280)

