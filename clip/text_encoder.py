"""CLIP text towers: SD 1's OpenAI ViT-L/14, SD 2's OpenCLIP ViT-H/14 and SDXL's two, as one configured class.

Both towers are the same pre-norm causal transformer (Radford et al. 2021, §2.4):

    x_0 = E_token[ids] + E_position                                (B, 77, C)
    x_l = x_{l-1} + Attention(LN_1(x_{l-1}))   causal: position i sees positions j <= i
    x_l = x_l + W_2 · act(W_1 · LN_2(x_l) + b_1) + b_2             act: quick-GELU or GELU
    context = LN_final(x_{L - skip})

SD 1 reads the last block, so skip = 0. SD 2 reads the penultimate block, so
skip = 1, but still applies LN_final. SDXL reads the penultimate block of both of its towers
(ViT-L/14 in the "sd1" layout, OpenCLIP ViT-bigG/14 in the "sd2" layout) *without* LN_final:
context = x_{L − 1} (`context_final_norm=False`; sgm's `FrozenCLIPEmbedder` with layer "hidden"
and `FrozenOpenCLIPEmbedder2` with layer "penultimate"). None passes a padding mask: every position
attends to every earlier one, pads included, and the UNet cross-attends to all 77
outputs. This is why the pad id matters (see clip/TOKENIZERS.md).

The two towers differ in four ways:

| | SD 1 (`layout="sd1"`) | SD 2 (`layout="sd2"`) |
|---|---|---|
| width / heads / blocks | 768 / 12 / 12 | 1024 / 16 / 24 |
| activation | quick-GELU, x·σ(1.702x) | GELU (erf) |
| output | last block, then final LN | block 23 of 24, then final LN |
| names | transformers' `text_model.*`, separate q/k/v | open_clip's, fused `in_proj_weight` = [W_q; W_k; W_v] |

The attribute names follow the published checkpoints, so `state_dict()` keys equal
the keys under `cond_stage_model.transformer.` (SD 1) or `cond_stage_model.model.` (SD 2)
of the single-file checkpoints, and loading needs no renaming table.
An optional projection makes the tower reusable for CLIP ranking: `pooled_embedding`
gives CLIP's text embedding. SD 2's files always carry `text_projection` and
`logit_scale` (the latter unused here).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer import EOS_ID


@dataclass(frozen=True)
class TextConfig:
    """A CLIP text transformer; the defaults are SD 1's (OpenAI ViT-L/14).

    `layout` names the published key layout: "sd1" (transformers' `text_model.*`,
    under `cond_stage_model.transformer.`) or "sd2" (open_clip's names, under
    `cond_stage_model.model.`, which are also the names of OpenAI's original CLIP files).
    `skip_last_layers` = 1 gives SD 2's penultimate layer.
    `context_final_norm`: whether `forward` applies the final LayerNorm (SD 1, SD 2) or not (SDXL);
    `pooled_embedding` always applies it.
    `mlp_width`: the hidden width of each block's MLP; None means 4 x width, as in every
    published CLIP text tower (a config may set another, e.g. transformers' `intermediate_size`).
    `projection_dim`: the width of CLIP's text embedding (`pooled_embedding`). None means
    the layout's default: no projection for "sd1" (SD 1 files have none), a width x width
    `text_projection` for "sd2" (SD 2 files carry one).
    """
    layout: str = "sd1"
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 768
    layers: int = 12
    heads: int = 12
    activation: str = "quick_gelu"       # "quick_gelu" (OpenAI) or "gelu" (OpenCLIP)
    skip_last_layers: int = 0            # SD 2 uses the output of layer 23 of 24, then ln_final
    projection_dim: int | None = None
    layer_norm_eps: float = 1e-5
    mlp_width: int | None = None         # None: 4 x width
    context_final_norm: bool = True      # SDXL: False, the context is the block output itself

    @property
    def resolved_mlp_width(self) -> int:
        return self.mlp_width if self.mlp_width is not None else 4 * self.width

    @property
    def resolved_projection_dim(self) -> int | None:
        if self.projection_dim is not None:
            return self.projection_dim
        return self.width if self.layout == "sd2" else None


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x·σ(1.702·x): OpenAI CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}

# The published names of the same parts of a block:
#          LN before attention, attention,  LN before MLP, MLP in,  MLP out
BLOCK_NAMES = {
    "sd1": ("layer_norm1", "self_attn", "layer_norm2", "fc1", "fc2"),
    "sd2": ("ln_1", "attn", "ln_2", "c_fc", "c_proj"),
}


class SelfAttention(nn.Module):
    """softmax(Q·Kᵀ/√d + M)·V per head, then the output projection. The text towers are causal,
    M_ij = -inf for j > i; the image tower (clip/image_encoder.py) has no mask, M = 0.

    SD 1 and the image tower keep W_q, W_k, W_v as three Linear layers (`q_proj`, `k_proj`, `v_proj`).
    SD 2 (torch's nn.MultiheadAttention) stacks them as `in_proj_weight` = [W_q; W_k; W_v], (3C, C).
    """

    def __init__(self, width: int, heads: int, fused_qkv: bool, causal: bool = True):
        super().__init__()
        self.heads, self.fused_qkv, self.causal = heads, fused_qkv, causal
        if fused_qkv:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
            nn.init.normal_(self.in_proj_weight, std=width ** -0.5)
        else:
            self.q_proj = nn.Linear(width, width)
            self.k_proj = nn.Linear(width, width)
            self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        if self.fused_qkv:
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        # (B, L, C) -> (B, heads, L, C/heads)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)   # scale 1/√(C/heads)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    """W_2 · act(W_1 · x + b_1) + b_2, hidden width `hidden` (4C unless the config says otherwise)."""

    def __init__(self, width: int, activation: str, names: tuple[str, str], hidden: int | None = None):
        super().__init__()
        hidden = 4 * width if hidden is None else hidden
        self.names = names
        self.activation = ACTIVATIONS[activation]
        self.add_module(names[0], nn.Linear(width, hidden))
        self.add_module(names[1], nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expand, contract = (getattr(self, n) for n in self.names)
        return contract(self.activation(expand(x)))


class ResidualAttentionBlock(nn.Module):
    """x + Attention(LN_1(x)), then x + MLP(LN_2(x)), with submodules named as `layout` publishes them."""

    def __init__(self, config: TextConfig):
        super().__init__()
        ln_1, attn, ln_2, mlp_in, mlp_out = self.names = BLOCK_NAMES[config.layout]
        width, eps = config.width, config.layer_norm_eps
        self.add_module(ln_1, nn.LayerNorm(width, eps=eps))
        self.add_module(attn, SelfAttention(width, config.heads, fused_qkv=config.layout == "sd2"))
        self.add_module(ln_2, nn.LayerNorm(width, eps=eps))
        self.mlp = MLP(width, config.activation, (mlp_in, mlp_out), config.resolved_mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln_1, attn, ln_2 = (getattr(self, n) for n in self.names[:3])
        x = x + attn(ln_1(x))
        return x + self.mlp(ln_2(x))


class TextEncoder(nn.Module):
    """CLIP's text transformer: `forward(ids)` gives the (B, 77, width) context the UNet attends to."""

    def __init__(self, config: TextConfig):
        super().__init__()
        if config.layout not in BLOCK_NAMES:
            raise ValueError(f"TextConfig.layout must be one of {sorted(BLOCK_NAMES)}, not {config.layout!r}")
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"TextConfig.activation must be one of {sorted(ACTIVATIONS)}, not {config.activation!r}")
        if config.width % config.heads:
            raise ValueError(f"TextConfig.width {config.width} is not divisible by heads {config.heads}")
        if not 0 <= config.skip_last_layers < config.layers:
            raise ValueError(f"TextConfig.skip_last_layers must be in [0, {config.layers}), "
                             f"not {config.skip_last_layers}")
        self.config = config
        width, length, eps = config.width, config.context_length, config.layer_norm_eps
        blocks = nn.ModuleList(ResidualAttentionBlock(config) for _ in range(config.layers))
        projection_dim = config.resolved_projection_dim

        if config.layout == "sd1":
            # transformers' CLIPTextModel, as SD 1 files store it: text_model.{embeddings, encoder, final_layer_norm}
            self.text_model = nn.Module()
            self.text_model.embeddings = nn.Module()
            self.text_model.embeddings.token_embedding = nn.Embedding(config.vocab_size, width)
            self.text_model.embeddings.position_embedding = nn.Embedding(length, width)
            self.text_model.encoder = nn.Module()
            self.text_model.encoder.layers = blocks
            self.text_model.final_layer_norm = nn.LayerNorm(width, eps=eps)
            if projection_dim is not None:      # as in transformers' CLIPTextModelWithProjection
                self.text_projection = nn.Linear(width, projection_dim, bias=False)
        else:
            # open_clip's CLIP without its image tower, as SD 2 files store it
            self.token_embedding = nn.Embedding(config.vocab_size, width)
            self.positional_embedding = nn.Parameter(torch.empty(length, width))
            self.transformer = nn.Module()
            self.transformer.resblocks = blocks
            self.ln_final = nn.LayerNorm(width, eps=eps)
            self.text_projection = nn.Parameter(torch.empty(width, projection_dim))   # used as x @ P
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))      # CLIP's temperature
            nn.init.normal_(self.positional_embedding, std=0.01)
            nn.init.normal_(self.text_projection, std=width ** -0.5)

    def _parts(self):
        """(token embedding, position table (77, C), blocks, final LayerNorm) under either layout's names."""
        if self.config.layout == "sd1":
            tm = self.text_model
            return tm.embeddings.token_embedding, tm.embeddings.position_embedding.weight, tm.encoder.layers, \
                tm.final_layer_norm
        return self.token_embedding, self.positional_embedding, self.transformer.resblocks, self.ln_final

    def hidden_states(self, ids: torch.Tensor, skip_last_layers: int = 0, final_norm: bool = True) -> torch.Tensor:
        """The output of block `layers - skip_last_layers`, then LN_final if `final_norm`:
        (B, L) ids -> (B, L, width)."""
        token_embedding, position_embedding, blocks, norm = self._parts()
        if ids.dim() != 2 or ids.shape[1] > self.config.context_length:
            raise ValueError(f"expected token ids of shape (B, L <= {self.config.context_length}), "
                             f"got {tuple(ids.shape)}; use clip.Tokenizer to make them")
        x = token_embedding(ids) + position_embedding[:ids.shape[1]]      # (B, L, C)
        for block in blocks[:len(blocks) - skip_last_layers]:
            x = block(x)
        return norm(x) if final_norm else x

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The context for cross-attention: (B, 77) ids -> (B, 77, width)."""
        return self.hidden_states(ids, self.config.skip_last_layers, self.config.context_final_norm)

    def pooled_embedding(self, ids: torch.Tensor, eos_id: int = EOS_ID) -> torch.Tensor:
        """CLIP's text embedding (B, projection_dim), or (B, width) without a projection.

        This is the last block's LN_final output at the first EOS, times the projection.
        It always uses all blocks, whatever `skip_last_layers` says.
        """
        x = self.hidden_states(ids, skip_last_layers=0)
        is_eos = ids == eos_id
        if not is_eos.any(dim=1).all():
            raise ValueError(f"every sequence needs an EOS ({eos_id}) to pool at; rows without: "
                             f"{(~is_eos.any(dim=1)).nonzero().flatten().tolist()}")
        pooled = x[torch.arange(len(ids), device=ids.device), is_eos.int().argmax(dim=1)]   # (B, C)
        if self.config.resolved_projection_dim is None:
            return pooled
        if self.config.layout == "sd1":
            return self.text_projection(pooled)
        return pooled @ self.text_projection
