"""Flat decoder-only byte transformer: the paper's "Transformer" baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import VOCAB_SIZE, ByteModel, check_positive
from .flops import decoder_flops
from .layers import KVCache, Transformer, init_weights


def shift_right(h: Tensor, start: Tensor) -> Tensor:
    """Shift embeddings one position to the right along dim -2, a learned ``start`` in front.

    Position t then holds the embedding of byte t-1, so it predicts byte t from bytes < t; the
    first byte of a window is predicted from ``start`` alone.
    """
    start = start.expand(*h.shape[:-2], 1, h.size(-1))
    return torch.cat([start, h[..., :-1, :]], dim=-2)


class Decoder(ByteModel):
    """GPT-style decoder over bytes: byte + learned position embeddings, a causal transformer,
    a linear head; every position of the window is predicted and scored.

    Args:
        d_model: Width of the residual stream.
        n_layers: Number of transformer blocks.
        n_heads: Attention heads per block (must divide ``d_model``).
        max_seq_len: Longest window in bytes (size of the position table).
        dropout: Dropout on attention weights and residual branches.
        init_std: Standard deviation of the truncated-normal initialisation.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        max_seq_len: int = 1024,
        dropout: float = 0.0,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_seq_len=max_seq_len)
        self.d_model, self.n_layers, self.max_seq_len = d_model, n_layers, max_seq_len
        self.byte_embed = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos_embed = nn.Embedding(max_seq_len, d_model)
        self.start = nn.Parameter(torch.empty(d_model))
        self.transformer = Transformer(d_model, n_layers, n_heads, dropout)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        init_weights(self, init_std, n_layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.transformer(self.embed(x)))

    def embed(self, x: Tensor) -> Tensor:
        """Transformer input of a window: start + bytes shifted right by one, plus positions."""
        positions = torch.arange(x.size(1), device=x.device)
        return shift_right(self.byte_embed(x), self.start) + self.pos_embed(positions)

    def prefill(self, x: Tensor) -> tuple[Tensor, list[KVCache]]:
        """Cached decoding: one KV cache per block, filled by one forward over the prompt."""
        cache = self.transformer.new_caches()
        h = self.transformer(self.embed(F.pad(x, (0, 1))), cache)  # placeholder byte: shifted out
        return self.head(h[:, -1]), cache

    def step(self, byte: Tensor, cache: list[KVCache]) -> Tensor:
        """Byte t-1 enters at position t and attends to the cached keys of positions < t."""
        h = self.byte_embed(byte[:, None]) + self.pos_embed.weight[cache[0].length]
        return self.head(self.transformer(h, cache)[:, -1])

    def forward_flops(self, seq_len: int, skip_masked: bool = False) -> int:
        return decoder_flops(seq_len, self.d_model, self.n_layers, skip_masked)
