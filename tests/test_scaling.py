"""The scaling study's parts: configurations tuned per size, compute multipliers with intervals, the
context-length table and its crossover, and a study that is killed mid-way and rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.fits import PowerLaw, compute_multipliers, fit_frontiers
from analysis.tables import context_table, crossover_table, crossover_words
from experiments.sweep import REPO, Architecture, Sweep, expand, expand_tuning, run_sweep
from tests.conftest import fox_corpus
from tests.test_sweep import SPEC, fake_run

# ---------------------------------------------------------------------------------------------------
# Configurations tuned per size


def test_a_configuration_without_a_size_is_tuned_at_every_size_and_each_size_keeps_its_best(tmp_path):
    """Two sizes, two windows: cpu-xxs is best at w128x8, cpu-xs at w256x4; the grid runs each size
    at its own window and rate, one row per size."""
    configs = {
        "w128x8": {"data.init_args.seq_len": 128, "data.init_args.batch_size": 8},
        "w256x4": {"data.init_args.seq_len": 256, "data.init_args.batch_size": 4},
    }
    sweep = Sweep.from_dict(
        {
            **SPEC,
            "run_root": str(tmp_path / "runs"),
            "lrs": [1e-3, 3e-3],
            "budgets": [1e12, 2e12],
            "seeds": [0],
        }
        | {
            "tune_budget": 2.5e11,
            "architectures": {"decoder": {"sizes": ["cpu-xxs", "cpu-xs"], "configs": configs}},
        }
    )
    assert list(sweep.architectures["decoder"].rows()) == ["cpu-xxs", "cpu-xs"]
    vals = {
        ("w128x8", "cpu-xxs", 1e-3): 3.0,
        ("w128x8", "cpu-xxs", 3e-3): 2.9,  # cpu-xxs: w128x8 at 3e-3
        ("w256x4", "cpu-xxs", 1e-3): 3.1,
        ("w256x4", "cpu-xxs", 3e-3): 3.2,
        ("w128x8", "cpu-xs", 1e-3): 2.8,
        ("w128x8", "cpu-xs", 3e-3): 2.9,
        ("w256x4", "cpu-xs", 1e-3): 2.6,  # cpu-xs: w256x4 at 1e-3
        ("w256x4", "cpu-xs", 3e-3): 2.7,
    }
    lines: list[str] = []
    launch = fake_run(vals, by=("config", "size", "lr"), default=2.5)
    assert run_sweep(sweep, launch=launch, echo=lines.append) == []
    tuning = expand_tuning(sweep)
    assert [r.id for r in tuning][:2] == [
        "tune-decoder-w128x8-cpu-xxs-lr0.001-c2.5e11-seed0",
        "tune-decoder-w128x8-cpu-xxs-lr0.003-c2.5e11-seed0",
    ]
    assert len(tuning) == 8 and {r.info["config"] for r in tuning} == {"w128x8", "w256x4"}
    assert "sweep demo: 12 runs, 0 finished, 12 to run" in lines  # 8 tuning runs, 2 rows x 2 budgets
    assert (
        "  configuration of decoder cpu-xxs: w128x8 (lowest val bpb of its candidates at their rates)"
        in lines
    )
    assert (
        "  configuration of decoder cpu-xs: w256x4 (lowest val bpb of its candidates at their rates)" in lines
    )
    grid = expand(sweep)[len(tuning) :]
    assert [(r.id, r.info["lr"]) for r in grid] == [
        ("decoder-w128x8-cpu-xxs-c1e12-seed0", 3e-3),
        ("decoder-w128x8-cpu-xxs-c2e12-seed0", 3e-3),
        ("decoder-w256x4-cpu-xs-c1e12-seed0", 1e-3),
        ("decoder-w256x4-cpu-xs-c2e12-seed0", 1e-3),
    ]
    assert all("--data.init_args.seq_len=256" in r.args for r in grid if r.info["size"] == "cpu-xs")


def test_a_configuration_that_names_its_size_competes_across_sizes(tmp_path):
    """A configuration with its own ``size`` is a candidate of the architecture's one row, as before:
    the sizes compete (the grid runs one of them)."""
    arch = Architecture(sizes=["cpu-xs"], configs={"a": {}, "b": {"size": "cpu-s"}})
    assert arch.rows() == {"": ["a", "b"]} and arch.candidates()["b"][0] == "cpu-s"
    assert arch.config_name("b") == "b"
    several = Architecture(sizes=["cpu-xs", "cpu-s"], configs={"w": {}, "w-cpu": {"size": "cpu-m"}})
    assert several.rows() == {"cpu-xs": ["w-cpu-xs"], "cpu-s": ["w-cpu-s"], "": ["w-cpu"]}
    assert several.config_name("w-cpu-s") == "w" and several.config_name("w-cpu") == "w-cpu"


# ---------------------------------------------------------------------------------------------------
# Compute multipliers with intervals

BUDGETS = np.geomspace(1e11, 1e15, 6)
BASE = PowerLaw(l_inf=0.9, c0=2e9, alpha=0.2, rmse=0, points=0)


def law_runs(laws: dict[str, PowerLaw], noise: float, seeds: int = 3) -> pd.DataFrame:
    """Runs of each architecture on its law, ``seeds`` per budget, with fixed relative noise."""
    rng = np.random.default_rng(11)
    rows = [
        {
            "run_dir": f"{arch}-{budget:g}-seed{seed}",
            "dataset": "text",
            "architecture": arch,
            "size": "S1",
            "seed": seed,
            "stage": "main",
            "budget_flops": budget,
            "flops_seen": budget,
            "val_bpb": float(law.loss(budget)) * (1 + noise * rng.standard_normal()),
        }
        for arch, law in laws.items()
        for budget in BUDGETS
        for seed in range(seeds)
    ]
    return pd.DataFrame(rows)


def test_a_multiplier_comes_with_its_interval_and_a_tie_where_the_interval_holds_one():
    """Fast reaches every loss with exactly half the Decoder's compute (c0 halved at the same alpha
    and L_inf); Twin is the Decoder's law with other noise. Measured at 0.5% noise (3 seeds): Fast
    0.45 [0.42, 0.48], Twin 0.96 [0.90, 1.03]; at 2%, Fast [0.25, 0.43]. The bias (Fast's truth 0.5
    lies just outside its interval) is the fit's: a flat law turns bits into compute by the power
    1 / alpha = 5, and the interval is conditional on the fitted L_inf."""
    fast = PowerLaw(l_inf=BASE.l_inf, c0=BASE.c0 * 0.5, alpha=BASE.alpha, rmse=0, points=0)
    runs = law_runs({"Decoder": BASE, "Fast": fast, "Twin": BASE}, noise=0.005)
    out = compute_multipliers(fit_frontiers(runs), "Decoder", runs).set_index("architecture")
    assert out.loc["Fast", "multiplier"] == pytest.approx(0.5, rel=0.15)
    assert 0.3 < out.loc["Fast", "multiplier_lo"] < out.loc["Fast", "multiplier_hi"] < 0.6
    assert out.loc["Fast", "verdict"] == "less compute than Decoder"
    assert out.loc["Twin", "multiplier_lo"] < 1 < out.loc["Twin", "multiplier_hi"]
    assert out.loc["Twin", "verdict"] == "tie: the interval holds 1"
    again = compute_multipliers(fit_frontiers(runs), "Decoder", runs).set_index("architecture")
    assert again.loc["Fast", "multiplier_lo"] == out.loc["Fast", "multiplier_lo"]  # fixed seeds
    wider = law_runs({"Decoder": BASE, "Fast": fast}, noise=0.02)
    loose = compute_multipliers(fit_frontiers(wider), "Decoder", wider).set_index("architecture")
    assert loose.loc["Fast", "multiplier_hi"] - loose.loc["Fast", "multiplier_lo"] > 2 * (
        out.loc["Fast", "multiplier_hi"] - out.loc["Fast", "multiplier_lo"]
    )


# ---------------------------------------------------------------------------------------------------
# Context length

FAMILIES = {"decoder": "Decoder", "decoder_windowed": "Windowed decoder", "megabyte": "Megabyte"}


def context_runs(bpb: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    """A context study's runs frame: (family label, window) -> val bpb of seeds 0, 1, 2."""
    rows = [
        {
            "run_dir": f"{label}-w{window}-seed{seed}",
            "dataset": "text",
            "architecture": f"{label}-w{window}",
            "family": FAMILIES[label],
            "size": "cpu-xs",
            "seed": seed,
            "stage": "main",
            "budget_flops": 1e12,
            "flops_seen": 1e12,
            "seq_len": window,
            "score_len": 64,
            "val_bpb": value,
        }
        for (label, window), values in bpb.items()
        for seed, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_context_table_and_the_crossover_where_multiscale_leads_from_a_window_on():
    """At 128 the windowed decoder leads by 0.3 (spread 0.01); at 512 MEGABYTE is 0.005 ahead, inside
    the spread: a tie; at 2048 it leads by 0.2 in every seed: it overtakes from 2048."""
    runs = context_runs(
        {
            ("decoder", 128): [2.70, 2.71, 2.72],
            ("decoder_windowed", 128): [2.50, 2.51, 2.52],
            ("megabyte", 128): [2.80, 2.81, 2.82],
            ("decoder", 512): [2.60, 2.61, 2.62],
            ("decoder_windowed", 512): [2.50, 2.51, 2.52],
            ("megabyte", 512): [2.49, 2.51, 2.515],
            ("decoder", 2048): [2.70, 2.71, 2.72],
            ("decoder_windowed", 2048): [2.50, 2.51, 2.52],
            ("megabyte", 2048): [2.30, 2.31, 2.32],
        }
    )
    table = context_table(runs)
    assert len(table) == 9 and set(table["window"]) == {128, 512, 2048} and (table["scored"] == 64).all()
    decoder = table[table["family"] == "Decoder"].set_index("window")
    assert decoder.loc[512, "val_bpb"] == pytest.approx(2.61) and decoder.loc[512, "seeds"] == 3
    crossover = crossover_table(runs).set_index("window")
    assert crossover.loc[128, "ahead"] == "flat" and crossover.loc[128, "best flat"] == "Windowed decoder"
    assert crossover.loc[512, "ahead"] == "tie" and crossover.loc[2048, "ahead"] == "multiscale"
    assert crossover.loc[2048, "multiscale - flat"] == pytest.approx(-0.2)
    assert crossover.loc[2048, "seeds holding"] == "3/3"
    (words,) = crossover_words(crossover_table(runs))
    assert words.startswith(
        "text, windows 128-2048 at 1e+12 FLOPs: multiscale overtakes flat from 2048 bytes"
    )

    flat_wins = runs.assign(
        val_bpb=np.where(runs["family"] == "Megabyte", runs["val_bpb"] + 0.5, runs["val_bpb"])
    )
    (words,) = crossover_words(crossover_table(flat_wins))
    assert "multiscale does not overtake flat; its closest is Megabyte at 2048 bytes, +0.300 bits" in words
    one_window = runs[runs["seq_len"] == 128]
    assert context_table(one_window).empty and crossover_table(one_window).empty
    # A scaling study where each size chose its own window (SpaceByte: 128 at cpu-xxs, 256 at cpu-xs)
    by_size = runs[runs["seq_len"] < 2048]
    by_size = by_size.assign(size=np.where(by_size["seq_len"] == 128, "cpu-xxs", "cpu-xs"))
    assert context_table(by_size).empty and crossover_table(by_size).empty


# ---------------------------------------------------------------------------------------------------
# A study killed mid-way and rerun


def smoke_study(tmp_path: Path, name: str, flag: Path, data: Path) -> tuple[list[str], Path, Path]:
    """`bytelab compare` on the smoke preset (2 jobs, 1 thread each) with a signal armed by ``flag``;
    its command line, run root and results folder."""
    spec = yaml.safe_load((REPO / "experiments" / "sweeps" / "compare_smoke.yaml").read_text())
    runs = tmp_path / name / "runs"
    kill = {"step": 2, "name": "SIGTERM", "flag": str(flag), "runs": str(runs), "after": 3}
    spec["options"]["trainer.callbacks+"] = {"class_path": "tests.faults.SignalMidSweep", "init_args": kill}
    spec["run_root"] = str(runs)
    path = tmp_path / name / "sweep.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / name / "results"
    args = [
        "compare",
        "--sweep",
        str(path),
        "--data",
        str(data),
        "--out",
        str(out),
        "--jobs",
        "2",
        "--threads",
        "1",
    ]
    return args, runs, out


def bytelab(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BYTELAB_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    entry = [sys.executable, "-m", "experiments.cli"]
    return subprocess.run([*entry, *args], cwd=REPO, env=env, text=True, capture_output=True, timeout=900)


def results(out: Path) -> dict[str, pd.DataFrame]:
    """The study's tables, without what differs between two runs of one study (paths, wall times)."""
    tables = {}
    for name in ("table", "ranking", "grid", "fits"):
        table = pd.read_csv(out / f"{name}.csv")
        tables[name] = table.drop(columns=[c for c in table if "run" in c or "wall" in c])
    return tables


def test_a_study_killed_mid_way_and_rerun_ends_with_the_uninterrupted_table(tmp_path):
    """The smoke study, once straight through and once with a SIGTERM to `bytelab compare` (a `kill`)
    at step 2 of the first run to start after 3 have finished: the killed one exits 130 with one line,
    its runs in flight marked interrupted; the rerun resumes them and its tables equal the straight
    run's to the last digit."""
    data = fox_corpus(tmp_path)
    cache = tmp_path / "cache"

    flag = tmp_path / "armed"  # absent: the straight study is never signalled
    straight, _, straight_out = smoke_study(tmp_path, "straight", flag, data)
    done = bytelab(straight, cache)
    assert done.returncode == 0, done.stderr[-3000:]

    flag.write_text("")
    killed_args, runs, killed_out = smoke_study(tmp_path, "killed", flag, data)
    killed = bytelab(killed_args, cache)
    assert killed.returncode == 130 and not flag.exists(), killed.stderr[-3000:]
    assert [line for line in killed.stderr.splitlines() if line.startswith("bytelab")] == [
        "bytelab compare: interrupted; the runs in progress are marked interrupted in their run.json, "
        "run the same command again to resume them"
    ]
    statuses = [json.loads(p.read_text())["status"] for p in runs.glob("*/run.json")]
    assert statuses.count("finished") >= 3 and "interrupted" in statuses and len(statuses) < 9
    assert not (killed_out / "table.csv").exists()

    rerun = bytelab(killed_args, cache)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "  resume  " in rerun.stdout
    for name, table in results(straight_out).items():
        pd.testing.assert_frame_equal(results(killed_out)[name], table, check_exact=True, obj=name)


# ---------------------------------------------------------------------------------------------------
# The plan of a study


def test_the_plan_counts_the_runs_their_flops_and_the_gpu_hours_they_take(capsys):
    """The smoke preset: 3 architectures x 3 budgets (2e8 + 4e8 + 8e8) x 1 seed, no tuning: 4.2e9
    training FLOPs; GPU-hours are those FLOPs over the H100's bf16 peak at each MFU; the largest run
    reads what its budget buys of the cheapest model (built here on the meta device)."""
    import torch

    from experiments.cli import main
    from experiments.compare import GPU_PEAK_FLOPS, PRESETS, configure, training_bytes_per_flop
    from experiments.sweep import expand_main
    from modules.base import build_model
    from modules.sizes import model_config

    assert main(["compare", "--preset", "smoke", "--print_commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "# plan of compare_smoke: 0 tuning runs at 2e+08 FLOPs (and up to 0 past the rate grids' edges), "
        "then 9 grid runs: 3 rows x 3 budgets 2e+08-8e+08 FLOPs x 1 seeds"
    )
    assert lines[1].startswith("# training FLOPs: 4.2e+09 at most (0 tuning, 4.2e+09 grid)")
    hours = 4.2e9 / (GPU_PEAK_FLOPS * 0.35) / 3600
    assert f"{hours:.3g} at the decoder's measured 35%" in lines[2]
    assert len([line for line in lines if line.startswith("bytelab fit ")]) == 9
    run = expand_main(configure(PRESETS["smoke"]))[0]  # the decoder at 64-byte windows
    with torch.device("meta"):
        model = build_model(model_config("decoder", "cpu-xs", d_model=32, n_layers=1, max_seq_len=64))
    assert training_bytes_per_flop(run) == model.scored_len(64) / (3 * model.forward_flops(64))
    most = max(training_bytes_per_flop(r) for r in expand_main(configure(PRESETS["smoke"])))
    assert lines[3].startswith(f"# the largest run trains on {8e8 * most:.3g} bytes")


def test_analyze_writes_the_context_tables_and_plot_with_the_reference_rows(tmp_path):
    """Run directories of a context study (three families at two windows, 2 seeds): analyze writes
    context (with the compressor rows), crossover and bpb_vs_context; the family column names the
    registered architecture whatever the sweep's label."""
    from analysis.report import analyze
    from tests.test_analysis import write_run

    for label, family in (("decoder", "Decoder"), ("decoder_windowed", "Decoder"), ("megabyte", "Megabyte")):
        for window, bpb in ((128, 2.6), (512, 2.5)):
            for seed in (0, 1):
                value = bpb + 0.01 * seed + (0.2 if label == "megabyte" and window == 128 else 0)
                data = {"class": "TextBytes", "name": "shakespeare", "id": "abc123", "seq_len": window}
                data |= {"score_len": 64, "max_eval_bytes": 16384}
                sweep = {"id": f"{label}-w{window}-{seed}", "size": "S1", "seed": seed, "stage": "main"}
                sweep |= {"architecture": label, "variant": f"{label}-w{window}"}
                run = write_run(
                    tmp_path / "runs", f"{family}-w{window}-{label}", "S1", 1e12, value, seed, data=data
                )
                manifest = json.loads((run / "run.json").read_text())
                manifest["model"]["class"] = family
                manifest["sweep"] = sweep
                (run / "run.json").write_text(json.dumps(manifest))
    report = analyze([tmp_path / "runs"], tmp_path / "out")
    names = {p.name for p in report.files}
    assert {"context.md", "crossover.md", "bpb_vs_context.png", "bpb_vs_context.pdf"} <= names
    assert set(report.context["family"].dropna()) == {"Decoder", "Windowed decoder", "Megabyte"}
    assert "| zlib -9 |" in (tmp_path / "out" / "context.md").read_text()
    crossover = report.crossover.set_index("window")
    assert crossover.loc[128, "ahead"] == "flat" and crossover.loc[512, "ahead"] == "tie"
