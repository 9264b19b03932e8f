"""The model contract, checked on numbers: causality, FLOPs, known entropies, trainability."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.fabric.utilities.throughput import measure_flops
from torch.nn.attention import SDPBackend, sdpa_kernel

from modules import ByteLM, Decoder, Hourglass, Megabyte, PerceiverAR
from modules.sizes import ARCHITECTURES

from .conftest import CONTRACT_MODELS, EXACT, exact_model, tiny_model
from .test_evaluation import NATS, KnownLosses


@pytest.fixture(params=list(CONTRACT_MODELS))
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    """Every registered architecture and test variant (modules/sizes.py) at its ``test`` size."""
    torch.manual_seed(0)
    return exact_model(request.param)


@pytest.mark.parametrize("length", [1, 7, 24, 33, 96])
def test_output_covers_the_last_scored_positions(model, length):
    logits = model(torch.randint(0, 256, (2, length)))
    assert logits.shape == (2, model.scored_len(length), 256)


@pytest.mark.parametrize("length,changed", [(96, 0), (96, 77), (61, 40), (32, 31), (24, 3)])
def test_causality(model, length, changed):
    """Changing byte t leaves the predictions for positions <= t unchanged and moves a later one."""
    x = torch.randint(0, 256, (2, length))
    y = x.clone()
    y[:, changed] = (y[:, changed] + 1) % 256
    with torch.no_grad():
        before, after = model(x), model(y)
    first = length - before.size(1)  # absolute position of the first predicted byte
    diff = (before - after).abs().amax(dim=(0, 2))
    upto = changed - first + 1  # predictions at positions <= changed
    if upto > 0:
        assert diff[:upto].max() < EXACT
    # Without the global model (and no cross-patch attention) a patch's last byte reaches nothing later.
    isolated = getattr(model, "no_global", False) and (changed + 1) % model.patch_size == 0
    if changed < length - 1 and not isolated:
        assert diff[max(upto, 0) :].max() > 1e-4


def linked_to_previous_byte(model: torch.nn.Module, t: int) -> bool:
    """Whether the architecture routes byte t into the prediction of byte t + 1. The two ablations of
    the paper's Table 10 cut that link by design: without a global model a patch's first byte sees
    nothing of the patch before; without a local model a patch's bytes are predicted from earlier
    patches only, so byte t reaches t + 1 only when t + 1 starts a patch."""
    starts_patch = (t + 1) % getattr(model, "patch_size", 1) == 0
    if getattr(model, "no_global", False):
        return not starts_patch
    if getattr(model, "no_local", False):
        return starts_patch
    return True


@pytest.mark.parametrize("length", [24, 61, 96])
def test_every_prediction_uses_the_byte_just_before_it(model, length):
    """Changing byte t moves the prediction at t + 1, for every t (not only *some* later position):
    a model that predicts x_t from x_{<t-1} fails here. Row t of the batch changes byte t alone;
    the smallest move measured at initialisation is 0.025 (MEGABYTE), 25x the threshold. And it moves
    no prediction at <= t, for every t: every residue modulo a patch or shortening factor is checked."""
    torch.manual_seed(1)
    x = torch.randint(0, 256, (1, length)).repeat(length, 1)  # the last row is the unchanged reference
    changed = torch.arange(length - 1)
    x[changed, changed] = (x[changed, changed] + 128) % 256
    with torch.no_grad():
        logits = model(x)
    first = length - logits.size(1)  # absolute position of the first predicted byte
    for t in range(length - 1):  # rows of one batch may round differently (see EXACT), a leak moves 1e-2
        upto = max(t + 1 - first, 0)
        leaked = (logits[t, :upto] - logits[-1, :upto]).abs().max() if upto else 0.0
        assert leaked < EXACT, f"byte {t} reaches a prediction at or before it"
    for t in range(max(first - 1, 0), length - 1):
        moved = float((logits[t, t + 1 - first] - logits[-1, t + 1 - first]).abs().max())
        if linked_to_previous_byte(model, t):
            assert moved > 1e-3, f"byte {t} does not reach the prediction of byte {t + 1}"
        else:
            assert moved < EXACT, f"byte {t} reaches byte {t + 1} through a link the variant removes"


def test_rows_of_a_batch_never_see_each_other(model):
    """A row's logits are those of the row alone, and replacing one row changes no other row (to
    float64 rounding, see EXACT): otherwise a window's score would depend on its batch-mates and
    across ranks."""
    torch.manual_seed(2)
    x = torch.randint(0, 256, (3, 61))
    y = x.clone()
    y[0] = torch.randint(0, 256, (61,))
    with torch.no_grad():
        together, replaced = model(x), model(y)
        alone = torch.cat([model(x[b : b + 1]) for b in range(3)])
    assert (replaced[1:] - together[1:]).abs().max() < EXACT
    assert (replaced[0] - together[0]).abs().max() > 1e-3
    torch.testing.assert_close(together, alone, rtol=0, atol=EXACT)


def test_right_padded_training_windows_predict_what_the_unpadded_windows_do(model):
    """Training pads a window that ends less than seq_len bytes into its document on the right; each
    row's training logits must be, position by position, the forward of the row's own bytes alone
    (for PerceiverAR: its latents at the row's own last positions, the ones evaluation scores)."""
    torch.manual_seed(3)
    lengths = torch.tensor([61, 40, 7, 1, 33])
    x = torch.randint(0, 256, (len(lengths), 61))
    with torch.no_grad():
        logits, positions = model.training_logits(x, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone = model(x[b : b + 1, :n])[0]  # the last scored_len(n) positions of the window
            real = positions[b] < n
            assert real.sum() == model.scored_len(n)
            assert positions[b, real].tolist() == list(range(n - model.scored_len(n), n))
            torch.testing.assert_close(logits[b, real], alone, rtol=0, atol=EXACT)


def test_training_loss_leaves_out_the_padding():
    """ByteLM's training nats and bytes of a padded batch are those of its rows' own bytes."""
    for name in ("decoder", "perceiver_ar"):  # every position scored; the last 24 only
        model = tiny_model(name)
        model.head = KnownLosses()
        lm = ByteLM(model)
        x = torch.randint(0, 256, (3, 40))
        lengths = torch.tensor([40, 5, 30])
        nats, count = lm.training_nats({"x": x, "lengths": lengths})
        scored = [(n - model.scored_len(n), n) for n in lengths.tolist()]
        expected = sum(NATS[x[b, a:n]].sum() for b, (a, n) in enumerate(scored))
        assert count == sum(n - a for a, n in scored) and torch.isclose(nats.double(), expected)


def test_megabyte_first_byte_of_each_patch_sees_previous_patches():
    """Byte kP is predicted through the global model: it must depend on every earlier patch."""
    torch.manual_seed(0)
    model = tiny_model("megabyte").eval()
    x = torch.randint(0, 256, (1, 32))
    with torch.no_grad():
        base = model(x)
        for earlier in (0, 3, 6):
            y = x.clone()
            y[0, earlier] = (y[0, earlier] + 1) % 256
            assert (model(y)[0, 8] - base[0, 8]).abs().max() > 1e-5


@pytest.mark.parametrize("name", list(CONTRACT_MODELS))
@pytest.mark.parametrize("length", [8, 24, 61, 96])
def test_flops_match_the_counter(name, length, one_thread):
    """The FLOPs a model reports for the batch it just ran (``batch_flops``: ``B * forward_flops(L)``
    unless its chunks depend on the bytes) equal torch's FlopCounterMode on the real module exactly:
    every count is an integer sum of matmul sizes, so a formula missing one projection, or counting
    the head on the unpadded length, is off by a whole matmul. The forward runs on real bytes (the
    chunks a model forms may depend on them) with SDPA's math kernel, which the counter sees as the
    matmuls it is made of. FLOPs per byte divide by the positions the forward really returned."""
    torch.manual_seed(0)
    model = tiny_model(name)
    x = torch.randint(0, 256, (3, length))
    with sdpa_kernel(SDPBackend.MATH):
        counted = measure_flops(model, lambda: model(x))
    assert counted == model.batch_flops(x)
    assert model.flops_per_byte(length) == model.forward_flops(length) / model(x).size(1)


@pytest.mark.parametrize("name", list(CONTRACT_MODELS))
@pytest.mark.parametrize("length", [8, 61, 96])
def test_executed_flops_leave_out_what_causal_kernels_skip(name, length, monkeypatch):
    """``skip_masked`` removes exactly the query-key pairs above the diagonal of every SDPA call made
    with ``is_causal`` (the pairs a causal kernel never computes), read off the real calls."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    skipped = 0

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        nonlocal skipped
        if is_causal:
            assert q.size(-2) == k.size(-2)
            above_diagonal = torch.ones(q.size(-2), k.size(-2)).triu(1).sum().item()
            skipped += 2 * 2 * q[..., 0, 0].numel() * q.size(-1) * int(above_diagonal)  # batch x heads x dim
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = tiny_model(name).eval()
    x = torch.randint(0, 256, (1, length))
    with torch.no_grad():
        model(x)  # one window (MEGABYTE batches its patches)
    # batch_flops: the window as it ran (H-Net: the chunks it formed), forward_flops for the others
    executed = model.batch_flops(x, skip_masked=True)
    assert model.batch_flops(x) - executed == skipped
    # A decoder whose window is shorter than the input runs every layer under the sliding window's
    # explicit mask, which skips nothing; every other model makes at least one is_causal call.
    assert skipped == 0 if length > (getattr(model, "window", None) or length) else skipped > 0


def test_megabyte_ablations_change_what_a_byte_sees():
    """no_global: patches are independent; cross-patch attention: byte kP sees patch k-1 through the
    local model too; no_local: the bytes of a patch are predicted without each other."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (1, 32))
    y = x.clone()
    y[0, 6] += 1  # patch 1 (P = 4), position 2
    moved = {}
    with torch.no_grad():
        for name in ("megabyte_no_global", "megabyte_no_local", "megabyte_cross_patch"):
            model = exact_model(name)
            moved[name] = (model(y) - model(x)).abs()
    assert moved["megabyte_no_global"][0, 8:].max() < EXACT  # later patches never see patch 1
    assert moved["megabyte_no_global"][0, 7].max() > 1e-4  # the rest of patch 1 does
    assert moved["megabyte_no_local"][0, 7].max() < EXACT  # byte 7 comes from patches < 1 only
    assert moved["megabyte_no_local"][0, 8].max() > 1e-4
    assert moved["megabyte_cross_patch"][0, 8].max() > 1e-4


@pytest.mark.parametrize("local_layers", [1, 2, 3])
def test_cross_patch_attention_reaches_one_patch_further_per_layer(local_layers):
    """The paper's cross-patch attention: every local layer attends to the previous patch's last r
    positions *in that layer*, so without a global model a byte reaches exactly ``local_layers``
    patches ahead (re-encoding r inputs of the previous patch once would reach one patch only)."""
    torch.manual_seed(0)
    model = tiny_model("megabyte_no_global", cross_patch_attention=2, local_layers=local_layers).eval()
    x = torch.randint(0, 256, (1, 40))
    y = x.clone()
    y[0, 6] = (y[0, 6] + 1) % 256  # patch 1 (P = 4): the local input of its last position
    with torch.no_grad():
        moved = (model(y) - model(x)).abs().amax(dim=-1)[0].view(-1, 4).amax(dim=1)  # per patch
    reached = [k for k in range(2, 10) if moved[k] > 1e-6]
    assert reached == list(range(2, 2 + local_layers))


@pytest.mark.parametrize("name", [*ARCHITECTURES, "megabyte_no_local"])
def test_tied_embeddings_are_one_tensor_that_trains_as_one(name):
    """``tie_embeddings``: the head is the byte embedding (the global one without a local model), the
    parameter counted once, and an optimiser step moves both as one."""
    torch.manual_seed(0)
    model = tiny_model(name, tie_embeddings=True)
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings == 256]
    assert any(m.weight is model.head.weight for m in embeddings)
    untied = tiny_model(name)
    assert (
        model.num_params(non_embedding=False)
        == untied.num_params(non_embedding=False) - model.head.weight.numel()
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nats, count = ByteLM(model).score({"x": torch.randint(0, 256, (2, 32))})
    (nats / count).backward()
    optimizer.step()
    assert any(m.weight is model.head.weight for m in embeddings)


def test_flops_scale_like_the_paper():
    """MEGABYTE's forward cost is ~2T(m_g/P + m_l) plus attention; at long T it beats the decoder."""
    mb = Megabyte(
        patch_size=8,
        global_d_model=512,
        global_layers=4,
        local_d_model=128,
        local_layers=2,
        n_heads=8,
        max_seq_len=8192,
    )
    dec = Decoder(d_model=256, n_layers=4, n_heads=8, max_seq_len=8192)
    m_global = 4 * 12 * 512**2
    m_local = 2 * 12 * 128**2
    linear_part = 2 * 8192 * (m_global / 8 + m_local)
    assert mb.forward_flops(8192) > linear_part
    assert mb.flops_per_byte(8192) < dec.flops_per_byte(8192) / 4


def test_num_params_leaves_out_embeddings(model):
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    assert model.num_params(non_embedding=False) - model.num_params(non_embedding=True) == embeddings
    assert model.num_params(non_embedding=False) == sum(p.numel() for p in model.parameters())


def test_score_adds_the_known_losses_of_the_requested_bytes(model):
    """Row b scores exactly its last num_scored[b] bytes: with logits that make byte value v cost
    NATS[v], the total is the sum of NATS over those bytes (a shifted or doubled byte moves it)."""
    model.head = KnownLosses()
    x = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(3))
    num_scored = [1, 5, 24, 24]
    nats, count = ByteLM(model).score({"x": x, "num_scored": torch.tensor(num_scored)})
    expected = sum(float(NATS[x[b, 48 - n :]].sum()) for b, n in enumerate(num_scored))
    assert int(count) == 54 and float(nats) == pytest.approx(expected, rel=1e-6)


def test_score_counts_only_the_requested_bytes(model):
    lm = ByteLM(model)
    x = torch.randint(0, 256, (3, 40))
    full_nats, full_count = lm.score({"x": x})
    part_nats, part_count = lm.score({"x": x, "num_scored": torch.tensor([3, 3, 3])})
    assert int(full_count) == 3 * model.scored_len(40) and int(part_count) == 9
    with torch.no_grad():
        logits = model(x)[:, -3:]
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, -3:].flatten(), reduction="sum")
    assert float(part_nats.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_gradient_norm_at_initialisation_is_of_order_one(model):
    """Pads and start embeddings are never zero: a zero vector into a LayerNorm explodes gradients."""
    model.train()
    lm = ByteLM(model)
    nats, count = lm.score({"x": torch.randint(0, 256, (4, 96))})
    (nats / count).backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert torch.isfinite(norm) and 0.05 < float(norm) < 20


@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
def test_a_loss_in_chunks_equals_the_loss_at_once(model, chunk):
    """``position_nats(x, chunk)`` runs the head (and MEGABYTE's local model) a chunk at a time under
    checkpointing: the same nats and the same gradients as the whole window at once, for windows that
    end mid-patch and chunks that do not divide them."""
    model.train()
    x = torch.randint(0, 256, (2, 61), generator=torch.Generator().manual_seed(5))
    grads = []
    for size in (0, chunk):
        model.zero_grad()
        values = model.position_nats(x, size)
        values.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if size == 0:
            whole = values.detach()
    # The same computation per position; a BLAS may block a matmul of fewer rows differently, so
    # equal to float64 rounding (float32 measured 2.4e-6 for MEGABYTE with cross-patch attention on
    # an AVX-512 CPU, where 1e-6 was allowed; see EXACT).
    torch.testing.assert_close(values.detach(), whole, rtol=0, atol=EXACT)
    assert values.shape == (2, model.scored_len(61))
    with torch.no_grad():  # ByteLM's --model.loss_chunk: the same total as the whole window
        chunked, at_once = (float(ByteLM(model, loss_chunk=c).score({"x": x})[0]) for c in (chunk, 0))
    assert chunked == pytest.approx(at_once, rel=EXACT)
    with pytest.raises(ValueError, match="loss_chunk=-1 must be >= 0"):
        ByteLM(model, loss_chunk=-1)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=EXACT)


