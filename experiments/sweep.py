"""``bytelab sweep SWEEP.yaml``: a compute-matched grid of ``bytelab fit`` runs.

A sweep file names the configs every run composes (data, trainer), the architectures with a list
of named sizes each (``modules/sizes.py``), the training-FLOP budgets (and optionally a byte
budget), the seeds and the options every run shares. It expands into one run per architecture x
size x budget x seed, each with a stable id and directory ``<run_root>/<id>``.

Running a sweep again never repeats or loses work: a run whose ``run.json`` says ``finished`` is
skipped, and every command carries ``--ckpt_path=last``, so an interrupted run resumes from its
last checkpoint. ``--print_commands`` and ``--print_slurm`` hand the same commands to a cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from modules.sizes import ARCHITECTURES, model_init_args

from .callbacks import EXIT_PREEMPTED
from .manifest import MANIFEST, SWEEP_INFO, read_manifest, write_json_atomic
from .perf import choose_parallelism
from .subcommand import DataConfig
from .trainer_cli import run_lightning

REPO = Path(__file__).resolve().parents[1]
LOG = "log.txt"  # a run's own output, beside its run.json
# After a Ctrl-C, how long a child may take to save its step and mark its run.json before it is
# killed (SIGKILL); a run killed that way still resumes from its last checkpoint.
CHILD_GRACE_S = 120
RUNNING: set[subprocess.Popen] = set()  # the child runs of this process, to stop on an interrupt


@dataclass
class Architecture:
    """One architecture of a sweep.

    Args:
        sizes: Named sizes (``modules/sizes.py``), one run each per budget and seed.
        options: ``bytelab fit`` options for this architecture only (``{"model.lr": 2e-3}``).
        model: The architecture (decoder, megabyte, perceiver_ar) when the entry's key is a variant
            label instead (``no_local: {model: megabyte, options: {...no_local: true}}``); None: the key.
        configs: Candidate configurations, tuned like the learning rate (SpaceByte's protocol):
            name -> ``bytelab fit`` options (training window, windows per step, attention window,
            ...) and optionally ``size`` (default: every one of ``sizes``, a candidate each). Every
            candidate is tuned over ``lrs`` at ``tune_budget``; the grid then runs, per size, only
            the candidate (and its rate) of lowest mean validation bits per byte: one row per size,
            the configuration's name in every run.json. Empty: every size is a row of its own, as
            without tuning.
        lrs: This architecture's own learning rates to tune over (each candidate's), in place of the
            sweep's ``lrs``: a grid centred where the family trains best spends fewer tuning runs than
            one grid wide enough for every family (``lr_extend`` still steps past an edge).
    """

    sizes: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    lrs: list[float] | None = None

    def candidates(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """The units tuned and run: key -> (size, extra options). A size is its own key without
        ``configs``; a configuration is its name's key where it names its size or the architecture
        has one size, else ``NAME-SIZE`` once per size."""
        if not self.configs:
            return {size: (size, {}) for size in self.sizes}
        units = {}
        for name, options in self.configs.items():
            rest = {k: v for k, v in options.items() if k != "size"}
            if "size" in options or len(self.sizes) == 1:
                units[name] = (str(options.get("size", self.sizes[0])), rest)
            else:
                units |= {f"{name}-{size}": (size, rest) for size in self.sizes}
        return units

    def rows(self) -> dict[str, list[str]]:
        """The grid's rows and the candidates that compete for each: row -> candidate keys. Without
        ``configs`` every size is a row; a configuration tuned at each size (``NAME-SIZE``)
        competes with the others at that size only (row: the size), so that every size keeps its
        own best; every other configuration competes in the architecture's one row ("")."""
        if not self.configs:
            return {size: [size] for size in self.sizes}
        rows: dict[str, list[str]] = {}
        for key, (size, _) in self.candidates().items():
            rows.setdefault("" if key in self.configs else size, []).append(key)
        return rows

    def config_name(self, key: str) -> str | None:
        """The configuration a candidate key stands for (None without ``configs``)."""
        if not self.configs:
            return None
        if key in self.configs:
            return key
        return next(name for name in self.configs for size in self.sizes if key == f"{name}-{size}")


