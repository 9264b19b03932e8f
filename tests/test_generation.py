"""Cached generation reproduces the full forward; sampling is deterministic and does what it says."""

from __future__ import annotations

import pytest
import torch

from modules import Megabyte, PerceiverAR
from modules.generate import context_start, generate, sample_next

from .conftest import CONTRACT_MODELS, EXACT, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

# N = 8 latents: a 40-byte sequence restarts PerceiverAR's latent block several times. MEGABYTE's
# ablations decode with the same caches: cross-patch attention starts each patch's local cache with
# the previous patch's last r inputs, the CNN encoder re-reads 12 bytes before a patch.
OPTIONS = {
    "perceiver_ar": {"num_latents": 8},
    "megabyte_cross_patch": {"cross_patch_attention": 3},
    "megabyte_no_global": {"cross_patch_attention": 2},
}


def tiny(name: str) -> torch.nn.Module:
    """A contract model in float64, so that cached == full holds to ``EXACT``."""
    return tiny_model(name, max_seq_len=64, **OPTIONS.get(name, {})).double()


LENGTH = 40


@pytest.fixture(params=list(CONTRACT_MODELS))
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny(request.param).eval()


def cached_logits(model, x: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Logits for bytes prompt_len..L-1 of x: prefill on the prompt, then one step per byte."""
    logits, cache = model.prefill(x[:, :prompt_len])
    out = [logits]
    for t in range(prompt_len, x.size(1) - 1):
        out.append(model.step(x[:, t], cache))
    return torch.stack(out, dim=1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Cached and full forwards compute the same logits through other shapes: equal to float64
    rounding (see EXACT), where a stale or misplaced cache entry moves them by 1e-3 or more."""
    torch.testing.assert_close(actual, expected, atol=EXACT, rtol=0)


# Prompt lengths: empty, inside a patch, on a patch boundary (P = 4), past num_latents (N = 8).
@pytest.mark.parametrize("prompt_len", [0, 1, 5, 8, 13])
@torch.no_grad()
def test_cached_decoding_equals_the_full_forward(model, prompt_len):
    torch.manual_seed(1)
    x = torch.randint(0, 256, (2, LENGTH))
    cached = cached_logits(model, x, prompt_len)
    reference = torch.stack([model.next_logits(x[:, :t]) for t in range(prompt_len, LENGTH)], dim=1)
    assert_close(cached, reference)
    if model.scored_len(LENGTH) == LENGTH:  # one forward over everything predicts every byte
        assert_close(cached, model(x)[:, prompt_len:])


@torch.no_grad()
def test_perceiver_ar_cached_decoding_matches_the_documented_forwards():
    """Byte t is predicted by forward(x[:t+1]) with latents_at(t) latents: the plain forward while
    t < N, then blocks that restart from N // 2 latents whenever they would exceed N."""
    torch.manual_seed(0)
    model = tiny("perceiver_ar").eval()
    assert [model.latents_at(t) for t in range(16)] == [1, 2, 3, 4, 5, 6, 7, 8, 4, 5, 6, 7, 8, 4, 5, 6]
    x = torch.randint(0, 256, (2, LENGTH))
    cached = cached_logits(model, x, prompt_len=0)
    assert_close(cached[:, :8], model(x[:, :8]))  # within the first N bytes: the plain forward
    for t in range(LENGTH):
        assert_close(cached[:, t], model(x[:, : t + 1], num_latents=model.latents_at(t))[:, -1])
    assert cached_logits(model, x, prompt_len=LENGTH - 1).shape == (2, 1, 256)


def test_latent_blocks_of_one_latent_restart_every_byte():
    model = PerceiverAR(d_model=8, n_layers=1, n_heads=2, max_seq_len=16, num_latents=1)
    assert [model.latents_at(t) for t in range(5)] == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, None), (0.8, 5)])
def test_cached_and_uncached_generation_give_the_same_bytes(model, temperature, top_k):
    prompt = torch.randint(0, 256, (2, 3), generator=torch.Generator().manual_seed(2))
    samples = [
        generate(model, prompt, 30, temperature, top_k, torch.Generator().manual_seed(3), cached=cached)
        for cached in (True, False)
    ]
    assert samples[0].shape == (2, 33) and torch.equal(samples[0][:, :3], prompt)
    assert torch.equal(samples[0], samples[1])


