"""The model contract shared by every bytelab model (see DESIGN.md, "The model contract")."""

from __future__ import annotations

import functools
import importlib
import inspect
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

VOCAB_SIZE = 256  # every byte value is a real symbol: no padding id, nothing ignored in the loss


class ByteModel(nn.Module, ABC):
    """An autoregressive model over byte ids 0..255.

    ``forward(x[B, L])`` returns logits ``[B, S, 256]`` for the last ``S = scored_len(L)`` positions,
    where position t predicts ``x[:, t]`` from ``x[:, :t]`` only: the model shifts its input
    internally behind a learned start embedding, so the first byte of a window is predicted too.

    Generation is cached: ``prefill(x)`` reads a prompt and returns the logits for the next byte
    with a cache, then each ``step(byte, cache)`` appends one byte and returns the logits for the
    one after it, in O(context) work instead of a full forward. Both reproduce ``next_logits``,
    the full forward, to float rounding (tests/test_generation.py).
    """

    max_seq_len: int
    config: dict[str, Any]  # {"class_path", "init_args"}: enough to build the same model again

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_config(cls.__init__)

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def prefill(self, x: Tensor) -> tuple[Tensor, Any]:
        """Start cached decoding after the bytes ``x[B, n]`` (n may be 0): the logits ``[B, 256]``
        for byte n, equal to ``next_logits(x)``, and the cache that :meth:`step` continues."""

    @abstractmethod
    def step(self, byte: Tensor, cache: Any) -> Tensor:
        """Append ``byte[B]`` to the decoded bytes (updating ``cache`` in place) and return the
        logits ``[B, 256]`` for the byte after it, equal to ``next_logits`` of all bytes so far."""

    def next_logits(self, x: Tensor) -> Tensor:
        """Logits ``[B, 256]`` for the byte after ``x[B, n]`` from a full forward: the reference
        that cached decoding reproduces, and uncached generation. A placeholder byte is appended
        as position n; causality keeps it out of the prediction at n."""
        return self(F.pad(x, (0, 1)))[:, -1]

    @abstractmethod
    def forward_flops(self, seq_len: int, skip_masked: bool = False) -> int:
        """Analytic forward FLOPs of one window of ``seq_len`` bytes (DESIGN's FLOP convention);
        ``skip_masked``: what causal kernels execute instead (``modules/flops.py``)."""

    # Whether a forward's cost depends on the bytes (the chunks it forms), not on the shape alone: then
    # ``batch_flops`` differs between ranks, and ByteLM sums it over them instead of multiplying.
    data_dependent_flops = False

    def batch_flops(self, x: Tensor, skip_masked: bool = False) -> int:
        """Forward FLOPs of the windows ``x[B, L]`` as this model ran them, called after its forward
        on ``x``: ``B * forward_flops(L)`` for a model whose cost the shape alone fixes. A model whose
        cost depends on the bytes (the chunks it forms from them) overrides this to count what its
        last forward formed, so that ``train/flops``, the budget's truth, is what was spent."""
        return x.size(0) * self.forward_flops(x.size(1), skip_masked)

    def auxiliary_loss(self) -> Tensor | float:
        """The model's extra training loss from its last forward, added to the cross-entropy by ByteLM
        (bits per byte stay pure cross-entropy): 0 by default; H-Net's ratio loss."""
        return 0.0

    def training_metrics(self) -> dict[str, float]:
        """Statistics of the last forward that ByteLM logs as ``train/<name>`` (H-Net: chunks per byte)."""
        return {}

    def training_logits(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of right-padded training windows: row b of ``x[B, L]`` holds ``lengths[b]`` real
        bytes, then padding (a window that ends less than seq_len bytes into its document).

        Returns the logits ``[B, S, 256]`` and the positions ``[B, S]`` of ``x`` they predict, each
        the position the model would predict in the unpadded window ``x[b, :lengths[b]]``; a position
        at or past ``lengths[b]`` is padding, for the caller to leave out. Here the forward's last
        S positions, exact under padding for a causal model that scores every position (padding
        after a byte cannot move its prediction). A model that scores only the last positions of a
        window (PerceiverAR) overrides this to place them at each row's own end.
        """
        logits = self(x)
        batch, seq_len = x.shape
        scored = logits.size(1)
        if scored < seq_len and bool((lengths < seq_len).any()):
            raise NotImplementedError(
                f"{type(self).__name__} scores the last {scored} of {seq_len} positions and cannot train on "
                "right-padded windows: override training_logits"
            )
        positions = torch.arange(seq_len - scored, seq_len, device=x.device).expand(batch, scored)
        return logits, positions

    def head_input(self, x: Tensor) -> Tensor | None:
        """The states ``[B, S, D]`` that ``self.head`` maps to the logits of ``forward(x)``, for a loss
        computed in chunks (:meth:`position_nats`); None for a model without such a split."""
        return None

    def position_nats(self, x: Tensor, chunk: int = 0) -> Tensor:
        """Cross-entropy in nats ``[B, S]`` of every position ``forward(x)`` predicts (the last S of x).

        With ``chunk`` > 0 the head and the loss run on ``chunk`` positions at a time under activation
        checkpointing, so the logits of all positions never exist at once (in the forward or the
        backward): a million-byte window's 256 logits per byte would be GBs. The values are the
        unchunked ones (each position's logits are the same function of its own state)."""
        states = self.head_input(x) if chunk > 0 else None
        if states is None:
            return nats(self(x), x)
        return chunked_nats(lambda h, t: nats(self.head(h), t), states, x[:, -states.size(1) :], chunk)

    has_strided_inference = False  # MEGABYTE's two-pass inference (its evaluation_logits)

    def evaluation_logits(self, x: Tensor, strided: bool = False) -> Tensor:
        """Logits that evaluation scores for the windows ``x``: the forward. A model with its own
        inference scheme (MEGABYTE's strided inference) overrides this and ``evaluation_flops``."""
        return self(x)

    def evaluation_flops(self, seq_len: int, strided: bool = False) -> int:
        """Forward FLOPs of evaluating one window of ``seq_len`` bytes (every pass)."""
        return self.forward_flops(seq_len)

    def scored_len(self, seq_len: int) -> int:
        """How many positions of a ``seq_len`` window the model predicts (its last ones)."""
        return seq_len

    def flops_per_byte(self, seq_len: int) -> float:
        """Forward FLOPs per *scored* byte for windows of ``seq_len`` bytes (training = 3x)."""
        return self.forward_flops(seq_len) / self.scored_len(seq_len)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` leaves out byte and position embedding tables."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return total

    def max_input_len(self) -> int | None:
        """The longest window ``forward`` may read, in evaluation and generation: ``max_seq_len``; None
        for a model whose every position is one it was trained at whatever the length (the windowed
        Decoder with rotary positions)."""
        return self.max_seq_len

    # How far generation's window slides once the context outgrows max_input_len (modules/generate.py):
    # one byte, or for a model whose positions count patches (MEGABYTE) one patch, so that every window
    # starts on a patch boundary of the text.
    slide_bytes = 1

    def check_window(self, seq_len: int, score_len: int) -> None:
        """Raise a one-line ValueError if evaluation windows of this shape cannot be scored."""
        limit = self.max_input_len()
        if limit is not None and seq_len > limit:
            raise ValueError(
                f"data seq_len={seq_len} exceeds the model's max_seq_len={self.max_seq_len}: "
                "raise model max_seq_len or lower data seq_len"
            )
        if score_len > self.scored_len(seq_len):
            raise ValueError(
                f"data score_len={score_len} exceeds the {self.scored_len(seq_len)} positions "
                f"{type(self).__name__} predicts per window: lower score_len"
            )


def _recording_config(init: Any) -> Any:
    """Wrap a model's ``__init__`` so the instance keeps the arguments it was built with.

    Checkpoints store ``model.config``, so ``bytelab generate`` or an evaluation script can rebuild
    the model from the checkpoint alone. The most derived class's wrapper runs last and wins.
    """

    @functools.wraps(init)
    def wrapper(self: ByteModel, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bound = inspect.signature(init).bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(arguments)))  # self
        self.config = {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "init_args": arguments,
        }

    return wrapper


def build_model(config: dict[str, Any]) -> ByteModel:
    """Build a model from its ``config`` (``{"class_path": "modules.Megabyte", "init_args": {...}}``)."""
    module_name, _, class_name = config["class_path"].rpartition(".")
    model_class = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(model_class, type) and issubclass(model_class, ByteModel)):
        raise ValueError(f"{config['class_path']} is not a bytelab ByteModel")
    return model_class(**config["init_args"])


def nats(logits: Tensor, x: Tensor) -> Tensor:
    """Cross-entropy in nats ``[B, S]`` of ``logits[B, S, 256]`` against the last S bytes of ``x``."""
    targets = x[:, -logits.size(1) :]
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view_as(targets)


def chunked_nats(loss: Any, states: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """``loss(states[:, s], targets[:, s])`` over slices of ``chunk`` positions along dim 1, each under
    activation checkpointing (only its nats are kept; its logits are recomputed in the backward),
    concatenated. Without gradients the slices simply run one after the other."""
    parts = []
    for start in range(0, targets.size(1), chunk):
        part = (states[:, start : start + chunk], targets[:, start : start + chunk])
        if torch.is_grad_enabled():
            parts.append(checkpoint(loss, *part, use_reentrant=False))
        else:
            parts.append(loss(*part))
    return torch.cat(parts, dim=1)


def check_positive(**sizes: int) -> None:
    """One-line errors for sizes that must be positive integers."""
    for name, value in sizes.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer")