@dataclass
class Sweep:
    """A grid of compute-matched runs (the fields of a sweep YAML file).

    Args:
        name: The study's name.
        run_root: Folder of the run directories (relative to where bytelab runs).
        architectures: Architecture name (decoder, megabyte, perceiver_ar) -> sizes and options.
        budgets: Training-FLOP budgets C; every architecture and size trains once per budget.
        budget_bytes: A byte budget for every run (data-controlled; with ``budgets`` the run stops
            at whichever runs out first).
        seeds: One run per seed (model initialisation and training windows).
        lrs: Learning rates to tune each architecture and size on before the grid runs: one run per
            rate and tuning seed at ``tune_budget``; every run of the grid then uses the rate whose
            runs reached the lowest mean validation bits per byte (recorded in their run.json). An
            architecture whose options set ``model.lr`` keeps that rate. Empty: no tuning.
        tune_seeds: How many of ``seeds`` (the first ones) each tuning rate runs with; a rate's
            score is the mean over them. 1 ranks rates by one seed's noise where the seeds of an
            architecture spread as much as its rates differ.
        lr_extend: How many rates tuning may add beyond each end of ``lrs``: while the best rate
            of an architecture and size is the lowest (highest) it has tried, one more run a grid
            step below (above) it, the step being the ratio of the two end rates of ``lrs`` (2 for
            one rate). 0: ``lrs`` only, whose chosen rate may then sit at an edge of the grid.
        tune_budget: The FLOP budget of the tuning runs (default: the smallest of ``budgets``).
        validations: Evenly spaced validations per run, the last at the budget.
        configs: ``--config`` files every run composes (data, trainer), before any option.
        options: ``bytelab fit`` options for every run (``{"data.init_args.seq_len": 256}``).
    """

    name: str
    run_root: str
    architectures: dict[str, Architecture]
    budgets: list[float] = field(default_factory=list)
    budget_bytes: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    lrs: list[float] = field(default_factory=list)
    tune_budget: float | None = None
    tune_seeds: int = 1
    lr_extend: int = 0
    validations: int | None = 4
    configs: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Sweep:
        """Read a sweep file, with one-line errors that name it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep file {path} does not exist")
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a sweep file is a YAML mapping (name, run_root, architectures, ...)")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "sweep") -> Sweep:
        """Build and check a sweep from a mapping (a parsed sweep file)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{source}: unknown keys {sorted(unknown)}; a sweep has {sorted(known)}")
        missing = {"name", "run_root", "architectures"} - set(data)
        if missing:
            raise ValueError(f"{source}: missing {sorted(missing)}")
        architectures = {}
        for name, spec in (data["architectures"] or {}).items():
            spec = spec or {}
            model = spec.get("model") or name
            if model not in ARCHITECTURES:
                raise ValueError(
                    f"{source}: unknown architecture {model!r}; known: {', '.join(ARCHITECTURES)}"
                )
            if not spec.get("sizes"):
                raise ValueError(f"{source}: architecture {name} lists no sizes")
            configs = spec.get("configs") or {}
            if not isinstance(configs, dict) or not all(isinstance(c, dict) for c in configs.values()):
                raise ValueError(
                    f"{source}: configs of {name} must map each candidate's name to its options, "
                    f"got {configs!r}"
                )
            lrs = spec.get("lrs")
            if lrs is not None:
                lrs = [float(lr) for lr in lrs] if isinstance(lrs, list) else lrs
                distinct = isinstance(lrs, list) and len(set(lrs)) == len(lrs)
                if not distinct or not lrs or any(lr <= 0 for lr in lrs):
                    raise ValueError(
                        f"{source}: lrs of {name} must be a list of distinct positive learning rates, "
                        f"got {lrs!r}"
                    )
            if configs and (not (lrs or data.get("lrs")) or "model.lr" in (spec.get("options") or {})):
                raise ValueError(
                    f"{source}: architecture {name} has configs, which are chosen by tuning runs: give lrs "
                    "and leave model.lr out of its options"
                )
            architectures[name] = Architecture(
                sizes=list(spec["sizes"]),
                options=dict(spec.get("options") or {}),
                model=spec.get("model"),
                configs={str(k): dict(v) for k, v in configs.items()},
                lrs=lrs,
            )
            for size, _ in architectures[name].candidates().values():
                model_init_args(model, size)  # fails early on an unknown size
        if not architectures:
            raise ValueError(f"{source}: architectures is empty")
        sweep = cls(**{**data, "architectures": architectures})
        sweep.budgets = [float(b) for b in sweep.budgets or []]
        if sweep.budget_bytes is not None:  # YAML reads 8.0e10 (no sign in the exponent) as a string
            sweep.budget_bytes = float(sweep.budget_bytes)
        if not sweep.budgets and sweep.budget_bytes is None:
            raise ValueError(f"{source}: give budgets (training FLOPs) or budget_bytes")
        if any(b <= 0 for b in sweep.budgets):
            raise ValueError(f"{source}: budgets must be positive, got {sweep.budgets}")
        if not sweep.seeds or len(set(sweep.seeds)) < len(sweep.seeds):
            raise ValueError(
                f"{source}: seeds must be a non-empty list of distinct integers, got {sweep.seeds}"
            )
        sweep.lrs = [float(lr) for lr in sweep.lrs or []]
        if any(lr <= 0 for lr in sweep.lrs) or len(set(sweep.lrs)) < len(sweep.lrs):
            raise ValueError(f"{source}: lrs must be distinct positive learning rates, got {sweep.lrs}")
        if sweep.tune_budget is not None:
            sweep.tune_budget = float(sweep.tune_budget)
        if not isinstance(sweep.lr_extend, int) or sweep.lr_extend < 0:
            raise ValueError(
                f"{source}: lr_extend must be a whole number of rates >= 0, got {sweep.lr_extend!r}"
            )
        if not isinstance(sweep.tune_seeds, int) or not 1 <= sweep.tune_seeds <= len(sweep.seeds):
            raise ValueError(
                f"{source}: tune_seeds must be a whole number from 1 to the number of seeds "
                f"({len(sweep.seeds)}), got {sweep.tune_seeds!r}"
            )
        tuning = sweep.lrs or any(spec.lrs for spec in architectures.values())
        if tuning and sweep.tune_budget is None and not sweep.budgets:
            raise ValueError(f"{source}: learning-rate tuning (lrs) needs a tune_budget or FLOP budgets")
        return sweep


