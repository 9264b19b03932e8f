"""Hourglass (Nawrot et al. 2021, "Hierarchical Transformers Are More Efficient Language Models").

Byte layers, then a causal shortening by a factor k, layers over the shortened sequence (or a deeper
level of the same shape), upsampling back to bytes with the residual from before the shortening,
byte layers. The layers are written in the paper's notation a@k, a palindrome of a layers at total
shortening k: ``"2@1 4@3 2@1"`` is 2 byte layers, a level shortened 3x holding 4 layers, 2 byte layers;
``"1@1 1@2 2@6 1@2 1@1"`` nests a level shortened 3x more (6x in all) inside one shortened 2x.

One level, on its input h[0..n) (as in the authors' trax code, ``trax/models/research/hourglass.py``):

    s[t] = h[t - k + 1]  (zeros for t < k - 1)    shift right by k - 1
    z[j] = pool(s[jk .. jk + k - 1])               j < ceil(n / k), from h[jk - k + 1 .. jk]
    z'   = layers(z)  or  post(deeper(pre(z)))
    u[t] = upsample(z'[t // k])[t mod k]
    out[t] = h[t] + LayerNorm(u[t])

Position t of the output reads z'[t // k], which reads h at positions <= (t // k) k <= t: no position
sees the future, whatever n is (the last group is never padded: it ends at h[(ceil(n/k) - 1) k]).
Without the shift z[j] would pool h[jk .. jk + k - 1] and position jk would see jk + k - 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import VOCAB_SIZE, ByteModel, check_positive
from .flops import hourglass_flops
from .layers import Block, ByteEmbedding, KVCache, Transformer, init_weights

LEVEL = re.compile(r"(\d+)@(\d+)")


def parse_hierarchy(hierarchy: str) -> tuple[int, list[tuple[int, int]]]:
    """``"a@1 b@k1 c@k2 b@k1 a@1"`` -> (a, [(k1, b), (k2 / k1, c)]): the byte layers on each side and,
    per shortened level, its own factor and its layers (on each side of a deeper level, or in all
    for the innermost). One-line ValueErrors for anything else."""
    example = "e.g. '2@1 4@3 2@1' or '1@1 1@2 2@6 1@2 1@1'"
    levels = hierarchy.split()
    matches = [LEVEL.fullmatch(level) for level in levels]
    if not levels or not all(matches):
        raise ValueError(f"hierarchy={hierarchy!r}: write layers@shortening for each level, {example}")
    if levels != levels[::-1] or len(levels) < 3:
        raise ValueError(f"hierarchy={hierarchy!r} must be a palindrome with a shortened middle, {example}")
    pairs = [(int(m[1]), int(m[2])) for m in matches[: len(levels) // 2 + 1]]
    if pairs[0][1] != 1:
        raise ValueError(f"hierarchy={hierarchy!r} must start with the byte layers, a@1, {example}")
    if any(layers < 1 for layers, _ in pairs):
        raise ValueError(f"hierarchy={hierarchy!r}: every level needs at least one layer")
    shortened = []
    for (_, outer), (layers, total) in zip(pairs, pairs[1:], strict=False):
        if total <= outer or total % outer:
            raise ValueError(
                f"hierarchy={hierarchy!r}: shortening {total} must be a multiple of {outer}, larger than it"
            )
        shortened.append((total // outer, layers))
    return pairs[0][0], shortened


class Shortening(nn.Module):
    """Causal shortening by ``factor``: shift right by k - 1, then pool each k vectors into one, by a
    linear map of their concatenation (``linear``) or their mean (``average``)."""

    def __init__(self, factor: int, d_model: int, pooling: str) -> None:
        super().__init__()
        self.factor = factor
        self.linear = nn.Linear(factor * d_model, d_model, bias=False) if pooling == "linear" else None

    def forward(self, h: Tensor) -> Tensor:
        """``h[B, n, D]`` -> ``[B, ceil(n / k), D]``; group j is h[jk - k + 1 .. jk] (zeros before 0)."""
        groups = -(-h.size(1) // self.factor)
        shifted = F.pad(h, (0, 0, self.factor - 1, 0))[:, : groups * self.factor]
        return self.pool(shifted.unflatten(1, (groups, self.factor)))

    def pool(self, groups: Tensor) -> Tensor:
        """``[B, g, k, D]`` -> ``[B, g, D]``."""
        return groups.mean(dim=2) if self.linear is None else self.linear(groups.flatten(2))


class Upsampling(nn.Module):
    """Each shortened vector back to k byte-level vectors: a linear map to k * D split in k
    (``linear``), or k copies (``repeat``)."""

    def __init__(self, factor: int, d_model: int, upsampling: str) -> None:
        super().__init__()
        self.factor = factor
        self.linear = nn.Linear(d_model, factor * d_model, bias=False) if upsampling == "linear" else None

    def forward(self, z: Tensor) -> Tensor:
        """``z[B, g, D]`` -> ``[B, g * k, D]``."""
        if self.linear is None:
            return z.repeat_interleave(self.factor, dim=1)
        return self.linear(z).unflatten(-1, (self.factor, -1)).flatten(1, 2)


@dataclass
class LevelCache:
    """Decoding state of one level: its layers' KV caches (and the deeper level's), the k - 1 inputs
    before the next one (the next group's start), and the k upsampled vectors of the current group."""

    pre: list[KVCache]
    post: list[KVCache] | None
    deeper: LevelCache | None
    recent: Tensor  # [B, k - 1, D] the last k - 1 inputs (zeros before the first)
    upsampled: Tensor  # [B, k, D] u for positions jk .. jk + k - 1 of the current group j
    length: int  # inputs seen


class HourglassLevel(nn.Module):
    """One shortened level (module docstring): shorten, its layers or a deeper level between two
    stacks, upsample, LayerNorm, add the input."""

    def __init__(
        self,
        levels: list[tuple[int, int]],
        d_model: int,
        n_heads: int,
        dropout: float,
        pooling: str,
        upsampling: str,
    ) -> None:
        super().__init__()
        (self.factor, n_layers), *deeper = levels
        self.shorten = Shortening(self.factor, d_model, pooling)
        self.pre = Transformer(d_model, n_layers, n_heads, dropout)
        self.deeper = None
        if deeper:
            self.deeper = HourglassLevel(deeper, d_model, n_heads, dropout, pooling, upsampling)
        self.post = Transformer(d_model, n_layers, n_heads, dropout) if deeper else None
        self.upsample = Upsampling(self.factor, d_model, upsampling)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, h: Tensor, cache: LevelCache | None = None) -> Tensor:
        """``h[B, n, D]`` -> ``[B, n, D]``; with an empty ``cache`` (:meth:`new_cache`), fill it (prefill)."""
        z = self.shortened(self.shorten(h), cache)
        u = self.upsample(z)
        if cache is not None:
            k = self.factor
            cache.recent = F.pad(h, (0, 0, k - 1, 0))[:, h.size(1) :]
            cache.upsampled, cache.length = u[:, -k:], h.size(1)
        return h + self.norm(u[:, : h.size(1)])

    def shortened(self, z: Tensor, cache: LevelCache | None) -> Tensor:
        """The layers over the shortened sequence: this level's, or pre, the deeper level, post."""
        z = self.pre(z, None if cache is None else cache.pre)
        if self.deeper is None:
            return z
        z = self.deeper(z, None if cache is None else cache.deeper)
        return self.post(z, None if cache is None else cache.post)

    def step(self, h: Tensor, cache: LevelCache) -> Tensor:
        """One input ``h[B, 1, D]`` at position t: when t starts a group (t mod k = 0), the group
        h[t - k + 1 .. t] is complete, so it is pooled and stepped through the shortened layers once;
        every position reads its own of the group's k upsampled vectors."""
        window = torch.cat([cache.recent, h], dim=1)  # h[t - k + 1 .. t]
        t, cache.recent = cache.length, window[:, 1:]
        if t % self.factor == 0:
            z = self.shorten.pool(window[:, None])
            cache.upsampled = self.upsample(self.shortened_step(z, cache))
        cache.length += 1
        return h + self.norm(cache.upsampled[:, t % self.factor : t % self.factor + 1])

    def shortened_step(self, z: Tensor, cache: LevelCache) -> Tensor:
        z = self.pre(z, cache.pre)
        if self.deeper is None:
            return z
        return self.post(self.deeper.step(z, cache.deeper), cache.post)

    def new_cache(self) -> LevelCache:
        """Empty caches for this level and the deeper ones (prefill sets ``recent`` and ``upsampled``)."""
        deeper = None if self.deeper is None else self.deeper.new_cache()
        post = None if self.post is None else self.post.new_caches()
        return LevelCache(self.pre.new_caches(), post, deeper, torch.empty(0), torch.empty(0), 0)


