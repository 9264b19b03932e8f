"""Analysis: power-law fits on synthetic runs, tables on hand-made frames, bad input messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.collect import collect
from analysis.fits import (
    PowerLaw,
    bootstrap_fit,
    compute_multipliers,
    fit_frontiers,
    fit_power_law,
    frontier,
    points,
)
from analysis.plots import COLORS, architecture_color, seed_curves
from analysis.report import analyze, describe
from analysis.tables import (
    fits_table,
    grid_table,
    lr_tuning_table,
    paper_display,
    paper_table,
    ranking_table,
    to_latex,
    to_markdown,
)
from datamodules.reference import ROWS, RULE
from experiments.cli import main
from experiments.manifest import write_json_atomic

LAWS = {  # true L(C) per architecture
    "Decoder": PowerLaw(l_inf=1.2, c0=1e9, alpha=0.15, rmse=0, points=0),
    "Megabyte": PowerLaw(l_inf=1.1, c0=3e8, alpha=0.12, rmse=0, points=0),
}
BUDGETS = [1e12, 3e12, 1e13, 3e13, 1e14]
# The reference rows a run records (datamodules/reference.py), for the val and test split.
REFERENCE = {
    "rule": RULE,
    "splits": {
        split: {"bytes": 1000, "bpb": {row: 2.0 + i / 10 for i, row in enumerate(ROWS)}}
        for split in ("val", "test")
    },
}


def write_run(
    root: Path,
    arch: str,
    size: str,
    budget: float,
    bpb: float,
    seed: int = 0,
    lr: float | None = None,
    stage: str = "main",
    **changes: object,
) -> Path:
    """A finished run directory as `bytelab fit` leaves it (run.json only: what analysis reads)."""
    run_dir = (
        root / f"{arch}-{size}-c{budget:g}-seed{seed}" if stage == "main" else root / f"{arch}-{size}-lr{lr}"
    )
    params = {"S1": 1_000_000, "S2": 3_000_000}[size]
    steps = 10
    sweep = {"id": run_dir.name, "size": size, "seed": seed, "stage": stage}
    manifest = {
        "format_version": 1,
        "status": "finished",
        "sweep": sweep if lr is None else sweep | {"lr": lr},
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
        "reference": REFERENCE,
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


def test_fit_refuses_too_few_or_too_close_budgets():
    """3 parameters on 3 points pass through them exactly (rmse 0), and a span of 5x says nothing
    about an exponent: a fit needs 5 distinct budgets over at least 10x."""
    law = PowerLaw(l_inf=0.9, c0=2e9, alpha=0.2, rmse=0, points=0)
    three = np.array([1e12, 1e12, 1e13, 1e14])
    with pytest.raises(
        ValueError, match="at least 5 distinct budgets over at least 10x .*got 3 budgets over 100x"
    ):
        fit_power_law(three, law.loss(three))
    close = np.geomspace(1e12, 5e12, 5)
    with pytest.raises(ValueError, match="got 5 budgets over 5x"):
        fit_power_law(close, law.loss(close))
    wide = np.geomspace(1e12, 1e14, 5)
    assert fit_power_law(wide, law.loss(wide)).alpha == pytest.approx(0.2, rel=1e-6)


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
    assert {"ranking.md", "ranking.csv", "ranking.tex"} <= names and "lr_tuning.md" not in names
    assert all(p.stat().st_size > 0 for p in report.files)
    table = pd.read_csv(tmp_path / "out" / "table.csv")
    assert table["architecture"].tolist() == ["Megabyte", "Decoder", *ROWS]  # best first, then references
    assert table["budget"].tolist()[:2] == [1e14, 1e14]
    assert table["shakespeare val bpb"].tolist()[2:] == [2.0 + i / 10 for i in range(len(ROWS))]
    assert RULE in (tmp_path / "out" / "table.md").read_text()


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
    spread = ["pg19 val bpb std", "pg19 val bpb min", "pg19 val bpb max", "pg19 seeds"]
    assert table.columns.tolist() == [
        "architecture",
        "size",
        "params",
        "inference FLOPs/byte",
        "budget",
        "pg19 val bpb",
        *spread,
    ]
    assert table.drop(columns="pg19 val bpb std").values.tolist() == [
        ["Megabyte", "S1", 2e6, 1e6, 1e12, 1.05, 1.05, 1.05, 1],
        ["Decoder", "S2", 3e6, 6e6, 1e12, 1.1, 1.1, 1.1, 1],
    ]
    assert table["pg19 val bpb std"].isna().all()  # one seed: no std
    assert (
        to_markdown(paper_display(table)).splitlines()[2]
        == "| Megabyte | S1 | 2.00M | 1e+06 | 1e+12 | 1.0500 ± - | 1.0500-1.0500 | 1 |"
    )
    latex = to_latex(paper_display(table))
    assert (
        latex.startswith("\\begin{tabular}{llrrrrrr}")
        and "pg19 val bpb (mean $\\pm$ std)" in latex
        and "\\bottomrule" in latex
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
            "max_eval_bytes": 4096,
        },
    )
    error = analyze_error(capsys, runs_root, other)
    assert str(other) in error and "score different bytes" in error and "max_eval_bytes=None vs 4096" in error


def seeded(rows: dict[tuple[str, str, float], list[float]], **columns: list) -> pd.DataFrame:
    """A runs frame: (architecture, size, budget) -> val bpb of seeds 0, 1, 2, ... in that order."""
    records = [
        {
            "run_dir": f"{arch}-{size}-{budget:g}-seed{seed}",
            "dataset": "pg19",
            "architecture": arch,
            "size": size,
            "seed": seed,
            "stage": "main",
            "budget_flops": budget,
            "flops_seen": budget,
            "params": {"S1": 1e6, "S2": 3e6}[size],
            "params_non_embedding": 1e6,
            "inference_flops_per_byte": 2e6,
            "val_bpb": bpb,
        }
        for (arch, size, budget), values in rows.items()
        for seed, bpb in enumerate(values)
    ]
    return pd.DataFrame(records).assign(**columns)


def test_points_aggregate_seeds_and_the_frontier_picks_by_mean():
    """S1: 1.0, 1.2, 1.1 -> mean 1.1, std 0.1 (ddof=1), min 1.0, max 1.2, 3 seeds. S2 has the single
    best seed (0.98) but a worse mean (1.14): the table and the frontier take S1."""
    runs = seeded({("Decoder", "S1", 1e12): [1.0, 1.2, 1.1], ("Decoder", "S2", 1e12): [0.98, 1.2, 1.24]})
    runs["test_bpb"] = [2.0, np.nan, 2.2, 2.0, 2.0, 2.0]
    point = points(runs).set_index("size").loc["S1"]
    assert point["val_bpb"] == pytest.approx(1.1) and point["val_bpb_std"] == pytest.approx(0.1)
    assert (point["val_bpb_min"], point["val_bpb_max"], point["seeds"]) == (1.0, 1.2, 3)
    assert point["test_bpb"] == pytest.approx(2.1)  # the mean of the seeds that recorded one
    assert point["test_bpb_std"] == pytest.approx(np.std([2.0, 2.2], ddof=1))
    assert frontier(runs)["size"].tolist() == ["S1"]
    table = paper_table(runs).iloc[0]
    assert table["size"] == "S1" and table["pg19 val bpb"] == pytest.approx(1.1)
    assert table["pg19 val bpb std"] == pytest.approx(0.1) and table["pg19 seeds"] == 3
    assert table["pg19 test bpb"] == pytest.approx(2.1)
    shown = paper_display(paper_table(runs))
    assert shown["pg19 val bpb (mean ± std)"][0] == "1.1000 ± 0.1000"
    assert shown["pg19 val bpb min-max"][0] == "1.0000-1.2000"
    grid = grid_table(runs)
    assert len(grid) == 6 and grid.loc[grid["compute_optimal"], "seed"].tolist() == [0, 1, 2]


def ranked(decoder: list[float], megabyte: list[float], megabyte_seeds: list[int]) -> pd.Series:
    runs = seeded({("Decoder", "S1", 1e12): decoder, ("Megabyte", "S1", 1e12): megabyte})
    runs.loc[runs["architecture"] == "Megabyte", "seed"] = megabyte_seeds
    return ranking_table(runs).iloc[0]


def test_ranking_counts_seeds_and_calls_a_difference_below_the_spread_a_tie():
    # Megabyte's rows come in seed order 2, 0, 1: runs pair by seed, not by row.
    clear = ranked([1.00, 1.02, 1.04], [1.12, 1.10, 1.11], [2, 0, 1])
    assert clear["architecture"] == "Decoder" and clear["next"] == "Megabyte" and clear["verdict"] == "ranked"
    assert clear["seeds holding"] == "3/3" and clear["claim"].startswith("Decoder < Megabyte in 3/3 seeds")
    assert clear["spread"] == pytest.approx(0.02) and clear["difference"] == pytest.approx(0.09)
    # Seeds 0, 1, 2: Decoder 1.00, 1.02, 1.04; Megabyte 1.00, 1.03, 1.06 (rows 2, 0, 1). Mean
    # difference 0.01 < spread 0.03 (Megabyte's std): a tie; the order holds in seeds 1 and 2.
    tie = ranked([1.00, 1.02, 1.04], [1.06, 1.00, 1.03], [2, 0, 1])
    assert tie["verdict"] == "tie" and tie["seeds holding"] == "2/3"
    assert tie["claim"].startswith("tie: |difference| 0.010 < spread 0.030")
    table = ranking_table(
        seeded({("Decoder", "S1", 1e12): [1.0, 1.02, 1.04], ("Megabyte", "S1", 1e12): [1.06, 1.0, 1.03]})
    )
    assert table["rank"].tolist() == [1, 1]  # a tie shares the rank
    one = ranked([1.0], [1.5], [0])
    assert one["verdict"] == "no claim" and one["claim"].endswith("1 seed: no spread, no ranking claim")


def noisy_seeds(noise: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """6 budgets over 1e4x, 3 seeds each, on a known law (alpha 0.2) with fixed relative noise."""
    law = PowerLaw(l_inf=0.9, c0=2e9, alpha=0.2, rmse=0, points=0)
    draws = np.random.default_rng(7).standard_normal((6, 3))
    return [
        (np.full(3, c), law.loss(c) * (1 + noise * z))
        for c, z in zip(np.geomspace(1e11, 1e15, 6), draws, strict=True)
    ]


def test_bootstrap_interval_holds_the_true_exponent_and_narrows_with_less_noise():
    """Measured: 2% noise gives alpha in [0.166, 0.238], 0.5% in [0.190, 0.209] (true 0.2)."""
    wide, narrow = bootstrap_fit(noisy_seeds(0.02)), bootstrap_fit(noisy_seeds(0.005))
    for ci in (wide, narrow):
        assert ci["alpha_lo"] < 0.2 < ci["alpha_hi"] and ci["l_inf_lo"] < 0.9 < ci["l_inf_hi"]
        assert ci["resamples"] == 200 and "seeds within budgets" in ci["ci"]
    assert narrow["alpha_hi"] - narrow["alpha_lo"] < 0.5 * (wide["alpha_hi"] - wide["alpha_lo"])
    assert bootstrap_fit(noisy_seeds(0.02)) == wide  # a fixed seed: the same interval every time
    one_seed = bootstrap_fit([(c[:1], loss[:1]) for c, loss in noisy_seeds(0.005)])
    assert one_seed["ci"] == "90% percentile, points (1 seed per budget)" and one_seed["resamples"] == 200


def fit_row(arch: str, lo: float, hi: float, alpha: float = 0.2) -> dict:
    fit = {"l_inf": 0.5, "c0": 1e9, "alpha": alpha, "rmse": 0.0, "points": 5}
    return {"dataset": "pg19", "architecture": arch, "min_bpb": lo, "max_bpb": hi, **fit}


def test_a_multiplier_needs_overlapping_frontiers_and_two_fits():
    fits = pd.DataFrame(
        [fit_row("Decoder", 1.0, 1.2), fit_row("Megabyte", 1.5, 1.8), fit_row("Hourglass", 1.1, 1.4, np.nan)]
        + [fit_row("SpaceByte", 1.1, 1.6, 0.25)]
    )
    out = compute_multipliers(fits).set_index("architecture")
    assert np.isnan(out.loc["Megabyte", "multiplier"])
    assert out.loc["Megabyte", "why no multiplier"].startswith(
        "frontiers do not overlap: Megabyte covers 1.5000-1.8000"
    )
    assert np.isnan(out.loc["Hourglass", "multiplier"])
    assert out.loc["Hourglass", "why no multiplier"] == "no fit for Hourglass"
    # Both cover 1.1-1.2: read at 1.15, where C = c0 / (L - l_inf)^(1/alpha).
    assert out.loc["SpaceByte", "loss"] == pytest.approx(1.15)
    expected = (1e9 / 0.65 ** (1 / 0.25)) / (1e9 / 0.65 ** (1 / 0.2))
    assert (
        out.loc["SpaceByte", "multiplier"] == pytest.approx(expected)
        and out.loc["SpaceByte", "why no multiplier"] == ""
    )


def test_lr_tuning_picks_the_lowest_bpb_and_stays_out_of_the_main_table():
    runs = seeded({("Decoder", "S1", 1e12): [1.3, 1.31, 1.32], ("Megabyte", "S1", 1e12): [1.2, 1.22, 1.24]})
    runs["lr"] = [3e-3] * 3 + [1e-3] * 3
    tune = seeded(
        {("Decoder", "S1", 1e12): [1.4, 1.2, 1.5], ("Megabyte", "S1", 1e12): [1.1, 1.15, 0.5]},
        stage="tune",
        seed=0,
        lr=[1e-3, 3e-3, 1e-2, 1e-3, 3e-3, 1e-2],
    )
    tune["run_dir"] += "-tune"
    runs = pd.concat([runs, tune], ignore_index=True)
    table = lr_tuning_table(runs)
    chosen = table[table["chosen"]].set_index("architecture")["lr"]
    assert chosen.to_dict() == {"Decoder": 3e-3, "Megabyte": 1e-2}
    edges = table[table["chosen"]].set_index("architecture")["at the edge"]
    assert edges.to_dict() == {"Decoder": "", "Megabyte": "highest"}  # 1e-2 is the top rate tried
    assert (table.loc[~table["chosen"], "at the edge"] == "").all()
    assert len(table) == 6 and table["used by main runs"].sum() == 2  # Megabyte's main runs used 1e-3
    paper = paper_table(runs).set_index("architecture")  # the 0.5 tuning run is not a main result
    assert (
        paper.loc["Megabyte", "pg19 val bpb"] == pytest.approx(1.22)
        and paper.loc["Megabyte", "pg19 seeds"] == 3
    )
    assert len(grid_table(runs)) == 12


@pytest.fixture
def seeds_root(tmp_path: Path) -> Path:
    """3 seeds of 2 architectures at 5 budgets over 100x (noise 0.5%), and 3 tuning runs each."""
    root = tmp_path / "seeds"
    noise = np.random.default_rng(3).standard_normal((2, len(BUDGETS), 3))
    for a, (arch, law) in enumerate(LAWS.items()):
        for i, budget in enumerate(BUDGETS):
            for seed in range(3):
                bpb = float(law.loss(budget)) * (1 + 0.005 * noise[a, i, seed])
                write_run(root, arch, "S1", budget, bpb, seed=seed, lr=1e-3)
        for lr, extra in ((3e-4, 0.2), (1e-3, 0.0), (3e-3, 0.1)):
            write_run(root, arch, "S1", BUDGETS[0], float(law.loss(BUDGETS[0])) + extra, lr=lr, stage="tune")
    return root


def test_analyze_with_seeds_and_tuning(seeds_root, tmp_path):
    report = analyze([seeds_root], tmp_path / "out")
    names = {p.name for p in report.files}
    assert {"ranking.md", "ranking.csv", "ranking.tex", "lr_tuning.md", "lr_tuning.csv"} <= names
    assert report.paper["shakespeare seeds"].tolist() == [3, 3]
    fits = report.fits.set_index("architecture")
    for arch in LAWS:
        assert fits.loc[arch, "alpha_lo"] < fits.loc[arch, "alpha"] < fits.loc[arch, "alpha_hi"]
        assert fits.loc[arch, "points"] == 5 and fits.loc[arch, "seeds"] == 3 and fits.loc[arch, "why"] == ""
    text = describe(report)
    assert text.index("Learning-rate tuning") < text.index("shakespeare val bpb (mean ± std)")
    assert "Megabyte < Decoder in 3/3 seeds" in text
    tuning = pd.read_csv(tmp_path / "out" / "lr_tuning.csv")
    assert tuning.loc[tuning["chosen"], "lr"].tolist() == [1e-3, 1e-3]


def test_too_few_budgets_say_why_there_is_no_fit(runs_root):
    three = [p for p in runs_root.iterdir() if "c1e+13" not in p.name and "c3e+13" not in p.name]
    fits = fit_frontiers(collect(three)[0])
    table = fits_table(fits, compute_multipliers(fits)).set_index("architecture")
    assert table["alpha"].isna().all() and table["alpha_lo"].isna().all()
    why = "no fit: 3 budgets over 100x; a fit needs at least 5 over at least 10x"
    assert table["why"].tolist() == [why, why]
    assert table.loc["Megabyte", "why no multiplier"] == "no fit for Megabyte and Decoder"
    assert table.loc["Decoder", "why no multiplier"] == "the reference"


def test_learning_curves_aggregate_seeds():
    runs = seeded({("Decoder", "S1", 1e12): [1.0, 1.2, 1.1]})
    curves = pd.DataFrame(
        [
            {"run_dir": run, "split": "val", "step": step, "flops": flops, "bpb": bpb}
            for run, base in zip(runs["run_dir"], [2.0, 2.4, 2.2], strict=True)
            for step, flops, bpb in ((5, 5e11, base), (10, 1e12, base - 1))
        ]
    )
    lines = seed_curves(runs, curves)
    assert lines["mean"].tolist() == pytest.approx([2.2, 1.2]) and lines["seeds"].tolist() == [3, 3]
    assert lines["min"].tolist() == [2.0, 1.0] and lines["max"].tolist() == [2.4, 1.4]


def test_run_rows_carry_lr_stage_and_variant_labels(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "Decoder", "S1", 1e12, 2.0, config={"model": {"lr": 2e-3}})  # the resolved config wins
    write_run(root, "Decoder", "S2", 1e12, 2.0, lr=3e-3, stage="tune")  # else the sweep's lr
    write_run(root, "Megabyte", "S1", 1e12, 2.0, seed=1)
    no_local = write_run(root, "Megabyte", "S2", 1e12, 2.0, seed=2)
    manifest = json.loads((no_local / "run.json").read_text())
    manifest["sweep"]["variant"] = "no_local"
    write_json_atomic(no_local / "run.json", manifest)
    runs = collect([root])[0].set_index("size")
    decoder = runs[runs["variant"] == "Decoder"]
    assert decoder["lr"].tolist() == [2e-3, 3e-3] and decoder["stage"].tolist() == ["main", "tune"]
    megabyte = runs[runs["variant"] != "Decoder"]
    assert megabyte["lr"].isna().all() and megabyte["seed"].tolist() == [1, 2]
    # One class under two sweep labels: each label is its own architecture, seeds never pooled.
    assert megabyte["architecture"].tolist() == ["Megabyte", "no_local"]


def test_the_two_registered_decoders_keep_their_names(tmp_path):
    """decoder and decoder_windowed are both the Decoder class: their rows are "Decoder" (so the
    compute multipliers' default reference still finds it) and "Windowed decoder", never pooled."""
    root = tmp_path / "runs"
    for seed, variant in enumerate(["decoder", "decoder_windowed"]):
        run = write_run(root, "Decoder", "S1", 1e12, 2.0 + seed, seed=seed)
        manifest = json.loads((run / "run.json").read_text())
        manifest["sweep"]["variant"] = variant
        write_json_atomic(run / "run.json", manifest)
    runs = collect([root])[0].sort_values("seed")
    assert runs["architecture"].tolist() == ["Decoder", "Windowed decoder"]


def test_configurations_compare_on_the_same_bytes_and_the_table_names_each_ones_choice(tmp_path):
    """A decoder tuned over two windows: runs that score the same bytes compare whatever their
    windows; the main table says each architecture's window and windows per step, and the
    config_tuning table marks the candidate of lowest val bpb at its best rate (w128x8: 2.6 at 3e-3,
    against w1024x1's best, 2.9 at 1e-3), per size (S2 chooses w1024x1)."""

    def data(seq_len: int, batch: int) -> dict[str, object]:
        return {
            "class": "TextBytes",
            "name": "shakespeare",
            "id": "abc123",
            "seq_len": seq_len,
            "score_len": seq_len // 2,
            "batch_size": batch,
            "max_eval_bytes": 32768,
        }

    root = tmp_path / "runs"
    tuned = {("w1024x1", 1e-3): 2.9, ("w1024x1", 3e-3): 3.1, ("w128x8", 1e-3): 3.0, ("w128x8", 3e-3): 2.6}
    for (config, lr), bpb in tuned.items():
        seq_len, batch = (1024, 1) if config == "w1024x1" else (128, 8)
        run = write_run(
            root / config, "Decoder", "S1", 1e11, bpb, lr=lr, stage="tune", data=data(seq_len, batch)
        )
        manifest = json.loads((run / "run.json").read_text())
        manifest["sweep"]["config"] = config
        write_json_atomic(run / "run.json", manifest)
    for config, bpb in (("w1024x1", 2.7), ("w128x8", 2.8)):  # a second size chooses on its own
        seq_len, batch = (1024, 1) if config == "w1024x1" else (128, 8)
        run = write_run(
            root / f"S2-{config}",
            "Decoder",
            "S2",
            1e11,
            bpb,
            lr=1e-3,
            stage="tune",
            data=data(seq_len, batch),
        )
        manifest = json.loads((run / "run.json").read_text())
        manifest["sweep"]["config"] = config
        write_json_atomic(run / "run.json", manifest)
    for seed, bpb in enumerate((2.5, 2.52)):
        run = write_run(root / "main", "Decoder", "S1", 1e12, bpb, seed=seed, data=data(128, 8))
        manifest = json.loads((run / "run.json").read_text())
        manifest["sweep"] |= {"config": "w128x8", "lr": 3e-3}
        write_json_atomic(run / "run.json", manifest)
    write_run(root / "main", "Megabyte", "S1", 1e12, 2.7, data=data(1024, 1))
    report = analyze([root], tmp_path / "out")
    decoder = report.paper.set_index("architecture").loc["Decoder"]
    assert (decoder["size"], decoder["window"], decoder["windows/step"]) == ("S1 w128x8", 128, 8)
    assert report.paper.set_index("architecture").loc["Megabyte", "window"] == 1024
    configs = report.configs.set_index("configuration")
    chosen = {"S1 w128x8": True, "S1 w1024x1": False, "S2 w1024x1": True, "S2 w128x8": False}
    assert configs["chosen"].to_dict() == chosen
    assert configs.loc["S1 w128x8", "best lr"] == 3e-3 and configs.loc["S1 w1024x1", "best lr"] == 1e-3
    assert configs.loc["S1 w128x8", "val_bpb"] == pytest.approx(2.6)
    assert (tmp_path / "out" / "config_tuning.md").is_file()