@dataclass
class Run:
    """One run of a sweep: its id, directory, ``bytelab`` arguments and what it stands for."""

    id: str
    run_dir: Path
    args: list[str]
    info: dict[str, Any]

    @property
    def command(self) -> str:
        return shlex.join(["bytelab", *self.args])


def budget_tag(value: float) -> str:
    """A budget as it appears in run ids: 2.5e11, 1e12, 300."""
    return f"{value:.4g}".replace("e+", "e").replace("e0", "e")


def flag(key: str, value: Any) -> str:
    """``--key=value`` as LightningCLI reads it (YAML/JSON values for lists, mappings, None, bools)."""
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        value = json.dumps(value)
    return f"--{key}={value}"


def resolve_config(path: str) -> str:
    """A config path as given if it exists from here, else relative to the bytelab source tree."""
    if Path(path).exists() or Path(path).is_absolute():
        return path
    packaged = REPO / path
    if packaged.exists():
        return str(packaged)
    raise FileNotFoundError(f"config file {path} does not exist")


def _run(
    sweep: Sweep,
    label: str,
    key: str,
    budget: float | None,
    seed: int,
    lr: float | None = None,
    stage: str = "main",
) -> Run:
    """One run of the sweep: architecture ``label``'s candidate ``key`` (a size, or a configuration
    of ``configs``); ``lr`` (when given) overrides the options' learning rate."""
    spec = sweep.architectures[label]
    arch = spec.model or label
    size, config_options = spec.candidates()[key]
    tag = f"c{budget_tag(budget)}" if budget is not None else f"b{budget_tag(sweep.budget_bytes)}"
    run_id = f"{label}-{key}-{tag}-seed{seed}"
    if stage == "tune":
        run_id = f"tune-{label}-{key}-lr{budget_tag(lr)}-{tag}-seed{seed}"
    run_dir = Path(sweep.run_root) / run_id
    args = ["fit", *(f"--config={resolve_config(c)}" for c in sweep.configs)]
    args.append(f"--model.model={ARCHITECTURES[arch]}")
    args += [flag(f"model.model.init_args.{k}", v) for k, v in model_init_args(arch, size).items()]
    options = {**sweep.options, **spec.options, **config_options}
    if lr is not None:
        options["model.lr"] = lr
    args += [flag(k, v) for k, v in options.items()]
    args += [f"--seed_everything={seed}", f"--data.init_args.seed={seed}"]
    if budget is not None:
        args.append(flag("budget.flops", budget))
    if sweep.budget_bytes is not None:
        args.append(flag("budget.bytes", float(sweep.budget_bytes)))
    if sweep.validations is not None:
        args.append(flag("budget.validations", sweep.validations))
    args += [f"--run_dir={run_dir}", "--ckpt_path=last"]
    info = {
        "sweep": sweep.name,
        "id": run_id,
        "stage": stage,
        "architecture": arch,
        "variant": label,
        "size": size,
        # The candidate configuration (None without ``configs``), its key and what it sets.
        "config": spec.config_name(key),
        "candidate": key,
        "config_options": config_options if spec.configs else None,
        "budget_flops": budget,
        "budget_bytes": sweep.budget_bytes,
        "seed": seed,
        "lr": options.get("model.lr"),
        "lr_tuned": stage == "main" and lr is not None,
        "args": args,
    }
    return Run(run_id, run_dir, args, info)


def tuned(sweep: Sweep, label: str) -> bool:
    """Whether the sweep tunes this architecture's learning rate (it has lrs, and no fixed model.lr)."""
    return bool(rates(sweep, label)) and "model.lr" not in sweep.architectures[label].options


def rates(sweep: Sweep, label: str) -> list[float]:
    """The learning rates an architecture is tuned over: its own ``lrs``, else the sweep's."""
    return list(sweep.architectures[label].lrs or sweep.lrs)


def tuning_val(run: Run) -> float | None:
    """A tuning run's final validation bits per byte, or None while it has not finished."""
    try:
        manifest = read_manifest(run.run_dir)
    except (FileNotFoundError, ValueError):
        return None
    if manifest["status"] != "finished":
        return None
    return manifest.get("metrics", {}).get("final", {}).get("val/bpb")


def tuning_seeds(sweep: Sweep) -> list[int]:
    """The seeds each tuning rate runs with: the first ``tune_seeds`` of ``seeds``."""
    return sweep.seeds[: sweep.tune_seeds]


def rate_val(sweep: Sweep, label: str, key: str, budget: float | None, lr: float) -> float | None:
    """A tuning rate's score: the mean final validation bits per byte of its runs (one per tuning
    seed), or None while one of them has not finished."""
    vals = [
        tuning_val(_run(sweep, label, key, budget, seed, lr, stage="tune")) for seed in tuning_seeds(sweep)
    ]
    return None if None in vals else sum(vals) / len(vals)


