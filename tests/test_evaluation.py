"""The evaluation protocol end to end: data windows through ByteLM, for every model."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from datamodules import TextBytes
from datamodules.protocol import evaluation_windows, training_ends
from modules import ByteLM
from modules.sizes import ARCHITECTURES

from .conftest import tiny_model

MODELS = list(ARCHITECTURES)


def tiny(name: str) -> torch.nn.Module:
    """48-byte windows; PerceiverAR with 16 latents, so that it cannot score a whole window."""
    return tiny_model(name, max_seq_len=48, **({"num_latents": 16} if name == "perceiver_ar" else {}))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Uniform random bytes (8 bits of entropy), documents of awkward lengths."""
    root = tmp_path_factory.mktemp("uniform")
    rng = np.random.default_rng(0)
    for i, n in enumerate([5, 47, 48, 49, 130, 301, 17, 96, 1000, 64]):
        (root / f"{i}.bin").write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    return root


def datamodule(corpus: Path, tmp_path: Path, score_len: int, seq_len: int = 48) -> TextBytes:
    dm = TextBytes(
        str(corpus), seq_len=seq_len, score_len=score_len, batch_size=4, val_fraction=0.3,
        test_fraction=0.2, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    dm.setup()
    return dm


class KnownLosses(torch.nn.Module):
    """An output head whose logits ignore the model: byte value v always costs ``NATS[v]`` nats. A
    window's loss is then the sum of ``NATS`` over the bytes it scores, so a byte scored twice, a byte
    skipped or a wrong byte scored each moves the total (unlike uniform logits, where any set of bytes
    of the right size scores exactly 8 bits)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("logits", torch.randn(256, generator=torch.Generator().manual_seed(0)) * 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*h.shape[:-1], 256)


NATS = -torch.log_softmax(KnownLosses().logits.double(), dim=0)


def with_known_losses(name: str) -> torch.nn.Module:
    model = tiny(name)
    model.head = KnownLosses()
    return model


def expected_nats(data: np.ndarray) -> float:
    """What scoring every byte of ``data`` exactly once costs under :class:`KnownLosses`."""
    return float(NATS[torch.from_numpy(data.astype(np.int64))].sum())


WINDOWS = [(48, 48), (48, 16), (48, 5), (33, 7)]  # (seq_len, score_len): plain, sliding, uneven


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("seq_len,score_len", WINDOWS)
@pytest.mark.parametrize("strided", [False, True])
def test_every_byte_of_the_split_is_scored_once(name, seq_len, score_len, strided, corpus, tmp_path):
    """Summed over the ranks of 1, 2 and 3 processes (uneven: some ranks run padding batches), the
    evaluation's nats equal each byte of the split scored exactly once, and so does the byte count."""
    model = with_known_losses(name)
    if score_len > model.scored_len(seq_len) or (strided and not model.has_strided_inference):
        pytest.skip("PerceiverAR scores at most num_latents bytes a window; strided: MEGABYTE only")
    lm = ByteLM(model, strided_inference=strided)
    dm = datamodule(corpus, tmp_path, score_len, seq_len)
    reference = expected_nats(dm.splits["val"].data)
    for world_size in (1, 2, 3):
        nats, count = 0.0, 0
        with torch.no_grad():
            for rank in range(world_size):
                for batch in dm.dataloader("val", rank=rank, world_size=world_size):
                    batch_nats, batch_count = lm.score(batch, strided=strided)
                    nats, count = nats + float(batch_nats), count + int(batch_count)
        assert count == len(dm.splits["val"].data)
        assert nats == pytest.approx(reference, rel=1e-6), f"{world_size} processes"


@pytest.mark.parametrize("name", list(MODELS))
def test_known_losses_through_the_trainer(name, corpus, tmp_path):
    """Trainer.validate reports the split's known bits per byte: sum of NATS over its bytes / ln 2 / bytes."""
    dm = datamodule(corpus, tmp_path, score_len=16)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (metrics,) = trainer.validate(ByteLM(with_known_losses(name)), datamodule=dm)
    data = dm.splits["val"].data
    assert metrics["val/bpb"] == pytest.approx(expected_nats(data) / len(data) / math.log(2), rel=1e-6)


def test_sliding_evaluation_matches_a_reference_loop(corpus, tmp_path):
    """val/bpb from the trainer equals nats summed by hand over each document's windows."""
    torch.manual_seed(0)
    model = tiny("decoder").eval()
    dm = datamodule(corpus, tmp_path, score_len=16)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (metrics,) = trainer.validate(ByteLM(model), datamodule=dm)
    split, nats = dm.splits["val"], 0.0
    with torch.no_grad():
        for d in range(len(split)):
            doc = torch.from_numpy(split.document(d).astype(np.int64))
            for end in range(16, len(doc) + 16, 16):
                end = min(end, len(doc))
                start, first_scored = max(0, end - 48), (end - 1) // 16 * 16
                logits = model(doc[None, start:end])[0, first_scored - start :]
                nats += float(
                    torch.nn.functional.cross_entropy(logits, doc[first_scored:end], reduction="sum")
                )
    assert metrics["val/bpb"] == pytest.approx(nats / len(split.data) / math.log(2), rel=1e-5)


@torch.no_grad()
def test_strided_inference_takes_the_first_half_of_each_patch_from_each_pass():
    """Byte i comes from the pass over x when i mod P < P/2, else from the pass over x[:, P/2:]."""
    torch.manual_seed(0)
    lm = ByteLM(tiny("megabyte").eval(), strided_inference=True)  # P = 4
    x = torch.randint(0, 256, (2, 22))
    first, second = lm.position_nats(x), lm.position_nats(x[:, 2:])
    expected = torch.stack([first[:, i] if i % 4 < 2 else second[:, i - 2] for i in range(22)], dim=1)
    torch.testing.assert_close(lm.position_nats(x, strided=True), expected)
    assert not torch.allclose(first, expected)  # the second pass really changes some bytes


def test_strided_inference_needs_patches():
    with pytest.raises(ValueError, match="Decoder has no patches"):
        ByteLM(tiny("decoder"), strided_inference=True)


def test_evaluation_reports_its_inference_cost(corpus, tmp_path):
    """val/flops_per_byte = FLOPs that torch's counter sees in every evaluation forward / bytes scored;
    strided inference's second pass (all but P/2 bytes of each window, padded to whole patches) about
    doubles it."""
    torch.manual_seed(0)
    model = tiny("megabyte")
    dm = datamodule(corpus, tmp_path, score_len=16)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    cost = {}
    for strided in (False, True):
        (metrics,) = trainer.validate(ByteLM(model, strided_inference=strided), datamodule=dm)
        with torch.device("meta"):  # the counter sees SDPA on the meta device (not on the CPU kernels)
            lm = ByteLM(tiny("megabyte"), strided_inference=strided)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            for batch in dm.val_dataloader():
                lm.position_nats(batch["x"].to("meta"), strided)
        cost[strided] = counter.get_total_flops() / len(dm.splits["val"].data)
        assert metrics["val/flops_per_byte"] == pytest.approx(cost[strided], rel=1e-9)
    assert 1.8 < cost[True] / cost[False] <= 2  # the shorter pass pads back to whole patches


def scored_positions(model: torch.nn.Module, windows: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """(window length, position in it) of every byte the model scores in windows of (length, bytes
    scored at its end), where it scores at most its own last ``scored_len`` positions."""
    return {(n, p) for n, scored in windows for p in range(n - min(scored, model.scored_len(n)), n)}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("seq_len,score_len", [(48, 48), (48, 16), (33, 7)])
def test_every_position_evaluation_scores_is_one_training_trains(
    name: str, seq_len: int, score_len: int
) -> None:
    """Learned positions (PerceiverAR's latent queries above all) are only right at positions training
    reached: the (window length, position) of every byte evaluation scores must be one that some
    training window of the same protocol scores too. Under the rule before this one (every training
    window seq_len bytes) the short windows at a document's start were never trained."""
    model = tiny(name)
    train = np.array([5, 47, 130, 301, 17, 1000])
    held_out = np.array([49, 96, 3, 64, 48, 20])
    evaluated = [
        (end - start, scored) for _, start, end, scored in evaluation_windows(held_out, seq_len, score_len)
    ]
    ends = training_ends(train)
    trained_windows = []
    for sample in range(int(ends[-1])):  # every end the rule can draw, once
        doc = int(np.searchsorted(ends, sample, side="right"))
        end = sample - (int(ends[doc - 1]) if doc else 0) + 1
        trained_windows.append((min(end, seq_len), seq_len))
    assert scored_positions(model, evaluated) <= scored_positions(model, trained_windows)
    whole_windows_only = [(seq_len, seq_len)]
    assert not scored_positions(model, evaluated) <= scored_positions(model, whole_windows_only)


@pytest.mark.parametrize("name", ["megabyte", "perceiver_ar"])
def test_bits_per_byte_by_position_add_the_known_losses_of_each_position(name: str) -> None:
    """With logits that make byte value v cost NATS[v], the bits per byte of each window bin and of
    each position inside a patch are those of exactly the bytes scored there (a shifted position or
    a byte counted twice moves them)."""
    model = with_known_losses(name)
    lm = ByteLM(model, position_bins=4)
    x = torch.randint(0, 256, (3, 48), generator=torch.Generator().manual_seed(4))
    num_scored = torch.tensor([16, 5, 16])
    for split in ("val", "test"):
        lm.evaluate({"x": x, "num_scored": num_scored}, lm.val_bpb, lm.val_cost, split)
    values = lm.position_metrics("test")
    scored = [(b, p) for b, n in enumerate(num_scored.tolist()) for p in range(48 - n, 48)]
    for bin_ in range(4):
        chosen = [float(NATS[x[b, p]]) for b, p in scored if p // 12 == bin_]
        key = f"test/bpb_window/{bin_ * 12}-{bin_ * 12 + 11}"
        if chosen:
            assert values[key] == pytest.approx(sum(chosen) / len(chosen) / math.log(2), rel=1e-6)
        else:
            assert key not in values  # no scored byte there
    patch = getattr(model, "patch_size", 0)
    for j in range(patch):
        chosen = [float(NATS[x[b, p]]) for b, p in scored if p % patch == j]
        assert values[f"test/bpb_patch/{j}"] == pytest.approx(
            sum(chosen) / len(chosen) / math.log(2), rel=1e-6
        )
    assert (name == "megabyte") == any("patch" in k for k in values)
    assert lm.position_metrics("test") == {}  # reset after reading
