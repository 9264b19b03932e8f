"""Sweeps: expansion into runs with stable ids, skip finished, resume interrupted, cluster commands."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from experiments.cli import main
from experiments.manifest import SWEEP_INFO, write_json_atomic
from experiments.sweep import (
    REPO,
    Architecture,
    Sweep,
    budget_tag,
    expand,
    expand_main,
    expand_tuning,
    group,
    plan,
    run_sweep,
    tuned_lrs,
    worker_launcher,
)
from modules.sizes import SIZES

SPEC = {
    "name": "demo",
    "run_root": "RUNS",
    "configs": ["experiments/configs/data/text.yaml"],
    "budgets": [1e12, 2.5e11],
    "seeds": [0, 1],
    "architectures": {
        "decoder": {"sizes": ["cpu-xs", "cpu-s"]},
        "megabyte": {"sizes": ["cpu-xs"], "options": {"model.lr": 0.002}},
    },
    "options": {"data.init_args.seq_len": 256, "trainer.enable_progress_bar": False},
}


def make(tmp_path: Path, **changes: object) -> Sweep:
    return Sweep.from_dict({**SPEC, "run_root": str(tmp_path / "runs"), **changes})


def test_expansion_ids_and_arguments(tmp_path):
    runs = expand(make(tmp_path))
    assert len(runs) == (2 + 1) * 2 * 2
    assert runs[0].id == "decoder-cpu-xs-c1e12-seed0" and runs[-1].id == "megabyte-cpu-xs-c2.5e11-seed1"
    assert len({r.id for r in runs}) == len(runs)
    assert [r.id for r in expand(make(tmp_path))] == [r.id for r in runs]  # stable
    args = runs[-1].args
    assert args[0] == "fit" and args[1].endswith("experiments/configs/data/text.yaml")
    assert "--model.model=modules.Megabyte" in args and "--model.lr=0.002" in args
    width = SIZES["megabyte"]["cpu-xs"]["global_d_model"]
    assert f"--model.model.init_args.global_d_model={width}" in args
    assert "--trainer.enable_progress_bar=false" in args and "--budget.flops=250000000000.0" in args
    assert "--seed_everything=1" in args and args[-2:] == [
        f"--run_dir={runs[-1].run_dir}",
        "--ckpt_path=last",
    ]


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_shipped_sweep_file_reads_and_expands(path, tmp_path):
    """The sweep files the README runs parse, and expand into distinct runs whose configs exist
    (in an empty run root: no finished tuning run extends the rates)."""
    sweep = Sweep.from_yaml(path)
    sweep.run_root = str(tmp_path)
    runs = expand_tuning(sweep) + expand_main(sweep)  # the grid before its rates are tuned
    assert runs and len({r.run_dir for r in runs}) == len(runs)
    for config in (a.split("=", 1)[1] for a in runs[0].args if a.startswith("--config=")):
        assert Path(config).is_file(), config
    assert len(expand_tuning(sweep)) == sweep.tune_seeds * sum(
        len(spec.lrs or sweep.lrs) * len(spec.candidates())
        for spec in sweep.architectures.values()
        if "model.lr" not in spec.options
    )


def test_budget_tags():
    assert [budget_tag(b) for b in (1e12, 2.5e11, 3e5, 300.0)] == ["1e12", "2.5e11", "3e5", "300"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"architectures": {"transformer": {"sizes": ["S1"]}}}, "unknown architecture 'transformer'"),
        ({"architectures": {"decoder": {"sizes": ["huge"]}}}, "unknown size 'huge' for decoder"),
        ({"architectures": {"decoder": {}}}, "lists no sizes"),
        ({"budgets": []}, "give budgets"),
        ({"budget": [1e12]}, "unknown keys"),
    ],
)
def test_bad_sweeps(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **change)


def test_skip_finished_resume_interrupted_start_new(tmp_path):
    sweep = make(tmp_path, seeds=[0])
    finished, interrupted, new = expand(sweep)[:3]
    for run, status in [(finished, "finished"), (interrupted, "running")]:
        write_json_atomic(run.run_dir / SWEEP_INFO, run.info)
        write_json_atomic(
            run.run_dir / "run.json", {"status": status, "metrics": {"final": {"val/bpb": 2.0}}}
        )
    (interrupted.run_dir / "checkpoints").mkdir()
    (interrupted.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert [plan(r) for r in (finished, interrupted, new)] == ["skip", "resume", "start"]

    launched = []
    failed = run_sweep(sweep, launch=lambda run: launched.append(run.id) or 0, echo=lambda line: None)
    assert failed == [] and finished.id not in launched
    assert {interrupted.id, new.id} <= set(launched) and len(launched) == len(expand(sweep)) - 1
    assert json.loads((new.run_dir / SWEEP_INFO).read_text())["args"] == new.args


def fake_run(val_bpb: dict, by: tuple[str, ...] = ("lr",), default: float | None = None):
    """A launcher that finishes a run at once, its final val/bpb looked up by its learning rate (or by
    the run-info fields ``by``, as a tuple); runs not in ``val_bpb`` get ``default`` where given."""

    def launch(run):
        key = tuple(run.info[name] for name in by) if len(by) > 1 else run.info[by[0]]
        val = val_bpb[key] if default is None else val_bpb.get(key, default)
        write_json_atomic(
            run.run_dir / "run.json", {"status": "finished", "metrics": {"final": {"val/bpb": val}}}
        )
        return 0

    return launch


def test_an_architecture_tunes_over_its_own_rates_where_it_names_them(tmp_path):
    """megabyte's own lrs replace the sweep's for it alone; the decoder keeps the sweep's; past an
    edge each steps by its own grid's ratio; the plan line names both grids."""
    spec = {
        "decoder": {"sizes": ["cpu-xs"]},
        "megabyte": {"sizes": ["cpu-xs"], "lrs": [1e-3, 2e-3]},
    }
    sweep = make(tmp_path, lrs=[4e-3, 8e-3], lr_extend=1, architectures=spec)
    assert [r.id for r in expand_tuning(sweep)] == [
        "tune-decoder-cpu-xs-lr0.004-c2.5e11-seed0",
        "tune-decoder-cpu-xs-lr0.008-c2.5e11-seed0",
        "tune-megabyte-cpu-xs-lr0.001-c2.5e11-seed0",
        "tune-megabyte-cpu-xs-lr0.002-c2.5e11-seed0",
    ]
    lines = []
    vals = {8e-3: 3.1, 4e-3: 3.0, 2e-3: 3.0, 1e-3: 2.9, 5e-4: 2.95}  # val bpb by rate, for both
    assert run_sweep(sweep, launch=fake_run(vals), echo=lines.append) == []
    assert lines[0].startswith(
        "sweep demo: tuning the learning rate of each architecture over its own rates "
        "(decoder [0.004, 0.008], megabyte [0.001, 0.002])"
    )
    # decoder: 4e-3 best at the low edge, one step of /2 further (2e-3: 3.0, a tie kept at 4e-3);
    # megabyte: 1e-3 best at the low edge, one step of /2 further (5e-4: 2.95, worse).
    assert tuned_lrs(sweep) == {("decoder", "cpu-xs"): 4e-3, ("megabyte", "cpu-xs"): 1e-3}
    megabyte = {r.info["lr"] for r in expand_tuning(sweep) if r.info["variant"] == "megabyte"}
    assert megabyte == {5e-4, 1e-3, 2e-3}
    with pytest.raises(ValueError, match="lrs of megabyte must be a list of distinct positive learning"):
        make(tmp_path, architectures={"megabyte": {"sizes": ["cpu-xs"], "lrs": [1e-3, -1.0]}})


