"""Sampling bytes from any ByteModel: one loop, cached (``prefill`` / ``step``) or uncached.

Uncached generation reruns ``next_logits``, a full forward over the context, for each new byte;
cached generation gets the same logits from the model's KV caches in O(context) work. Both draw
from the same logits, so with the same generator they produce the same bytes.

Generation is not bounded by the training window. While the bytes so far fit in
``max_input_len()`` every byte sees all of them; past it the window slides, ``slide_bytes`` at a
time (one byte, or one patch for MEGABYTE): byte t sees the bytes from :func:`context_start` to t,
the last ``max_input_len() - slide_bytes`` to ``max_input_len() - 1`` bytes, and cached decoding
rebuilds its caches from that suffix (``prefill``) each time the window moves.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import VOCAB_SIZE, ByteModel


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one byte per row of ``logits[B, 256]``.

    ``temperature`` divides the logits (0 means greedy: the argmax); ``top_k`` keeps only the k
    largest logits of each row (values tied with the k-th are kept too).
    """
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 is greedy decoding)")
    if top_k is not None and not 1 <= top_k <= VOCAB_SIZE:
        raise ValueError(f"top_k={top_k} must be between 1 and {VOCAB_SIZE}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


def context_start(t: int, limit: int | None, slide: int = 1) -> int:
    """Where the context of byte ``t`` starts when a model reads windows of at most ``limit`` bytes:
    0 while the t bytes before it fit beside it (``t < limit``); past that a multiple of ``slide``,
    the window moving ``slide`` bytes at a time, so that byte t sees ``limit - slide`` to
    ``limit - 1`` bytes. ``limit`` None: a model that reads any length sees everything."""
    if limit is None or t < limit:
        return 0
    return slide * ((t - limit) // slide + 1)


@torch.inference_mode()
def generate(
    model: ByteModel,
    prompt: Tensor,
    num_bytes: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    cached: bool = True,
) -> Tensor:
    """Append ``num_bytes`` sampled bytes to ``prompt[B, n]`` (n may be 0); returns ``[B, n + num_bytes]``.

    Any prompt length and any number of bytes: past ``model.max_input_len()`` each byte is predicted
    from the last bytes that fit (:func:`context_start`). The model must be in eval mode (dropout
    off). ``cached=False`` recomputes a full forward per byte: the reference and the benchmark's
    baseline, not something to use.
    """
    if model.training:
        raise ValueError("generate() needs the model in eval mode: call model.eval() first")
    if num_bytes < 1:
        raise ValueError(f"the number of bytes to generate ({num_bytes}) must be at least 1")
    limit, slide = model.max_input_len(), model.slide_bytes
    n = prompt.size(1)
    out = torch.cat([prompt, prompt.new_zeros(prompt.size(0), num_bytes)], dim=1)
    start = context_start(n, limit, slide)
    logits, cache = model.prefill(out[:, start:n]) if cached else (model.next_logits(out[:, start:n]), None)
    for t in range(n, n + num_bytes):
        out[:, t] = sample_next(logits, temperature, top_k, generator)
        if t + 1 == n + num_bytes:
            break
        moved = context_start(t + 1, limit, slide)
        if not cached:
            logits = model.next_logits(out[:, moved : t + 1])
        elif moved != start:  # the window slid: new positions for every byte it keeps
            logits, cache = model.prefill(out[:, moved : t + 1])
        else:
            logits = model.step(out[:, t], cache)
        start = moved
    return out