def sample_markov_source(generator: torch.Generator, shape: tuple[int, int]) -> torch.Tensor:
    """A random walk over 16 byte values spread over 0..255: each byte moves 0-3 symbols on (mod 16)
    from the byte before it, the first is uniform. Entropy: 4 bits for a window's first byte, exactly
    2 bits for every later one given the byte before; a model blind to that byte (seeing x_{<t-1}
    only) can do no better than 2.66 bits, the entropy of the sum of two moves."""
    batch, length = shape
    first = torch.randint(0, 16, (batch, 1), generator=generator)
    moves = torch.randint(0, 4, (batch, length - 1), generator=generator)
    return torch.cat([first, moves], dim=1).cumsum(dim=1) % 16 * 16 + 3


MARKOV_ENTROPY = (4 + 95 * 2) / 96  # bits per byte of a 96-byte window


# The three later families learn the walk too, but cost 2-10x a step of the others (H-Net's routing,
# per-row chunks): `pytest -m slow` runs them; their CLI fits on text, image and audio stay in the suite.
LEARNING = [
    pytest.param(name, marks=pytest.mark.slow) if name in ("spacebyte", "hourglass", "hnet") else name
    for name in ARCHITECTURES
]


@pytest.mark.parametrize("name", LEARNING)
def test_training_learns_the_context_of_known_data(name):
    """200 steps on the random walk bring every model from ~8 bits to 2.10-2.16 (measured), below the
    2.66 any model blind to the previous byte is bound to, and never below the entropy on fresh data."""
    torch.manual_seed(0)
    model = tiny_model(name)
    lm = ByteLM(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        nats, count = lm.score({"x": sample_markov_source(generator, (8, 96))})
        optimizer.zero_grad()
        (nats / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    with torch.no_grad():
        nats, count = lm.score({"x": sample_markov_source(generator, (16, 96))})
    bits = float(nats) / int(count) / math.log(2)
    assert MARKOV_ENTROPY - 0.01 < bits < 2.3


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(ValueError, match="max_seq_len=100 must be a multiple of patch_size=8"):
        Megabyte(patch_size=8, global_d_model=64, max_seq_len=100)
    with pytest.raises(ValueError, match="global_d_model=60 must be a multiple of patch_size=8"):
        Megabyte(patch_size=8, global_d_model=60, max_seq_len=64)
    with pytest.raises(ValueError, match="no_local and no_global together"):
        Megabyte(patch_size=4, global_d_model=64, max_seq_len=64, no_local=True, no_global=True)
    with pytest.raises(ValueError, match="cross_patch_attention=5 must be between 0 and patch_size=4"):
        Megabyte(patch_size=4, global_d_model=64, max_seq_len=64, cross_patch_attention=5)
    with pytest.raises(ValueError, match="d_model=30 must be divisible by n_heads=4"):
        Decoder(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="hierarchy='2@1 4@3 1@1' must be a palindrome"):
        Hourglass(hierarchy="2@1 4@3 1@1")
    with pytest.raises(ValueError, match="hierarchy='2@3 4@6 2@3' must start with the byte layers"):
        Hourglass(hierarchy="2@3 4@6 2@3")
    with pytest.raises(ValueError, match="shortening 4 must be a multiple of 3"):
        Hourglass(hierarchy="1@1 1@3 1@4 1@3 1@1")
    with pytest.raises(ValueError, match="write layers@shortening for each level"):
        Hourglass(hierarchy="2x1 4x3 2x1")
    with pytest.raises(ValueError, match="pooling='max' must be 'linear' or 'average'"):
        Hourglass(pooling="max")
    with pytest.raises(ValueError, match="n_layers=0 must be a positive integer"):
        PerceiverAR(n_layers=0)
    with pytest.raises(ValueError, match="score_len=64 exceeds the 24 positions PerceiverAR predicts"):
        tiny_model("perceiver_ar").check_window(seq_len=96, score_len=64)
    with pytest.raises(ValueError, match="seq_len=128 exceeds the model's max_seq_len=96"):
        tiny_model("decoder").check_window(seq_len=128, score_len=128)


# Every family in the default run; the variants (same blocks, other options) under `pytest -m slow`.
COMPILE_CASES = [
    name if name in ARCHITECTURES else pytest.param(name, marks=pytest.mark.slow) for name in CONTRACT_MODELS
]


@pytest.mark.parametrize("name", COMPILE_CASES)
def test_compiled_blocks_train_like_eager_ones(name, monkeypatch, one_thread):
    """``--model.compile true`` (``parallelize_blocks(compile=True)``) on every model: each block is
    captured by TorchDynamo in one graph, without a graph break, and AOTAutograd's forward and backward
    give the eager logits and gradients. The backend is aot_eager (COMPILE_BACKEND_ENV): inductor's
    code generation, a C++ build per graph on a CPU, is left to the GPU check
    (experiments/bench/gpu_check.py)."""
    import copy

    from torch._dynamo.utils import counters

    from modules.parallel import COMPILE_BACKEND_ENV, parallelize_blocks

    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = tiny_model(name).train()
    compiled = copy.deepcopy(eager)
    blocks = parallelize_blocks(compiled, activation_checkpointing=False, compile=True)
    x = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    results = []
    for model in (eager, compiled):
        nats = model.position_nats(x)
        nats.mean().backward()
        results.append((nats.detach(), [p.grad for p in model.parameters()]))
    assert blocks and counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