def test_learning_rates_are_tuned_per_architecture_before_the_grid(tmp_path):
    sweep = make(tmp_path, lrs=[1e-3, 3e-3, 1e-2])
    tuning = [r for r in expand_tuning(sweep)]
    # decoder is tuned at both its sizes, megabyte keeps its fixed model.lr; the smallest budget, seed 0.
    assert [r.id for r in tuning] == [
        f"tune-decoder-{size}-lr{lr}-c2.5e11-seed0"
        for size in ("cpu-xs", "cpu-s")
        for lr in ("0.001", "0.003", "0.01")
    ]
    assert all(r.info["stage"] == "tune" and f"--model.lr={r.info['lr']}" in r.args for r in tuning)
    with pytest.raises(ValueError, match="tuning run .* is not started: run the sweep"):
        expand(sweep)
    launched = []
    launch = fake_run({1e-3: 3.1, 3e-3: 2.9, 1e-2: 3.4, 0.002: 3.0})
    failed = run_sweep(
        sweep, launch=lambda run: launched.append(run.id) or launch(run), echo=lambda line: None
    )
    assert failed == [] and launched[:6] == [r.id for r in tuning]  # tuning first, then the grid
    assert tuned_lrs(sweep) == {("decoder", "cpu-xs"): 3e-3, ("decoder", "cpu-s"): 3e-3}
    grid = expand(sweep)[6:]
    decoder = [r for r in grid if r.info["variant"] == "decoder"]
    assert len(grid) == 12 and all("--model.lr=0.003" in r.args and r.info["lr_tuned"] for r in decoder)
    megabyte = [r for r in grid if r.info["variant"] == "megabyte"]
    assert all(r.info["lr"] == 0.002 and not r.info["lr_tuned"] for r in megabyte)
    assert sorted(launched[6:]) == sorted(r.id for r in grid)
    budgets = [next(r.info["budget_flops"] for r in grid if r.id == run_id) for run_id in launched[6:]]
    assert budgets == sorted(budgets, reverse=True)  # the longest runs first: no core idles at the end