def tuning_rates(sweep: Sweep, label: str, key: str, budget: float | None) -> list[float]:
    """The rates one (architecture, candidate) is tuned at: ``lrs``, then, while every run so far has
    finished and the best (``rate_val``) is the lowest (highest) rate tried, one grid step further
    down (up), at most ``lr_extend`` times each way. It reads the finished tuning runs, so it grows
    as they end."""
    grid = rates(sweep, label)
    if not sweep.lr_extend:
        return grid
    ordered = sorted(grid)
    down = ordered[1] / ordered[0] if len(ordered) > 1 else 2.0
    up = ordered[-1] / ordered[-2] if len(ordered) > 1 else 2.0
    # The rates in the order tried (dicts keep insertion order) and their scores.
    vals = {lr: rate_val(sweep, label, key, budget, lr) for lr in grid}
    below = above = 0
    while None not in vals.values():
        best = min(vals, key=vals.__getitem__)
        if best == min(vals) and below < sweep.lr_extend:
            lr, below = float(f"{best / down:.6g}"), below + 1
        elif best == max(vals) and above < sweep.lr_extend:
            lr, above = float(f"{best * up:.6g}"), above + 1
        else:
            break
        vals[lr] = rate_val(sweep, label, key, budget, lr)
    return list(vals)


def tune_budget(sweep: Sweep) -> float | None:
    """The FLOP budget of the tuning runs: ``tune_budget``, else the smallest of ``budgets``."""
    return sweep.tune_budget if sweep.tune_budget is not None else min(sweep.budgets, default=None)


def expand_tuning(sweep: Sweep, only: tuple[str, str] | None = None) -> list[Run]:
    """The tuning runs: each tuned architecture and candidate (a size, or a configuration; or
    ``only`` that one) at every rate of ``lrs`` (and of its extensions past the grid's edges so far:
    ``tuning_rates``), at ``tune_budget`` (default the smallest budget), with each tuning seed
    (``tune_seeds``)."""
    budget = tune_budget(sweep)
    return [
        _run(sweep, label, key, budget, seed, lr, stage="tune")
        for label, spec in sweep.architectures.items()
        if tuned(sweep, label)
        for key in spec.candidates()
        if only is None or (label, key) == only
        for lr in tuning_rates(sweep, label, key, budget)
        for seed in tuning_seeds(sweep)
    ]


def tuned_lrs(sweep: Sweep, only: tuple[str, str] | None = None) -> dict[tuple[str, str], float]:
    """The learning rate of each tuned (architecture, size), or of ``only`` that one: the rate whose
    tuning runs reached the lowest mean final validation bits per byte (the first such rate in the
    order tried on a tie). Every tuning run it reads must have finished (including any extension
    past the grid's edge that the finished ones call for)."""
    vals: dict[tuple[str, str], dict[float, list[float]]] = {}
    for run in expand_tuning(sweep, only):
        val = tuning_val(run)
        if val is None:
            try:
                status = read_manifest(run.run_dir)["status"]
            except (FileNotFoundError, ValueError):
                status = "not started"
            raise ValueError(
                f"learning-rate tuning run {run.run_dir} is {status}: run the sweep to finish "
                "its tuning runs before its grid"
            )
        vals.setdefault(group(run), {}).setdefault(run.info["lr"], []).append(val)
    return {key: min(rates, key=lambda lr: sum(rates[lr]) / len(rates[lr])) for key, rates in vals.items()}


def chosen_configs(sweep: Sweep, lrs: dict[tuple[str, str], float]) -> dict[tuple[str, str], str]:
    """For each (architecture with ``configs``, row of its grid: ``Architecture.rows``) whose
    candidates all have a tuned rate in ``lrs``: the candidate whose tuning runs at that rate reached
    the lowest mean validation bits per byte (the first in the file's order on a tie)."""
    budget = tune_budget(sweep)
    chosen = {}
    for label, spec in sweep.architectures.items():
        if not spec.configs:
            continue
        for row, keys in spec.rows().items():
            if all((label, key) in lrs for key in keys):
                vals = {key: rate_val(sweep, label, key, budget, lrs[(label, key)]) for key in keys}
                chosen[(label, row)] = min(keys, key=lambda k: vals[k])
    return chosen


def expand_main(
    sweep: Sweep,
    lrs: dict[tuple[str, str], float] | None = None,
    chosen: dict[tuple[str, str], str] | None = None,
) -> list[Run]:
    """The grid's runs, in a stable order with stable ids; ``lrs`` gives tuned learning rates and
    ``chosen`` the configuration of each (architecture with ``configs``, row): a row without a choice
    yet has no grid runs, they join when its tuning ends."""
    budgets: list[float | None] = list(sweep.budgets) or [None]
    lrs, chosen = lrs or {}, chosen or {}

    def keys(label: str, spec: Architecture) -> list[str]:
        if not spec.configs:
            return spec.sizes
        return [chosen[(label, row)] for row in spec.rows() if (label, row) in chosen]

    return [
        _run(sweep, label, key, budget, seed, lrs.get((label, key)))
        for label, spec in sweep.architectures.items()
        for key in keys(label, spec)
        for budget in budgets
        for seed in sweep.seeds
    ]


