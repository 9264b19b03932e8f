"""The evaluation protocol end to end: data windows through ByteLM, for every model."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from datamodules import TextBytes
from modules import ByteLM, Decoder, Megabyte, PerceiverAR

MODELS = {
    "decoder": lambda: Decoder(d_model=32, n_layers=1, n_heads=4, max_seq_len=48),
    "megabyte": lambda: Megabyte(
        patch_size=4, global_d_model=32, global_layers=1, local_d_model=16, local_layers=1, max_seq_len=48
    ),
    "perceiver_ar": lambda: PerceiverAR(d_model=32, n_layers=1, n_heads=4, max_seq_len=48, num_latents=16),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Uniform random bytes (8 bits of entropy), documents of awkward lengths."""
    root = tmp_path_factory.mktemp("uniform")
    rng = np.random.default_rng(0)
    for i, n in enumerate([5, 47, 48, 49, 130, 301, 17, 96, 1000, 64]):
        (root / f"{i}.bin").write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    return root


def datamodule(corpus: Path, tmp_path: Path, score_len: int) -> TextBytes:
    dm = TextBytes(
        str(corpus), seq_len=48, score_len=score_len, batch_size=4, val_fraction=0.3, test_fraction=0.2,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    dm.setup()
    return dm


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("score_len", [48, 16, 5])
def test_every_byte_of_the_split_is_scored_once(name, score_len, corpus, tmp_path):
    model = MODELS[name]()
    if score_len > model.scored_len(48):
        pytest.skip("PerceiverAR scores at most num_latents bytes per window")
    lm = ByteLM(model)
    dm = datamodule(corpus, tmp_path, score_len)
    scored = 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            scored += int(lm.score(batch)[1])
    assert scored == len(dm.splits["val"].data)


@pytest.mark.parametrize("name", list(MODELS))
def test_uniform_predictions_score_eight_bits_through_the_trainer(name, corpus, tmp_path):
    """Trainer.validate with a zero-logit model: val/bpb is exactly log2(256)."""
    model = MODELS[name]()
    torch.nn.init.zeros_(model.head.weight)
    dm = datamodule(corpus, tmp_path, score_len=16)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (metrics,) = trainer.validate(ByteLM(model), datamodule=dm)
    assert metrics["val/bpb"] == pytest.approx(8.0, abs=1e-6)


def test_sliding_evaluation_matches_a_reference_loop(corpus, tmp_path):
    """val/bpb from the trainer equals nats summed by hand over each document's windows."""
    torch.manual_seed(0)
    model = MODELS["decoder"]().eval()
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


@pytest.mark.parametrize("score_len", [48, 16, 5])
def test_strided_inference_scores_every_byte_once(score_len, corpus, tmp_path):
    """Strided inference (two passes offset by P/2) still scores each byte of the split exactly once."""
    lm = ByteLM(MODELS["megabyte"](), strided_inference=True)
    dm = datamodule(corpus, tmp_path, score_len)
    with torch.no_grad():
        scored = sum(int(lm.score(batch, strided=True)[1]) for batch in dm.val_dataloader())
    assert scored == len(dm.splits["val"].data)


@torch.no_grad()
def test_strided_inference_takes_the_first_half_of_each_patch_from_each_pass():
    """Byte i comes from the pass over x when i mod P < P/2, else from the pass over x[:, P/2:]."""
    torch.manual_seed(0)
    lm = ByteLM(MODELS["megabyte"]().eval(), strided_inference=True)  # P = 4
    x = torch.randint(0, 256, (2, 22))
    first, second = lm.position_nats(x), lm.position_nats(x[:, 2:])
    expected = torch.stack([first[:, i] if i % 4 < 2 else second[:, i - 2] for i in range(22)], dim=1)
    torch.testing.assert_close(lm.strided_nats(x), expected)
    assert not torch.allclose(first, expected)  # the second pass really changes some bytes
    assert lm.evaluation_flops(x) == 2 * (lm.model.forward_flops(22) + lm.model.forward_flops(20))


def test_strided_inference_needs_patches():
    with pytest.raises(ValueError, match="Decoder has no patches"):
        ByteLM(MODELS["decoder"](), strided_inference=True)


@pytest.mark.parametrize("strided", [False, True])
def test_evaluation_reports_its_inference_cost(strided, corpus, tmp_path):
    """val/flops_per_byte = forward FLOPs of every pass over every window / bytes scored."""
    model = MODELS["megabyte"]()
    torch.nn.init.zeros_(model.head.weight)
    dm = datamodule(corpus, tmp_path, score_len=16)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (metrics,) = trainer.validate(ByteLM(model, strided_inference=strided), datamodule=dm)
    assert metrics["val/bpb"] == pytest.approx(8.0, abs=1e-6)
    lm = ByteLM(model, strided_inference=strided)
    flops = sum(lm.evaluation_flops(batch["x"]) for batch in dm.val_dataloader())
    assert metrics["val/flops_per_byte"] == pytest.approx(flops / len(dm.splits["val"].data), rel=1e-6)