def test_tuning_goes_past_the_edge_of_the_grid_while_the_best_rate_sits_there(tmp_path):
    """lr_extend=2: decoder's loss falls with the rate past the grid's top, so tuning adds 4e-3 and
    8e-3 (one grid step each, after the runs before them) and stops at the limit; megabyte's best
    is the grid's bottom once, so it adds 5e-4 and stops when 1e-3 wins again. Without lr_extend
    the grid is tuned as given."""
    sweep = make(tmp_path, lrs=[1e-3, 2e-3], seeds=[0], budgets=[1e12], lr_extend=2)
    sweep.architectures["megabyte"].options.pop("model.lr")
    vals = {
        ("decoder", 1e-3): 3.3,
        ("decoder", 2e-3): 3.2,
        ("decoder", 4e-3): 3.1,
        ("decoder", 8e-3): 3.0,
        ("megabyte", 1e-3): 2.9,
        ("megabyte", 2e-3): 3.0,
        ("megabyte", 5e-4): 2.95,
    }
    launched = []

    def launch(run):
        launched.append(run.id)
        lr = run.info["lr"]
        val = vals[(run.info["variant"], lr)]
        write_json_atomic(
            run.run_dir / "run.json", {"status": "finished", "metrics": {"final": {"val/bpb": val}}}
        )
        return 0

    lines = []
    assert run_sweep(sweep, launch=launch, echo=lines.append) == []
    assert "(and up to 2 more each way past an edge)" in lines[0]
    # 3 (architecture, size) groups x 2 rates, then their grids of 1 run; each group may add 2 rates.
    assert "sweep demo: 9 runs, 0 finished, 9 to run (and up to 6 tuning runs past the grids' edges)" in lines
    assert "  learning rate of megabyte cpu-xs: best at an edge, also trying 0.0005" in lines
    tuning = [r for r in expand_tuning(sweep) if r.info["size"] == "cpu-xs"]
    rates = {
        label: [r.info["lr"] for r in tuning if r.info["variant"] == label]
        for label in ("decoder", "megabyte")
    }
    assert rates == {"decoder": [1e-3, 2e-3, 4e-3, 8e-3], "megabyte": [1e-3, 2e-3, 5e-4]}
    order = [i for i in launched if "decoder-cpu-xs" in i]
    assert order[:4] == [r.id for r in tuning if r.info["variant"] == "decoder"]  # each after the last
    assert (
        tuned_lrs(sweep)[("decoder", "cpu-xs")] == 8e-3 and tuned_lrs(sweep)[("megabyte", "cpu-xs")] == 1e-3
    )
    assert all("--model.lr=0.008" in r.args for r in expand(sweep) if r.id.startswith("decoder-cpu-xs"))
    sweep.lr_extend = 0
    assert len([r for r in expand_tuning(sweep) if r.info["size"] == "cpu-xs"]) == 4  # 2 rates x 2 models
    with pytest.raises(ValueError, match="lr_extend must be a whole number of rates >= 0"):
        make(tmp_path, lrs=[1e-3], lr_extend=-1)


