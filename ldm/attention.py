"""The UNet's SpatialTransformer and its parts (LDM `ldm/modules/attention.py` layout).

    SpatialTransformer(x, c) = x + proj_out(blocks(proj_in(GroupNorm(x))))
    block(h, c):  h = h + attn1(LayerNorm(h))          self-attention
                  h = h + attn2(LayerNorm(h), c)       cross-attention to the text context c
                  h = h + ff(LayerNorm(h))             GEGLU feed-forward

Attribute names follow the published checkpoint keys (`proj_in`, `transformer_blocks.N.attn1.to_q`,
`ff.net.0.proj`, `norm1`, ...), so a state dict loads without renaming.
"""
import torch
import torch.nn.functional as F
from torch import nn


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                         upcast: bool = False) -> torch.Tensor:
    """softmax(q kᵀ / √d) v for each of `heads` heads of width d (Vaswani et al. 2017, eq. 1).

    q: (B, N, heads·d), k and v: (B, M, heads·d) -> (B, N, heads·d), in q's dtype.
    `upcast` runs the product and softmax in float32, as SD 2.1 768 needs in fp16
    (the Stability code's `_ATTN_PRECISION = "fp32"`).
    """
    batch, _, width = q.shape
    dtype = q.dtype
    # (B, N, heads·d) -> (B, heads, N, d)
    q, k, v = (t.reshape(batch, -1, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(q, k, v)        # (B, heads, N, d)
    return out.transpose(1, 2).reshape(batch, -1, width).to(dtype)


class CrossAttention(nn.Module):
    """Attention of the queries x to a context c (c = x for self-attention).

    q = x W_q, k = c W_k, v = c W_v (no biases), heads of width `head_dim`, then `to_out.0`.
    """

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None,
                 upcast: bool = False):
        super().__init__()
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads, self.upcast = heads, upcast
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        # index 1 is dropout in the published layout (inactive at inference)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context           # x: (B, N, C), context: (B, M, C_ctx)
        out = multi_head_attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, self.upcast)
        return self.to_out(out)                                # (B, N, C)


class GEGLU(nn.Module):
    """GEGLU(x) = a · GELU(g), where [a, g] = x W + b split in half (Shazeer 2020)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)               # (..., C_in) -> 2 × (..., C_out)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """C -> GEGLU -> 4C -> Linear -> C, as `net.0.proj` and `net.2` (index 1 is dropout)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(0.0), nn.Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention and feed-forward, each pre-LayerNorm with a residual."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, upcast_attention: bool = False):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, head_dim, upcast=upcast_attention)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, head_dim, context_dim=context_dim, upcast=upcast_attention)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """A transformer over the H·W positions of a feature map, conditioned on the context.

    SD 1 projects in and out with 1×1 convolutions, SD 2 with Linear layers
    (`use_linear_proj`); both compute the same map, but the weights have other shapes.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int, context_dim: int,
                 use_linear_proj: bool = False, norm_groups: int = 32, upcast_attention: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.use_linear_proj = use_linear_proj
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        if use_linear_proj:
            self.proj_in = nn.Linear(channels, inner)
        else:
            self.proj_in = nn.Conv2d(channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, head_dim, context_dim, upcast_attention) for _ in range(depth))
        if use_linear_proj:
            self.proj_out = nn.Linear(inner, channels)
        else:
            self.proj_out = nn.Conv2d(inner, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        h = self.norm(x)
        if not self.use_linear_proj:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)                       # (B, C, H, W) -> (B, H·W, C)
        if self.use_linear_proj:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_proj:
            h = self.proj_out(h)
        h = h.transpose(1, 2).unflatten(2, (height, width))  # (B, H·W, C) -> (B, C, H, W)
        if not self.use_linear_proj:
            h = self.proj_out(h)
        return x + h
