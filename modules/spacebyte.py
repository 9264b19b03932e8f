"""SpaceByte (Slagle 2024): byte-level blocks with sliding-window attention, and wider global blocks
that run only at the positions after a "spacelike" byte, their outputs added back into the bytes.

Notation as in the paper: T bytes, local width d, global width D >= d, local attention window W,
T_G global positions. ``forward`` reads the paper's layout top to bottom: byte embeddings plus
positions; the first half of the local blocks; the vectors at the global positions, behind D - d
zeros, plus global positions; the global blocks (full causal attention over the global positions);
their last d dims added back at the same byte positions; the second half of the local blocks; the
head. The paper's boundary rule (``boundary="spacelike"``) starts a global position after every
byte that is spacelike (not an ASCII letter or digit, not a UTF-8 continuation byte) when the byte
before it is not; ``boundary="periodic"`` (the paper's "SpaceByte, fixed P") starts one every P
bytes instead, like MEGABYTE's patches, for images and audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import VOCAB_SIZE, ByteModel, check_positive
from .flops import spacebyte_flops
from .layers import ByteEmbedding, KVCache, Transformer, init_weights


def spacelike(x: Tensor) -> Tensor:
    """The paper's spacelike bytes: not a digit, not an ASCII letter, not a UTF-8 continuation byte
    (0x80-0xBF); UTF-8 lead bytes (>= 0xC0) count, so a multi-byte character starts a word."""
    digit = (x >= ord("0")) & (x <= ord("9"))
    letter = ((x >= ord("A")) & (x <= ord("Z"))) | ((x >= ord("a")) & (x <= ord("z")))
    continuation = (x >= 0x80) & (x < 0xC0)
    return ~(digit | letter | continuation)


def boundary_bytes(x: Tensor) -> Tensor:
    """``x[B, L]`` -> bool ``[B, L]``: byte i is a boundary when it is spacelike and byte i - 1 is not
    (byte 0: when it is spacelike; the byte before a window is not known). A run of spacelike bytes
    starts one patch, so two boundaries are never adjacent."""
    space = spacelike(x)
    return space & ~F.pad(space[:, :-1], (1, 0))


@dataclass
class SpaceByteCache:
    """Decoding state: every byte so far (the boundary rule reads the last two), the local blocks'
    KV caches (batched), and per row the global blocks' KV caches (rows reach global positions at
    different bytes) with how many global positions the row has formed."""

    bytes: Tensor  # [B, t]
    initial: list[KVCache]
    final: list[KVCache]
    global_caches: list[list[KVCache]]  # one list per row
    slots: list[int]  # global positions formed, per row


class SpaceByte(ByteModel):
    """Byte model whose global blocks run only at word boundaries.

    Positions are bytelab's (``layers.ByteEmbedding``): position t holds byte t - 1 and predicts
    byte t, position 0 holds the learned start vector. Position t is a global position when t = 0
    (the start vector plays the paper's BOS, which always opens a patch) or byte t - 1 is a
    boundary (:func:`boundary_bytes`): exactly the paper's rule, where the global block at a
    spacelike input byte helps predict the byte after it. The decision at t reads bytes < t only.

    Global capacity. The paper gives the global blocks T_G = T / 6 positions and drops from the loss
    every byte after the T_G-th boundary; bytelab scores every byte, so the capacity is sized from
    the window instead: no two boundaries are adjacent, so a window of T bytes forms at most
    ``1 + T // 2`` global positions (:meth:`capacity`), which the global position table holds for
    ``max_seq_len``; nothing is ever truncated. The global blocks run over as many positions as the
    batch formed (its row with the most; the others' spare slots sit after their last one, where
    causal attention keeps them out, and are not added back), so the cost follows the text:
    :meth:`batch_flops` counts the positions formed, :meth:`forward_flops` the expected count
    ``ceil(T / patch_size)`` (the paper's T_G = T / 6 for English; 8 for code).

    Args:
        local_d_model: d, the width of the byte-level (local) blocks.
        local_layers: Local blocks in all; the first half run before the global blocks, the rest after.
        global_d_model: D >= d, the width of the global blocks.
        global_layers: Global blocks.
        n_heads: Attention heads of the global blocks (and the local ones unless ``local_n_heads``).
        max_seq_len: Longest window in bytes.
        attention_window: W, the keys a local block's query sees (itself and W - 1 before it).
        boundary: ``spacelike`` (the paper's rule) or ``periodic`` (a global position every
            ``patch_size`` bytes: position 0, P, 2P, ...).
        patch_size: P of ``periodic``; for ``spacelike``, the expected bytes per global position that
            :meth:`forward_flops` (and so a budget's step count) assumes.
        local_n_heads: Attention heads of the local blocks; None = ``n_heads``.
        dropout: Dropout on attention weights and residual branches.
        init_std: Standard deviation of the truncated-normal initialisation.
        tie_embeddings: Share the output head's weights with the byte embedding; off by default.
    """

    def __init__(
        self,
        local_d_model: int = 256,
        local_layers: int = 4,
        global_d_model: int = 512,
        global_layers: int = 4,
        n_heads: int = 8,
        max_seq_len: int = 1024,
        attention_window: int = 256,
        boundary: Literal["spacelike", "periodic"] = "spacelike",
        patch_size: int = 6,
        local_n_heads: int | None = None,
        dropout: float = 0.0,
        init_std: float = 0.02,
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self._last_ratio: float | None = None  # global positions per byte of the last batch_flops
        local_n_heads = local_n_heads or n_heads
        check_positive(
            local_d_model=local_d_model,
            local_layers=local_layers,
            global_d_model=global_d_model,
            global_layers=global_layers,
            n_heads=n_heads,
            max_seq_len=max_seq_len,
            attention_window=attention_window,
            patch_size=patch_size,
            local_n_heads=local_n_heads,
        )
        if global_d_model < local_d_model:
            raise ValueError(
                f"global_d_model={global_d_model} must be at least local_d_model={local_d_model} "
                "(a byte's vector enters the global blocks as their last d dims)"
            )
        if boundary not in ("spacelike", "periodic"):
            raise ValueError(f"boundary={boundary!r} must be 'spacelike' or 'periodic'")
        self.local_d_model, self.local_layers = local_d_model, local_layers
        self.global_d_model, self.global_layers = global_d_model, global_layers
        self.max_seq_len, self.attention_window = max_seq_len, attention_window
        self.boundary, self.patch_size = boundary, patch_size
        self.data_dependent_flops = boundary == "spacelike"  # periodic: the shape alone fixes the cost
        self.embed = ByteEmbedding(local_d_model, max_seq_len)
        first = local_layers // 2
        window = attention_window
        self.initial_model = Transformer(
            local_d_model, first, local_n_heads, dropout, window, final_norm=False
        )
        self.global_pos_embed = nn.Embedding(self.capacity(max_seq_len), global_d_model)
        self.global_model = Transformer(global_d_model, global_layers, n_heads, dropout, final_norm=False)
        self.final_model = Transformer(local_d_model, local_layers - first, local_n_heads, dropout, window)
        self.head = nn.Linear(local_d_model, VOCAB_SIZE, bias=False)
        init_weights(self, init_std, local_layers + global_layers)
        if tie_embeddings:
            self.head.weight = self.embed.byte_embed.weight

    def capacity(self, seq_len: int) -> int:
        """The most global positions a window of ``seq_len`` bytes can form: T_G."""
        if self.boundary == "periodic":
            return -(-seq_len // self.patch_size)
        return 1 + seq_len // 2

    def global_positions(self, x: Tensor) -> Tensor:
        """``x[B, L]`` -> bool ``[B, L]``: which positions run the global blocks; position t reads
        bytes < t only (class docstring)."""
        positions = torch.arange(x.size(1), device=x.device)
        if self.boundary == "periodic":
            return (positions % self.patch_size == 0).expand(x.shape)
        return F.pad(boundary_bytes(x)[:, :-1], (1, 0), value=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.initial_model(self.embed(x))
        is_global = self.global_positions(x)
        num_slots = int(is_global.sum(dim=1).max())
        # Global slot j of a row holds its j-th global position; spare slots point past its last one.
        order = torch.where(is_global, torch.arange(x.size(1), device=x.device), x.size(1))
        slots = order.sort(dim=1).values[:, :num_slots]  # [B, T_G]: positions, or L for spare slots
        h = h + self.global_output(h, slots)
        return self.head(self.final_model(h))

    def global_output(self, h: Tensor, slots: Tensor) -> Tensor:
        """The global blocks over ``h`` at the positions ``slots[B, n]`` (L: a spare slot), behind
        D - d zeros, plus global positions 0..n-1; their outputs' last d dims scattered back to the
        same positions: ``[B, L, d]``, zero wherever no global position is."""
        batch, length, d = h.shape
        index = slots.clamp(max=length - 1)[..., None].expand(-1, -1, d)
        g = F.pad(h.gather(1, index), (self.global_d_model - d, 0))
        g = self.global_model(g + self.global_pos_embed.weight[: slots.size(1)])
        spare = slots == length
        out = g[..., -d:].masked_fill(spare[..., None], 0)
        return h.new_zeros(batch, length + 1, d).scatter(1, slots[..., None].expand(-1, -1, d), out)[
            :, :length
        ]

    def prefill(self, x: Tensor) -> tuple[Tensor, SpaceByteCache]:
        """The local blocks over the prompt and the placeholder position fill their caches in one pass;
        each row runs the global blocks over its own global positions, filling its global caches."""
        padded = F.pad(x, (0, 1))  # placeholder byte: shifted out
        initial, final = self.initial_model.new_caches(), self.final_model.new_caches()
        h = self.initial_model(self.embed(padded), initial)
        is_global = self.global_positions(padded)
        out, global_caches, slots = torch.zeros_like(h), [], []
        for b in range(x.size(0)):
            (positions,) = is_global[b].nonzero(as_tuple=True)
            caches = self.global_model.new_caches()
            out[b, positions] = self.global_step(h[b : b + 1, positions], 0, caches)[0]
            global_caches.append(caches)
            slots.append(positions.numel())
        y = self.final_model(h + out, final)
        return self.head(y[:, -1]), SpaceByteCache(x, initial, final, global_caches, slots)

    def step(self, byte: Tensor, cache: SpaceByteCache) -> Tensor:
        """Byte t - 1 enters at position t through the cached local blocks; rows for which t is a
        global position take one cached global step at their next slot."""
        cache.bytes = torch.cat([cache.bytes, byte[:, None]], dim=1)
        t = cache.bytes.size(1)
        h = self.initial_model(self.embed.step(byte, t), cache.initial)
        is_global = self.global_positions(F.pad(cache.bytes, (0, 1)))[:, -1]
        out = torch.zeros_like(h)
        for b in is_global.nonzero(as_tuple=True)[0].tolist():
            out[b] = self.global_step(h[b : b + 1], cache.slots[b], cache.global_caches[b])[0]
            cache.slots[b] += 1
        return self.head(self.final_model(h + out, cache.final)[:, -1])

    def global_step(self, h: Tensor, first: int, caches: list[KVCache]) -> Tensor:
        """Global slots ``first, first+1, ...`` of one row from its vectors ``h[1, n, d]``, through the
        cached global blocks: the last d dims of their outputs, ``[1, n, d]``."""
        g = F.pad(h, (self.global_d_model - h.size(-1), 0))
        g = g + self.global_pos_embed.weight[first : first + h.size(1)]
        return self.global_model(g, caches)[..., -h.size(-1) :]

    def forward_flops(self, seq_len: int, skip_masked: bool = False, num_slots: int | None = None) -> int:
        """Forward FLOPs of one window with ``num_slots`` global positions; default: the expected
        ``ceil(seq_len / patch_size)`` (exact for ``periodic``)."""
        slots = -(-seq_len // self.patch_size) if num_slots is None else num_slots
        return spacebyte_flops(
            seq_len,
            slots,
            self.local_d_model,
            self.local_layers,
            self.global_d_model,
            self.global_layers,
            self.attention_window,
            skip_masked,
        )

    def training_metrics(self) -> dict[str, float]:
        """``global_ratio``: global positions per byte formed by the last training batch (the FLOP
        formula's expectation is 1/patch_size), logged as ``train/global_ratio``."""
        return {} if self._last_ratio is None else {"global_ratio": self._last_ratio}

    def batch_flops(self, x: Tensor, skip_masked: bool = False) -> int:
        """Forward FLOPs of the windows ``x[B, L]`` as the forward ran them: every row's global blocks
        over as many positions as the batch's row with the most formed."""
        formed = self.global_positions(x).sum(dim=1)
        self._last_ratio = float(formed.sum()) / x.numel()
        num_slots = int(formed.max())
        return x.size(0) * self.forward_flops(x.size(1), skip_masked, num_slots)