def test_tuning_with_several_seeds_ranks_rates_by_their_mean(tmp_path):
    """tune_seeds=2: every rate runs with seeds 0 and 1 and the rate of the lowest mean wins. Seed 0
    alone ranks 1e-3 first (3.00 < 3.10) and seed 1 disagrees by more (3.40 > 3.05), so a choice
    made on one seed would pick 1e-3; the mean picks 3e-3. The extension past the edge uses the
    mean too: 3e-3 is the top of the grid, so 9e-3 runs with both seeds and loses (mean 3.25)."""
    sweep = make(tmp_path, lrs=[1e-3, 3e-3], seeds=[0, 1, 2], budgets=[1e12], tune_seeds=2, lr_extend=1)
    sweep.architectures = {"decoder": Architecture(sizes=["cpu-xs"])}
    vals = {
        (1e-3, 0): 3.00,
        (1e-3, 1): 3.40,
        (3e-3, 0): 3.10,
        (3e-3, 1): 3.05,
        (9e-3, 0): 3.2,
        (9e-3, 1): 3.3,
    }

    launch = fake_run(vals, by=("lr", "seed"), default=3.0)  # the grid's runs: any value
    lines = []
    assert run_sweep(sweep, launch=launch, echo=lines.append) == []
    tuning = expand_tuning(sweep)
    assert [(r.info["lr"], r.info["seed"]) for r in tuning] == [
        (1e-3, 0),
        (1e-3, 1),
        (3e-3, 0),
        (3e-3, 1),
        (9e-3, 0),
        (9e-3, 1),
    ]  # seed 2 only in the grid
    assert tuned_lrs(sweep) == {("decoder", "cpu-xs"): 3e-3}
    assert "  learning rate of decoder cpu-xs: 0.003 (lowest mean val bpb over 2 seeds, 6 runs)" in lines
    assert "each rate with seeds [0, 1]" in lines[0]
    assert all("--model.lr=0.003" in r.args for r in expand(sweep) if r.info["stage"] == "main")
    sweep.tune_seeds, sweep.lr_extend = 1, 0
    assert tuned_lrs(sweep) == {("decoder", "cpu-xs"): 1e-3}  # what seed 0 alone would have chosen
    for bad in (0, 4, 1.5):
        with pytest.raises(
            ValueError, match=r"tune_seeds must be a whole number from 1 to the number of seeds \(3\)"
        ):
            make(tmp_path, seeds=[0, 1, 2], tune_seeds=bad)


def test_configurations_are_tuned_with_the_rate_and_the_best_runs_the_grid(tmp_path):
    """configs: each candidate (a window and batch, one with its own size) is tuned over lrs, and
    the grid runs only the candidate of the lowest val bpb at its own best rate, with its options
    and its name in the run's info (so in run.json). w128x8 at 3e-3 (2.60) beats w1024x1's best
    (2.90 at 1e-3) though w1024x1 wins at 1e-3; the s-sized candidate never wins."""
    configs = {
        "w1024x1": {"data.init_args.seq_len": 1024, "data.init_args.batch_size": 1},
        "w128x8": {"data.init_args.seq_len": 128, "data.init_args.batch_size": 8},
        "s-w128x8": {"size": "cpu-s", "data.init_args.seq_len": 128, "data.init_args.batch_size": 8},
    }
    sweep = make(tmp_path, lrs=[1e-3, 3e-3], seeds=[0, 1], budgets=[1e12], tune_budget=2.5e11)
    sweep.architectures = {"decoder": Architecture(sizes=["cpu-xs"], configs=configs)}
    vals = {
        ("w1024x1", 1e-3): 2.90,
        ("w1024x1", 3e-3): 3.10,
        ("w128x8", 1e-3): 2.95,
        ("w128x8", 3e-3): 2.60,
        ("s-w128x8", 1e-3): 2.80,
        ("s-w128x8", 3e-3): 2.70,
    }

    launch = fake_run(vals, by=("config", "lr"), default=2.5)  # the grid's runs: any value
    lines = []
    assert run_sweep(sweep, launch=launch, echo=lines.append) == []
    tuning = expand_tuning(sweep)
    assert [r.id for r in tuning] == [
        f"tune-decoder-{name}-lr{lr}-c2.5e11-seed0" for name in configs for lr in ("0.001", "0.003")
    ]
    assert {r.info["size"] for r in tuning if r.info["config"] == "s-w128x8"} == {"cpu-s"}
    assert all("--data.init_args.seq_len=128" in r.args for r in tuning if "w128" in r.id)
    assert tuned_lrs(sweep) == {("decoder", n): lr for n, lr in zip(configs, (1e-3, 3e-3, 3e-3), strict=True)}
    assert "sweep demo: 8 runs, 0 finished, 8 to run" in lines  # 6 tuning runs, then 2 seeds of one
    assert "  configuration of decoder: w128x8 (lowest val bpb of its candidates at their rates)" in lines
    grid = expand(sweep)[len(tuning) :]
    assert [r.id for r in grid] == ["decoder-w128x8-c1e12-seed0", "decoder-w128x8-c1e12-seed1"]
    for run in grid:
        assert run.info["config"] == "w128x8" and run.info["size"] == "cpu-xs" and run.info["lr"] == 3e-3
        assert run.info["config_options"] == configs["w128x8"]
        assert {"--data.init_args.seq_len=128", "--data.init_args.batch_size=8", "--model.lr=0.003"} <= set(
            run.args
        )
    with pytest.raises(ValueError, match="configs, which are chosen by tuning runs: give lrs"):
        Sweep.from_dict({**SPEC, "architectures": {"decoder": {"sizes": ["cpu-xs"], "configs": configs}}})