def grid_count(sweep: Sweep) -> int:
    """How many runs the grid has once every configuration is chosen."""
    rows = sum(len(spec.rows()) for spec in sweep.architectures.values())
    return rows * max(len(sweep.budgets), 1) * len(sweep.seeds)


def expand(sweep: Sweep) -> list[Run]:
    """Every run of the sweep: the tuning runs (if ``lrs``), then the grid with the tuned rates and
    configurations (the tuning runs must then have finished: ``run_sweep`` runs them first)."""
    tuning = expand_tuning(sweep)
    if not tuning:
        return expand_main(sweep)
    lrs = tuned_lrs(sweep)
    return tuning + expand_main(sweep, lrs, chosen_configs(sweep, lrs))


def plan(run: Run) -> str:
    """What a sweep does with a run: ``skip`` (finished), ``resume`` (checkpoint) or ``start``.

    A directory that an earlier sweep filled with other options is an error, not a silent reuse.
    """
    info_path = run.run_dir / SWEEP_INFO
    if info_path.is_file():
        previous = json.loads(info_path.read_text()).get("args")
        if previous != run.args:
            raise ValueError(
                f"{run.run_dir} was run with other options than this sweep now gives it; "
                "delete that directory or change run_root"
            )
    if (run.run_dir / MANIFEST).is_file() and read_manifest(run.run_dir)["status"] == "finished":
        return "skip"
    return "resume" if (run.run_dir / "checkpoints" / "last.ckpt").is_file() else "start"


