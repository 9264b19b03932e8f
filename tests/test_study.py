"""`bytelab study`: every study file parses and builds its models (meta device, no training), the
paper's numbers cover its rows, and one mini study runs end to end on a tiny corpus."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from analysis.paper import compare_with_paper, ordering
from analysis.paper_numbers import PAPER
from datamodules.reference import ROWS, RULE
from experiments.cli import main
from experiments.study import STUDIES, Study, configure
from experiments.sweep import expand
from modules.base import build_model
from modules.sizes import paper_counts

from .conftest import fox_corpus

NAMES = sorted(path.stem for path in STUDIES.glob("*.yaml"))


def model_config(args: list[str]) -> dict:
    """The model a `bytelab fit` command line builds: its class and init_args flags (last one wins)."""
    flags = dict(arg[2:].split("=", 1) for arg in args if arg.startswith("--model.model"))
    init_args = {
        key.removeprefix("model.model.init_args."): yaml.safe_load(value)
        for key, value in flags.items()
        if key.startswith("model.model.init_args.")
    }
    return {"class_path": flags["model.model"], "init_args": init_args}


def test_every_table_of_the_issue_has_a_study():
    expected = {"table2_text", "table5_images", "audio", "table10_ablations", "table12_patch_size"}
    expected |= {"table13_split", "table11_inference", "table16_scan_order", "table9_generation"}
    assert set(NAMES) == expected == set(PAPER)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", ["paper", "mini"])
def test_study_parses_and_builds_its_models(name, variant, monkeypatch):
    for module in ("decoder", "megabyte", "perceiver_ar"):  # shapes and FLOPs only: skip the init
        monkeypatch.setattr(f"modules.{module}.init_weights", lambda *args: None)
    study = Study.load(name)
    assert study.name == name
    labels = set()
    for part in study.parts(variant == "mini"):
        runs = expand(part.sweep)
        assert runs and len({r.run_dir for r in runs}) == len(runs)
        for run in runs:
            config = model_config(run.args)
            with torch.device("meta"):
                model = build_model(config)
            seq_len = yaml.safe_load(
                [a for a in run.args if a.startswith("--data.init_args.seq_len=")][-1].split("=", 1)[1]
            )
            assert model.max_seq_len >= seq_len and model.flops_per_byte(seq_len) > 0
            if variant == "paper":
                assert any("trainer/fsdp.yaml" in a for a in run.args)
            for options in [{}, *part.evaluations.values()]:
                check_data_windows(run.args, options)
            labels |= set(part.evaluations) or {run.info["variant"]}
        for label, row in study.rows.items():  # the paper has a number for every row it ran
            if label in labels or variant == "paper":
                assert row not in PAPER[name] or PAPER[name][row][part.column] > 0
    # Every row the paper ran runs in both variants; a row the paper lacks (Table 2's windowed
    # Transformer, SpaceByte's strongest flat baseline) runs in the mini only.
    in_paper = {label for label, row in study.rows.items() if row in PAPER[name]}
    assert labels == (in_paper if variant == "paper" else set(study.rows))


def check_data_windows(args: list[str], options: dict) -> None:
    """Build a run's image or audio DataModule (no files are read) with an evaluation's options on
    top: its windows must start on whole pixels, patches or samples, or the constructor says which."""
    init_args: dict = {}
    for arg in args:
        if arg.startswith("--config=") and "/data/" in arg:
            data = yaml.safe_load(Path(arg.split("=", 1)[1]).read_text())["data"]
            class_path, init_args = data["class_path"], dict(data.get("init_args") or {})
    flags = {
        a[2:].split("=", 1)[0]: yaml.safe_load(a.split("=", 1)[1]) for a in args if a.startswith("--data.")
    }
    for key, value in {**flags, **options}.items():
        if key.startswith("data.init_args."):
            init_args[key.removeprefix("data.init_args.")] = value
    if class_path in ("datamodules.ImageBytes", "datamodules.AudioBytes"):
        module, name = class_path.rsplit(".", 1)
        getattr(importlib.import_module(module), name)(**{**init_args, "paths": None})


def paper_size(text: str) -> float:
    """A size as the paper prints it: 758M, 1.3B."""
    return float(text[:-1]) * {"M": 1e6, "B": 1e9}[text[-1]]


@pytest.mark.parametrize("name", NAMES)
def test_paper_scale_models_have_the_papers_sizes(name, monkeypatch):
    """Every paper-scale model the paper gives a size for is within 10% of it, per stack (global,
    local), counted as the paper counts (modules.sizes.paper_counts); built on the meta device."""
    for module in ("decoder", "megabyte", "perceiver_ar"):
        monkeypatch.setattr(f"modules.{module}.init_weights", lambda *args: None)
    study = Study.load(name)
    checked = 0
    for part in study.paper:
        assert part.paper_params, f"{name} {part.column}: no paper_params"
        runs = {run.info["variant"]: run for run in expand(part.sweep)}
        assert set(part.paper_params) <= set(runs), f"{name} {part.column}: paper_params name no run"
        for label, sizes in part.paper_params.items():
            with torch.device("meta"):
                model = build_model(model_config(runs[label].args))
            ours = paper_counts(model)
            assert len(ours) == len(sizes), f"{name} {part.column} {label}: {ours} vs {sizes}"
            for count, size in zip(ours, sizes, strict=True):
                assert count == pytest.approx(paper_size(size), rel=0.10), (
                    f"{name} {part.column} {label}: {count / 1e6:.0f}M where the paper has {size}"
                )
                checked += 1
    assert checked


def test_paper_count_is_gpt3_naming():
    """The paper's names are GPT-3's (Table 2.1) scaled by layers: its 125M/350M/1.3B exactly."""
    from modules import Decoder

    for layers, width, heads, size in [(12, 768, 12, 125e6), (24, 1024, 16, 350e6), (24, 2048, 32, 1.3e9)]:
        with torch.device("meta"):
            model = Decoder(d_model=width, n_layers=layers, n_heads=heads, max_seq_len=2048)
        assert paper_counts(model)[0] == pytest.approx(size, rel=0.02)


def test_global_batch_is_fixed_in_every_paper_study():
    """Every paper-scale run fixes its global batch, a whole number of its windows per GPU on 1, 2, 4
    and 8 GPUs."""
    for name in NAMES:
        for part in Study.load(name).paper:
            for run in expand(part.sweep):
                flags = dict(a[2:].split("=", 1) for a in run.args if a.startswith("--") and "=" in a)
                batch, per_gpu = int(flags["global_batch"]), int(flags["data.init_args.batch_size"])
                assert all(batch % (per_gpu * gpus) == 0 for gpus in (1, 2, 4, 8)), run.id


def test_orderings_are_compared_pair_by_pair():
    long = pd.DataFrame(
        {"row": ["a", "b", "c"], "column": ["x"] * 3, "bpb": [1.0, 2.0, 3.0], "paper": [1.0, 3.0, 2.0]}
    )
    assert (
        ordering(long, "x")
        == "- x: ordering differs (2 of 3 pairs agree). Ours: a < b < c. Paper: a < c < b."
    )
    assert "ordering matches" in ordering(long.assign(paper=[0.5, 0.6, 0.7]), "x")


def test_seeds_from_the_command_line_replace_every_parts_and_bound_its_tuning_seeds():
    study = Study.load("table2_text")
    for p in study.parts(mini=True):
        p.sweep.seeds, p.sweep.tune_seeds = [0, 1, 2], 2
    configure(study, mini=True, runs=None, options=[], seeds=[7])
    assert all(p.sweep.seeds == [7] and p.sweep.tune_seeds == 1 for p in study.parts(mini=True))
    with pytest.raises(ValueError, match=r"--seeds \[1, 1\]: give distinct seeds"):
        configure(study, mini=True, runs=None, options=[], seeds=[1, 1])


def test_mini_inference_study_end_to_end(tmp_path, monkeypatch, capsys):
    """Table 11's mini on a tiny corpus and model: one training run, four evaluations, the table."""
    monkeypatch.setenv("BYTELAB_CACHE", str(tmp_path / "cache"))
    fox_corpus(tmp_path)
    corpus = tmp_path / "corpus"
    tiny = {"global_d_model": 32, "global_layers": 1, "local_d_model": 16, "local_layers": 1}
    sets = [f"model.model.init_args.{k}={v}" for k, v in tiny.items()] + [f"data.init_args.paths={corpus}"]
    out = tmp_path / "out"
    args = ["study", "table11_inference", "--mini", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    args += ["--seeds", "0"]  # the mini's own 3 seeds replaced by one
    assert main([*args, "--budgets", "3e9", "--set", *sets]) == 0
    table = pd.read_csv(out / "table.csv").set_index("row")  # bits per byte measured: 7.37-7.38
    rows = ["basic", "sliding window", "strided", "sliding window + strided"]
    assert list(table.index) == [*rows, *ROWS]  # then the reference rows on the same test bytes
    assert table.loc["xz -9e | train", "bpb"] < table.loc["xz -9e", "bpb"]
    table = table.loc[rows]
    assert (table["bpb"] < 7.7).all() and table.loc["basic", "paper"] == 0.9079
    # Reported: the test split of the checkpoint selected on validation, and what training spent.
    runs = list((tmp_path / "runs").rglob("evaluations/basic/run.json"))
    assert len(runs) == 1 and "test/bpb" in json.loads(runs[0].read_text())["metrics"]["final"]
    assert (table["val_bpb"] < 7.7).all()
    assert (table["train_flops"] > 0).all() and (table["train_bytes"] > 0).all()
    cost = table["flops_per_byte"]  # strided doubles the passes; sliding windows of 64 of 256 bytes, 4x
    assert cost["strided"] == pytest.approx(2 * cost["basic"], rel=0.05)
    assert cost["sliding window"] > 3 * cost["basic"]
    text = (out / "table.md").read_text()
    assert (
        "| basic |" in text and "PG-19: ordering" in text and "| order-0 entropy |" in text and RULE in text
    )
    assert {"ours_vs_paper.png", "learning_curves.png", "grid.md"} <= {p.name for p in out.iterdir()}
    assert main([*args, "--budgets", "3e9", "--set", *sets]) == 0  # all done: only the analysis again
    assert "0 to run" in capsys.readouterr().out


def test_study_tables_select_and_report_means_over_seeds():
    """A size with one lucky seed must not beat a better size on average; the reported number is the
    mean over seeds with its spread, and rows closer than the spread are called a tie."""
    study = Study.load("table10_ablations")
    row_a, row_b = list(study.rows)[:2]
    rows = []
    for label, size, bpbs in [
        (row_a, "lucky", [1.00, 1.60, 1.60]),  # best single seed, worse mean (1.40)
        (row_a, "steady", [1.20, 1.22, 1.24]),  # mean 1.22
        (row_b, "steady", [1.21, 1.25, 1.23]),  # mean 1.23: within row_a's spread
    ]:
        for seed, bpb in enumerate(bpbs):
            numbers = {"bpb": bpb, "val_bpb": bpb, "params": 1, "flops_per_byte": 1.0}
            rows.append(
                {"label": label, "column": "arXiv", "size": size, "seed": seed, "run_dir": "r", **numbers}
            )
    long = compare_with_paper(study, rows).set_index("row")
    a, b = study.rows[row_a], study.rows[row_b]
    assert long.loc[a, "size"] == "steady" and long.loc[a, "bpb"] == pytest.approx(1.22)
    assert long.loc[a, "bpb_std"] == pytest.approx(0.02) and long.loc[a, "seeds"] == 3
    assert f"{a} ~ {b}" in ordering(long.reset_index(), "arXiv")
    assert f"Seed by seed: {a} < {b} in 2/3 seeds." in ordering(long.reset_index(), "arXiv")