def test_the_configuration_of_lowest_mean_over_tuning_seeds_wins_and_is_in_run_json(tmp_path):
    """tune_seeds=2: seed 0 alone would choose w1024x1 (2.80 against 2.85), the mean over seeds 0 and 1
    chooses w128x8 (2.70 against 2.90); the grid's run.json info names it and its options."""
    configs = {
        "w1024x1": {"data.init_args.seq_len": 1024, "data.init_args.batch_size": 1},
        "w128x8": {"data.init_args.seq_len": 128, "data.init_args.batch_size": 8},
    }
    sweep = make(tmp_path, lrs=[1e-3], seeds=[0, 1], tune_seeds=2, budgets=[1e12], tune_budget=2.5e11)
    sweep.architectures = {"decoder": Architecture(sizes=["cpu-xs"], configs=configs)}
    vals = {("w1024x1", 0): 2.80, ("w1024x1", 1): 3.00, ("w128x8", 0): 2.85, ("w128x8", 1): 2.55}

    launch = fake_run(vals, by=("config", "seed"), default=2.5)  # the grid's runs: any value
    assert run_sweep(sweep, launch=launch, echo=lambda line: None) == []
    grid = expand(sweep)[len(expand_tuning(sweep)) :]
    assert [r.id for r in grid] == ["decoder-w128x8-c1e12-seed0", "decoder-w128x8-c1e12-seed1"]
    for run in grid:  # what `bytelab fit` writes into run.json's "sweep"
        assert run.info["config"] == "w128x8" and run.info["config_options"] == configs["w128x8"]


def test_a_tuned_grid_starts_without_waiting_for_other_architectures_tuning(tmp_path):
    """With 2 jobs, decoder cpu-s's last tuning run holds until a decoder cpu-xs grid run starts:
    that happens only if cpu-xs's grid joins the queue when its own tuning ends (before, every grid
    waited for all tuning, and this sweep would stop with the flag unset after the timeout)."""
    sweep = make(tmp_path, lrs=[1e-3, 3e-3], seeds=[0], budgets=[1e12])
    grid_started = threading.Event()
    record = fake_run({1e-3: 3.1, 3e-3: 2.9, 0.002: 3.0})
    last_tuning = [r for r in expand_tuning(sweep) if r.info["size"] == "cpu-s"][-1].id

    def launch(run):
        if run.id == last_tuning:
            grid_started.wait(timeout=30)
        elif run.info["stage"] == "main" and group(run) == ("decoder", "cpu-xs"):
            grid_started.set()
        return record(run)

    assert run_sweep(sweep, jobs=2, launch=launch, echo=lambda line: None) == []
    assert grid_started.is_set()
    assert all((r.run_dir / "run.json").is_file() for r in expand(sweep))


