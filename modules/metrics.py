"""The evaluation metrics: sums over bytes, so exact across batches of any size and across ranks."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

LN2 = math.log(2)


class BitsPerByte(Metric):
    """Cross-entropy in bits per byte: total nats / ln 2 / bytes scored.

    Both states are sums (float64), so the value is exact across ranks and batches of any size:
    never an average of per-batch or per-device means.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nats", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bytes", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nats: Tensor, num_bytes: Tensor) -> None:
        self.nats += nats.detach().double()
        self.bytes += num_bytes.detach().long()

    def compute(self) -> Tensor:
        return self.nats / self.bytes / LN2


class FlopsPerByte(Metric):
    """Inference cost of an evaluation: forward FLOPs of every pass over every window / bytes scored."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("flops", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bytes", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, flops: float, num_bytes: Tensor) -> None:
        self.flops += flops
        self.bytes += num_bytes.detach().long()

    def compute(self) -> Tensor:
        return self.flops / self.bytes


class PositionBitsPerByte(Metric):
    """Bits per byte of each of ``num_groups`` groups of scored positions (window bins, positions in a
    patch): sums of nats and bytes per group, exact across batches and ranks like ``BitsPerByte``."""

    full_state_update = False

    def __init__(self, num_groups: int) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.add_state("nats", torch.zeros(num_groups, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bytes", torch.zeros(num_groups, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nats: Tensor, mask: Tensor, group: Tensor) -> None:
        """``nats``, ``mask`` and ``group`` (each position's group index) of one batch, all ``[B, S]``."""
        index = group[mask].long()
        self.nats.index_add_(0, index, nats.detach()[mask].double())
        self.bytes.index_add_(0, index, torch.ones_like(index))

    def compute(self) -> Tensor:
        return self.nats / self.bytes.clamp(min=1) / LN2