@dataclass
class HourglassCache:
    """Decoding state: the byte layers' KV caches on each side, and the shortened levels'."""

    pre: list[KVCache]
    level: LevelCache
    post: list[KVCache]


class Hourglass(ByteModel):
    """Hierarchical byte transformer: byte layers around causally shortened levels.

    Args:
        d_model: Width of every layer (the paper keeps one width at all levels).
        hierarchy: The layers in the paper's notation a@k (module docstring): a palindrome from the
            byte layers a@1 inward, each total shortening a multiple of the one outside it.
        n_heads: Attention heads per block (must divide ``d_model``).
        max_seq_len: Longest window in bytes (size of the position table); any length up to it works.
        pooling: ``linear`` (the k shifted vectors concatenated, then a linear map to D) or
            ``average`` (their mean).
        upsampling: ``linear`` (a linear map to k * D, split into the k positions) or ``repeat``.
        dropout: Dropout on attention weights and residual branches.
        init_std: Standard deviation of the truncated-normal initialisation.
        tie_embeddings: Share the output head's weights with the byte embedding; off by default.
    """

    def __init__(
        self,
        d_model: int = 256,
        hierarchy: str = "2@1 4@3 2@1",
        n_heads: int = 4,
        max_seq_len: int = 1024,
        pooling: Literal["linear", "average"] = "linear",
        upsampling: Literal["linear", "repeat"] = "linear",
        dropout: float = 0.0,
        init_std: float = 0.02,
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, n_heads=n_heads, max_seq_len=max_seq_len)
        if pooling not in ("linear", "average"):
            raise ValueError(f"pooling={pooling!r} must be 'linear' or 'average'")
        if upsampling not in ("linear", "repeat"):
            raise ValueError(f"upsampling={upsampling!r} must be 'linear' or 'repeat'")
        byte_layers, levels = parse_hierarchy(hierarchy)
        self.d_model, self.max_seq_len = d_model, max_seq_len
        self.byte_layers, self.levels = byte_layers, levels
        self.pooling, self.upsampling = pooling, upsampling
        self.embed = ByteEmbedding(d_model, max_seq_len)
        self.pre = Transformer(d_model, byte_layers, n_heads, dropout)
        self.level = HourglassLevel(levels, d_model, n_heads, dropout, pooling, upsampling)
        self.post = Transformer(d_model, byte_layers, n_heads, dropout)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        init_weights(self, init_std, sum(isinstance(m, Block) for m in self.modules()))
        if tie_embeddings:
            self.head.weight = self.embed.byte_embed.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.post(self.level(self.pre(self.embed(x)))))

    def prefill(self, x: Tensor) -> tuple[Tensor, HourglassCache]:
        """One forward over the prompt (and the placeholder byte, shifted out) that fills every cache."""
        cache = HourglassCache(self.pre.new_caches(), self.level.new_cache(), self.post.new_caches())
        h = self.pre(self.embed(F.pad(x, (0, 1))), cache.pre)
        h = self.post(self.level(h, cache.level), cache.post)
        return self.head(h[:, -1]), cache

    def step(self, byte: Tensor, cache: HourglassCache) -> Tensor:
        """Byte t-1 enters at position t: one cached step of the byte layers, and of each level whose
        group it starts."""
        h = self.pre(self.embed.step(byte, cache.pre[0].length), cache.pre)
        h = self.post(self.level.step(h, cache.level), cache.post)
        return self.head(h[:, -1])

    def forward_flops(self, seq_len: int, skip_masked: bool = False) -> int:
        return hourglass_flops(
            seq_len,
            self.d_model,
            self.byte_layers,
            self.levels,
            linear_pooling=self.pooling == "linear",
            linear_upsampling=self.upsampling == "linear",
            skip_masked=skip_masked,
        )
