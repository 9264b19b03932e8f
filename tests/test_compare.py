"""`bytelab compare` end to end on its smoke preset: 9 tiny runs, the analysis, then a rerun that skips."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from datamodules.reference import ROWS
from experiments.cli import main
from experiments.compare import compare, configure
from experiments.subcommand import parser_for
from experiments.sweep import REPO

from .conftest import fox_corpus

SMOKE = REPO / "experiments" / "sweeps" / "compare_smoke.yaml"


@pytest.fixture
def data_config(tmp_path: Path) -> Path:
    return fox_corpus(tmp_path)


def test_compare_smoke_preset(tmp_path, data_config, capsys, monkeypatch):
    monkeypatch.setenv("BYTELAB_CACHE", str(tmp_path / "cache"))
    args = ["compare", "--sweep", str(SMOKE), "--data", str(data_config), "--runs", str(tmp_path / "runs")]
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sweep compare_smoke: 9 runs, 0 finished, 9 to run" in printed
    assert "| architecture | size | window | windows/step | params |" in printed
    assert "corpus val bpb" in printed
    table = pd.read_csv(out / "table.csv")
    models, reference = table[:3], table[3:].set_index("architecture")["corpus val bpb"]
    assert sorted(models["architecture"]) == ["Decoder", "Megabyte", "PerceiverAR"]
    assert (models["budget"] == 8e8).all() and (models["corpus val bpb"] < 7.6).all()  # measured 6.06-7.23
    assert list(reference.index) == ROWS and reference["xz -9e | train"] < reference["xz -9e"]
    assert "| zlib -9 | train |" in printed.replace("\\|", "|")
    grid = pd.read_csv(out / "grid.csv")
    assert len(grid) == 9 + len(ROWS) and (grid["flops_seen"][:9] <= grid["budget_flops"][:9]).all()
    assert {"bpb_vs_training_flops.png", "learning_curves.pdf"} <= {p.name for p in out.iterdir()}

    assert main([*args, "--out", str(out)]) == 0  # everything finished: only the analysis reruns
    assert "9 runs, 9 finished, 0 to run" in capsys.readouterr().out


def test_compare_options(tmp_path):
    parser = parser_for(compare, "bytelab compare")
    args = parser.parse_args(["--budgets", "2e12", "1e12", "--device", "gpu", "--sizes", "S1"])
    assert args.budgets == [2e12, 1e12] and args.device == "gpu" and args.sizes == ["S1"]
    config = tmp_path / "compare.yaml"
    config.write_text("budgets: [2.0e+12]\nsizes: [S1, S2]\njobs: 2\n")
    args = parser.parse_args([f"--config={config}", "--jobs=3"])
    assert args.budgets == [2e12] and args.sizes == ["S1", "S2"] and args.jobs == 3


def test_compare_chooses_architectures_seeds_and_learning_rates(tmp_path):
    grid = configure(SMOKE, architectures=["megabyte", "decoder"], seeds=[0, 1, 2], lrs=[1e-3, 2e-3])
    assert list(grid.architectures) == ["megabyte", "decoder"] and grid.seeds == [0, 1, 2]
    assert grid.lrs == [1e-3, 2e-3] and grid.architectures["megabyte"].options  # the sweep's entry
    with pytest.raises(ValueError, match="--architectures: unknown transformer; known: "):
        configure(SMOKE, architectures=["transformer"])
    # A sweep that tunes with 2 seeds, given 1 on the command line, tunes with that one.
    spec = yaml.safe_load(SMOKE.read_text()) | {"seeds": [0, 1, 2], "tune_seeds": 2}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(spec))
    assert configure(tmp_path / "two.yaml", seeds=[5, 6]).tune_seeds == 2
    assert configure(tmp_path / "two.yaml", seeds=[5]).tune_seeds == 1


def test_an_architecture_the_sweep_does_not_list_is_tuned_over_the_same_configurations():
    """The main job tunes each architecture's window and windows per step (``configs``); a family
    added with --architectures gets the first entry's candidates, not text.yaml's bare defaults."""
    grid = configure(REPO / "experiments" / "sweeps" / "compare.yaml", architectures=["decoder", "hourglass"])
    decoder, hourglass = grid.architectures["decoder"], grid.architectures["hourglass"]
    assert decoder.configs and hourglass.configs == decoder.configs
    assert hourglass.sizes == decoder.sizes and not hourglass.options


def test_the_main_job_writes_no_tracked_file(tmp_path, data_config, monkeypatch):
    """Without --out the analysis goes inside the run folder (git ignores runs/), never results/."""
    monkeypatch.setenv("BYTELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    args = ["compare", "--preset", "smoke", "--data", str(data_config), "--budgets", "2e8", "--seeds", "0"]
    assert main(args) == 0
    assert (tmp_path / "runs" / "compare_smoke" / "results" / "table.md").is_file()
    assert not (tmp_path / "results").exists()