class Worker:
    """A child process (``experiments/worker.py``) that runs this sweep's runs one after another, each
    with its output in ``<run_dir>/log.txt``: Python, torch and Lightning start once per worker, not
    once per run.

    The child runs in its own process group, so a Ctrl-C in the terminal reaches this process only
    (a SIGINT lands wherever the child happens to be, mid-step); this process then sends the child
    SIGTERM, on which its run saves its current step and exits (``Preemption``), so the next call of
    the sweep resumes exactly there. The run is marked ``interrupted`` and the worker ends."""

    def __init__(self, threads: int | None = None) -> None:
        env = dict(os.environ)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "experiments.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            process_group=0,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, run: Run) -> int:
        """Run one ``bytelab fit`` in the worker; its exit status."""
        request = {"args": run.args, "log": str(run.run_dir / LOG)}
        RUNNING.add(self.process)
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            reply = self.process.stdout.readline()
        except KeyboardInterrupt:
            self.stop()
            mark_interrupted(run)
            raise
        except BrokenPipeError:
            reply = ""
        finally:
            RUNNING.discard(self.process)
        if not reply:  # the worker died (killed, out of memory): the run failed, the next gets a new one
            code = self.process.wait()
            with open(run.run_dir / LOG, "a") as log:
                print(f"bytelab sweep: the worker running this run ended with status {code}", file=log)
            return code or 1
        return json.loads(reply)["code"]

    def stop(self) -> None:
        """SIGTERM: its run saves its step and ends; with its input closed the worker then ends too,
        even if the run had already finished when the signal came (killed after the grace period)."""
        self.process.send_signal(signal.SIGTERM)
        self.close()

    def close(self) -> None:
        """End the worker (at the end of its input) once its run is over; kill it after the grace
        period."""
        alive = self.alive()
        with contextlib.suppress(BrokenPipeError):  # a dead worker's pipe may hold an unsent request
            self.process.stdin.close()
        if alive:
            try:
                self.process.wait(timeout=CHILD_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


def worker_launcher(threads: int | None) -> tuple[Callable[[Run], int], list[Worker]]:
    """A launch function that runs each run in a worker process of its own thread (one per job,
    started at its first run, replaced if it died), and the list of workers it started."""
    workers: list[Worker] = []
    local = threading.local()

    def launch(run: Run) -> int:
        worker = getattr(local, "worker", None)
        if worker is None or not worker.alive():
            worker = local.worker = Worker(threads)
            workers.append(worker)
        return worker.run(run)

    return launch, workers


def mark_interrupted(run: Run) -> None:
    """Record in ``run.json`` that a run was interrupted, if its process could not (it was killed)."""
    try:
        manifest = read_manifest(run.run_dir)
    except (FileNotFoundError, ValueError):
        return  # not started far enough to have a manifest: the next call starts it
    if manifest["status"] == "running":
        manifest.update(status="interrupted", error="stopped by an interrupt of its sweep")
        write_json_atomic(run.run_dir / MANIFEST, manifest)


def run_inline(run: Run) -> int:
    """Run one ``bytelab fit`` in this process (no interpreter start-up), its output in ``log.txt``."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    with (
        open(run.run_dir / LOG, "a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        try:
            code = run_lightning(run.args)
            if code == EXIT_PREEMPTED:  # the sweep itself got SIGTERM: stop it, not just this run
                raise KeyboardInterrupt
            return code
        except SystemExit as exit_:
            # Lightning ends a Ctrl-C with sys.exit(1) once the run is marked interrupted: stop the
            # sweep as the interrupt would have.
            if read_manifest(run.run_dir)["status"] == "interrupted":
                raise KeyboardInterrupt from None
            return exit_.code if isinstance(exit_.code, int) else 1
        except Exception as error:  # noqa: BLE001 - one failed run must not stop the sweep
            print(f"{type(error).__name__}: {error}", file=log)
            return 1
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def summary(run: Run) -> str:
    """One line on a run's outcome: final val/bpb and FLOPs spent, or where to look."""
    try:
        manifest = read_manifest(run.run_dir)
    except (FileNotFoundError, ValueError) as error:
        return f"no manifest ({error})"
    val = manifest.get("metrics", {}).get("final", {}).get("val/bpb")
    if manifest["status"] != "finished" or val is None:
        return f"{manifest['status']}: see {run.run_dir / LOG}"
    return f"val/bpb {val:.4f}  flops {manifest.get('flops_seen', 0):.3g}"


def largest_model_params(runs: Sequence[Run]) -> int:
    """Non-embedding parameters of the largest model among ``runs`` (built on the meta device)."""
    from modules.base import build_model

    largest = 0
    for run in runs:
        arch, size = run.info["architecture"], run.info["size"]
        with torch.device("meta"):
            model = build_model({"class_path": ARCHITECTURES[arch], "init_args": model_init_args(arch, size)})
        largest = max(largest, model.num_params(non_embedding=True))
    return largest


def group(run: Run) -> tuple[str, str]:
    """The (architecture label, candidate) a run belongs to: the unit whose learning rate is tuned
    (the candidate is the size, or the configuration's name with ``configs``)."""
    return run.info["variant"], run.info.get("candidate") or run.info["size"]


def run_sweep(
    sweep: Sweep,
    jobs: int | None = 1,
    inline: bool = False,
    launch: Callable[[Run], int] | None = None,
    echo: Callable[[str], None] = print,
    threads: int | None = None,
) -> list[Run]:
    """Run every unfinished run of the sweep (``jobs`` at a time); return the runs that failed.

    ``jobs=None`` chooses runs at a time and threads per run from the machine's cores and the largest
    model (``perf.choose_parallelism``; one run per GPU on a GPU machine) and prints the choice; a
    single run at a time then runs in this process. Every run is seeded on its own, so the results
    do not depend on how many run at once (tests/test_sweep.py).

    With ``lrs``, the tuning runs go first, and each (architecture, size)'s grid runs join the queue
    as soon as its own tuning runs have finished, with the rate they chose: no core waits for the
    slowest architecture's tuning. A failed tuning run leaves its grid unrun (it is reported).

    ``threads`` is torch's CPU threads per run (default: the cores shared among the jobs). Small
    models on a busy machine want 1: with 2 OpenMP threads on 2 loaded cores, a tiny model's step was
    measured 100x slower than with 1, the threads spinning while they wait for each other.
    """
    tuning = expand_tuning(sweep)
    if not tuning:
        return _run_all(sweep, expand_main(sweep), jobs, inline, launch, echo, threads)
    extend = f" (and up to {sweep.lr_extend} more each way past an edge)" if sweep.lr_extend else ""
    seeds = f", each rate with seeds {tuning_seeds(sweep)}" if sweep.tune_seeds > 1 else ""
    grids = {label: rates(sweep, label) for label in sweep.architectures if tuned(sweep, label)}
    over = (
        f"over {next(iter(grids.values()))}"
        if len({tuple(g) for g in grids.values()}) == 1
        else "over its own rates (" + ", ".join(f"{label} {g}" for label, g in grids.items()) + ")"
    )
    echo(
        f"sweep {sweep.name}: tuning the learning rate of each architecture {over}{extend}"
        f"{seeds}; its grid starts once its rates are tuned"
    )
    left: dict[tuple[str, str], set[str]] = {}
    for run in tuning:
        left.setdefault(group(run), set()).add(run.id)
    tried = {key: set(ids) for key, ids in left.items()}

    def follow(run: Run) -> list[Run]:
        """The grid runs that ``run`` (finished, failed or skipped) makes ready."""
        key = group(run)
        if run.info["stage"] != "tune" or key not in left:
            return []
        left[key].discard(run.id)
        if left[key]:
            return []
        mine = expand_tuning(sweep, only=key)
        more = [r for r in mine if r.id not in tried[key]]
        if more:  # the best rate so far is at an edge: one more rate past it
            echo(f"  learning rate of {key[0]} {key[1]}: best at an edge, also trying {more[0].info['lr']:g}")
            left[key] = {r.id for r in more}
            tried[key] |= left[key]
            return more
        del left[key]
        try:
            lr = tuned_lrs(sweep, only=key)[key]
        except ValueError:
            return []  # a tuning run failed: reported with the failures, its grid is not run
        how = f"mean val bpb over {sweep.tune_seeds} seeds," if sweep.tune_seeds > 1 else "val bpb of"
        echo(f"  learning rate of {key[0]} {key[1]}: {lr:g} (lowest {how} {len(mine)} runs)")
        lrs[key] = lr
        label, spec = key[0], sweep.architectures[key[0]]
        if not spec.configs:
            return [r for r in expand_main(sweep, {key: lr}) if group(r) == key]
        row = next(row for row, keys in spec.rows().items() if key[1] in keys)
        chosen = chosen_configs(sweep, lrs)
        if (label, row) not in chosen:
            return []  # another configuration of this row is still tuning
        pick = chosen[(label, row)]
        echo(
            f"  configuration of {label}{f' {row}' if row else ''}: {spec.config_name(pick)} "
            "(lowest val bpb of its candidates at their rates)"
        )
        return [r for r in expand_main(sweep, lrs, chosen) if group(r) == (label, pick)]

    lrs: dict[tuple[str, str], float] = {}
    grid = expand_main(sweep)  # the tuned groups' runs join, with their rates, through follow
    untuned = [run for run in grid if group(run) not in left]
    total = len(tuning) + grid_count(sweep)
    # Past one edge only, the one holding the best (both ways from a grid of one rate).
    extra = sweep.tune_seeds * sum(
        sweep.lr_extend * (2 if len(rates(sweep, key[0])) == 1 else 1) for key in left
    )
    more = f" (and up to {extra} tuning runs past the grids' edges)" if extra else ""
    return _run_all(sweep, tuning + untuned, jobs, inline, launch, echo, threads, follow, total, more)


def _run_all(
    sweep: Sweep,
    runs: list[Run],
    jobs: int | None,
    inline: bool,
    launch: Callable[[Run], int] | None,
    echo: Callable[[str], None],
    threads: int | None,
    follow: Callable[[Run], list[Run]] = lambda run: [],
    total: int | None = None,
    more: str = "",
) -> list[Run]:
    """Run every unfinished run of ``runs`` (``jobs`` at a time) and every run ``follow`` adds when
    one ends; return the runs that failed.

    The next run is the first waiting tuning run, else the waiting run of the largest budget (the
    longest, so that the last runs to finish are short ones and no core idles long at the end),
    else the first in order. ``total`` is the count to announce (``len(runs)`` by default), ``more``
    what may join it."""
    ready: list[tuple[Run, str]] = []
    finished = 0

    def admit(new: list[Run]) -> None:
        nonlocal finished
        queue = list(new)
        while queue:
            run = queue.pop(0)
            action = plan(run)
            if action == "skip":
                echo(f"  skip    {run.id:34}  ({summary(run)})")
                finished += 1
                queue += follow(run)
            else:
                ready.append((run, action))

    def take() -> tuple[Run, str]:
        def priority(item: tuple[Run, str]) -> tuple[int, float]:
            run = item[0]
            return (run.info["stage"] != "tune", -(run.info["budget_flops"] or run.info["budget_bytes"] or 0))

        best = min(range(len(ready)), key=lambda i: priority(ready[i]))  # min keeps the first of equals
        return ready.pop(best)

    admit(runs)
    total = total if total is not None else len(runs)
    if jobs is None:
        cores, gpus = os.cpu_count() or 1, torch.cuda.device_count()
        params = largest_model_params([run for run, _ in ready])
        jobs, chosen = choose_parallelism(cores, total - finished, params, gpus)
        threads = threads or chosen
        inline = inline or jobs == 1
        echo(
            f"parallel: {jobs} runs at a time x {threads} threads ({cores} cores, {gpus} GPUs, "
            f"largest model {params / 1e6:.1f}M parameters)"
        )
    workers: list[Worker] = []
    if launch is None:
        per_run = threads or (max((os.cpu_count() or 1) // jobs, 1) if jobs > 1 else None)
        launch, workers = (run_inline, []) if inline else worker_launcher(per_run)
    failed: list[Run] = []
    echo(f"sweep {sweep.name}: {total} runs, {finished} finished, {total - finished} to run{more}")

    def one(run: Run, action: str) -> list[Run]:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.run_dir / SWEEP_INFO, run.info)
        start = time.monotonic()
        code = launch(run)
        if code != 0:
            failed.append(run)
        echo(f"  {action:7} {run.id:34} {time.monotonic() - start:5.0f} s  {summary(run)}")
        return follow(run)

    previous = torch.get_num_threads()
    try:
        if jobs > 1 and not inline:
            _run_parallel(jobs, ready, take, one, admit)
            return failed
        torch.set_num_threads(threads or previous)  # in-process runs share this process's setting
        while ready:
            admit(one(*take()))
    finally:
        torch.set_num_threads(previous)
        for worker in workers:
            worker.close()
    return failed


def _run_parallel(
    jobs: int,
    ready: list[tuple[Run, str]],
    take: Callable[[], tuple[Run, str]],
    one: Callable[[Run, str], list[Run]],
    admit: Callable[[list[Run]], None],
) -> None:
    """``jobs`` threads, each taking the next ready run (``take``) and launching it (``one``) until
    none is ready and none is running (a running one may make more ready)."""
    state = threading.Condition()
    running = 0
    stopping = False

    def go_on() -> bool:
        return stopping or bool(ready) or running == 0

    def worker() -> None:
        nonlocal running
        while True:
            with state:
                state.wait_for(go_on)
                if stopping or not ready:
                    state.notify_all()
                    return
                item = take()
                running += 1
            new: list[Run] = []
            try:
                new = one(*item)
            finally:
                with state:
                    running -= 1
                    if not stopping:
                        admit(new)
                    state.notify_all()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(worker) for _ in range(jobs)]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            with state:
                stopping = True  # no further run starts
                state.notify_all()
            for child in list(RUNNING):  # they save their step and end; their threads then return
                child.send_signal(signal.SIGTERM)
            raise


def slurm_script(sweep: Sweep, runs: Sequence[Run]) -> str:
    """A SLURM array script running one sweep run per array task (Lightning reads SLURM's variables)."""
    commands = "\n".join(f"  {shlex.quote(run.command)}" for run in runs)
    first = shlex.join(["torchrun", "--nproc_per_node=8", '"$(which bytelab)"', *runs[0].args[:1]])
    return f"""#!/bin/bash
# Sweep {sweep.name}: {len(runs)} runs, one per array task. Submit with: sbatch THIS_FILE
# Each command resumes from its last checkpoint (--ckpt_path=last), so a requeued or repeated task
# continues its run; a finished run ends at once. For several GPUs per run, raise --ntasks-per-node
# and --gpus-per-node together and append --trainer.devices=N (Lightning starts DDP from SLURM's
# variables). Without SLURM, one run on the 8 GPUs of one machine:
#   {first} ... --trainer.devices=8 --trainer.strategy=ddp
#SBATCH --job-name={sweep.name}
#SBATCH --array=0-{len(runs) - 1}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=24:00:00
#SBATCH --requeue
# Two minutes before the time limit SLURM sends USR1: Lightning's auto-requeue runs `scontrol requeue`,
# the run saves its current step on the SIGTERM that follows and exits 75; the task comes back later.
#SBATCH --signal=USR1@120
#SBATCH --output={sweep.run_root}/slurm-%A_%a.out
set -euo pipefail
runs=(
{commands}
)
srun bash -c "${{runs[$SLURM_ARRAY_TASK_ID]}}"
"""


def run_interruptible(
    grid: Sweep, command: str, jobs: int | None, inline: bool, threads: int | None
) -> list[Run]:
    """``run_sweep`` for a command line (``bytelab sweep``, ``bytelab compare``): a SIGTERM (``kill``,
    a job scheduler) stops it as Ctrl-C does, children first, each run saving its step; either prints
    one line on how to resume and raises KeyboardInterrupt on. (Inline, the run in progress gets the
    SIGTERM through Lightning and the sweep then stops.)"""
    previous = signal.getsignal(signal.SIGTERM)
    if not inline:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run_sweep(grid, jobs=jobs, inline=inline, threads=threads)
    except KeyboardInterrupt:
        print(
            f"bytelab {command}: interrupted; the runs in progress are marked interrupted in their "
            "run.json, run the same command again to resume them",
            file=sys.stderr,
        )
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def use_data(sweep: Sweep, data: DataConfig) -> None:
    """Give every run of the sweep this DataModule config instead of the sweep's data config files
    (those under a ``data/`` folder), in place; the sweep's ``data.*`` options still apply on top."""
    sweep.configs = [c for c in sweep.configs if "/data/" not in c.replace("\\", "/")]
    sweep.options = {"data": data, **sweep.options}


def use_seeds(sweep: Sweep, seeds: list[int]) -> None:
    """Give the sweep these seeds instead of its own, in place; its learning-rate tuning then runs
    with at most that many (the first of them)."""
    sweep.seeds = list(seeds)
    sweep.tune_seeds = min(sweep.tune_seeds, len(sweep.seeds))


def sweep(
    sweep: str,
    data: DataConfig | None = None,
    jobs: int | None = None,
    inline: bool = False,
    threads: int | None = None,
    print_commands: bool = False,
    print_slurm: bool = False,
) -> int:
    """Run a compute-matched grid of ``bytelab fit`` runs, or print their commands.

    Args:
        sweep: The sweep YAML file (see experiments/sweeps/).
        data: A DataModule config replacing the sweep's data config, read as ``bytelab fit --data``
            reads it: a YAML file with class_path and init_args, a class name, and/or
            ``--data.init_args.KEY=VALUE``, on fit's default (the embedded text).
        jobs: Runs at a time (child processes share the cores); default: chosen from the cores and
            the model sizes, and printed.
        inline: Run in this process, one at a time (no interpreter start-up).
        threads: Torch CPU threads per run (default: the cores shared among the jobs).
        print_commands: Print one ``bytelab fit`` line per run and exit.
        print_slurm: Print a SLURM array script and exit.
    """
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs={jobs} must be at least 1")
    grid = Sweep.from_yaml(sweep)
    if data is not None:
        use_data(grid, data)
    if print_commands or print_slurm:
        tuning = expand_tuning(grid)
        try:
            runs = expand(grid)
        except ValueError:  # the grid's learning rates come from tuning runs not yet run
            runs = tuning
            print("# learning-rate tuning runs; run the sweep again once they finish for the grid's runs")
        text = "\n".join(run.command for run in runs) if print_commands else slurm_script(grid, runs)
        print(text.rstrip())
        return 0
    try:
        failed = run_interruptible(grid, "sweep", jobs=jobs, inline=inline, threads=threads)
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
    if failed:
        print(
            f"bytelab sweep: {len(failed)} runs failed: {', '.join(str(r.run_dir) for r in failed)}",
            file=sys.stderr,
        )
        return 1
    return 0