def test_seeds_are_distinct(tmp_path):
    with pytest.raises(ValueError, match="seeds must be a non-empty list of distinct integers"):
        make(tmp_path, seeds=[0, 0])
    with pytest.raises(ValueError, match="lrs must be distinct positive"):
        make(tmp_path, lrs=[1e-3, -1.0])


def test_a_directory_with_other_options_is_an_error(tmp_path):
    run = expand(make(tmp_path))[0]
    write_json_atomic(run.run_dir / SWEEP_INFO, {**run.info, "args": [*run.args[:-1], "--model.lr=1"]})
    with pytest.raises(ValueError, match=f"{run.run_dir} was run with other options"):
        plan(run)


def test_failed_runs_are_reported(tmp_path):
    sweep = make(tmp_path, seeds=[0], budgets=[1e12])
    failed = run_sweep(sweep, launch=lambda run: 1, echo=lambda line: None)
    assert len(failed) == len(expand(sweep))


def test_print_commands_and_slurm(tmp_path, capsys):
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "run_root": str(tmp_path / "runs")}))
    assert main(["sweep", str(path), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    runs = expand(Sweep.from_yaml(path))
    assert [shlex.split(line)[1:] for line in lines] == [r.args for r in runs]
    assert all(line.startswith("bytelab fit ") for line in lines)
    assert main(["sweep", str(path), "--print-slurm"]) == 0
    script = tmp_path / "sweep.sbatch"
    script.write_text(capsys.readouterr().out)
    assert "#SBATCH --array=0-11\n" in script.read_text()  # 2 budgets x 2 seeds x 3 (arch, size)
    for task in (0, 7, 11):
        assert run_array_task(script, task, tmp_path) == runs[task].args


def run_array_task(script: Path, task: int, tmp_path: Path) -> list[str]:
    """Run the SLURM script as array task ``task`` with stand-ins for ``srun`` (runs its command) and
    ``bytelab`` (records its arguments): the arguments the task would really launch bytelab with."""
    bin_dir, record = tmp_path / "bin", tmp_path / f"argv{task}.json"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    recorder = "import json, os, sys; open(os.environ['RECORD'], 'w').write(json.dumps(sys.argv[1:]))"
    (bin_dir / "bytelab").write_text(f"#!{sys.executable}\n{recorder}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": str(task), "RECORD": str(record)}
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=60)
    return json.loads(record.read_text())


def test_missing_sweep_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err


def test_threads_apply_to_in_process_runs_and_are_restored(tmp_path):
    torch.set_num_threads(2)
    seen = []
    run_sweep(
        make(tmp_path, seeds=[0], budgets=[1e12]),
        launch=lambda run: seen.append(torch.get_num_threads()) or 0,
        echo=lambda line: None,
        threads=1,
    )
    assert set(seen) == {1} and torch.get_num_threads() == 2


def test_data_and_config_read_as_bytelab_fit_reads_them(tmp_path, capsys):
    """``--data`` is a DataModule config on fit's default data (not a whole config file): it replaces
    the sweep's data config in every run, under the sweep's own ``data.*`` options; ``--config``
    holds any option, and the old hyphenated spelling reads as the new one."""
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "run_root": str(tmp_path / "runs"), "budgets": [1e12]}))
    data = tmp_path / "data.yaml"
    data.write_text("class_path: datamodules.TextBytes\ninit_args: {paths: corpus, seq_len: 64}\n")
    options = tmp_path / "options.yaml"
    options.write_text(f"data: {data}\nprint_commands: true\n")
    assert main(["sweep", str(path), f"--config={options}", "--data.init_args.batch_size=3"]) == 0
    args = shlex.split(capsys.readouterr().out.splitlines()[0])[1:]
    assert not any("configs/data/" in arg for arg in args)
    given = json.loads(next(arg for arg in args if arg.startswith("--data={")).split("=", 1)[1])
    # paths, seq_len and batch_size as given; the other values from fit's default data config.
    assert given["class_path"] == "datamodules.TextBytes" and given["init_args"]["paths"] == "corpus"
    assert given["init_args"]["batch_size"] == 3 and given["init_args"]["eval_batch_size"] is None
    assert args.index(f"--data={json.dumps(given)}") < args.index("--data.init_args.seq_len=256")
    assert main(["sweep", str(path), "--print-commands", "--data.init_args.paths=corpus"]) == 0
    assert '"paths": "corpus"' in capsys.readouterr().out


