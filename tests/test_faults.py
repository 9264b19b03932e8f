"""Faults a long study meets, each tried for real. ``pytest -m faults -v`` lists one line per fault."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from analysis.collect import collect
from analysis.plots import _save as save_plot
from analysis.tables import write_table
from datamodules import TextBytes
from datamodules.cache import cache_problem
from experiments.cli import main
from experiments.manifest import write_json_atomic
from modules import ByteLM, Decoder
from modules.checkpoint import CheckpointError, checkpoint_problem, load_checkpoint

from .test_cli import CONFIGS, ENTRY, REPO, bytelab
from .test_reference import reference_frame

pytestmark = pytest.mark.faults

RUN = [
    f"--config={CONFIGS / 'decoder_tiny.yaml'}",
    "--trainer.max_steps=12",
    "--trainer.val_check_interval=6",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.seq_len=64",
    "--data.init_args.batch_size=4",
    "--data.init_args.train_samples_per_epoch=16",  # 4 steps per epoch: resumes cross epochs
    "--model.model.init_args.dropout=0.1",  # dropout draws random numbers: the RNG state must resume too
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(5):
        (root / f"{i}.txt").write_bytes(b"now is the winter of our discontent\n" * (12 + i))
    return root


@pytest.fixture(scope="module")
def trained_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of RUN trained to the end, never interrupted (its checkpoints: best and last)."""
    run = tmp_path_factory.mktemp("uninterrupted")
    result = bytelab("fit", *RUN, f"--data.init_args.paths={corpus}", f"--run_dir={run}", cache=run / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def uninterrupted(trained_run: Path) -> dict:
    return load_checkpoint(trained_run / "checkpoints" / "last.ckpt")


def assert_same_training_state(final: dict, uninterrupted: dict) -> None:
    """Weights, optimiser moments and counters equal, bit for bit."""
    assert final["global_step"] == uninterrupted["global_step"] == 12
    assert final["bytelab"]["bytes_seen"] == uninterrupted["bytelab"]["bytes_seen"]
    for name, weight in uninterrupted["state_dict"].items():
        assert torch.equal(final["state_dict"][name], weight), name
    moments = [checkpoint["optimizer_states"][0]["state"].values() for checkpoint in (final, uninterrupted)]
    for a, b in zip(*moments, strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


@pytest.mark.parametrize("save_every,kill_at", [(3, 7), (4, 6)], ids=["mid-epoch", "epoch-boundary"])
def test_sigkill_then_resume_is_exact(save_every, kill_at, corpus, uninterrupted, tmp_path):
    """Killed with SIGKILL, resumed with --ckpt_path last: the same weights, optimiser state and
    counters as a run that was never interrupted, bit for bit (CPU, float32)."""
    common = [
        *RUN,
        f"--data.init_args.paths={corpus}",
        f"--run_dir={tmp_path}",
        f"--save_every_n_steps={save_every}",
    ]
    kill = f'{{"class_path": "tests.faults.KillAtStep", "init_args": {{"step": {kill_at}}}}}'
    killed = bytelab("fit", *common, f"--trainer.callbacks+={kill}", cache=tmp_path / "cache")
    assert killed.returncode == -9
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == kill_at // save_every * save_every
    resumed = bytelab("fit", *common, "--ckpt_path=last", cache=tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training_state(load_checkpoint(tmp_path / "checkpoints" / "last.ckpt"), uninterrupted)


def test_nan_loss_stops_the_run_naming_the_step(corpus, tmp_path):
    """A non-finite loss stops training before the update, with the step in the message."""
    model = Decoder(d_model=32, n_layers=1, n_heads=4, max_seq_len=64)
    with torch.no_grad():
        model.head.weight[0, 0] = math.nan
    dm = TextBytes(str(corpus), seq_len=64, batch_size=4, cache_dir=str(tmp_path))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    with pytest.raises(FloatingPointError, match="training diverged at step 0: the loss is not finite"):
        trainer.fit(ByteLM(model), datamodule=dm)


def cached(tmp_path: Path, corpus: Path) -> TextBytes:
    dm = TextBytes(str(corpus), seq_len=64, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    return dm


@pytest.mark.parametrize("damage", ["truncated", "edited", "deleted"])
def test_damaged_cache_is_detected_and_rebuilt(damage, corpus, tmp_path, caplog):
    dm = cached(tmp_path, corpus)
    original = (dm.cache_path / "train.bin").read_bytes()
    target = dm.cache_path / "train.bin"
    if damage == "truncated":
        target.write_bytes(original[:-10])
    elif damage == "edited":  # same size, one byte changed
        target.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    else:
        target.unlink()
    rebuilt = cached(tmp_path, corpus)
    assert "rebuilding it" in caplog.text and "train.bin" in caplog.text
    assert (rebuilt.cache_path / "train.bin").read_bytes() == original


@pytest.mark.parametrize("change", ["touched", "offsets edited"])
def test_a_cache_file_whose_time_moved_is_checked_by_its_hash(change, corpus, tmp_path, caplog):
    """A split file whose modification time moved (copied without its times) but whose documents are
    intact is kept, without a rebuild; a docs file edited in place (same size: two documents cut
    elsewhere) is caught by its hash, and so would the split file's documents be."""
    dm = cached(tmp_path, corpus)
    docs = dm.cache_path / "train.docs.npy"
    if change == "touched":
        for name in ("train.bin", "train.docs.npy"):
            path = dm.cache_path / name
            os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    else:
        offsets = np.load(docs)
        offsets[1] += 1
        np.save(docs, offsets)
    problem = cache_problem(dm.cache_path)
    if change == "touched":
        assert problem is None
    else:
        assert problem == "train.docs.npy was modified after the cache was built"


def test_changed_source_builds_a_new_cache_and_drops_the_stale_one(corpus, tmp_path, caplog):
    sources = tmp_path / "sources"
    sources.mkdir()
    for path in corpus.iterdir():
        (sources / path.name).write_bytes(path.read_bytes())
    old = cached(tmp_path, sources).cache_path
    (sources / "0.txt").write_bytes(b"exit, pursued by a bear\n" * 40)
    new = cached(tmp_path, sources)
    assert new.cache_path != old and not old.exists()
    assert "changed since it was built" in caplog.text
    assert b"pursued by a bear" in bytes(np.concatenate([split.data for split in new.splits.values()]))


def test_a_build_killed_halfway_leaves_the_previous_cache_intact(corpus, tmp_path, monkeypatch):
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "a.txt").write_bytes(b"x" * 400)
    (sources / "b.txt").write_bytes(b"y" * 400)
    (sources / "c.txt").write_bytes(b"z" * 400)
    old = cached(tmp_path, sources).cache_path
    (sources / "a.txt").write_bytes(b"w" * 500)

    def killed(self, directory):
        (directory / "train.bin").write_bytes(b"half")
        raise KeyboardInterrupt  # stands for a kill in the middle of the build

    monkeypatch.setattr(TextBytes, "_write_splits", killed)
    with pytest.raises(KeyboardInterrupt):
        cached(tmp_path, sources)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [old.name]
    assert cache_problem(old) is None


KILLED_BUILD = """
import os, signal, sys
from datamodules import TextBytes

def killed(self, directory):
    (directory / "train.bin").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)

TextBytes._write_splits = killed
TextBytes(sys.argv[1], seq_len=64, cache_dir=sys.argv[2]).prepare_data()
"""


def test_a_build_killed_by_sigkill_leaves_a_directory_the_next_build_removes(corpus, tmp_path, caplog):
    cache = tmp_path / "cache"
    child = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(corpus), str(cache)], cwd=REPO)
    assert child.returncode == -signal.SIGKILL
    (left,) = cache.iterdir()
    assert left.name.endswith(".tmp") and (left / "train.bin").read_bytes() == b"half"
    dm = cached(tmp_path, corpus)
    assert sorted(p.name for p in cache.iterdir()) == [dm.cache_path.name]
    assert f"removing {left}, left by an interrupted cache build" in caplog.text


def test_run_manifest_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"status": "running", "step": 1})

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"status": "running", "step": 2})
    assert json.loads(path.read_text()) == {"status": "running", "step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_checkpoint_of_another_architecture_is_refused(corpus, trained_run, tmp_path, capsys, monkeypatch):
    """The decoder run's checkpoint under a MEGABYTE config (in this process): one line naming both."""
    monkeypatch.setenv("BYTELAB_CACHE", str(tmp_path / "cache"))
    code = main(
        [
            "validate",
            f"--config={CONFIGS / 'megabyte_tiny.yaml'}",
            "--data.init_args.seq_len=64",
            f"--data.init_args.paths={corpus}",
            f"--ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
            f"--run_dir={tmp_path / 'other'}",
        ]
    )
    assert code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(
            "bytelab: error: the checkpoint holds a different model: "
            "modules.decoder.Decoder in the checkpoint, modules.megabyte.Megabyte in the config"
        )
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model.model.init_args.d_modl=3"], "unknown option --model.model.init_args.d_modl"),
        (["--model.model.init_args.d_model=abc"], "--model.model.init_args.d_model=abc: expected an int"),
        (["--trainer.max_stepz=3"], "unknown option --trainer.max_stepz: did you mean --trainer.max_steps?"),
        (["--model.model.init_args.d_model=-8"], "d_model=-8 must be a positive integer"),
        (["--model.model.init_args.d_model=30"], "d_model=30 must be divisible by n_heads=4"),
        (["--data.init_args.batch_size=0"], "batch_size=0 must be at least 1"),
        (["--data.init_args.paths={empty_dir}"], "empty_dir"),
        (["--run_dir={a_file}/run"], "a_file"),
    ],
    ids=[
        "unknown option",
        "wrong type",
        "unknown trainer option",
        "negative size",
        "heads do not divide",
        "zero batch",
        "directory without data",
        "unwritable run directory",
    ],
)
def test_bad_configuration_is_one_line_and_leaves_nothing(
    args, message, corpus, tmp_path, capsys, monkeypatch
):
    """In this process (the same ``bytelab`` main as the console script, without 5 s of start-up per
    case; tests/test_cli.py's bad-input cases run the real entry point)."""
    monkeypatch.setenv("BYTELAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "a_file").write_text("not a directory")
    paths = {"empty_dir": tmp_path / "empty_dir", "a_file": tmp_path / "a_file"}
    run = tmp_path / "run"
    code = main(
        [
            "fit",
            f"--config={CONFIGS / 'decoder_tiny.yaml'}",
            "--data.init_args.seq_len=64",
            f"--data.init_args.paths={corpus}",
            f"--run_dir={run}",
            *[a.format(**paths) for a in args],
        ]
    )
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert lines[-1].startswith("bytelab: error: ") and message in lines[-1], lines[-1]
    assert not run.exists()


def test_result_tables_are_written_atomically(tmp_path, monkeypatch):
    """A crash while writing a table keeps the previous complete version and leaves no temporary file."""
    table = pd.DataFrame({"architecture": ["Megabyte"], "val bpb": [3.3]})
    write_table(table, tmp_path, "table", reference_frame())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_table(table.assign(**{"val bpb": [9.9]}), tmp_path, "table", reference_frame())
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_killed_sweep_reruns_to_every_run_exactly_once(tmp_path):
    """A sweep SIGKILLed in the middle of its second run, then rerun: finished runs are skipped, the
    killed one resumes, the rest start, and the analysis sees every run once."""
    spec = yaml.safe_load((REPO / "experiments" / "sweeps" / "compare_smoke.yaml").read_text())
    flag = tmp_path / "kill-once"
    flag.write_text("0")
    kill = {
        "class_path": "tests.faults.KillOnce",
        "init_args": {"step": 2, "flag": str(flag), "after_runs": 1},
    }
    spec.update(run_root=str(tmp_path / "runs"), budgets=[4.0e8, 8.0e8])
    spec["options"]["trainer.callbacks+"] = kill
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    killed = bytelab("sweep", str(path), "--inline", cache=tmp_path / "cache")
    assert killed.returncode == -9 and not flag.exists()
    statuses = {
        p.parent.name: json.loads(p.read_text())["status"] for p in (tmp_path / "runs").glob("*/run.json")
    }
    assert sorted(statuses.values()) == ["finished", "running"]
    rerun = bytelab("sweep", str(path), "--inline", cache=tmp_path / "cache")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    runs, _ = collect([tmp_path / "runs"])
    assert len(runs) == 6 and runs["run"].is_unique and set(statuses) <= set(runs["run"])


# ---------------------------------------------------------------------------------------------------
# Faults of a shared cluster: preemption, full disks, two launches of one run, damaged or hostile
# checkpoints, corpora larger than memory, ranks that disagree.


def stderr_errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines bytelab itself printed to stderr (``bytelab: ...``/``bytelab sweep: ...``)."""
    return [line for line in result.stderr.splitlines() if line.startswith("bytelab")]


FAKE_SCONTROL = """#!/bin/sh
# Stands for SLURM's scontrol: records the call, then does what a requeue does to the running job.
echo "$@" >> "{log}"
kill -TERM $PPID
"""


@pytest.mark.parametrize("how", ["SIGTERM", "SLURM requeue signal"], ids=["sigterm", "slurm-sigusr1-requeue"])
def test_preempted_run_saves_its_step_and_resumes_exactly(how, corpus, uninterrupted, tmp_path):
    """A termination signal at step 5 (no checkpoint is due before step 6): the run saves step 5,
    exits 75, run.json says interrupted; --ckpt_path last ends bit for bit where an uninterrupted run
    ends. On SLURM (faked: its variables and an scontrol that records the requeue and sends SIGTERM
    as a requeue does), Lightning's auto-requeue handles SIGUSR1 and calls `scontrol requeue`."""
    run = tmp_path / "run"
    common = [*RUN, f"--data.init_args.paths={corpus}", f"--run_dir={run}"]
    env = None
    name = "SIGTERM"
    if how == "SLURM requeue signal":
        name = "SIGUSR1"
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        scontrol = bin_dir / "scontrol"
        scontrol.write_text(FAKE_SCONTROL.format(log=tmp_path / "scontrol.log"))
        scontrol.chmod(0o755)
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            **{"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "bytelab-test", "SLURM_JOB_ID": "4242"},
            **{"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"},
        }
    signal_at = f'{{"class_path": "tests.faults.SignalAtStep", "init_args": {{"step": 5, "name": "{name}"}}}}'
    stopped = bytelab("fit", *common, f"--trainer.callbacks+={signal_at}", cache=tmp_path / "cache", env=env)
    last = run / "checkpoints" / "last.ckpt"
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert stderr_errors(stopped) == [
        f"bytelab: stopped by a termination signal at step 5: saved {last}; resume with --ckpt_path last "
        "(exit status 75)"
    ]
    assert load_checkpoint(last)["global_step"] == 5
    manifest = json.loads((run / "run.json").read_text())
    assert (
        manifest["status"] == "interrupted"
        and manifest["error"] == "stopped by a termination signal at step 5"
    )
    if env is not None:
        assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
        assert not list(run.glob("hpc_ckpt_*.ckpt"))  # Lightning's mid-step snapshot, superseded
    resumed = bytelab("fit", *common, "--ckpt_path=last", cache=tmp_path / "cache", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training_state(load_checkpoint(last), uninterrupted)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_ctrl_c_on_a_sweep_marks_its_run_interrupted_and_the_next_call_resumes_it(tmp_path):
    """Ctrl-C (SIGINT) to a sweep while a child trains: the sweep stops the child at a step boundary
    (it saves that step), its run.json says interrupted (not failed), the sweep exits 130 with one
    line; the next call resumes that run from the saved step to the end."""
    spec = yaml.safe_load((REPO / "experiments" / "sweeps" / "compare_smoke.yaml").read_text())
    flag = tmp_path / "armed"
    flag.write_text("")
    ctrl_c = {
        "class_path": "tests.faults.SignalAtStep",
        "init_args": {"step": 2, "name": "SIGINT", "parent": True, "flag": str(flag)},
    }
    spec.update(run_root=str(tmp_path / "runs"), budgets=[4.0e8])
    spec["architectures"] = {"decoder": spec["architectures"]["decoder"]}
    spec["options"]["trainer.callbacks+"] = ctrl_c
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    # --jobs 1: the run trains in a child process, the one whose parent (the sweep) gets the Ctrl-C
    # (with one run the automatic choice would train it inside the sweep's own process).
    interrupted = bytelab("sweep", str(path), "--jobs", "1", cache=tmp_path / "cache", sigint=True)
    assert interrupted.returncode == 130 and not flag.exists(), interrupted.stderr[-3000:]
    assert stderr_errors(interrupted) == [
        "bytelab sweep: interrupted; the runs in progress are marked interrupted in their run.json, "
        "run the same command again to resume them"
    ]
    (run,) = (tmp_path / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())
    assert (
        record["status"] == "interrupted" and record["error"] == "stopped by a termination signal at step 2"
    )
    saved = load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert saved == record["step"] == 2
    rerun = bytelab("sweep", str(path), "--jobs", "1", cache=tmp_path / "cache")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"  resume  {run.name}" in rerun.stdout
    finished = json.loads((run / "run.json").read_text())
    assert finished["status"] == "finished" and finished["step"] == finished["max_steps"] > saved
    assert (
        f"Restoring states from the checkpoint path at {run / 'checkpoints' / 'last.ckpt'}"
        in (run / "log.txt").read_text()
    )


def snapshot(run: Path) -> dict[str, bytes]:
    """What a run has written (its TensorBoard folder aside, which a background thread flushes)."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "tensorboard" not in p.parts
    }


def test_second_launch_of_a_running_run_stops_at_once_naming_the_holder(corpus, tmp_path):
    """Two launches of one run directory: the second stops with one line naming the first (host,
    pid) and writes nothing; the first ends normally, with no -v1 checkpoint or second metrics file."""
    run = tmp_path / "run"
    common = [*RUN, "--trainer.max_steps=6", f"--data.init_args.paths={corpus}", f"--run_dir={run}"]
    pause = '{"class_path": "tests.faults.PauseAtStep", "init_args": {"step": 2}}'
    env = {**os.environ, "BYTELAB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [*ENTRY, "fit", *common, f"--trainer.callbacks+={pause}"], cwd=REPO, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert "PAUSED\n" in iter(first.stdout.readline, "")  # blocks until the first run holds step 2
        before = snapshot(run)
        second = bytelab("fit", *common, cache=tmp_path / "cache")
        assert second.returncode == 2
        (line,) = stderr_errors(second)
        holder = f"pid {first.pid} on host {socket.gethostname()} (since "
        assert line.startswith(f"bytelab: error: run directory {run} is in use by {holder}"), line
        assert snapshot(run) == before
        first.stdin.write("\n")
        first.stdin.close()
        first.stdout.read()
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (
        not list(run.glob("metrics.*.csv"))
        and load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 6
    )


def test_stale_lock_of_a_dead_process_is_taken_over(corpus, tmp_path):
    """A lock file left by a process that is gone (killed, or its node rebooted) does not block."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": "earlier"}))
    result = bytelab(
        "fit", *RUN, "--trainer.max_steps=2", f"--data.init_args.paths={corpus}", f"--run_dir={run}",
        cache=tmp_path / "cache",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"taking over the lock of {run} from pid {pid} on host {socket.gethostname()}" in result.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_damaged_last_checkpoint_stops_naming_the_newest_intact_one(damage, trained_run, corpus, tmp_path):
    """A last.ckpt cut in half or with one flipped bit (caught by its zip CRCs, which torch.load does
    not check): the resume stops with one line naming it and the intact checkpoint to resume from,
    neither a pickle traceback nor a new start; resuming from the named one works."""
    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    last, best = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "best.ckpt"
    data = bytearray(last.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 2] ^= 0x10  # inside a tensor's bytes: torch.load itself reads it without complaint
    last.write_bytes(data)
    common = [*RUN, f"--data.init_args.paths={corpus}", f"--run_dir={run}"]
    result = bytelab("fit", *common, "--ckpt_path=last", cache=tmp_path / "cache")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = stderr_errors(result)
    step = torch.load(best, weights_only=True, mmap=True)["global_step"]
    assert line.startswith(f"bytelab: error: checkpoint {last} is damaged: "), line
    assert f"; resume from {best} (step {step}), the newest intact checkpoint: --ckpt_path={best}" in line
    assert last.read_bytes() == data and not (run / "run.json").exists()  # nothing started or deleted
    validated = bytelab("validate", *common, f"--ckpt_path={best}", cache=tmp_path / "cache")
    assert validated.returncode == 0, validated.stderr[-3000:]


def test_damaged_sharded_checkpoint_names_the_shard_and_the_newest_intact_one(trained_run, tmp_path):
    """A sharded (torch.distributed.checkpoint) last.ckpt directory with a shard cut short."""
    import torch.distributed.checkpoint as dcp

    directory = tmp_path / "checkpoints"
    directory.mkdir()
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", directory / "best.ckpt")
    sharded = directory / "last.ckpt"
    dcp.save({"state_dict": {"w": torch.randn(64, 64)}}, checkpoint_id=sharded)
    torch.save({"global_step": 20}, sharded / "meta.pt")
    assert checkpoint_problem(sharded) is None
    (shard,) = sharded.glob("*.distcp")
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(sharded)
    message = str(error.value)
    assert message.startswith(f"checkpoint {sharded} is damaged: its shard {shard.name} has ")
    assert f"resume from {directory / 'best.ckpt'} (step 12), the newest intact checkpoint" in message


class CodeOnLoad:
    """Pickles as a call of ``exec`` (or ``os.system``): loading it without weights_only writes ``marker``."""

    def __init__(self, marker: Path, how: str = "exec") -> None:
        self.marker = marker
        self.how = how

    def __reduce__(self) -> tuple:
        if self.how == "system":
            return os.system, (f"echo 'the payload ran' > '{self.marker}'",)
        return exec, (f"open({str(self.marker)!r}, 'w').write('the payload ran')",)


@pytest.mark.parametrize("command", ["generate", "validate", "resume"])
def test_checkpoint_that_would_run_code_is_refused(command, trained_run, corpus, tmp_path):
    """A shared checkpoint whose pickle calls exec on load: generate, validate and a resume refuse it
    with one line and the payload never runs (it does run under torch.load(weights_only=False))."""
    marker = tmp_path / "marker"
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["bytelab"]["note"] = CodeOnLoad(marker)
    run = tmp_path / "run"
    path = run / "checkpoints" / "last.ckpt" if command == "resume" else tmp_path / "shared.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    common = [*RUN, f"--data.init_args.paths={corpus}", f"--run_dir={run}"]
    args = {
        "generate": ["generate", f"--ckpt={path}", "--bytes=4"],
        "validate": ["validate", *common, f"--ckpt_path={path}"],
        "resume": ["fit", *common, "--ckpt_path=last"],
    }[command]
    result = bytelab(*args, cache=tmp_path / "cache")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = stderr_errors(result)
    assert line.startswith(
        f"bytelab: error: checkpoint {path} holds more than tensors and plain values "
        "(its pickle calls for exec); refusing to load it"
    ), line
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what bytelab used to do
    assert marker.read_text() == "the payload ran"


def dotted_global_call(module: str, name: str, argument: str) -> bytes:
    """A pickle (protocol 4) calling ``module``'s attribute path ``name`` (dots allowed) with ``argument``."""

    def text(value: str) -> bytes:
        return b"\x8c" + bytes([len(value)]) + value.encode()

    return b"\x80\x04" + text(module) + text(name) + b"\x93" + text(argument) + b"\x85R."


@pytest.mark.parametrize("payload", ["os.system", "dotted name"], ids=["os-system", "os-through-dcp-module"])
def test_sharded_checkpoint_that_would_run_code_is_refused(payload, tmp_path):
    """The one pickle a sharded directory holds outside torch.load (.metadata, read by DCP with plain
    pickle) is read by an unpickler that accepts only DCP's own classes: refused, payload never run;
    also when it reaches os.system through a module DCP imported (pickle resolves dotted names)."""
    import torch.distributed.checkpoint as dcp

    sharded = tmp_path / "last.ckpt"
    dcp.save({"state_dict": {"w": torch.randn(4, 4)}}, checkpoint_id=sharded)
    marker = tmp_path / "marker"
    if payload == "os.system":
        data, called = pickle.dumps(CodeOnLoad(marker, how="system")), "posix.system"
    else:
        command = f"echo 'the payload ran' > '{marker}'"
        data = dotted_global_call("torch.distributed.checkpoint.filesystem", "os.system", command)
        called = "torch.distributed.checkpoint.filesystem.os.system"
    (sharded / ".metadata").write_bytes(data)
    with pytest.raises(CheckpointError) as error:
        ByteLM.from_checkpoint(sharded)  # generate, bytelab study's evaluations
    assert f"holds more than tensors and plain values (its pickle calls for {called})" in str(error.value)
    assert not marker.exists()
    pickle.loads(data)  # what torch.distributed.checkpoint does with it
    assert marker.read_text() == "the payload ran\n"


class SmallDisk:
    """A small tmpfs mounted for one test: writes beyond its size fail part-way with ENOSPC, as on a
    full disk (the kernel's, not a simulated error)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, size: str) -> None:
        """Free space, as an operator would: the filesystem grows to ``size`` (e.g. ``64m``)."""
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def fill(self, leave: int) -> Path:
        """Fill the disk with a file until about ``leave`` bytes are free; return that file."""
        filler = self.path / "filler"
        with open(filler, "wb") as f:
            f.write(bytes(shutil.disk_usage(self.path).free - leave))
        return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> SmallDisk:
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield SmallDisk(path)
    subprocess.run(["umount", "--lazy", str(path)], check=True)  # lazy: a test may still map a file


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(
    corpus, uninterrupted, small_disk, tmp_path
):
    """The run directory on a 10 MB disk: last.ckpt of step 3 (6.4 MB) fits, the write of step 6 fails
    part-way. One line names the file and the space needed, the step-3 checkpoint is intact, no
    temporary file is left; after the disk grows, --ckpt_path last ends exactly as an uninterrupted run."""
    run = small_disk.path / "run"
    last = run / "checkpoints" / "last.ckpt"
    common = [*RUN, f"--data.init_args.paths={corpus}", f"--run_dir={run}", "--save_every_n_steps=3"]
    full = bytelab("fit", *common, cache=tmp_path / "cache")
    assert full.returncode == 2, full.stderr[-3000:]
    (line,) = stderr_errors(full)
    assert re.fullmatch(
        rf"bytelab: error: no space left on device writing {re.escape(str(last))}: it needs 6\.\d MB, "
        r"\d\.\d MB free; the previous version is kept, free some space and run the same command again",
        line,
    ), line
    assert os.listdir(run / "checkpoints") == ["last.ckpt"] and load_checkpoint(last)["global_step"] == 3
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "failed" and "no space left on device" in manifest["error"]
    small_disk.resize("64m")
    resumed = bytelab("fit", *common, "--ckpt_path=last", cache=tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training_state(load_checkpoint(last), uninterrupted)


def write_result(what: str, folder: Path, n: int) -> Path:
    """Write version ``n`` (bigger with n) of a run.json, a result table or a plot; return its path."""
    if what == "run.json":
        write_json_atomic(folder / "run.json", {"status": "running", "history": list(range(n))})
        return folder / "run.json"
    if what == "result table":
        write_table(
            pd.DataFrame({"run": [f"run-{i}" for i in range(n)], "val bpb": range(n)}),
            folder,
            "table",
            reference_frame(),
        )
        return folder / "table.md"
    figure, axes = plt.subplots()
    axes.scatter(*np.random.default_rng(n).random((2, n)))
    return save_plot(figure, folder / "plot")[0]


@pytest.mark.parametrize("what", ["run.json", "result table", "plot"])
def test_full_disk_while_writing_a_result_keeps_the_previous_version(what, small_disk):
    """A write that needs far more than the 16 kB left fails part-way: one error naming the file and
    the space needed; every file of the previous version is as it was, no temporary file is left."""
    folder = small_disk.path / "out"
    folder.mkdir()
    write_result(what, folder, 10)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    small_disk.fill(leave=16 * 1024)
    with pytest.raises(OSError) as error:
        write_result(what, folder, 100_000)
    target = {"run.json": "run.json", "result table": "table.md", "plot": "plot.png"}[what]
    assert error.value.errno == errno.ENOSPC
    assert error.value.strerror.startswith(f"no space left on device writing {folder / target}: it needs ")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_full_disk_while_building_a_cache_keeps_the_previous_one(small_disk, tmp_path):
    """A source grows past the free space: the new cache's build fails part-way with one error naming
    it and the space needed, the previous cache stays complete, no temporary directory is left; once
    space is freed the build succeeds and replaces it."""
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in "abc":
        (sources / f"{name}.txt").write_bytes(name.encode() * 1000)
    cache = small_disk.path / "cache"
    old = TextBytes(str(sources), seq_len=64, cache_dir=str(cache))
    old.prepare_data()
    old = old.cache_path
    (sources / "a.txt").write_bytes(b"a" * 2_000_000)
    filler = small_disk.fill(leave=256 * 1024)
    new = TextBytes(str(sources), seq_len=64, cache_dir=str(cache))
    with pytest.raises(OSError) as error:
        new.prepare_data()
    assert error.value.errno == errno.ENOSPC
    assert error.value.strerror.startswith(
        f"no space left on device building the TextBytes cache {new.cache_path}: it needs about 4.0 MB, 0."
    ), error.value.strerror
    assert [p.name for p in cache.iterdir()] == [old.name] and cache_problem(old) is None
    filler.unlink()
    new.prepare_data()
    assert [p.name for p in cache.iterdir()] == [new.cache_path.name] and cache_problem(
        new.cache_path
    ) is None


MEASURE_BUILD = """
import sys
from datamodules import TextBytes

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

# VmHWM is this process' peak resident memory (ru_maxrss would include pytest's, kept across exec);
# writing 5 to clear_refs resets it to the current size, so it measures the build alone.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
TextBytes(sys.argv[1], seq_len=64, cache_dir=sys.argv[2]).prepare_data()
print(status("VmHWM:") - before)
"""


@pytest.mark.parametrize("layout", ["one big file", "many files"], ids=["one-big-file", "many-files"])
def test_corpus_larger_than_the_memory_bound_streams(layout, tmp_path):
    """A 64 MB corpus, 4 times the 16 MB bound: the cache build's peak resident memory (VmHWM of its
    process, mapped file pages included) grows by less than the bound, and the cache holds every
    byte (a build that read whole files, or mapped them, grows by the corpus' size or more)."""
    sources = tmp_path / "corpus"
    sources.mkdir()
    data = np.random.default_rng(0).integers(0, 256, 64 * 2**20, dtype=np.uint8).tobytes()
    parts = 1 if layout == "one big file" else 64
    size = len(data) // parts
    for i in range(parts):
        (sources / f"{i:03d}.txt").write_bytes(data[i * size : (i + 1) * size])
    build = subprocess.run(
        [sys.executable, "-c", MEASURE_BUILD, str(sources), str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    growth = int(build.stdout.split()[-1])
    assert growth < 16 * 2**20, f"the build grew by {growth / 2**20:.1f} MB"
    (cache,) = (tmp_path / "cache").iterdir()
    manifest = json.loads((cache / "manifest.json").read_text())
    assert sum(split["bytes"] for split in manifest["splits"].values()) == len(data)
    assert cache_problem(cache) is None


def test_cache_build_progress_counts_bytes_towards_a_known_total(corpus, tmp_path, monkeypatch):
    """The build's progress bar has a total (the corpus's bytes, written into the splits and hashed
    as they are), so it shows bytes done and time left."""
    from rich.progress import DownloadColumn, TimeRemainingColumn

    bars = []
    original = TextBytes._progress
    monkeypatch.setattr(TextBytes, "_progress", lambda self: bars.append(original(self)) or bars[-1])
    cached(tmp_path, corpus)
    (bar,) = bars
    (written,) = bar.tasks
    assert written.total == written.completed == sum(p.stat().st_size for p in corpus.iterdir())
    assert {DownloadColumn, TimeRemainingColumn} <= {type(column) for column in bar.columns}


KILLED_WHILE_READING = """
import os, signal, sys
import datamodules.cache
from datamodules import TextBytes

copy = datamodules.cache.copy_parts

def first_files_then_killed(*args):
    copy(*args)
    os.kill(os.getpid(), signal.SIGKILL)

datamodules.cache.copy_parts = first_files_then_killed
TextBytes(sys.argv[1], seq_len=64, cache_dir=sys.argv[2], workers=1).prepare_data()
"""


def test_a_build_killed_while_streaming_restarts_cleanly(corpus, tmp_path):
    """SIGKILL in the middle of reading the corpus: the next build removes the half-written
    directory and builds the whole cache."""
    cache = tmp_path / "cache"
    child = subprocess.run([sys.executable, "-c", KILLED_WHILE_READING, str(corpus), str(cache)], cwd=REPO)
    assert child.returncode == -signal.SIGKILL
    (left,) = cache.iterdir()
    assert left.name.endswith(".tmp") and (left / "train.bin").is_file()  # half-written, never published
    dm = cached(tmp_path, corpus)
    assert [p.name for p in cache.iterdir()] == [dm.cache_path.name] and cache_problem(dm.cache_path) is None
    total = sum(split["bytes"] for split in dm.manifest["splits"].values())
    assert total == sum(p.stat().st_size for p in corpus.iterdir())


@pytest.mark.distributed
@pytest.mark.parametrize("fault", ["data", "nan"], ids=["data-unreadable-on-rank-1", "nan-on-rank-1-only"])
def test_one_failing_rank_stops_every_rank_with_the_same_error(fault, corpus, tmp_path):
    """Two processes (DDP over gloo on the CPU); one rank cannot read its data, or gets a NaN loss
    alone: both ranks stop (the subprocess timeout bounds it) and print the same one line, instead of
    the other waiting in a collective or dying with "Connection closed by peer"."""
    args = [
        f"--config={CONFIGS.parent / 'trainer' / 'ddp.yaml'}", f"--config={CONFIGS / 'decoder_tiny.yaml'}",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true",
        "--trainer.enable_progress_bar=false", "--data.init_args.seq_len=64", "--data.init_args.batch_size=4",
        f"--data.init_args.paths={corpus}", "--trainer.max_steps=4", "--trainer.val_check_interval=4",
        f"--run_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    if fault == "data":
        args.append("--data.class_path=tests.faults.DataFailsOnRank")
        expected = (
            "bytelab: error: the training data of rank 1 is unreadable on this node "
            "(run with --debug for the traceback)"
        )
    else:
        args.append('--trainer.callbacks+={"class_path": "tests.faults.NanOnRank", "init_args": {"step": 2}}')
        expected = (
            "bytelab: error: training diverged at step 2: the loss is not finite; the last good checkpoint "
            "is kept (lower model.lr or raise model.warmup_steps, then resume) "
            "(run with --debug for the traceback)"
        )
    result = bytelab("fit", *args, cache=tmp_path / "cache")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert stderr_errors(result) == [expected, expected]  # one line from each rank
