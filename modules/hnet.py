"""H-Net, one stage (Hwang, Wang, Gu 2025): a byte encoder, dynamic chunking, a main network over the
chunks, and a byte decoder.

Notation as in the paper: ĥ_t the encoder output at position t, p_t the probability that a chunk
starts at t, b_t = [p_t > 0.5] the boundary indicator, ẑ_j the main network's output for chunk j and
z̄_j its smoothed value. ``forward`` reads the paper top to bottom: encoder, routing module,
downsampling (a chunk is its first position), main network, smoothing, upsampling (byte t takes the
chunk that starts at or before it) with the straight-through confidence and the encoder residual,
decoder, head. The ratio loss that holds the compression near 1/N is :meth:`HNet.auxiliary_loss`.

bytelab's shared Transformer blocks stand in for the paper's Mamba-2 encoder and decoder layers (and
its RoPE / windowed attention): learned byte positions enter with the byte embedding, and the main
network reads them through the chunks. Position t holds byte t-1 (a learned start vector at t = 0),
so everything at position t, the boundary decision included, depends on bytes < t only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import VOCAB_SIZE, ByteModel, check_positive
from .flops import hnet_flops
from .layers import ByteEmbedding, KVCache, Transformer, init_weights

SMOOTHING_CLAMP = 1e-4  # P_j is clamped to [1e-4, 1 - 1e-4] in the smoothing (the paper's code)


class RoutingModule(nn.Module):
    """p_t = (1 - cos(W_q ĥ_{t-1}, W_k ĥ_t)) / 2 and p_0 = 1: a chunk starts where consecutive
    positions differ. W_q and W_k start as the identity."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)

    def reset_parameters(self) -> None:
        nn.init.eye_(self.q.weight)
        nn.init.eye_(self.k.weight)

    def forward(self, h: Tensor) -> Tensor:
        """``h[B, L, D]`` -> ``p[B, L]``."""
        q, k = self.q(h), self.k(h)
        p = self.probability(q[:, :-1], k[:, 1:])
        return F.pad(p, (1, 0), value=1.0)

    def step(self, previous: Tensor, h: Tensor) -> Tensor:
        """Decoding: ``p[B]`` of the new position ``h[B, D]`` after the cached ``previous[B, D]``."""
        return self.probability(self.q(previous), self.k(h))

    @staticmethod
    def probability(q: Tensor, k: Tensor) -> Tensor:
        return ((1 - F.cosine_similarity(q, k, dim=-1)) / 2).clamp(0.0, 1.0)


def straight_through(c: Tensor) -> Tensor:
    """Forward value exactly 1, gradient that of ``c``: the decoder sees z̄ unscaled, and the routing
    module learns from how confident (c_t = max(p_t, 1 - p_t)) each decision was."""
    return (c - c.detach()) + 1.0


def smooth(z: Tensor, p: Tensor) -> Tensor:
    """The smoothing module: z̄_j = P_j ẑ_j + (1 - P_j) z̄_{j-1} over chunks ``z[B, C, D]`` with
    ``p[B, C]`` the boundary probabilities of their first positions (z̄_{-1} = 0). A forward scan:
    chunk j reads chunks <= j only. Elementwise (0 FLOPs)."""
    weight = p.clamp(SMOOTHING_CLAMP, 1 - SMOOTHING_CLAMP)[..., None]
    out, previous = [], torch.zeros_like(z[:, 0])
    for j in range(z.size(1)):
        previous = weight[:, j] * z[:, j] + (1 - weight[:, j]) * previous
        out.append(previous)
    return torch.stack(out, dim=1)


def ratio_loss(b: Tensor, p: Tensor, target_ratio: float) -> Tensor:
    """The paper's ratio loss with F = mean b (no gradient) and G = mean p:
    N / (N - 1) * ((N - 1) F G + (1 - F)(1 - G)), which is 1 at F = G = 1 / N, its minimum on F = G."""
    n = target_ratio
    f, g = b.to(p.dtype).mean(), p.mean()
    return n / (n - 1) * ((n - 1) * f * g + (1 - f) * (1 - g))


