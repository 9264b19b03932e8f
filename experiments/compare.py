"""``bytelab compare``: the main job. A compute-matched comparison of the full-attention and the
windowed decoder, PerceiverAR and MEGABYTE, each at its own tuned window and rate, then its analysis:
the table in the terminal, tables and plots under ``results/compare``.

It is a sweep (``experiments/sweeps/compare.yaml`` unless ``--sweep`` names another) followed by
``bytelab analyze``; options replace the sweep's data, budgets, sizes or device. Like any sweep it
skips finished runs, so a second call only redoes the analysis.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

from modules.sizes import ARCHITECTURES

from .subcommand import DataConfig
from .sweep import REPO, Architecture, Sweep, expand, run_sweep, use_data, use_seeds

DEFAULT_SWEEP = REPO / "experiments" / "sweeps" / "compare.yaml"
# --preset NAME: experiments/sweeps/compare_NAME.yaml (default: compare.yaml, the main job).
PRESETS = {
    "default": DEFAULT_SWEEP,
    "smoke": REPO / "experiments" / "sweeps" / "compare_smoke.yaml",
    "long": REPO / "experiments" / "sweeps" / "compare_long.yaml",
}
GPU_TRAINER = "experiments/configs/trainer/gpu.yaml"


def configure(
    sweep: str | Path = DEFAULT_SWEEP,
    data: DataConfig | None = None,
    budgets: list[float] | None = None,
    sizes: list[str] | None = None,
    device: Literal["cpu", "gpu"] = "cpu",
    runs: str | None = None,
    architectures: list[str] | None = None,
    seeds: list[int] | None = None,
    lrs: list[float] | None = None,
) -> Sweep:
    """The sweep file with the command line's replacements applied."""
    grid = Sweep.from_yaml(sweep)
    if data is not None:
        use_data(grid, data)
    if device == "gpu":
        grid.configs = [GPU_TRAINER, *grid.configs]
    if budgets:
        grid.budgets = sorted(budgets)
    if architectures:
        grid.architectures = choose_architectures(grid, architectures)
    if sizes:
        for spec in grid.architectures.values():
            spec.sizes = list(sizes)
    if seeds:
        use_seeds(grid, seeds)
    if lrs is not None:  # one grid for all, in place of the sweep's and each architecture's own
        grid.lrs = list(lrs)
        for spec in grid.architectures.values():
            spec.lrs = None
    if runs:
        grid.run_root = runs
    return Sweep.from_dict(
        vars(grid) | {"architectures": {k: vars(v) for k, v in grid.architectures.items()}}
    )


def choose_architectures(grid: Sweep, names: list[str]) -> dict[str, Architecture]:
    """The sweep's entries of ``names``, in that order; a registered architecture the sweep does not
    list (SpaceByte, Hourglass, H-Net, ...) joins with the sizes and candidate configurations
    (``configs``: windows, windows per step) of the sweep's first entry and the options every run
    shares, so that it is tuned over the same choices."""
    unknown = [n for n in names if n not in grid.architectures and n not in ARCHITECTURES]
    if unknown:
        known = sorted({*grid.architectures, *ARCHITECTURES})
        raise ValueError(f"--architectures: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    first = next(iter(grid.architectures.values()))
    joined = {"sizes": list(first.sizes), "configs": {k: dict(v) for k, v in first.configs.items()}}
    return {n: grid.architectures.get(n) or Architecture(**joined) for n in names}


def compare(
    sweep: str | None = None,
    preset: Literal["default", "smoke", "long"] = "default",
    data: DataConfig | None = None,
    budgets: list[float] | None = None,
    sizes: list[str] | None = None,
    device: Literal["cpu", "gpu"] = "cpu",
    runs: str | None = None,
    architectures: list[str] | None = None,
    seeds: list[int] | None = None,
    lrs: list[float] | None = None,
    out: str | None = None,
    jobs: int | None = None,
    threads: int | None = None,
) -> int:
    """Run a compute-matched comparison of two decoders, PerceiverAR and MEGABYTE, then its analysis.

    Args:
        sweep: The sweep file to run (replaces ``preset``).
        preset: ``default`` (the main job: 3 seeds, tuned learning rates, minutes on 2 CPU cores),
            ``smoke`` (seconds, for tests and a first look) or ``long`` (the study a GPU or an
            afternoon affords: enough budgets for a scaling fit).
        data: A DataModule config replacing the sweep's data config, read as ``bytelab fit --data``
            reads it: a YAML file with class_path and init_args, a class name, and/or
            ``--data.init_args.KEY=VALUE``, on fit's default (the embedded text).
        budgets: Training-FLOP budgets replacing the sweep's.
        sizes: Named sizes (modules/sizes.py) for every architecture.
        device: ``gpu`` adds the one-GPU trainer config.
        runs: Folder of the run directories (default: the sweep's run_root).
        architectures: The architectures to compare (default: the sweep's), e.g.
            ``[decoder,megabyte,spacebyte,hourglass,hnet]``; one the sweep does not list takes the
            sizes of its first.
        seeds: Seeds replacing the sweep's (every point runs once per seed; learning-rate tuning
            with the first ``tune_seeds`` of them, or all if fewer).
        lrs: Learning rates each architecture is tuned over, replacing the sweep's and any
            architecture's own (``[]``: no tuning, the sweep's ``model.lr`` for all).
        out: Folder for tables and plots (default: ``results`` inside the run folder, which git
            ignores; ``--out results/compare`` refreshes the committed results).
        jobs: Runs at a time in child processes (1: in this process); default: chosen from the
            cores and the model sizes (``experiments.perf.choose_parallelism``), and printed.
        threads: Torch CPU threads per run (default: chosen with ``jobs``; 1 for small models).
    """
    from analysis.report import analyze, describe  # pandas and matplotlib: only when analysing

    grid = configure(sweep or PRESETS[preset], data, budgets, sizes, device, runs, architectures, seeds, lrs)
    out = out or str(Path(grid.run_root) / "results")
    start = time.monotonic()
    failed = run_sweep(grid, jobs=jobs, inline=jobs == 1, threads=threads or (1 if jobs == 1 else None))
    if failed:
        print(
            f"bytelab compare: {len(failed)} runs failed, see their log.txt: {failed[0].run_dir}",
            file=sys.stderr,
        )
        return 1
    runs_done = expand(grid)  # reads the tuning runs' manifests: once
    report = analyze([run.run_dir for run in runs_done], Path(out))
    print(describe(report))
    print(f"bytelab compare: {len(runs_done)} runs and the analysis in {time.monotonic() - start:.0f} s")
    return 0
