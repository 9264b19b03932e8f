"""The benchmark's pieces on tiny settings (no timing assertions: speed belongs to ``bytelab bench``)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import lightning as L
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from analysis.tables import to_markdown
from experiments.bench.measure import (
    Setup,
    bench_training,
    flops_matched_decoder,
    generation_ratios,
    generation_speed,
    reach,
)
from experiments.bench.presets import PRESETS, Preset, model_configs
from experiments.bench.targets import targets
from experiments.bench.workers import run_worker, train_worker
from experiments.callbacks import PerfMonitor
from modules import ByteLM, Decoder
from modules.base import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(**overrides) -> dict:
    config = model_configs("bench-tiny", 32)["megabyte"]
    return (
        {"config": config, "seq_len": 32, "batch": 2, "device": "cpu", "dtype": "float32"}
        | {
            "compile": False,
            "threads": 1,
            "warmup": 1,
            "reps": 2,
        }
        | overrides
    )


def test_train_worker_reports_times_and_peak_memory():
    result = train_worker(spec())
    assert len(result["times"]) == 2 and min(result["times"]) > 0
    assert result["peak_mem_bytes"] >= result["baseline_mem_bytes"] > 0


def test_each_training_configuration_runs_in_its_own_process():
    broken = spec(config={"class_path": "modules.Decoder", "init_args": {"d_model": 30, "n_heads": 4}})
    assert run_worker(broken, timeout=300)["status"].startswith("failed: ValueError: d_model=30")


def test_bench_models_have_equal_non_embedding_parameters():
    with torch.device("meta"):
        models = {name: build_model(c) for name, c in model_configs("bench", 8192).items()}
    megabyte, decoder = (models[n].num_params(non_embedding=True) for n in ("megabyte", "decoder"))
    assert megabyte == pytest.approx(decoder, rel=0.01)


def test_the_flops_matched_decoder_costs_what_megabyte_costs_per_byte():
    configs = model_configs("bench", 8192)
    with torch.device("meta"):
        megabyte = build_model(configs["megabyte"])
        matched = build_model(flops_matched_decoder(megabyte, configs["decoder"], 8192))
    assert matched.n_layers == 5
    assert matched.flops_per_byte(8192) == pytest.approx(megabyte.flops_per_byte(8192), rel=0.15)


def test_generation_speed_reports_cached_and_estimated_uncached_runs():
    model = build_model(model_configs("bench-tiny", 24)["perceiver_ar"]).eval()
    row = generation_speed(model, PRESETS["smoke"], torch.device("cpu"))
    assert row["bytes"] == 24 and row["cached_bytes_per_s"] > 0 and row["uncached_s_estimated"] > 0
    assert row["speedup"] == pytest.approx(row["cached_bytes_per_s"] / row["uncached_bytes_per_s"])


def test_targets_compare_the_measured_ratios_with_the_issue():
    train = pd.DataFrame(
        {
            "model": ["megabyte", "megabyte", "decoder"],
            "seq_len": [32, 64, 64],
            "status": ["ok"] * 3,
            "bytes_per_s": [0.0, 300.0, 100.0],
            "flops_per_s": [0.0, 6.0, 10.0],
            "executed_flops_per_s": [0.0, 5.0, 6.0],
            "peak_mem_bytes": [1100.0, 1200.0, 0.0],
            "baseline_mem_bytes": [1000.0, 1000.0, 0.0],
        }
    )
    gen = pd.DataFrame(
        {
            "model": ["megabyte", "decoder", "perceiver_ar", "decoder_flops_matched"],
            "speedup": [20.0, 30.0, 5.0, 12.0],
            "cached_bytes_per_s": [200.0, 50.0, 80.0, 100.0],
        }
    )
    table = targets(train, gen, PRESETS["smoke"], peak=10.0, mfu_peak=None).set_index("target")
    results = dict(zip(table.index, zip(table.measured, table.result, strict=True), strict=True))
    assert results["MEGABYTE / decoder training bytes/s, T=64, equal params"] == (3.0, "PASS")
    ratio, result = results["MEGABYTE / decoder achieved (executed) FLOP/s, T=64"]
    assert ratio == pytest.approx(5 / 6) and result == "PASS"
    assert results["MEGABYTE training executed FLOP/s / measured matmul peak, T=64"] == (0.5, "PASS")
    assert results["perceiver_ar: cached / uncached generation speed, 24 bytes"] == (5.0, "FAIL")
    assert (
        results["MEGABYTE / decoder of equal training FLOPs per byte, generation speed, 24 bytes"][0] == 2.0
    )
    slope, result = results["MEGABYTE peak training memory growth exponent in T (longest two T)"]
    assert slope == pytest.approx(1.0) and result == "PASS"
    assert table.attrs["megabyte_max_T_in_24GB"] == math.floor(64 + (24 * 2**30 - 1200) / (100 / 32))
    assert to_markdown(table.reset_index()).count("\n") == len(table) + 2


def test_fit_logs_throughput_and_peak_memory():
    torch.manual_seed(0)
    lm = ByteLM(Decoder(d_model=16, n_layers=1, n_heads=2, max_seq_len=32), warmup_steps=1)
    batches = [{"x": torch.randint(0, 256, (2, 32))} for _ in range(4)]
    logged = {}

    class Capture(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            logged.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("perf/")})

    trainer = L.Trainer(
        max_steps=4,
        log_every_n_steps=2,
        callbacks=[PerfMonitor(), Capture()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(lm, DataLoader(batches, batch_size=None))
    assert logged["perf/bytes_per_s"] > 0 and logged["perf/flops_per_s"] > 0
    assert logged["perf/peak_mem_bytes"] > 2**20
    assert "perf/mfu" not in logged  # a CPU has no spec-sheet peak


def test_gpu_check_smoke_runs_every_part_on_the_cpu(tmp_path):
    """The GPU check's --smoke mode (tiny models, CPU): every model trains with SDPA held to the
    flash kernel, the compiled step runs, and each model's long-window steps come out with a time,
    a peak memory and an MFU in (0, 1), written as JSON and markdown."""
    from experiments.bench.gpu_check import main

    result = main(["--smoke", "--out", str(tmp_path)])
    assert {row["status"] for row in result["flash"].values()} == {"ok (flash only)"}
    assert result["compile"]["compiled_step_s"] > 0
    for name, rows in result["long"].items():
        assert [row["T"] for row in rows] == [64, 128, 256], name
        assert all(row["status"] == "ok" and 0 < row["mfu"] < 1 and row["peak_mem_bytes"] > 0 for row in rows)
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (
        saved["long"]["megabyte"][-1]["T"] == 256
        and "| long | decoder | 256 |" in (tmp_path / "gpu_check.md").read_text()
    )


def test_generation_at_a_batch_counts_every_rows_bytes():
    model = build_model(model_configs("bench-tiny", 24)["megabyte"]).eval()
    row = generation_speed(model, PRESETS["smoke"], torch.device("cpu"), batch=8)
    assert row["cached_bytes_per_s"] == pytest.approx(8 * 24 / row["cached_median_s"])
    assert math.isnan(row["uncached_bytes_per_s"])  # uncached: batch 1 only
    gen = pd.DataFrame(
        {
            "model": ["megabyte", "decoder", "decoder_flops_matched"] * 2,
            "batch": [1, 1, 1, 8, 8, 8],
            "cached_bytes_per_s": [300.0, 100.0, 500.0, 2400.0, 400.0, 1200.0],
        }
    )
    ratios = generation_ratios(gen)
    assert ratios.batch.tolist() == [1, 8]
    assert ratios.vs_equal_flops_decoder.tolist() == [0.6, 2.0]
    assert ratios.vs_equal_size_decoder.tolist() == [3.0, 6.0]


def test_a_model_stops_at_its_first_length_over_the_time_cap(one_thread):
    """The million preset's rule: a length estimated over max_seconds is skipped and the longer ones
    are not run (no process starts); the reach table says where the model stopped."""
    preset = Preset(**{**asdict(PRESETS["million-smoke"]), "train_lens": [64, 128, 256], "max_seconds": 5.0})
    setup = Setup(["megabyte"], 1, torch.device("cpu"), "float32", False, 1, True, 32, None)
    with torch.device("meta"):
        model = build_model(model_configs("bench-tiny", 256)["megabyte"])
    peak = 3 * model.forward_flops(64) / 0.5 / 6.0  # T=64 is estimated at 6 s, over the 5 s cap
    train = bench_training(setup, preset, peak)
    assert train.status.iloc[0] == "skipped: ~6s > 5s"
    assert train.status.iloc[1:].tolist() == ["not run: stopped at T=64 (time)"] * 2
    (row,) = reach(train).to_dict("records")
    assert row["longest_T"] == 0 and row["stopped"] == "T=64: skipped: ~6s > 5s"