@dataclass
class HNetCache:
    """Decoding state: the encoder's and decoder's KV caches (one step per byte), each row's main
    network caches (one step per chunk: rows start chunks at different bytes), the last encoder output
    (the routing module compares against it) and each row's last smoothed chunk z̄."""

    encoder: list[KVCache]
    decoder: list[KVCache]
    main: list[list[KVCache]]
    previous: Tensor  # [B, D] ĥ of the last position
    smoothed: Tensor  # [B, D] z̄ of each row's last chunk


class HNet(ByteModel):
    """One-stage H-Net over bytes with dynamic chunking.

    Args:
        d_model: Width D_0 of the byte encoder and decoder.
        d_main: Width D_1 of the main network (>= d_model): chunks enter with a learned pad appended,
            and leave with their first ``d_model`` dimensions kept.
        encoder_layers: Transformer blocks of the encoder (the paper: 4 Mamba-2 layers).
        main_layers: Transformer blocks of the main network over the chunks.
        decoder_layers: Transformer blocks of the decoder (the paper: 4 Mamba-2 layers).
        n_heads: Attention heads of the encoder and decoder blocks.
        main_n_heads: Attention heads of the main network (default ``n_heads``).
        target_ratio: N, the target bytes per chunk: the ratio loss is lowest at 1/N chunks per byte,
            and the analytic FLOP count (``forward_flops``) assumes ceil(L / N) chunks per window.
        ratio_loss_weight: alpha, the weight of the ratio loss in the training loss.
        max_seq_len: Longest window in bytes (size of the position table).
        dropout: Dropout on attention weights and residual branches.
        init_std: Standard deviation of the truncated-normal initialisation.
        tie_embeddings: Share the output head's weights with the byte embedding; off by default.
    """

    data_dependent_flops = True

    def __init__(
        self,
        d_model: int = 128,
        d_main: int = 256,
        encoder_layers: int = 2,
        main_layers: int = 4,
        decoder_layers: int = 2,
        n_heads: int = 4,
        main_n_heads: int | None = None,
        target_ratio: float = 6.0,
        ratio_loss_weight: float = 0.03,
        max_seq_len: int = 1024,
        dropout: float = 0.0,
        init_std: float = 0.02,
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        main_n_heads = n_heads if main_n_heads is None else main_n_heads
        check_positive(
            d_model=d_model,
            d_main=d_main,
            encoder_layers=encoder_layers,
            main_layers=main_layers,
            decoder_layers=decoder_layers,
            n_heads=n_heads,
            main_n_heads=main_n_heads,
            max_seq_len=max_seq_len,
        )
        if d_main < d_model:
            raise ValueError(f"d_main={d_main} must be at least d_model={d_model} (chunks widen inward)")
        if not target_ratio > 1:
            raise ValueError(f"target_ratio={target_ratio} must be above 1 (bytes per chunk)")
        if ratio_loss_weight < 0:
            raise ValueError(f"ratio_loss_weight={ratio_loss_weight} must be >= 0")
        self.d_model, self.d_main, self.max_seq_len = d_model, d_main, max_seq_len
        self.layers = (encoder_layers, main_layers, decoder_layers)
        self.target_ratio, self.ratio_loss_weight = target_ratio, ratio_loss_weight
        self.embed = ByteEmbedding(d_model, max_seq_len)
        self.encoder = Transformer(d_model, encoder_layers, n_heads, dropout)
        self.routing = RoutingModule(d_model)
        self.main_pad = nn.Parameter(torch.empty(d_main - d_model)) if d_main > d_model else None
        self.main = Transformer(d_main, main_layers, main_n_heads, dropout)
        self.residual = nn.Linear(d_model, d_model, bias=False)  # W_res
        self.decoder = Transformer(d_model, decoder_layers, n_heads, dropout)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        init_weights(self, init_std, encoder_layers + main_layers + decoder_layers)
        self.routing.reset_parameters()
        if tie_embeddings:
            self.head.weight = self.embed.byte_embed.weight
        self._aux: Tensor | None = None
        self.last_boundaries: Tensor | None = None  # b of the last forward [B, L] (bool)
        self.last_probabilities: Tensor | None = None  # p of the last forward [B, L]
        self._real: Tensor | None = None  # training's real (unpadded) positions, when some were padding

    def forward(self, x: Tensor, boundaries: Tensor | None = None, cache: HNetCache | None = None) -> Tensor:
        """Logits ``[B, L, 256]``. ``boundaries[B, L]`` (bool, first column True) replaces the routing
        module's decisions: the FLOP tests choose chunk counts this way on the meta device, where the
        routing has no values to decide on and forms ``expected_chunks(L)`` chunks per row."""
        h = self.encoder(self.embed(x), None if cache is None else cache.encoder)  # ĥ
        p = self.routing(h)
        b = self.decide(p, boundaries)
        self.last_boundaries, self.last_probabilities, self._real = b, p, None
        self._aux = self.weighted_ratio_loss(b, p)
        z = self.smoothed_chunks(h, p, b, cache)  # z̄ of the chunk each position belongs to
        c = torch.maximum(p, 1 - p)
        decoder_in = z * straight_through(c)[..., None] + self.residual(h)
        out = self.decoder(decoder_in, None if cache is None else cache.decoder)
        if cache is not None:
            cache.previous, cache.smoothed = h[:, -1], z[:, -1]
        return self.head(out)

    def training_logits(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """As every model (the padding cannot move a real byte's prediction), with the ratio loss and
        ``chunk_ratio`` over each row's real bytes only: the padding's boundaries would otherwise pull
        the compression of the bytes that are trained."""
        logits, positions = super().training_logits(x, lengths)
        real = torch.arange(x.size(1), device=x.device) < lengths.to(x.device)[:, None]
        if not bool(real.all()):
            self._aux = self.weighted_ratio_loss(self.last_boundaries[real], self.last_probabilities[real])
            self._real = real
        return logits, positions

    def weighted_ratio_loss(self, b: Tensor, p: Tensor) -> Tensor:
        """alpha x the ratio loss of boundaries ``b`` and probabilities ``p``."""
        return self.ratio_loss_weight * ratio_loss(b.to(p.device), p, self.target_ratio)

    def decide(self, p: Tensor, boundaries: Tensor | None) -> Tensor:
        """b_t = [p_t > 0.5] (b_0 = 1 since p_0 = 1), or the given / expected boundaries."""
        if boundaries is not None:
            if boundaries.shape != p.shape or not bool(boundaries[:, :1].all()):
                raise ValueError(f"boundaries must be a {tuple(p.shape)} mask whose first column is True")
            return boundaries.bool()
        if p.is_meta:  # no values to decide on: the expected number of chunks, which FLOPs alone depend on
            return (torch.arange(p.size(1)) < self.expected_chunks(p.size(1))).expand(p.shape)
        return p > 0.5

    def smoothed_chunks(self, h: Tensor, p: Tensor, b: Tensor, cache: HNetCache | None) -> Tensor:
        """Downsample to the boundary positions, run the main network over each row's chunks, smooth,
        and upsample: ``[B, L, D]``, position t holding z̄ of the last chunk starting at or before t.
        Rows form different numbers of chunks, so the main network runs row by row over exactly its
        own chunks (no padding: the FLOPs are those of the chunks formed, and rows never mix)."""
        outputs, weights = [], []
        for row in range(h.size(0)):
            starts = b[row].nonzero()[:, 0].to(h.device)
            chunks = self.widen(h[row].index_select(0, starts))[None]
            main_cache = None if cache is None else cache.main[row]
            outputs.append(self.main(chunks, main_cache)[0, :, : self.d_model])  # ẑ
            weights.append(p[row].index_select(0, starts))
        pad = nn.utils.rnn.pad_sequence  # rows with fewer chunks: zeros after their last, never read
        z = smooth(pad(outputs, batch_first=True), pad(weights, batch_first=True))
        index = (b.long().cumsum(dim=1) - 1).to(h.device)  # the chunk each position belongs to
        return z.gather(1, index[..., None].expand(-1, -1, self.d_model))

    def widen(self, h: Tensor) -> Tensor:
        """Chunks enter the main network with the learned pad appended: ``[..., D_0]`` -> ``[..., D_1]``."""
        if self.main_pad is None:
            return h
        return torch.cat([h, self.main_pad.expand(*h.shape[:-1], -1)], dim=-1)

    def auxiliary_loss(self) -> Tensor:
        """alpha x the ratio loss of the last forward."""
        if self._aux is None:
            raise RuntimeError("auxiliary_loss() reads the last forward: run the model first")
        return self._aux

    def chunk_counts(self) -> list[int]:
        """Chunks each row of the last forward formed."""
        if self.last_boundaries is None:
            raise RuntimeError("chunk_counts() reads the last forward: run the model first")
        return [int(n) for n in self.last_boundaries.sum(dim=1).tolist()]

    def training_metrics(self) -> dict[str, float]:
        """``chunk_ratio``: chunks per byte of the last forward (the target is 1/N), over the real bytes
        of padded training windows."""
        b = self.last_boundaries if self._real is None else self.last_boundaries[self._real]
        return {"chunk_ratio": int(b.sum()) / b.numel()}

    def prefill(self, x: Tensor) -> tuple[Tensor, HNetCache]:
        """Cached decoding: the forward over the prompt fills the encoder, decoder and per-row main caches."""
        cache = HNetCache(
            encoder=self.encoder.new_caches(),
            decoder=self.decoder.new_caches(),
            main=[self.main.new_caches() for _ in range(x.size(0))],
            previous=torch.empty(0),
            smoothed=torch.empty(0),
        )
        logits = self(F.pad(x, (0, 1)), cache=cache)  # placeholder byte: shifted out
        return logits[:, -1], cache

    def step(self, byte: Tensor, cache: HNetCache) -> Tensor:
        """Byte t-1 enters at position t: one encoder step, the routing decision against the cached
        ĥ_{t-1}, one main step for each row that starts a chunk, smoothing, one decoder step."""
        h = self.encoder(self.embed.step(byte, cache.encoder[0].length), cache.encoder)[:, 0]
        p = self.routing.step(cache.previous, h)
        weight = p.clamp(SMOOTHING_CLAMP, 1 - SMOOTHING_CLAMP)[:, None]
        smoothed = cache.smoothed.clone()
        for row in (p > 0.5).nonzero()[:, 0].tolist():
            z = self.main(self.widen(h[row])[None, None], cache.main[row])[0, 0, : self.d_model]
            smoothed[row] = weight[row] * z + (1 - weight[row]) * cache.smoothed[row]
        c = torch.maximum(p, 1 - p)
        decoder_in = smoothed * straight_through(c)[:, None] + self.residual(h)
        out = self.decoder(decoder_in[:, None], cache.decoder)
        cache.previous, cache.smoothed = h, smoothed
        return self.head(out[:, -1])

    def expected_chunks(self, seq_len: int) -> int:
        """Chunks of a window at the target compression: ceil(L / N) (position 0 always starts one)."""
        return math.ceil(seq_len / self.target_ratio)

    def window_flops(self, seq_len: int, chunks: int, skip_masked: bool = False) -> int:
        """Forward FLOPs of one window of ``seq_len`` bytes that formed ``chunks`` chunks."""
        return hnet_flops(seq_len, chunks, self.d_model, self.d_main, *self.layers, skip_masked=skip_masked)

    def forward_flops(self, seq_len: int, skip_masked: bool = False) -> int:
        """At the target compression: ``expected_chunks(seq_len)`` chunks."""
        return self.window_flops(seq_len, self.expected_chunks(seq_len), skip_masked)

    def batch_flops(self, x: Tensor, skip_masked: bool = False) -> int:
        """The chunks each row of the last forward (on ``x``) actually formed."""
        if self.last_boundaries is None or self.last_boundaries.shape != x.shape:
            raise RuntimeError("batch_flops(x) counts the last forward's chunks: run the model on x first")
        return sum(self.window_flops(x.size(1), n, skip_masked) for n in self.chunk_counts())
