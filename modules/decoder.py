"""Flat decoder-only byte transformer: the paper's "Transformer" baseline, and with a sliding
attention window and rotary positions the strongest flat baseline of the literature (SpaceByte's
"window attention" Transformer)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .base import VOCAB_SIZE, ByteModel, check_positive
from .flops import decoder_flops
from .layers import ByteEmbedding, KVCache, Transformer, init_weights


class Decoder(ByteModel):
    """GPT-style decoder over bytes: byte + position embeddings, a causal transformer, a linear
    head; every position of the window is predicted and scored.

    Windowed attention (``window=W``) follows SpaceByte's local blocks: in every layer the query at
    position t attends to positions t - W + 1 .. t (itself and the W - 1 before it). Position t holds
    byte t - 1, so with one layer the prediction of byte t reads bytes t - W .. t - 1 (a byte W back
    moves it, one W + 1 back cannot); through ``n_layers`` layers it reads the
    :attr:`receptive_field` = ``n_layers * (W - 1) + 1`` bytes before it. Cached generation keeps only
    the keys the next query can see (``layers.KVCache``).

    Positions: ``learned`` absolute embeddings (a table of ``max_seq_len``), or ``rope`` (rotary, in
    every attention layer; no table). With ``rope`` and a window, a prediction is the same function of
    its last receptive-field bytes wherever they sit, once position t >= receptive field (the start
    vector and the window's truncated start out of its reach); a model trained on ``max_seq_len``-byte
    windows has been trained at that function when ``max_seq_len > receptive_field``, and may then read
    windows of any length (:meth:`max_input_len` is None): every position it scores is one it was
    trained at, to float rounding. Otherwise ``max_seq_len`` bounds every window.

    Args:
        d_model: Width of the residual stream.
        n_layers: Number of transformer blocks.
        n_heads: Attention heads per block (must divide ``d_model``).
        max_seq_len: Longest (training) window in bytes: the size of the learned position table.
        dropout: Dropout on attention weights and residual branches.
        init_std: Standard deviation of the truncated-normal initialisation.
        tie_embeddings: Share the output head's weights with the byte embedding (as the MEGABYTE
            paper ties its output layer to the local byte embedding); off by default.
        window: W, the positions each query attends to (itself and the W - 1 before it), through
            the blockwise sliding-window kernel (``layers.sliding_window_attention``); None: all.
        positions: ``learned`` absolute embeddings (the default, as every family's) or ``rope``
            (rotary embeddings, ``layers.rotary``).
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
        window: int | None = None,
        positions: Literal["learned", "rope"] = "learned",
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_seq_len=max_seq_len)
        if window is not None:
            check_positive(window=window)
        if positions not in ("learned", "rope"):
            raise ValueError(f"positions={positions!r} must be 'learned' or 'rope'")
        self.d_model, self.n_layers, self.max_seq_len = d_model, n_layers, max_seq_len
        self.window, self.positions = window, positions
        rope = positions == "rope"
        self.embed = ByteEmbedding(d_model, max_seq_len, learned_positions=not rope)
        self.transformer = Transformer(d_model, n_layers, n_heads, dropout, window, rope=rope)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        init_weights(self, init_std, n_layers)
        if tie_embeddings:
            self.head.weight = self.embed.byte_embed.weight

    @property
    def receptive_field(self) -> int | None:
        """How many bytes before byte t its prediction can read; None: every byte of the window."""
        return None if self.window is None else self.n_layers * (self.window - 1) + 1

    def max_input_len(self) -> int | None:
        """``max_seq_len``, or None (any length) for rotary positions with a window that the training
        windows cover (class docstring)."""
        field = self.receptive_field
        if self.positions == "rope" and field is not None and self.max_seq_len > field:
            return None
        return self.max_seq_len

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
        return decoder_flops(seq_len, self.d_model, self.n_layers, skip_masked, self.window)
