"""SpaceByte's own rules, on numbers: the spacelike boundary rule on known strings, causality under
perturbations that move boundaries, a global capacity that never drops a byte, and its FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modules import SpaceByte
from modules.base import build_model
from modules.sizes import model_config
from modules.spacebyte import boundary_bytes

from .conftest import EXACT, exact_model, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def as_bytes(text: bytes) -> torch.Tensor:
    return torch.tensor(list(text))[None]


def where(mask: torch.Tensor) -> list[int]:
    return mask[0].nonzero().flatten().tolist()


# "," opens a patch, the space after it does not; digits and letters never do; "-" after a digit and a
# UTF-8 lead byte (0xC3) after a letter do; its continuation byte (0xA9) does not, so "." after it does.
TEXT = b"Hello, world! 2024-01-01 caf\xc3\xa9."


def test_spacelike_boundaries_on_known_strings():
    assert where(boundary_bytes(as_bytes(b"Hello, world"))) == [5]
    assert where(boundary_bytes(as_bytes(TEXT))) == [5, 12, 18, 21, 24, 28, 30]
    assert where(boundary_bytes(as_bytes(b" a"))) == [0]  # a window's first byte: spacelike is enough
    assert where(boundary_bytes(as_bytes(b"\n\n  x"))) == [0]


def test_global_positions_follow_the_boundaries_by_one():
    """Position t holds byte t - 1: it is global after a boundary byte, and position 0 (the start
    vector, the paper's BOS) always is. The periodic rule: every P positions, whatever the bytes."""
    model = tiny_model("spacebyte")
    assert where(model.global_positions(as_bytes(b"Hello, world"))) == [0, 6]
    assert where(model.global_positions(as_bytes(TEXT))) == [0, 6, 13, 19, 22, 25, 29]
    periodic = tiny_model("spacebyte_periodic")  # P = 4
    assert where(periodic.global_positions(as_bytes(TEXT))) == [0, 4, 8, 12, 16, 20, 24, 28]


def text_window(length: int, seed: int) -> torch.Tensor:
    """Two rows of word-like bytes: letters with a space or punctuation about every 5 bytes."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(ord("a"), ord("z") + 1, (2, length), generator=generator)
    spaces = torch.rand(2, length, generator=generator) < 0.2
    return torch.where(spaces, torch.tensor(ord(" ")), x)


def flip(byte: int) -> int:
    """A letter becomes a space and anything else a letter: the boundary rule's decision flips."""
    return ord(" ") if ord("a") <= byte <= ord("z") else ord("q")


@pytest.mark.parametrize("name", ["spacebyte", "spacebyte_periodic"])
@pytest.mark.parametrize("t", [0, 5, 17, 40, 70])
def test_moving_boundaries_after_t_leaves_the_logits_up_to_t_unchanged(name, t):
    """Flip byte t + 1 letter <-> space (a next-byte rule would leak it into position t), and separately
    fill every byte after t with boundaries (more global positions than the rows had): the logits at
    positions <= t stay (to float64 rounding: the global model then runs over more positions, so its
    kernels block differently; float32 measured 6e-8 here on an AVX-512 CPU), later ones move."""
    torch.manual_seed(0)
    model = exact_model(name)
    x = text_window(96, seed=t)
    flipped = x.clone()
    flipped[:, t + 1] = torch.tensor([flip(int(b)) for b in x[:, t + 1]])
    crowded = x.clone()
    crowded[:, t + 1 :] = as_bytes(b" a" * 48)[:, : 95 - t]
    with torch.no_grad():
        before = model(x)
        for y in (flipped, crowded):
            after = model(y)
            assert (after[:, : t + 1] - before[:, : t + 1]).abs().max() < EXACT
            assert (after[:, t + 1 :] - before[:, t + 1 :]).abs().max() > 1e-4
    if name == "spacebyte":  # the perturbations really moved the global positions
        assert not torch.equal(model.global_positions(flipped), model.global_positions(x))
        assert model.global_positions(crowded).sum() > model.global_positions(x).sum()


@pytest.mark.parametrize("name", ["spacebyte", "spacebyte_periodic"])
def test_right_padding_a_window_changes_no_earlier_logit(name):
    """Training windows right-padded at document ends: the padding's global positions come after
    every real one, so the real positions' logits stay (to float64 rounding: the matmuls grow)."""
    torch.manual_seed(0)
    model = exact_model(name)
    x = text_window(61, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(
            model(F.pad(x, (0, 35), value=ord(" ")))[:, :61], model(x), rtol=0, atol=EXACT
        )


def test_the_global_capacity_never_drops_a_byte():
    """A window of alternating spaces and letters forms the most global positions any window can,
    1 + T // 2 (no two boundaries are adjacent): every one of them runs and is added back, the last
    at the window's last position, and every byte is predicted."""
    torch.manual_seed(0)
    model = exact_model("spacebyte", max_seq_len=96)
    x = as_bytes(b" a" * 48)
    assert int(model.global_positions(x).sum()) == model.capacity(96) == 49
    assert where(model.global_positions(x))[-1] == 95
    with torch.no_grad():
        before = model(x)
        # the 49th global slot, at position 95
        model.global_pos_embed.weight[48] += torch.randn(64, dtype=torch.float64)
        after = model(x)
    assert before.shape == (1, 96, 256) and torch.isfinite(before).all()
    assert (after[0, :95] - before[0, :95]).abs().max() < EXACT
    assert (after[0, 95] - before[0, 95]).abs().max() > 1e-4


def test_batch_flops_count_the_global_positions_formed():
    """``batch_flops``: the global blocks over the batch's largest count of global positions;
    ``forward_flops``: the expected ``ceil(T / patch_size)`` (exact for the periodic rule)."""
    model = tiny_model("spacebyte")
    sparse, dense = as_bytes(b"abcdefghijklmnopqrstuvwx"), as_bytes(b"a b c d e f g h i j k l ")
    assert int(model.global_positions(sparse).sum()) == 1 and int(model.global_positions(dense).sum()) == 12
    both = torch.cat([sparse, dense])
    assert model.batch_flops(both) == 2 * model.forward_flops(24, num_slots=12)
    assert model.training_metrics() == {"global_ratio": 13 / 48}  # logged as train/global_ratio
    assert model.batch_flops(sparse) == model.forward_flops(24, num_slots=1) < model.forward_flops(24)
    assert model.forward_flops(24) == model.forward_flops(24, num_slots=4)  # P = 6
    periodic = tiny_model("spacebyte_periodic")
    assert periodic.batch_flops(both) == 2 * periodic.forward_flops(24)


@pytest.mark.parametrize("size,decoder_mflops", [("cpu-xs", 2.26), ("cpu-s", 5.68), ("cpu-m", 11.21)])
def test_cpu_sizes_cost_what_the_decoder_sizes_cost(size, decoder_mflops):
    """At 1024-byte windows (T/6 global positions) each cpu-* size is within 15% of the decoder's
    training FLOPs per byte (printed: SpaceByte / decoder, MFLOPs)."""
    spacebyte = build_model(model_config("spacebyte", size, max_seq_len=1024))
    decoder = build_model(model_config("decoder", size, max_seq_len=1024))
    ours, theirs = (3 * m.flops_per_byte(1024) / 1e6 for m in (spacebyte, decoder))
    print(f"{size}: SpaceByte {ours:.2f}, decoder {theirs:.2f} training MFLOPs per byte")
    assert theirs == pytest.approx(decoder_mflops, abs=0.01)
    assert abs(ours / theirs - 1) < 0.15


def test_table3_sizes_have_the_papers_parameters():
    """Table 3: 16 global blocks of 1024 (201M) and 16 local blocks of 512 (50M); GitHub: 12 + 12."""
    for size, global_m, local_m in [("table3", 201, 50), ("table3-github", 151, 38)]:
        with torch.device("meta"):
            model = build_model(model_config("spacebyte", size))
        local = model.num_params() - sum(p.numel() for p in model.global_model.parameters())
        assert sum(p.numel() for p in model.global_model.parameters()) / 1e6 == pytest.approx(global_m, abs=1)
        assert local / 1e6 == pytest.approx(local_m, abs=1)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="global_d_model=32 must be at least local_d_model=64"):
        SpaceByte(local_d_model=64, global_d_model=32)
    with pytest.raises(ValueError, match="boundary='words' must be 'spacelike' or 'periodic'"):
        SpaceByte(boundary="words")
    with pytest.raises(ValueError, match="attention_window=0 must be a positive integer"):
        SpaceByte(attention_window=0)
