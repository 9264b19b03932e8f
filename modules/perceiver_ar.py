"""PerceiverAR (Hawthorne et al. 2022): causal cross-attention from the last N positions into the
whole input, then a causal self-attention stack over those N latents."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import VOCAB_SIZE, ByteModel, check_positive
from .decoder import shift_right
from .flops import perceiver_ar_flops
from .layers import Block, Transformer, init_weights


class PerceiverAR(ByteModel):
    """Long-context byte model whose latents are the last ``num_latents`` input positions.

    Latent i (input position t_i) starts from its own input embedding and attends, once, to every
    input at or before t_i; ``n_layers`` causal self-attention blocks then run over the latents.
    Only the latent positions are predicted, so a window of L bytes scores its last
    ``min(L, num_latents)`` bytes.

    Args:
        d_model: Width of the embeddings, the cross-attention and the latent stack.
        n_layers: Self-attention blocks over the latents (the cross-attention block is extra).
        n_heads: Attention heads per block (must divide ``d_model``).
        max_seq_len: Longest input window in bytes (size of the position table).
        num_latents: N, the number of final positions that become latents and are scored.
        dropout: Dropout on attention weights and residual branches.
        init_std: Standard deviation of the truncated-normal initialisation.
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
        self.byte_embed = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos_embed = nn.Embedding(max_seq_len, d_model)
        self.start = nn.Parameter(torch.empty(d_model))
        self.cross_attention = Block(d_model, n_heads, dropout)
        self.latent_model = Transformer(d_model, n_layers, n_heads, dropout)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        init_weights(self, init_std, n_layers + 1)

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.size(1), device=x.device)
        h = shift_right(self.byte_embed(x), self.start) + self.pos_embed(positions)
        latents = self.cross_attention(h[:, -self.scored_len(x.size(1)) :], context=h)
        return self.head(self.latent_model(latents))

    def scored_len(self, seq_len: int) -> int:
        return min(seq_len, self.num_latents)

    def forward_flops(self, seq_len: int) -> int:
        return perceiver_ar_flops(seq_len, self.d_model, self.n_layers, self.num_latents)
