"""MEGABYTE (Yu et al. 2023): a global transformer over patches and a local transformer inside each.

Notation as in the paper: T bytes, patch size P, K = T / P patches, D_G per-byte global width
(global model width P * D_G), D_L local width. Equation numbers refer to the paper's section 2:
``forward`` reads Eq. 1-6 top to bottom. The variants the paper ablates (its Table 10) are
constructor options, each a named piece: the patch encoder (:class:`PatchEmbedder`, ``concat`` or
``cnn``), cross-patch attention (:class:`CrossPatchContext`), and the two models without one stage
(``no_global``: :meth:`Megabyte.global_output` gives nothing; ``no_local``: :meth:`Megabyte.local_output`
passes the global chunks straight to the head). The defaults are the main model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import VOCAB_SIZE, ByteModel, check_positive, chunked_nats, nats
from .flops import megabyte_flops
from .layers import KVCache, Transformer, init_weights, shift_right

PATCH_ENCODER_KERNELS = (3, 5, 7)  # the paper's causal convolutional patch encoder


class CausalConvEncoder(nn.Module):
    """Causal convolutions over the byte embeddings before they are cut into patches, one residual
    branch per kernel size: byte t then mixes bytes t-12..t, across patch boundaries, so a patch's
    vector no longer depends on where the patch grid falls."""

    def __init__(self, d_model: int, kernels: tuple[int, ...] = PATCH_ENCODER_KERNELS) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(d_model, d_model, k, bias=False) for k in kernels)
        self.lookback = sum(k - 1 for k in kernels)  # bytes before t that reach byte t

    def forward(self, h: Tensor) -> Tensor:
        """h: [B, T, D]; zeros stand in for the bytes before the window (left padding only)."""
        h = h.transpose(1, 2)
        for conv in self.convs:
            h = h + conv(F.pad(h, (conv.kernel_size[0] - 1, 0)))
        return h.transpose(1, 2)


class PatchEmbedder(nn.Module):
    """Eq. 1-2: byte embeddings plus positions, h_t = E^global-embed(x_t) + E^pos(t), concatenated per
    patch into K vectors of width P * D_G. With ``encoder="cnn"`` (Table 10's CNN encoder) causal
    convolutions mix each byte with the 12 before it first."""

    def __init__(self, patch_size: int, d_byte: int, max_seq_len: int, encoder: str = "concat") -> None:
        super().__init__()
        self.byte_embed = nn.Embedding(VOCAB_SIZE, d_byte)
        self.pos_embed = nn.Embedding(max_seq_len, d_byte)
        self.conv = CausalConvEncoder(d_byte) if encoder == "cnn" else None
        self.lookback = self.conv.lookback if self.conv is not None else 0  # earlier bytes a byte reads
        self.width = patch_size * d_byte

    def forward(self, x: Tensor, start: int = 0, lookback: int = 0) -> Tensor:
        """Whole patches ``x[B, K*P]`` at positions ``start, start+1, ...`` -> ``[B, K, P*D_G]``. ``x`` may
        begin with ``lookback`` earlier bytes that only feed the convolutions (decoding)."""
        positions = torch.arange(start - lookback, start + x.size(1) - lookback, device=x.device)
        h = self.byte_embed(x) + self.pos_embed(positions)
        if self.conv is not None:
            h = self.conv(h)[:, lookback:]
        return h.reshape(x.size(0), -1, self.width)


class CrossPatchContext(nn.Module):
    """Table 10's cross-patch attention: in every local layer, the positions of patch k also attend to
    the keys and values of the last r positions of patch k - 1 *in that layer*, so information flows
    from patch to patch through the layers. Before a window's first patch stand r learned pad
    positions, run through the local layers on their own. r = 0, the main model, adds nothing."""

    def __init__(self, r: int, d_local: int) -> None:
        super().__init__()
        self.r = r
        if r:
            self.pad = nn.Parameter(torch.empty(r, d_local))

    def forward(self, local_model: Transformer, local_in: Tensor) -> Tensor:
        """The local model (Eq. 6) on every patch of ``local_in[B, K, P, D_L]``, batched over patches."""
        if not self.r:
            return local_model(local_in.flatten(0, 1)).view_as(local_in)
        h, pad = local_in, self.pad.expand(local_in.size(0), -1, -1)  # pad: [B, r, D_L]
        for i, block in enumerate(local_model.blocks):
            previous = torch.cat([pad[:, None], h[:, :-1, -self.r :]], dim=1)  # [B, K, r, D_L]
            context = torch.cat([previous, h], dim=2).flatten(0, 1)  # keys: r earlier + own P
            h = block(h.flatten(0, 1), context=context).view_as(h)
            if i + 1 < len(local_model.blocks):  # the pads' states feed the first patch's next layer
                pad = block(pad)
        return local_model.norm(h)

    def start(self, local_model: Transformer, previous: list[KVCache] | None, batch: int) -> list[KVCache]:
        """Decoding: fresh local caches for a new patch, holding in each layer the keys and values of
        the ``previous`` patch's last r positions in that layer (the pads' before the first patch)."""
        caches = local_model.new_caches()
        if not self.r:
            return caches
        if previous is None:
            local_model(self.pad.expand(batch, -1, -1), caches)
            return caches
        for cache, old in zip(caches, previous, strict=True):
            cache.extend(*(t[..., old.kept - self.r : old.kept, :] for t in (old.k, old.v)))
        return caches


@dataclass
class MegabyteCache:
    """Decoding state of MEGABYTE, as in the paper's generation analysis: the global model steps
    once per patch, the local model once per byte."""

    global_cache: list[KVCache] | None  # one entry per global position: the pad patch, then patches
    local_cache: list[KVCache]  # the current patch's bytes (behind the previous patch's last r, if any)
    bytes: Tensor  # [B, t] every byte so far; the current patch is the last t mod P of them
    chunks: Tensor | None  # [B, P, D_L] the current patch's global output, split and projected (Eq. 4)


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
        cross_patch_attention: r, how many of the previous patch's last positions each local layer
            also attends to, in that layer (0 = off, at most P); before the first patch of a window
            stand r learned pad positions instead.
        patch_encoder: ``concat`` (the paper's main model: byte embeddings concatenated per patch)
            or ``cnn`` (causal convolutions with kernels 3, 5, 7 over the byte embeddings first).
        no_local: Ablation without the local model: the global output of patch k predicts all P
            bytes of patch k directly, chunk p through a linear head.
        no_global: Ablation without the global model: the local model alone, every patch
            predicted from its own earlier bytes only.
        tie_embeddings: Share the output head's weights with the local byte embedding (the global byte
            embedding when ``no_local``), as the paper does; off by default.
    """

    has_strided_inference = True

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
        cross_patch_attention: int = 0,
        patch_encoder: Literal["concat", "cnn"] = "concat",
        no_local: bool = False,
        no_global: bool = False,
        tie_embeddings: bool = False,
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
        check_variant(patch_size, cross_patch_attention, patch_encoder, no_local, no_global)
        self.patch_size, self.max_seq_len = patch_size, max_seq_len
        self.slide_bytes = patch_size  # generation's window slides a patch at a time (ByteModel)
        self.global_d_model, self.global_layers = global_d_model, global_layers
        self.local_d_model, self.local_layers = local_d_model, local_layers
        self.cross_patch_attention, self.patch_encoder = cross_patch_attention, patch_encoder
        self.no_local, self.no_global = no_local, no_global
        d_byte = global_d_model // patch_size  # D_G
        if not no_global:
            self.patch_embedder = PatchEmbedder(patch_size, d_byte, max_seq_len, patch_encoder)  # Eq. 1-2
            self.global_pad = nn.Parameter(torch.empty(global_d_model))  # Eq. 3: the pad patch
            self.global_model = Transformer(global_d_model, global_layers, n_heads, dropout)
        if no_local:
            self.head = nn.Linear(d_byte, VOCAB_SIZE, bias=False)  # chunk p -> byte p of the patch
        else:
            if not no_global:
                self.global_to_local = nn.Linear(d_byte, local_d_model, bias=False)  # Eq. 4
            self.local_byte_embed = nn.Embedding(VOCAB_SIZE, local_d_model)  # Eq. 5
            self.local_pos_embed = nn.Embedding(patch_size, local_d_model)
            self.local_pad = nn.Parameter(torch.empty(local_d_model))  # Eq. 5: the pad byte
            self.cross_patch = CrossPatchContext(cross_patch_attention, local_d_model)
            self.local_model = Transformer(local_d_model, local_layers, local_n_heads, dropout)  # Eq. 6
            self.head = nn.Linear(local_d_model, VOCAB_SIZE, bias=False)
        init_weights(self, init_std, global_layers)
        if not no_local:
            init_weights(self.local_model, init_std, local_layers)
        if tie_embeddings:  # the embedding of the bytes the head predicts, at the head's width
            embedding = self.patch_embedder.byte_embed if no_local else self.local_byte_embed
            self.head.weight = embedding.weight

    def forward(self, x: Tensor) -> Tensor:
        batch, length = x.shape
        # Right-pad to whole patches; causality means the padding never reaches a real byte.
        x = F.pad(x, (0, -length % self.patch_size))
        chunks = self.global_output(x)  # Eq. 1-4: [B, K, P, D_L]
        y = self.local_output(chunks, x.view(batch, -1, self.patch_size))  # Eq. 5-6: [B, K, P, D_L]
        return self.head(y).flatten(1, 2)[:, :length]

    def position_nats(self, x: Tensor, chunk: int = 0) -> Tensor:
        """Cross-entropy in nats ``[B, L]`` of every byte. With ``chunk`` > 0 only the global model runs
        on the whole window: Eq. 4-6 and the head (the per-byte part, most of the memory of a long
        window) run on ``chunk // P`` patches at a time under activation checkpointing, which the
        independence of patches in the local model allows (with cross-patch attention a patch reads
        the one before: the local model then runs whole and only the head and loss are chunked)."""
        if chunk <= 0 or self.no_local:
            return nats(self(x), x)
        batch, length = x.shape
        x = F.pad(x, (0, -length % self.patch_size))
        patches = x.view(batch, -1, self.patch_size)
        if self.cross_patch.r:
            states = self.local_output(self.global_output(x), patches).flatten(1, 2)
            return chunked_nats(lambda h, t: nats(self.head(h), t), states, x, chunk)[:, :length]
        g = (
            None
            if self.no_global
            else self.global_model(shift_right(self.patch_embedder(x), self.global_pad))
        )

        def patch_nats(g: Tensor | None, patches: Tensor) -> Tensor:
            chunks = None if g is None else self.global_chunks(g)
            return nats(self.head(self.local_output(chunks, patches)).flatten(1, 2), patches.flatten(1))

        per = max(chunk // self.patch_size, 1)
        parts = []
        for k in range(0, patches.size(1), per):
            part = (None if g is None else g[:, k : k + per], patches[:, k : k + per])
            parts.append(
                checkpoint(patch_nats, *part, use_reentrant=False)
                if torch.is_grad_enabled()
                else patch_nats(*part)
            )
        return torch.cat(parts, dim=1)[:, :length]

    def global_output(self, x: Tensor) -> Tensor | None:
        """Eq. 1-4 on whole patches ``x[B, K*P]``: patch embeddings behind the pad patch (so global
        position k sees patches < k), the global model, its outputs split into P chunks (Eq. 4).
        Without the global model (``no_global``) there is nothing to add to the local inputs: None."""
        if self.no_global:
            return None
        return self.global_chunks(self.global_model(shift_right(self.patch_embedder(x), self.global_pad)))

    def global_chunks(self, g: Tensor) -> Tensor:
        """Eq. 4: each global output ``[..., P*D_G]`` split into P chunks, projected to ``[..., P, D_L]``
        (without a local model the head reads the ``D_G`` chunks directly)."""
        chunks = g.unflatten(-1, (self.patch_size, -1))
        return chunks if self.no_local else self.global_to_local(chunks)

    def local_input(self, chunks: Tensor | None, patches: Tensor) -> Tensor:
        """Eq. 5: chunk p plus the local embedding of the previous byte (the pad byte for p = 0) and
        local position p, for the first n bytes of each patch: ``patches[..., n]`` -> ``[..., n, D_L]``."""
        n = patches.size(-1)
        local = shift_right(self.local_byte_embed(patches), self.local_pad) + self.local_pos_embed.weight[:n]
        return local if chunks is None else chunks[..., :n, :] + local

    def local_output(self, chunks: Tensor | None, patches: Tensor) -> Tensor:
        """Eq. 6: the local model on every patch ``[B, K, P]`` independently, batched (each behind the
        previous patch's last r inputs with cross-patch attention). Without the local model
        (``no_local``) the chunks of Eq. 4 go to the head as they are."""
        if self.no_local:
            return chunks
        return self.cross_patch(self.local_model, self.local_input(chunks, patches))

    def prefill(self, x: Tensor) -> tuple[Tensor, MegabyteCache]:
        """Global model over the pad patch and the prompt's whole patches, local model over the
        bytes of the last, partial patch; both leave their KV caches behind. With cross-patch
        attention the local model also runs over the prompt's whole patches, one after the other, so
        that each layer's cache starts the current patch with the last r positions of the one before."""
        batch, whole = x.size(0), x.size(1) - x.size(1) % self.patch_size
        cache = MegabyteCache(None, [], x, None)
        g = None  # global outputs: one per whole patch of the prompt, then the current patch's
        if not self.no_global:
            cache.global_cache = self.global_model.new_caches()
            h = self.patch_embedder(F.pad(x[:, :whole], (0, self.patch_size)))  # placeholder: shifted out
            g = self.global_model(shift_right(h, self.global_pad), cache.global_cache)
            cache.chunks = self.global_chunks(g[:, -1])
        if not self.no_local:
            cache.local_cache = self.cross_patch.start(self.local_model, None, batch)
            for k in range(whole // self.patch_size if self.cross_patch.r else 0):
                patch = x[:, k * self.patch_size : (k + 1) * self.patch_size]
                local_in = self.local_input(None if g is None else self.global_chunks(g[:, k]), patch)
                self.local_model(local_in, cache.local_cache)
                cache.local_cache = self.cross_patch.start(self.local_model, cache.local_cache, batch)
        return self.decode_local(cache, new=x.size(1) - whole + 1), cache

    def step(self, byte: Tensor, cache: MegabyteCache) -> Tensor:
        """One local step per byte; when a patch completes, one global step for the next patch."""
        cache.bytes = torch.cat([cache.bytes, byte[:, None]], dim=1)
        length, size = cache.bytes.size(1), self.patch_size
        if length % size == 0:
            if not self.no_global:
                # Patch k enters the global model at position k + 1 (after the pad and patches < k).
                lookback = min(length - size, self.patch_embedder.lookback)
                h = self.patch_embedder(cache.bytes[:, -size - lookback :], length - size, lookback)
                cache.chunks = self.global_chunks(self.global_model(h, cache.global_cache)[:, -1])
            if not self.no_local:
                batch = cache.bytes.size(0)
                cache.local_cache = self.cross_patch.start(self.local_model, cache.local_cache, batch)
        return self.decode_local(cache, new=1)

    def decode_local(self, cache: MegabyteCache, new: int) -> Tensor:
        """Feed the last ``new`` local inputs of the current patch through the cached local model;
        logits for the byte after the patch's bytes so far."""
        patch = cache.bytes[:, cache.bytes.size(1) // self.patch_size * self.patch_size :]
        if self.no_local:
            return self.head(cache.chunks[:, patch.size(1)])
        local_in = self.local_input(cache.chunks, F.pad(patch, (0, 1)))[:, -new:]
        return self.head(self.local_model(local_in, cache.local_cache)[:, -1])

    def evaluation_logits(self, x: Tensor, strided: bool = False) -> Tensor:
        """The paper's strided inference (``strided``): logits ``[B, L, 256]`` of every byte of the windows
        ``x[B, L]`` from two passes. With h = P // 2, pass 1 runs on x as it is, pass 2 on ``x[:, h:]``,
        whose patches therefore start h bytes later. Byte i (0-based) is taken from pass 1 when
        ``i mod P < h`` and from pass 2 otherwise: each pass contributes the first half of each of its
        patches, every byte comes from exactly one pass (bytes i < h from pass 1), and pass 2 has h
        bytes less left context."""
        first = self(x)
        half = self.patch_size // 2
        if not strided or x.size(1) <= half or half == 0:
            return first
        second = F.pad(self(x[:, half:]), (0, 0, half, 0))
        from_second = torch.arange(x.size(1), device=x.device) % self.patch_size >= half
        return torch.where(from_second[:, None], second, first)

    def evaluation_flops(self, seq_len: int, strided: bool = False) -> int:
        """Forward FLOPs of evaluating one window: ``forward_flops(L) + forward_flops(L - P//2)`` strided."""
        half = self.patch_size // 2
        second = self.forward_flops(seq_len - half) if strided and 0 < half < seq_len else 0
        return self.forward_flops(seq_len) + second

    def forward_flops(self, seq_len: int, skip_masked: bool = False) -> int:
        return megabyte_flops(
            seq_len,
            self.patch_size,
            self.global_d_model,
            self.global_layers,
            self.local_d_model,
            self.local_layers,
            cross_patch_attention=self.cross_patch_attention,
            conv_kernels=PATCH_ENCODER_KERNELS if self.patch_encoder == "cnn" else (),
            no_local=self.no_local,
            no_global=self.no_global,
            skip_masked=skip_masked,
        )


def check_variant(patch_size: int, cross_patch: int, encoder: str, no_local: bool, no_global: bool) -> None:
    """One-line errors for ablation options that contradict each other."""
    if encoder not in ("concat", "cnn"):
        raise ValueError(f"patch_encoder={encoder!r} must be 'concat' or 'cnn'")
    if not 0 <= cross_patch <= patch_size:
        raise ValueError(f"cross_patch_attention={cross_patch} must be between 0 and patch_size={patch_size}")
    if no_local and no_global:
        raise ValueError("no_local and no_global together leave no model: choose one")
    if no_local and cross_patch:
        raise ValueError("cross_patch_attention is an option of the local model, which no_local removes")
    if no_global and encoder == "cnn":
        raise ValueError("patch_encoder='cnn' encodes the global model's patches, which no_global removes")
