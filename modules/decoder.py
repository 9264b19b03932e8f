"""Flat decoder-only byte transformer: the paper's "Transformer" baseline."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import VOCAB_SIZE, ByteModel, check_positive
from .flops import decoder_flops
from .layers import ByteEmbedding, KVCache, Transformer, init_weights


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
        tie_embeddings: Share the output head's weights with the byte embedding (as the MEGABYTE
            paper ties its output layer to the local byte embedding); off by default.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        max_seq_len: int = 1024,
        dropout: float = 0.0,
        init_std: float = 0.02,
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_seq_len=max_seq_len)
        self.d_model, self.n_layers, self.max_seq_len = d_model, n_layers, max_seq_len
        self.embed = ByteEmbedding(d_model, max_seq_len)
        self.transformer = Transformer(d_model, n_layers, n_heads, dropout)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        init_weights(self, init_std, n_layers)
        if tie_embeddings:
            self.head.weight = self.embed.byte_embed.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.head_input(x))

    def head_input(self, x: Tensor) -> Tensor:
        return self.transformer(self.embed(x))

    def prefill(self, x: Tensor) -> tuple[Tensor, list[KVCache]]:
        """Cached decoding: one KV cache per block, filled by one forward over the prompt."""
        cache = self.transformer.new_caches()
        h = self.transformer(self.embed(F.pad(x, (0, 1))), cache)  # placeholder byte: shifted out
        return self.head(h[:, -1]), cache

    def step(self, byte: Tensor, cache: list[KVCache]) -> Tensor:
        """Byte t-1 enters at position t and attends to the cached keys of positions < t."""
        h = self.embed.step(byte, cache[0].length)
        return self.head(self.transformer(h, cache)[:, -1])

    def forward_flops(self, seq_len: int, skip_masked: bool = False) -> int:
        return decoder_flops(seq_len, self.d_model, self.n_layers, skip_masked)
