"""PerceiverAR (Hawthorne et al. 2022): causal cross-attention from the last N positions into the
whole input, then a causal self-attention stack over those N latents."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import VOCAB_SIZE, ByteModel, check_positive
from .flops import perceiver_ar_flops
from .layers import Block, ByteEmbedding, KVCache, Transformer, init_weights


@dataclass
class PerceiverARCache:
    """Decoding state: the cross-attention's keys/values over every input so far, and the current
    latent block (its cross-attention outputs and the latent stack's KV caches)."""

    cross: KVCache
    latents: Tensor  # [B, m, D] cross-attention outputs of the block's latents
    latent_cache: list[KVCache]


class PerceiverAR(ByteModel):
    """Long-context byte model whose latents are the last ``num_latents`` input positions.

    Latent i (input position t_i) starts from its own input embedding and attends, once, to every
    input at or before t_i; ``n_layers`` causal self-attention blocks then run over the latents.
    Only the latent positions are predicted, so a window of L bytes scores its last
    ``min(L, num_latents)`` bytes.

    Cached generation. A latent's output depends on where the latent block starts, so a block
    that slid by one byte per step would invalidate the latent stack's cache every step. As in
    the official implementation, the block instead grows while the cache is reused; when it would
    exceed N = ``num_latents`` latents it restarts from its last ``r = max(N // 2, 1)`` latents,
    recomputing the latent stack once. The logits for byte t (the window holds bytes < t) are then
    exactly those of the full forward ``forward(x[:, :t+1], num_latents=latents_at(t))[:, -1]``, with
    ``latents_at(t) = t + 1`` for t < N (the plain forward) and ``r + (t - N) mod (N - r + 1)``
    after; that forward is ``next_logits``, which uncached generation uses too. The cross-attention
    output of a position never depends on the block, so its cache never restarts.

    Args:
        d_model: Width of the embeddings, the cross-attention and the latent stack.
        n_layers: Self-attention blocks over the latents (the cross-attention block is extra).
        n_heads: Attention heads per block (must divide ``d_model``).
        max_seq_len: Longest input window in bytes (size of the position table).
        num_latents: N, the number of final positions that become latents and are scored.
        dropout: Dropout on attention weights and residual branches.
        init_std: Standard deviation of the truncated-normal initialisation.
        tie_embeddings: Share the output head's weights with the byte embedding (as the MEGABYTE
            paper ties its output layer to the local byte embedding); off by default.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        max_seq_len: int = 1024,
        num_latents: int = 256,
        dropout: float = 0.0,
        init_std: float = 0.02,
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        check_positive(
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            max_seq_len=max_seq_len,
            num_latents=num_latents,
        )
        self.d_model, self.n_layers = d_model, n_layers
        self.max_seq_len, self.num_latents = max_seq_len, num_latents
        self.embed = ByteEmbedding(d_model, max_seq_len)
        self.cross_attention = Block(d_model, n_heads, dropout)
        self.latent_model = Transformer(d_model, n_layers, n_heads, dropout)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        init_weights(self, init_std, n_layers + 1)
        if tie_embeddings:
            self.head.weight = self.embed.byte_embed.weight

    def forward(self, x: Tensor, num_latents: int | None = None) -> Tensor:
        """Logits for the last ``min(L, num_latents)`` positions (default: the model's N)."""
        return self.head(self.head_input(x, num_latents))

    def head_input(self, x: Tensor, num_latents: int | None = None) -> Tensor:
        h = self.embed(x)
        latents = self.cross_attention(h[:, -min(x.size(1), num_latents or self.num_latents) :], context=h)
        return self.latent_model(latents)

    def training_logits(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Right-padded windows: row b's latents are the last ``min(lengths[b], N)`` positions of its
        own bytes, as in the forward of the unpadded window ``x[b, :lengths[b]]``, so that every
        latent position evaluation scores (short windows at a document's start) is trained.

        Each latent's query is gathered from its row's position and its cross-attention sees the
        keys up to that position; a row shorter than the scored count S fills its last latents with
        padding positions, which causal latent self-attention keeps out of the real ones."""
        batch, seq_len = x.shape
        scored = min(seq_len, self.num_latents)
        if bool((lengths == seq_len).all()):
            logits = self(x)
            return logits, torch.arange(seq_len - scored, seq_len, device=x.device).expand(batch, scored)
        first = (lengths - scored).clamp(min=0)
        positions = first[:, None] + torch.arange(scored, device=x.device)  # [B, S], < seq_len
        h = self.embed(x)
        queries = h.gather(1, positions[..., None].expand(-1, -1, h.size(-1)))
        mask = torch.arange(seq_len, device=x.device) <= positions[..., None]  # [B, S, L]
        latents = self.cross_attention(queries, context=h, mask=mask[:, None])
        return self.head(self.latent_model(latents)), positions

    def latents_at(self, t: int) -> int:
        """How many latents (the block ending at t) cached decoding uses to predict byte t."""
        n, r = self.num_latents, max(self.num_latents // 2, 1)
        return t + 1 if t < n else r + (t - n) % (n - r + 1)

    def next_logits(self, x: Tensor) -> Tensor:
        return self(F.pad(x, (0, 1)), num_latents=self.latents_at(x.size(1)))[:, -1]

    def prefill(self, x: Tensor) -> tuple[Tensor, PerceiverARCache]:
        """Cross-attention keys/values over the whole prompt; the latent block of its last position."""
        h = self.embed(F.pad(x, (0, 1)))  # placeholder byte: shifted out
        cross = KVCache()
        latents = self.cross_attention(h[:, -self.latents_at(x.size(1)) :], context=h, cache=cross)
        cache = PerceiverARCache(cross, latents, self.latent_model.new_caches())
        return self.head(self.latent_model(latents, cache.latent_cache)[:, -1]), cache

    def step(self, byte: Tensor, cache: PerceiverARCache) -> Tensor:
        """The new input joins the cross-attention cache and becomes a latent; the block grows by one
        cached latent, or restarts from its last ``latents_at(t)`` latents (class docstring)."""
        t = cache.cross.length
        h = self.embed.step(byte, t)
        cache.latents = torch.cat([cache.latents, self.cross_attention(h, cache=cache.cross)], dim=1)
        if self.latents_at(t) == cache.latents.size(1):
            y = self.latent_model(cache.latents[:, -1:], cache.latent_cache)
        else:
            cache.latents = cache.latents[:, -self.latents_at(t) :]
            cache.latent_cache = self.latent_model.new_caches()
            y = self.latent_model(cache.latents, cache.latent_cache)
        return self.head(y[:, -1])

    def scored_len(self, seq_len: int) -> int:
        return min(seq_len, self.num_latents)

    def forward_flops(self, seq_len: int, skip_masked: bool = False) -> int:
        return perceiver_ar_flops(seq_len, self.d_model, self.n_layers, self.num_latents, skip_masked)
