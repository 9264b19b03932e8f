"""The blocks every bytelab model is built from: causal attention, MLP, pre-norm block, stack.

Decoder, MEGABYTE and PerceiverAR all use exactly these pieces (same attention, MLP, norm and
initialisation), so a difference in their results comes from the architecture, not the plumbing.

Positions are learned absolute embeddings added to the input (``ByteEmbedding``), the scheme every
family keeps by default, or rotary embeddings (``rope=True``: :func:`rotary`, applied to each
attention layer's queries and keys, so a score depends on the distance between two positions only).
Every family keeps learned positions except the windowed decoder, which defaults to rope: at cpu-xs on
1024-byte windows and 3e12 FLOPs rope gains a bit per byte there (docs/MODELS.md has the runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

from .base import VOCAB_SIZE


def causal_attention(
    q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0, window: int | None = None
) -> Tensor:
    """Scaled dot-product attention where query i sits at key position ``Lk - Lq + i``.

    q: [B, H, Lq, Dh], k and v: [B, H, Lk, Dh] with Lq <= Lk. The mask is aligned to the bottom
    right, so the same call serves self-attention (Lq == Lk), PerceiverAR's cross-attention from the
    last Lq positions, and cached decoding (new queries after Lk - Lq cached keys). Everything goes
    through ``F.scaled_dot_product_attention`` so GPUs get the flash / memory-efficient kernels.
    ``window``: each query sees only its last ``window`` keys, itself included (SpaceByte's local
    blocks); see :func:`sliding_window_attention`.
    """
    q_len, kv_len = q.size(-2), k.size(-2)
    if window is not None and kv_len > window:
        if q_len == 1:  # cached decoding: the last `window` keys are exactly the ones it sees
            return F.scaled_dot_product_attention(
                q, k[..., -window:, :], v[..., -window:, :], dropout_p=dropout_p
            )
        if q_len != kv_len:
            raise ValueError(
                f"windowed attention needs one query or as many queries as keys, got {q_len}, {kv_len}"
            )
        return sliding_window_attention(q, k, v, window, dropout_p)
    if q_len == kv_len:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if q_len == 1:  # one new query sees every cached key: no mask needed
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if q.is_cuda:  # a CausalBias lets SDPA choose the flash / memory-efficient kernels
        mask = causal_lower_right(q_len, kv_len)
    else:  # CausalBias cannot be built under tensor modes (meta device, FlopCounterMode)
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril(kv_len - q_len)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def window_band(query: Tensor, key: Tensor, window: int) -> Tensor:
    """The sliding window's mask ``[Lq, Lk]`` for queries and keys at these positions: a query sees
    itself and the ``window - 1`` positions before it."""
    return (key[None] <= query[:, None]) & (key[None] > query[:, None] - window)


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, dropout_p: float = 0.0) -> Tensor:
    """Causal self-attention in which position t sees keys t - window + 1 .. t, in O(L * window).

    Up to ``2 * window`` positions, one call over all L keys under the band mask (no more keys per
    query than the blocks below compute, and on CPUs twice as fast: measured in docs/MODELS.md).
    Longer, the L positions are cut into blocks of ``window`` (the last one right-padded; causal, so
    the padding reaches no real query); each block's queries attend to its own keys and the previous
    block's under the band mask: ``2 * window`` keys computed per query, ``window`` kept
    (``modules/flops.py``'s ``window_attention_flops`` counts the computed ones).
    """
    length = q.size(-2)
    if length <= 2 * window:
        positions = torch.arange(length, device=q.device)
        mask = window_band(positions, positions, window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    batch, heads, blocks = q.size(0), q.size(1), -(-length // window)
    q, k, v = (
        F.pad(t, (0, 0, 0, blocks * window - length)).unflatten(-2, (blocks, window)) for t in (q, k, v)
    )
    k, v = (
        torch.cat([F.pad(t, (0, 0, 0, 0, 1, 0))[:, :, :-1], t], dim=-2) for t in (k, v)
    )  # [B, H, n, 2W, Dh]: the previous block's keys, then the block's own
    band = window_band(
        torch.arange(window, 2 * window, device=q.device), torch.arange(2 * window, device=q.device), window
    )
    first = band.clone()
    first[:, :window] = False  # the first block has no block before it
    mask = torch.cat([first[None], band.expand(blocks - 1, -1, -1)])  # [n, W, 2W], shared by B and H
    y = F.scaled_dot_product_attention(
        q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=mask, dropout_p=dropout_p
    )
    return y.unflatten(0, (batch, heads)).flatten(2, 3)[:, :, :length]


ROPE_BASE = 10_000.0  # RoFormer's and GPT-NeoX's base: the slowest pair turns once per ~6e4 positions


def rotary(t: Tensor, first: int) -> Tensor:
    """Rotary position embedding (Su et al. 2021, GPT-NeoX's half-split layout) of ``t[..., L, Dh]``
    at positions ``first .. first + L - 1``: dimension pair (i, i + Dh/2) turns by the angle
    ``position * ROPE_BASE ** (-2i / Dh)``. Rotating queries and keys alike makes ``q . k`` depend
    on their distance only. Angles are computed in float64: in float32 the angle at position 1e6
    would be off by up to 0.06 rad, so two positions far from 0 would not see their true distance.
    Elementwise: 0 FLOPs under the counting convention (``modules/flops.py``)."""
    half = t.size(-1) // 2
    exponent = torch.arange(half, dtype=torch.float64, device=t.device) / half
    positions = torch.arange(first, first + t.size(-2), dtype=torch.float64, device=t.device)
    angle = positions[:, None] * ROPE_BASE**-exponent
    cos, sin = angle.cos().to(t.dtype), angle.sin().to(t.dtype)
    a, b = t[..., :half], t[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def shift_right(h: Tensor, start: Tensor) -> Tensor:
    """Shift embeddings one position to the right along dim -2, a learned ``start`` in front.

    Position t then holds the embedding of byte t-1, so it predicts byte t from bytes < t; the
    first byte of a window is predicted from ``start`` alone. MEGABYTE shifts this way twice: patches
    behind a pad patch (its Eq. 3), and bytes within a patch behind a pad byte (its Eq. 5).
    """
    start = start.expand(*h.shape[:-2], 1, h.size(-1))
    return torch.cat([start, h[..., :-1, :]], dim=-2)


class ByteEmbedding(nn.Module):
    """Input of a flat byte model: byte embeddings shifted right behind a learned start vector, plus
    learned absolute positions (the decoder's and PerceiverAR's embedding); ``learned_positions=False``
    leaves the positions out (a model whose attention rotates them in, ``rope``) and has no table."""

    def __init__(self, d_model: int, max_seq_len: int, learned_positions: bool = True) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.empty(d_model))
        self.byte_embed = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos_embed = nn.Embedding(max_seq_len, d_model) if learned_positions else None

    def forward(self, x: Tensor) -> Tensor:
        """``x[B, L]`` -> ``[B, L, D]``: position t holds byte t-1 (the start vector at t = 0)."""
        if self.pos_embed is None:
            return shift_right(self.byte_embed(x), self.start)
        positions = torch.arange(x.size(1), device=x.device)
        return shift_right(self.byte_embed(x), self.start) + self.pos_embed(positions)

    def step(self, byte: Tensor, position: int) -> Tensor:
        """Cached decoding: ``byte[B]``, the byte before ``position``, enters at ``position``: [B, 1, D]."""
        if self.pos_embed is None:
            return self.byte_embed(byte[:, None])
        return self.byte_embed(byte[:, None]) + self.pos_embed.weight[position]


@dataclass
class KVCache:
    """Keys and values of one attention layer for the positions decoded so far.

    The buffers grow by doubling and new entries are written in place, so decoding T positions
    copies O(T) values in total (``torch.cat`` per step would copy O(T^2)). ``length`` counts the
    positions decoded, ``kept`` those whose keys the buffers hold (their first ``kept`` entries);
    ``extend`` returns views of exactly those.

    With a ``window`` (sliding-window attention) a query sees only itself and the ``window - 1``
    positions before it, so the buffers hold the last ``window`` positions and no more: a ring in
    which position p sits at entry ``p % window``. A single query attends to every key it is given
    without a mask, so their order does not matter (rotary keys carry their positions in their
    rotation). The prompt's positions arrive at once (and attend to each other through the sliding
    window's mask); after it, one position per ``extend``.
    """

    k: Tensor | None = None  # [B, H, capacity, Dh]
    v: Tensor | None = None
    length: int = 0
    kept: int = 0
    window: int | None = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys/values along the sequence axis; return the kept history followed by them
        (with a window: the new keys of a prompt, or every kept key after one step)."""
        if self.window is not None:
            return self._rotate(k, v)
        end = self.length + k.size(-2)
        if self.k is None or end > self.k.size(-2):
            self._grow(k, v, capacity=max(end, 2 * self.length))
        self.k[..., self.length : end, :] = k
        self.v[..., self.length : end, :] = v
        self.length = self.kept = end
        return self.k[..., :end, :], self.v[..., :end, :]

    def _grow(self, k: Tensor, v: Tensor, capacity: int) -> None:
        shape = (*k.shape[:-2], capacity, k.size(-1))
        new_k, new_v = k.new_empty(shape), v.new_empty(shape)
        if self.k is not None:
            new_k[..., : self.length, :] = self.k[..., : self.length, :]
            new_v[..., : self.length, :] = self.v[..., : self.length, :]
        self.k, self.v = new_k, new_v

    def _rotate(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The windowed cache: the prompt's last ``window`` positions, then one position per step, each
        written over the entry of the position ``window`` before it."""
        new, window = k.size(-2), self.window
        if self.length == 0:
            self._grow(k, v, capacity=window)
            positions = torch.arange(max(new - window, 0), new, device=k.device)
            self.k[..., positions % window, :] = k[..., positions, :]
            self.v[..., positions % window, :] = v[..., positions, :]
            self.length, self.kept = new, positions.numel()
            return k, v
        if new != 1:
            raise ValueError(f"a windowed KV cache takes one position per step after the prompt, got {new}")
        slot = self.length % window
        self.k[..., slot : slot + 1, :] = k
        self.v[..., slot : slot + 1, :] = v
        self.length, self.kept = self.length + 1, min(self.kept + 1, window)
        return self.k[..., : self.kept, :], self.v[..., : self.kept, :]


class Attention(nn.Module):
    """Multi-head causal attention; queries may come from a suffix of the key/value sequence, and
    each may see only its last ``window`` keys (None: all of them). ``rope``: queries and keys are
    rotated by their positions (:func:`rotary`): the new keys sit at the cache's next positions (0
    without a cache), the queries at the last of them (the bottom-right alignment of
    :func:`causal_attention`)."""

    def __init__(
        self, d_model: int, n_heads: int, dropout: float = 0.0, window: int | None = None, rope: bool = False
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if rope and (d_model // n_heads) % 2:
            raise ValueError(f"rope needs an even head dimension, got d_model={d_model} / n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.window = window
        self.rope = rope
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        cache: KVCache | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x: [B, Lq, D] queries; context: [B, Lk, D] keys/values (default x); cache: past keys;
        mask: a boolean ``[B, 1, Lq, Lk]`` of the keys each query sees, instead of the causal mask
        of ``causal_attention`` (PerceiverAR's latents at each row's own positions)."""
        context = x if context is None else context
        q = self._heads(self.q(x))
        k, v = (self._heads(t) for t in self.kv(context).chunk(2, dim=-1))
        if self.rope:
            first = 0 if cache is None else cache.length
            q, k = rotary(q, first + k.size(-2) - q.size(-2)), rotary(k, first)
        if cache is not None:
            k, v = cache.extend(k, v)
        dropout = self.dropout if self.training else 0.0
        if mask is None:
            y = causal_attention(q, k, v, dropout, self.window)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out(y.transpose(1, 2).flatten(2))

    def _heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)


class MLP(nn.Module):
    """Position-wise feed-forward network, width ``4 * d_model`` as in GPT-2 and the MEGABYTE paper."""

    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, 4 * d_model, bias=False)
        self.out = nn.Linear(4 * d_model, d_model, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.out(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``; ``window``: sliding
    window attention, ``rope``: rotary positions (:class:`Attention`)."""

    def __init__(
        self, d_model: int, n_heads: int, dropout: float = 0.0, window: int | None = None, rope: bool = False
    ) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout, window, rope)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        cache: KVCache | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Self-attention when ``context`` is None, else attention from x into ``context``; ``mask``
        replaces the causal mask (``Attention``)."""
        h = self.norm_attn(x)
        kv = h if context is None else self.norm_attn(context)
        x = x + self.drop(self.attn(h, kv, cache, mask))
        return x + self.mlp(self.norm_mlp(x))


class Transformer(nn.Module):
    """A causal stack of ``n_layers`` blocks followed by a final LayerNorm (``final_norm``; a stack
    whose output joins a residual stream that continues elsewhere, as in SpaceByte, goes without).
    ``window``: every block attends over a sliding window of that many positions (and its caches keep
    only those); ``rope``: every block rotates its queries and keys by their positions."""

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        dropout: float = 0.0,
        window: int | None = None,
        final_norm: bool = True,
        rope: bool = False,
    ) -> None:
        super().__init__()
        self.d_model, self.window = d_model, window
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout, window, rope) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()

    def forward(self, x: Tensor, caches: list[KVCache] | None = None) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, cache=None if caches is None else caches[i])
        return self.norm(x)

    def new_caches(self) -> list[KVCache]:
        """One empty KV cache per block, for cached decoding (bounded by the window, if any)."""
        return [KVCache(window=self.window) for _ in self.blocks]


def init_weights(model: nn.Module, std: float, n_layers: int) -> None:
    """GPT-2 style initialisation: N(0, std) truncated at 2 std for matrices and embeddings,
    residual output projections scaled by 1/sqrt(2 * n_layers), LayerNorm at (1, 0).

    Learned pad / start vectors are initialised like embeddings (never zero: a zero vector fed
    into a LayerNorm has an input gradient of ~1/sqrt(eps), which blows up the first update).
    """
    residual_std = std / math.sqrt(2 * max(n_layers, 1))
    for name, p in model.named_parameters():
        if p.ndim == 1 and ("norm" in name):
            nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
        elif name.endswith("out.weight"):
            nn.init.trunc_normal_(p, std=residual_std, a=-2 * residual_std, b=2 * residual_std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
        else:
            nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)
