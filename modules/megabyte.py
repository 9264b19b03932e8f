"""MEGABYTE (Yu et al. 2023): a global transformer over patches and a local transformer inside each.

Notation as in the paper: T bytes, patch size P, K = T / P patches, D_G per-byte global width
(global model width P * D_G), D_L local width. Equation numbers refer to the paper's section 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import VOCAB_SIZE, ByteModel, check_positive
from .decoder import shift_right
from .flops import megabyte_flops
from .layers import KVCache, Transformer, init_weights


@dataclass
class MegabyteCache:
    """Decoding state of MEGABYTE, as in the paper's generation analysis: the global model steps
    once per patch, the local model once per byte."""

    global_cache: list[KVCache]  # one entry per global position: the pad patch, then whole patches
    local_cache: list[KVCache]  # one entry per byte of the current patch
    patch: Tensor  # [B, p] bytes of the current patch decoded so far
    chunks: Tensor  # [B, P, D_L] the current patch's global output, split and projected (Eq. 4)


class Megabyte(ByteModel):
    """Multiscale byte transformer.

    Args:
        patch_size: Bytes per patch, P.
        global_d_model: Width of the global model, P * D_G (must be divisible by ``patch_size``).
        global_layers: Blocks in the global model.
        local_d_model: Width of the local model, D_L.
        local_layers: Blocks in the local model.
        n_heads: Attention heads in the global model (and the local model unless ``local_n_heads``).
        max_seq_len: Longest window in bytes; a multiple of ``patch_size``.
        local_n_heads: Attention heads in the local model; None = ``n_heads``.
        dropout: Dropout on attention weights and residual branches.
        init_std: Standard deviation of the truncated-normal initialisation.
    """

    def __init__(
        self,
        patch_size: int = 8,
        global_d_model: int = 512,
        global_layers: int = 4,
        local_d_model: int = 128,
        local_layers: int = 2,
        n_heads: int = 4,
        max_seq_len: int = 1024,
        local_n_heads: int | None = None,
        dropout: float = 0.0,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        local_n_heads = local_n_heads or n_heads
        check_positive(
            patch_size=patch_size,
            global_d_model=global_d_model,
            global_layers=global_layers,
            local_d_model=local_d_model,
            local_layers=local_layers,
            n_heads=n_heads,
            max_seq_len=max_seq_len,
            local_n_heads=local_n_heads,
        )
        if max_seq_len % patch_size:
            raise ValueError(f"max_seq_len={max_seq_len} must be a multiple of patch_size={patch_size}")
        if global_d_model % patch_size:
            raise ValueError(
                f"global_d_model={global_d_model} must be a multiple of patch_size={patch_size} "
                "(it is P * D_G, the concatenation of P byte embeddings)"
            )
        self.patch_size, self.max_seq_len = patch_size, max_seq_len
        self.global_d_model, self.global_layers = global_d_model, global_layers
        self.local_d_model, self.local_layers = local_d_model, local_layers
        d_byte = global_d_model // patch_size  # D_G
        # Eq. 1-2: byte embeddings plus positions, concatenated per patch; a pad patch shifts by one.
        self.global_byte_embed = nn.Embedding(VOCAB_SIZE, d_byte)
        self.global_pos_embed = nn.Embedding(max_seq_len, d_byte)
        self.global_pad = nn.Parameter(torch.empty(global_d_model))
        self.global_model = Transformer(global_d_model, global_layers, n_heads, dropout)
        # Eq. 4-5: each of the P chunks of a global output, projected to D_L, plus the local
        # embedding of the previous byte (a pad byte at the start of each patch).
        self.global_to_local = nn.Linear(d_byte, local_d_model, bias=False)
        self.local_byte_embed = nn.Embedding(VOCAB_SIZE, local_d_model)
        self.local_pos_embed = nn.Embedding(patch_size, local_d_model)
        self.local_pad = nn.Parameter(torch.empty(local_d_model))
        self.local_model = Transformer(local_d_model, local_layers, local_n_heads, dropout)
        self.head = nn.Linear(local_d_model, VOCAB_SIZE, bias=False)
        init_weights(self, init_std, global_layers)
        init_weights(self.local_model, init_std, local_layers)

    def forward(self, x: Tensor) -> Tensor:
        batch, length = x.shape
        # Right-pad to whole patches; causality means the padding never reaches a real byte.
        x = F.pad(x, (0, -length % self.patch_size))
        patches = x.view(batch, -1, self.patch_size)  # [B, K, P]
        g = self.global_model(shift_right(self.embed_patches(x), self.global_pad))  # k sees < k
        local_in = self.local_input(self.global_chunks(g), patches)  # [B, K, P, D_L]
        y = self.local_model(local_in.flatten(0, 1))  # [B*K, P, D_L], patches independent
        return self.head(y).view(batch, -1, VOCAB_SIZE)[:, :length]

    def embed_patches(self, x: Tensor, start: int = 0) -> Tensor:
        """Eq. 1-2: byte embeddings plus positions ``start, start+1, ...``, concatenated per patch:
        whole patches ``x[B, K*P]`` -> ``[B, K, P*D_G]``."""
        positions = torch.arange(start, start + x.size(1), device=x.device)
        h = self.global_byte_embed(x) + self.global_pos_embed(positions)
        return h.view(x.size(0), -1, self.global_d_model)

    def global_chunks(self, g: Tensor) -> Tensor:
        """Eq. 4: each global output ``[..., P*D_G]`` split into P chunks, projected to ``[..., P, D_L]``."""
        return self.global_to_local(g.unflatten(-1, (self.patch_size, -1)))

    def local_input(self, chunks: Tensor, patches: Tensor) -> Tensor:
        """Eq. 5: chunk p plus the local embedding of the previous byte (the pad byte for p = 0) and
        local position p, for the first n bytes of each patch: ``patches[..., n]`` -> ``[..., n, D_L]``."""
        n = patches.size(-1)
        local = shift_right(self.local_byte_embed(patches), self.local_pad) + self.local_pos_embed.weight[:n]
        return chunks[..., :n, :] + local

    def prefill(self, x: Tensor) -> tuple[Tensor, MegabyteCache]:
        """Global model over the pad patch and the prompt's whole patches, local model over the
        bytes of the last, partial patch; both leave their KV caches behind."""
        whole = x.size(1) - x.size(1) % self.patch_size
        global_cache = self.global_model.new_caches()
        h = self.embed_patches(F.pad(x[:, :whole], (0, self.patch_size)))  # placeholder: shifted out
        g = self.global_model(shift_right(h, self.global_pad), global_cache)[:, -1]
        local_cache = self.local_model.new_caches()
        cache = MegabyteCache(global_cache, local_cache, x[:, whole:], self.global_chunks(g))
        return self.decode_local(cache, new=cache.patch.size(1) + 1), cache

    def step(self, byte: Tensor, cache: MegabyteCache) -> Tensor:
        """One local step per byte; when a patch completes, one global step for the next patch."""
        cache.patch = torch.cat([cache.patch, byte[:, None]], dim=1)
        if cache.patch.size(1) == self.patch_size:
            # Patch k enters the global model at position k + 1 (after the pad and patches < k).
            start = (cache.global_cache[0].length - 1) * self.patch_size
            g = self.global_model(self.embed_patches(cache.patch, start), cache.global_cache)[:, -1]
            cache.chunks, cache.patch = self.global_chunks(g), cache.patch[:, :0]
            cache.local_cache = self.local_model.new_caches()
        return self.decode_local(cache, new=1)

    def decode_local(self, cache: MegabyteCache, new: int) -> Tensor:
        """Feed the last ``new`` local inputs of the current patch through the cached local model;
        logits for the byte after the patch's bytes so far."""
        local_in = self.local_input(cache.chunks, F.pad(cache.patch, (0, 1)))[:, -new:]
        return self.head(self.local_model(local_in, cache.local_cache)[:, -1])

    def forward_flops(self, seq_len: int) -> int:
        return megabyte_flops(
            seq_len,
            self.patch_size,
            self.global_d_model,
            self.global_layers,
            self.local_d_model,
            self.local_layers,
        )
