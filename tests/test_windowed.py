"""The windowed decoder and rotary positions on numbers: which bytes a prediction reads (exactly, at the
window's edge), bounded caches that decode as the full forward does, predictions that do not depend on
where their bytes sit, and FLOPs counted by window.

Structural facts run in float64: a byte outside the window must leave a prediction bit for bit (masked
keys get an attention weight of exactly 0), and a byte inside must move it by far more than float64
rounding (1e-16 relative; the smallest move measured here is 1e-5), so the checks do not depend on how a
CPU's float32 kernels (AVX2, AVX-512, thread count) round.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from modules import Decoder
from modules.base import build_model
from modules.flops import decoder_flops
from modules.layers import rotary
from modules.sizes import model_config

pytestmark = pytest.mark.usefixtures("one_thread")

MOVED = 1e-9  # a byte inside the receptive field moves a float64 prediction by 1e-5 or more


def windowed(window: int, n_layers: int = 2, positions: str = "rope", max_seq_len: int = 96) -> Decoder:
    torch.manual_seed(0)
    model = Decoder(
        d_model=32, n_layers=n_layers, n_heads=4, max_seq_len=max_seq_len, window=window, positions=positions
    )
    return model.double().eval()


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("window,n_layers", [(1, 1), (5, 1), (16, 1), (5, 2), (16, 2), (40, 1), (40, 2)])
@torch.no_grad()
def test_a_prediction_reads_exactly_its_receptive_field(window, n_layers, positions):
    """Changing byte j moves the predictions of bytes j + 1 .. j + R and no other, R = n_layers * (W - 1)
    + 1 (``Decoder.receptive_field``). With one layer R = W: the prediction of byte t reads bytes t - W ..
    t - 1, so a byte W - 1 or W positions back moves it and one W + 1 back does not. Every j of a 61-byte
    window is checked: past several of the blockwise kernel's blocks, the last one partial (W <= 16),
    and through the one-call band mask of windows under 2W positions (W = 40)."""
    model = windowed(window, n_layers, positions)
    length, reach = 61, model.receptive_field
    assert reach == n_layers * (window - 1) + 1
    x = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(1))
    before = model(x)[0]
    for j in range(length):
        y = x.clone()
        y[0, j] = (y[0, j] + 128) % 256
        moved = (model(y)[0] - before).abs().amax(dim=-1)
        inside = torch.zeros(length, dtype=torch.bool)
        inside[j + 1 : j + 1 + reach] = True
        assert moved[~inside].max() == 0, f"byte {j} reaches a prediction outside {j + 1}..{j + reach}"
        if j + 1 < length:
            assert moved[inside].min() > MOVED, f"byte {j} misses a prediction in {j + 1}..{j + reach}"


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("window", [1, 5, 16])
@pytest.mark.parametrize("prompt_len", [0, 3, 37])
@torch.no_grad()
def test_bounded_caches_decode_as_the_full_forward(window, prompt_len, positions):
    """Prefill then one step per byte gives the full forward's logits (float64: to 1e-10, the forward
    and the cached steps sum the same products in other orders), while every layer's cache holds the
    keys of the last W positions (a ring of W entries: the cache never holds more)."""
    model = windowed(window, positions=positions, max_seq_len=64)
    x = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(2))
    full = model(x)
    logits, cache = model.prefill(x[:, :prompt_len])
    torch.testing.assert_close(logits, full[:, prompt_len], rtol=0, atol=1e-10)
    for t in range(prompt_len, x.size(1) - 1):
        logits = model.step(x[:, t], cache)
        torch.testing.assert_close(logits, full[:, t + 1], rtol=0, atol=1e-10)
        for layer in cache:
            assert layer.length == t + 2  # the prompt, its placeholder, the bytes stepped
            assert layer.kept == min(t + 2, window) and layer.k.size(-2) == window


@torch.no_grad()
def test_a_rotary_windowed_prediction_does_not_depend_on_where_its_bytes_sit():
    """With rotary positions and a window, the prediction of byte t >= R (R the receptive field) is the
    same function of bytes t - R .. t - 1 wherever they sit: the one at the last position of the window
    holding just them and byte t, a position every training window of ``max_seq_len > R`` bytes has. So
    such a model may read windows longer than ``max_seq_len`` (here 2000 bytes, max_seq_len 96): every
    position is one it was trained at. Learned positions fail this by far (> 1e-3)."""
    rope, learned = windowed(16, positions="rope"), windowed(16, positions="learned", max_seq_len=2000)
    reach = rope.receptive_field  # 31
    x = torch.randint(0, 256, (1, 2000), generator=torch.Generator().manual_seed(3))
    logits = {name: model(x)[0] for name, model in (("rope", rope), ("learned", learned))}
    for t in (reach, reach + 1, 95, 96, 500, 1999):
        window = x[:, t - reach : t + 1]  # the R bytes before t, and t itself (a placeholder there)
        # The rotations of two positions 2000 apart round differently in float64 by ~1e-13 rad.
        torch.testing.assert_close(logits["rope"][t], rope(window)[0, -1], rtol=0, atol=1e-10)
        if t > reach:  # (at t = R the window is the input's own start)
            assert (logits["learned"][t] - learned(window)[0, -1]).abs().max() > 1e-3
    # One position less and the start vector (not byte t - R) sits at the field's far edge, reached
    # through one path of each layer: another function (it moves the logits by 1e-4 at initialisation).
    short = x[:, 500 - reach + 1 : 501]
    assert (logits["rope"][500] - rope(short)[0, -1]).abs().max() > 1e-6


def test_only_a_covered_rotary_window_lifts_the_length_limit():
    """``max_input_len`` is None only for rotary positions, a window, and training windows longer than
    the receptive field (2 layers, W = 16: R = 31); otherwise max_seq_len bounds evaluation."""
    assert windowed(16, max_seq_len=32).max_input_len() is None
    assert windowed(16, max_seq_len=31).max_input_len() == 31  # position R never trained
    assert windowed(16, positions="learned").max_input_len() == 96
    assert Decoder(d_model=32, n_heads=4, max_seq_len=96, positions="rope").max_input_len() == 96
    windowed(16).check_window(seq_len=4096, score_len=4096)
    with pytest.raises(ValueError, match="seq_len=4096 exceeds the model's max_seq_len=31"):
        windowed(16, max_seq_len=31).check_window(seq_len=4096, score_len=4096)
    with pytest.raises(ValueError, match="positions='alibi' must be 'learned' or 'rope'"):
        Decoder(positions="alibi")
    with pytest.raises(ValueError, match="window=0 must be a positive integer"):
        Decoder(window=0)
    with pytest.raises(ValueError, match="rope needs an even head dimension"):
        Decoder(d_model=12, n_heads=4, positions="rope")


def test_rotary_scores_depend_on_distance_only():
    """q . k after rotation at positions (a, b) equals that at (a + s, b + s), for s up to 1e6 (float64
    angles: in float32 the angle at 1e6 is off by up to 0.06 rad); a rotation keeps every norm."""
    generator = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 3, 7, 16, dtype=torch.float64, generator=generator).unbind(0)
    scores = rotary(q, 5) @ rotary(k, 0).transpose(-1, -2)
    for shift in (1, 1000, 10**6):
        shifted = rotary(q, 5 + shift) @ rotary(k, shift).transpose(-1, -2)
        torch.testing.assert_close(shifted, scores, rtol=0, atol=1e-9)
    torch.testing.assert_close(rotary(q, 123).norm(dim=-1), q.norm(dim=-1), rtol=1e-12, atol=0)
    assert (rotary(q, 1) @ rotary(k, 0).transpose(-1, -2) - scores).abs().max() > 1e-2  # positions matter


@pytest.mark.parametrize("length", [64, 128, 129, 256, 257, 1000, 4096])
def test_windowed_flops_equal_the_counter_at_long_windows(length):
    """At the cpu-xs size (W = 128, on the meta device: no arithmetic) the analytic count equals
    FlopCounterMode for windows shorter than W (plain causal attention), equal to it, one past it
    (one call under a band mask: full attention's count), 2W, one past 2W and 32 times W; past 2W the
    attention term grows with L * 2W, not L^2."""
    with torch.device("meta"):
        model = build_model(model_config("decoder_windowed", "cpu-xs", max_seq_len=64))
        x = torch.zeros(2, length, dtype=torch.long)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
    assert counter.get_total_flops() == 2 * model.forward_flops(length)
    full = decoder_flops(length, 64, 2)
    if length <= 256:
        assert model.forward_flops(length) == full
    else:
        blocks = -(-length // 128)
        attention = 2 * 2 * 2 * blocks * 128 * 2 * 128 * 64  # layers x (QK, AV) x 2 FLOPs x pairs x d
        assert full - model.forward_flops(length) == 2 * 2 * 2 * length * length * 64 - attention
