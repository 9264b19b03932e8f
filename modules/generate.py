"""Sampling bytes from any ByteModel: one loop, cached (``prefill`` / ``step``) or uncached.

Uncached generation reruns ``next_logits``, a full forward over every byte so far, for each new
byte; cached generation gets the same logits from the model's KV caches in O(context) work. Both
draw from the same logits, so with the same generator they produce the same bytes.
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


def check_generation_length(model: ByteModel, prompt_len: int, num_bytes: int) -> None:
    """One-line errors when the prompt plus the new bytes do not fit in the model's window."""
    limit = model.max_input_len()
    if limit is not None and prompt_len > limit:
        raise ValueError(f"the prompt ({prompt_len} bytes) is longer than the model's max_seq_len={limit}")
    if num_bytes < 1:
        raise ValueError(f"the number of bytes to generate ({num_bytes}) must be at least 1")
    if limit is not None and prompt_len + num_bytes > limit:
        raise ValueError(
            f"{prompt_len} prompt bytes + {num_bytes} new bytes exceed the model's max_seq_len={limit}: "
            f"generate at most {limit - prompt_len} bytes"
        )


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

    The model must be in eval mode (dropout off). ``cached=False`` recomputes a full forward per
    byte: the reference and the benchmark's baseline, not something to use.
    """
    if model.training:
        raise ValueError("generate() needs the model in eval mode: call model.eval() first")
    check_generation_length(model, prompt.size(1), num_bytes)
    new: list[Tensor] = []
    logits, cache = model.prefill(prompt) if cached else (model.next_logits(prompt), None)
    for i in range(num_bytes):
        new.append(sample_next(logits, temperature, top_k, generator))
        if i + 1 == num_bytes:
            break
        if cached:
            logits = model.step(new[-1], cache)
        else:
            logits = model.next_logits(torch.cat([prompt, torch.stack(new, dim=1)], dim=1))
    return torch.cat([prompt, torch.stack(new, dim=1)], dim=1)