def test_sampling_is_deterministic_given_the_seed(model):
    prompt = torch.zeros(1, 0, dtype=torch.long)
    first, again, other = (
        generate(model, prompt, 40, generator=torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)
    )
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def draw(logits: list[float], n: int = 4000, **options) -> torch.Tensor:
    """n samples from one row of logits (padded with -inf to 256 bytes), as byte counts."""
    row = torch.full((256,), float("-inf"))
    row[: len(logits)] = torch.tensor(logits)
    samples = sample_next(row.expand(n, 256), generator=torch.Generator().manual_seed(0), **options)
    return torch.bincount(samples, minlength=256)


def test_greedy_and_top_one_always_pick_the_largest_logit():
    assert draw([0.0, 3.0, 2.9], temperature=0.0)[1] == 4000
    assert draw([0.0, 3.0, 2.9], top_k=1)[1] == 4000


def test_top_k_keeps_only_the_k_largest_with_renormalised_probabilities():
    counts = draw([2.0, 1.0, 0.0, 1.5], top_k=2)
    assert counts[1] == counts[2] == 0 and counts[0] + counts[3] == 4000
    expected = torch.tensor([2.0, 1.5]).softmax(0)[0]  # 0.62
    assert float(counts[0]) / 4000 == pytest.approx(float(expected), abs=0.03)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_scales_the_logits(temperature):
    counts = draw([1.0, 0.0], temperature=temperature)
    expected = torch.tensor([1.0, 0.0]).div(temperature).softmax(0)[0]  # 0.88, 0.73, 0.62
    assert float(counts[0]) / 4000 == pytest.approx(float(expected), abs=0.03)


def test_the_window_slides_one_byte_or_one_patch_at_a_time():
    """Byte t of a 64-byte window sees bytes context_start(t) .. t-1: all of them up to t = 63, then
    the last 63 (one byte at a time), or the last 60 to 63 in steps of a patch of 4."""
    assert [context_start(t, 64) for t in (0, 63, 64, 65, 200)] == [0, 0, 1, 2, 137]
    assert [context_start(t, 64, 4) for t in (63, 64, 67, 68, 71, 72)] == [0, 4, 4, 8, 8, 12]
    assert context_start(10_000, None) == 0  # a model that reads any length sees everything


def test_bytes_past_the_window_are_sampled_from_a_fresh_forward_over_the_suffix(model):
    """Cached decoding from 58 bytes to 98 through a 64-byte window: each byte is the one that the same
    generator draws from ``next_logits`` of the suffix that fits (a full forward, no cache)."""
    prompt = torch.randint(0, 256, (2, 58), generator=torch.Generator().manual_seed(2))
    sample = generate(model, prompt, 40, generator=torch.Generator().manual_seed(3))
    assert sample.shape == (2, 98) and torch.equal(sample[:, :58], prompt)
    limit, slide = model.max_input_len(), model.slide_bytes
    assert slide == (4 if isinstance(model, Megabyte) else 1)
    replay = torch.Generator().manual_seed(3)
    for t in range(58, 98):
        start = context_start(t, limit, slide)
        assert start == 0 if limit is None or t < limit else limit - slide <= t - start < limit
        fresh = model.next_logits(sample[:, start:t])
        assert torch.equal(sample[:, t], sample_next(fresh, generator=replay)), t
    # A prompt longer than the window is read from its last bytes that fit.
    longer = torch.cat([prompt, sample[:, 58:78]], dim=1)  # 78 bytes
    start = context_start(78, limit, slide)
    greedy = generate(model, longer, 1, temperature=0.0)[:, -1]
    assert torch.equal(greedy, model.next_logits(longer[:, start:]).argmax(-1))


def test_bad_generation_requests_are_one_line_errors(model):
    prompt = torch.zeros(1, 60, dtype=torch.long)
    with pytest.raises(ValueError, match=r"number of bytes to generate \(0\) must be at least 1"):
        generate(model, prompt, 0)
    with pytest.raises(ValueError, match="top_k=0 must be between 1 and 256"):
        generate(model, prompt, 1, top_k=0)
    with pytest.raises(ValueError, match="temperature=-1"):
        generate(model, prompt, 1, temperature=-1.0)
    with pytest.raises(ValueError, match="eval mode"):
        generate(model.train(), prompt, 1)