@pytest.mark.parametrize(
    "cores,runs,params,gpus,expected",
    [
        (2, 18, 1e6, 0, (2, 1)),  # this VM, bytelab compare's tiny models: both cores, one thread each
        (1, 18, 1e6, 0, (1, 1)),
        (2, 1, 1e6, 0, (1, 2)),  # one run left: it gets the idle core
        (64, 18, 1e6, 0, (18, 3)),  # a node: every run at once, the spare cores as threads
        (64, 100, 1e6, 0, (64, 1)),
        (64, 100, 50e6, 0, (32, 2)),
        (64, 18, 300e6, 0, (16, 4)),
        (8, 4, 2e9, 0, (1, 8)),  # a big model takes the whole laptop
        (64, 18, 300e6, 8, (8, 8)),  # one run per GPU
    ],
)
def test_parallelism_is_chosen_from_cores_runs_and_model_size(cores, runs, params, gpus, expected):
    from experiments.perf import choose_parallelism

    jobs, threads = choose_parallelism(cores, runs, int(params), gpus)
    assert (jobs, threads) == expected and jobs * threads <= max(cores, threads)


def smoke_grid(tmp_path: Path, name: str, seeds: list[int]) -> Sweep:
    smoke = yaml.safe_load((REPO / "experiments" / "sweeps" / "compare_smoke.yaml").read_text())
    smoke["architectures"] = {"decoder": smoke["architectures"]["decoder"]}
    smoke |= {"budgets": [2.0e8], "seeds": seeds, "run_root": str(tmp_path / name)}
    grid = Sweep.from_dict(smoke)
    grid.configs = [str(REPO / c) for c in grid.configs]
    return grid


def final_numbers(grid: Sweep) -> list[tuple[float, float]]:
    manifests = [json.loads((run.run_dir / "run.json").read_text()) for run in expand(grid)]
    return [(m["metrics"]["final"]["val/bpb"], m["flops_seen"]) for m in manifests]


@pytest.mark.slow  # six tiny `bytelab fit` runs, three in worker processes
def test_runs_side_by_side_give_the_numbers_of_runs_one_after_another(tmp_path, monkeypatch):
    """The same three seeded runs, one at a time in this process and two at a time in worker
    processes (one thread each; one worker runs two runs one after the other): the same final bits
    per byte and FLOPs, to the last digit."""
    monkeypatch.setenv("BYTELAB_CACHE", str(tmp_path / "cache"))
    results = []
    for jobs in (1, 2):
        grid = smoke_grid(tmp_path, f"jobs{jobs}", [0, 1, 2])
        assert run_sweep(grid, jobs=jobs, inline=jobs == 1, threads=1, echo=lambda line: None) == []
        results.append(final_numbers(grid))
    assert results[0] == results[1] and len(set(results[0])) == 3  # seeds differ, jobs do not


@pytest.mark.slow  # four tiny `bytelab fit` runs and two worker start-ups
def test_a_worker_is_reused_and_a_dead_one_replaced(tmp_path, monkeypatch):
    """One job's runs share one worker process; a worker that died (killed between runs) is replaced
    by a new one for the next run, which gives the numbers it gives in a fresh process."""
    monkeypatch.setenv("BYTELAB_CACHE", str(tmp_path / "cache"))
    grid = smoke_grid(tmp_path, "workers", [0, 1, 2])
    runs = expand(grid)
    launch, workers = worker_launcher(threads=1)
    try:
        for run in runs:
            run.run_dir.mkdir(parents=True)
        assert launch(runs[0]) == 0 and launch(runs[1]) == 0 and len(workers) == 1
        workers[0].process.kill()
        workers[0].process.wait()
        assert launch(runs[2]) == 0 and len(workers) == 2 and workers[1].alive()
    finally:
        for worker in workers:
            worker.close()
    assert not workers[1].alive()  # closed at the end of its input
    inline = smoke_grid(tmp_path, "inline", [0, 1, 2])
    assert run_sweep(inline, jobs=1, inline=True, threads=1, echo=lambda line: None) == []
    assert final_numbers(grid) == final_numbers(inline)
