"""Analysis: power-law fits on synthetic runs, tables on hand-made frames, bad input messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.collect import collect
from analysis.fits import PowerLaw, compute_multipliers, fit_frontiers, fit_power_law
from analysis.plots import COLORS, architecture_color
from analysis.report import analyze
from analysis.tables import grid_table, paper_table, to_latex, to_markdown
from experiments.cli import main
from experiments.manifest import write_json_atomic

LAWS = {  # true L(C) per architecture
    "Decoder": PowerLaw(l_inf=1.2, c0=1e9, alpha=0.15, rmse=0, points=0),
    "Megabyte": PowerLaw(l_inf=1.1, c0=3e8, alpha=0.12, rmse=0, points=0),
}
BUDGETS = [1e12, 3e12, 1e13, 3e13, 1e14]


def write_run(root: Path, arch: str, size: str, budget: float, bpb: float, **changes: object) -> Path:
    """A finished run directory as `bytelab fit` leaves it (run.json only: what analysis reads)."""
    run_dir = root / f"{arch}-{size}-c{budget:g}"
    params = {"S1": 1_000_000, "S2": 3_000_000}[size]
    steps = 10
    manifest = {
        "format_version": 1,
        "status": "finished",
        "sweep": {"id": run_dir.name, "size": size, "seed": 0},
        "model": {
            "class": arch,
            "params": {"total": params, "non_embedding": params - 5000},
            "flops_per_byte": {"inference": 2 * params, "training": 6 * params, "seq_len": 256},
        },
        "data": {
            "class": "TextBytes",
            "name": "shakespeare",
            "id": "abc123",
            "seq_len": 256,
            "score_len": 128,
            "max_eval_bytes": None,
        },
        "budget": {"flops": budget, "bytes": None, "max_steps": steps},
        "step": steps,
        "bytes_seen": int(budget / (6 * params)),
        "flops_seen": budget,
        "metrics": {"final": {"val/bpb": bpb}, "best": {"val/bpb": {"value": bpb, "step": steps}}},
        "history": [
            {"step": s, "flops_seen": budget * s / steps, "val/bpb": bpb + (steps - s) / 10} for s in (5, 10)
        ],
        "wall_time_s": 1.0,
    }
    for key, value in changes.items():
        manifest[key] = value
    write_json_atomic(run_dir / "run.json", manifest)
    return run_dir


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    """Two sizes per architecture at every budget; the frontier follows LAWS, the other size is worse."""
    root = tmp_path / "runs"
    for arch, law in LAWS.items():
        for i, budget in enumerate(BUDGETS):
            best, other = ("S1", "S2") if i < 2 else ("S2", "S1")
            write_run(root, arch, best, budget, float(law.loss(budget)))
            write_run(root, arch, other, budget, float(law.loss(budget)) + 0.05)
    return root


def test_fit_recovers_a_known_law():
    """Noise-free points give the law back to rounding (measured: 1e-13 relative); points with 0.2%
    noise give the curve back within the noise (alpha off by 0.56%, rmse 0.0018 for noise of rms
    0.0020: three fitted parameters absorb a little of it)."""
    compute = np.geomspace(1e11, 1e15, 6)
    true = PowerLaw(l_inf=0.9, c0=2e9, alpha=0.2, rmse=0, points=0)
    exact = fit_power_law(compute, true.loss(compute))
    assert exact.alpha == pytest.approx(0.2, rel=1e-9) and exact.l_inf == pytest.approx(0.9, rel=1e-9)
    assert exact.c0 == pytest.approx(2e9, rel=1e-9) and exact.rmse < 1e-12 and exact.points == 6
    noise = 0.002 * np.array([1, -1, 0.5, -0.5, 1, -1]) * true.loss(compute)
    fit = fit_power_law(compute, true.loss(compute) + noise)
    assert fit.alpha == pytest.approx(0.2, rel=0.01)
    assert 0.5 * np.sqrt(np.mean(noise**2)) < fit.rmse <= np.sqrt(np.mean(noise**2))
    assert np.abs(fit.loss(compute) - true.loss(compute)).max() < np.abs(noise).max()


def test_fit_needs_three_budgets():
    with pytest.raises(ValueError, match="at least 3 distinct budgets"):
        fit_power_law(np.array([1e12, 1e12, 2e12]), np.array([3.0, 2.9, 2.8]))


def test_fits_from_synthetic_run_directories(runs_root):
    runs, curves = collect([runs_root])
    assert len(runs) == 20 and set(curves["split"]) == {"val"}
    fits = fit_frontiers(runs).set_index("architecture")
    for arch, law in LAWS.items():
        assert fits.loc[arch, "alpha"] == pytest.approx(law.alpha, rel=1e-6)
        assert fits.loc[arch, "c0"] == pytest.approx(law.c0, rel=1e-6)
        assert fits.loc[arch, "l_inf"] == pytest.approx(law.l_inf, rel=1e-6)
        assert fits.loc[arch, "rmse"] < 1e-9 and fits.loc[arch, "points"] == len(BUDGETS)
    multipliers = compute_multipliers(fit_frontiers(runs)).set_index("architecture")
    loss = multipliers.loc["Megabyte", "loss"]
    expected = LAWS["Megabyte"].compute(loss) / LAWS["Decoder"].compute(loss)
    assert multipliers.loc["Megabyte", "multiplier"] == pytest.approx(expected, rel=1e-6)


def test_a_new_architecture_needs_nothing_in_analysis(runs_root, tmp_path):
    """Runs of an architecture analysis has never heard of get a row, a fit and a colour of their own
    (stable, and none of the named three's)."""
    law = PowerLaw(l_inf=1.0, c0=5e8, alpha=0.13, rmse=0, points=0)
    for budget in BUDGETS:
        write_run(runs_root, "Hourglass", "S1", budget, float(law.loss(budget)))
    report = analyze([runs_root], tmp_path / "out")
    assert "Hourglass" in set(report.paper["architecture"]) and "Hourglass" in set(
        report.fits["architecture"]
    )
    assert architecture_color("Hourglass") == architecture_color("Hourglass")
    assert architecture_color("Hourglass") not in COLORS.values()
    assert len({architecture_color(name) for name in ("Hourglass", "SpaceByte", "Mamba")}) > 1


def test_analyze_writes_tables_and_plots(runs_root, tmp_path):
    report = analyze([runs_root], tmp_path / "out")
    names = {p.name for p in report.files}
    for stem in ("table", "grid", "fits"):
        assert {f"{stem}.md", f"{stem}.csv", f"{stem}.tex"} <= names
    for stem in ("bpb_vs_training_flops", "bpb_vs_inference_flops", "learning_curves"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    assert all(p.stat().st_size > 0 for p in report.files)
    table = pd.read_csv(tmp_path / "out" / "table.csv")
    assert table["architecture"].tolist() == ["Megabyte", "Decoder"]  # best first
    assert table["budget"].tolist() == [1e14, 1e14]


def frame(**columns: list) -> pd.DataFrame:
    base = {
        "run_dir": ["a", "b", "c", "d"],
        "dataset": ["pg19"] * 4,
        "architecture": ["Decoder", "Decoder", "Megabyte", "Megabyte"],
        "size": ["S1", "S2", "S1", "S2"],
        "budget_flops": [1e12] * 4,
        "flops_seen": [1e12] * 4,
        "params": [1e6, 3e6, 2e6, 5e6],
        "params_non_embedding": [1e6, 3e6, 2e6, 5e6],
        "inference_flops_per_byte": [2e6, 6e6, 1e6, 2e6],
        "steps": [10] * 4,
        "bytes_seen": [1e5] * 4,
        "val_bpb": [1.2, 1.1, 1.05, 1.08],
        "wall_time_s": [1.0] * 4,
    }
    return pd.DataFrame({**base, **columns})


def test_paper_table_on_a_hand_made_frame():
    table = paper_table(frame())
    assert table.columns.tolist() == [
        "architecture",
        "size",
        "params",
        "inference FLOPs/byte",
        "budget",
        "pg19 val bpb",
    ]
    assert table.values.tolist() == [
        ["Megabyte", "S1", 2e6, 1e6, 1e12, 1.05],
        ["Decoder", "S2", 3e6, 6e6, 1e12, 1.1],
    ]
    assert to_markdown(table).splitlines()[2] == "| Megabyte | S1 | 2.00M | 1e+06 | 1e+12 | 1.0500 |"
    latex = to_latex(table)
    assert (
        latex.startswith("\\begin{tabular}{llrrrr}") and "pg19 val bpb" in latex and "\\bottomrule" in latex
    )


def test_paper_table_with_two_datasets_has_a_column_each():
    two = pd.concat(
        [frame(), frame(dataset=["arxiv"] * 4, run_dir=list("efgh"), val_bpb=[0.9, 0.8, 0.7, 0.75])]
    )
    table = paper_table(two)
    assert {"arxiv val bpb", "pg19 val bpb", "size (arxiv)", "size (pg19)"} <= set(table.columns)
    assert table.set_index("architecture").loc["Megabyte", "arxiv val bpb"] == 0.7


def test_grid_marks_the_compute_optimal_size():
    grid = grid_table(frame())
    assert grid.loc[grid["compute_optimal"], "size"].tolist() == ["S2", "S1"]


def test_mixed_datasets_without_a_dataset_column_are_refused():
    mixed = frame(dataset_id=["x", "x", "y", "y"]).drop(columns="dataset")
    with pytest.raises(ValueError, match="2 different datasets .*no dataset column"):
        paper_table(mixed)


def test_a_budget_not_shared_by_every_architecture_is_refused():
    with pytest.raises(ValueError, match="no FLOP budget is shared"):
        paper_table(frame(budget_flops=[1e12, 1e12, 2e12, 2e12]))


def analyze_error(capsys: pytest.CaptureFixture, *paths: Path) -> str:
    assert main(["analyze", *map(str, paths), "--out", str(paths[0].parent / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bytelab: error: ")
    return err


def test_bad_input_names_the_directory(tmp_path, runs_root, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: no run.json in it or below it" in analyze_error(capsys, empty)
    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "sub" / "notes.txt").write_text("hello")
    assert f"{foreign}: no run.json" in analyze_error(capsys, foreign)
    assert "does not exist" in analyze_error(capsys, tmp_path / "missing")

    half = tmp_path / "half"
    half.mkdir()
    (half / "run.json").write_text('{"status": "runn')
    assert f"{half}/run.json is not valid JSON" in analyze_error(capsys, half)

    running = write_run(tmp_path / "more", "Decoder", "S1", 1e12, 2.0, status="running")
    assert f"{running}: the run is running, not finished" in analyze_error(capsys, running)

    no_model = write_run(tmp_path / "more", "Decoder", "S2", 1e12, 2.0, model=None)
    del_model = json.loads((no_model / "run.json").read_text())
    del del_model["model"]
    (no_model / "run.json").write_text(json.dumps(del_model))
    assert f"{no_model}/run.json has no model" in analyze_error(capsys, no_model)

    other = write_run(
        tmp_path / "other",
        "Decoder",
        "S1",
        1e12,
        2.0,
        data={
            "class": "TextBytes",
            "name": "shakespeare",
            "id": "abc123",
            "seq_len": 512,
            "score_len": 128,
            "max_eval_bytes": None,
        },
    )
    error = analyze_error(capsys, runs_root, other)
    assert str(other) in error and "seq_len=256 vs 512" in error
