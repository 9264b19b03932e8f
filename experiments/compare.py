"""``bytelab compare``: the main job. A compute-matched comparison of Decoder, PerceiverAR and
MEGABYTE, then its analysis: the table in the terminal, tables and plots under ``results/compare``.

It is a sweep (``experiments/sweeps/compare.yaml`` unless ``--sweep`` names another) followed by
``bytelab analyze``; options replace the sweep's data, budgets, sizes or device. Like any sweep it
skips finished runs, so a second call only redoes the analysis.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

from .subcommand import DataConfig
from .sweep import REPO, Sweep, expand, run_sweep, use_data

DEFAULT_SWEEP = REPO / "experiments" / "sweeps" / "compare.yaml"
GPU_TRAINER = "experiments/configs/trainer/gpu.yaml"


def configure(
    sweep: str | Path = DEFAULT_SWEEP,
    data: DataConfig | None = None,
    budgets: list[float] | None = None,
    sizes: list[str] | None = None,
    device: Literal["cpu", "gpu"] = "cpu",
    runs: str | None = None,
) -> Sweep:
    """The sweep file with the command line's replacements applied."""
    grid = Sweep.from_yaml(sweep)
    if data is not None:
        use_data(grid, data)
    if device == "gpu":
        grid.configs = [GPU_TRAINER, *grid.configs]
    if budgets:
        grid.budgets = sorted(budgets)
    if sizes:
        for spec in grid.architectures.values():
            spec.sizes = list(sizes)
    if runs:
        grid.run_root = runs
    return Sweep.from_dict(
        vars(grid) | {"architectures": {k: vars(v) for k, v in grid.architectures.items()}}
    )


def compare(
    sweep: str = str(DEFAULT_SWEEP),
    data: DataConfig | None = None,
    budgets: list[float] | None = None,
    sizes: list[str] | None = None,
    device: Literal["cpu", "gpu"] = "cpu",
    runs: str | None = None,
    out: str = "results/compare",
    jobs: int | None = None,
    threads: int | None = None,
) -> int:
    """Run a compute-matched comparison of Decoder, PerceiverAR and MEGABYTE, then its analysis.

    Args:
        sweep: The sweep to run.
        data: A DataModule config replacing the sweep's data config, read as ``bytelab fit --data``
            reads it: a YAML file with class_path and init_args, a class name, and/or
            ``--data.init_args.KEY=VALUE``, on fit's default (the embedded text).
        budgets: Training-FLOP budgets replacing the sweep's.
        sizes: Named sizes (modules/sizes.py) for every architecture.
        device: ``gpu`` adds the one-GPU trainer config.
        runs: Folder of the run directories (default: the sweep's run_root).
        out: Folder for tables and plots.
        jobs: Runs at a time in child processes (1: in this process); default: chosen from the
            cores and the model sizes (``experiments.perf.choose_parallelism``), and printed.
        threads: Torch CPU threads per run (default: chosen with ``jobs``; 1 for small models).
    """
    from analysis.report import analyze, describe  # pandas and matplotlib: only when analysing

    grid = configure(sweep, data, budgets, sizes, device, runs)
    start = time.monotonic()
    failed = run_sweep(grid, jobs=jobs, inline=jobs == 1, threads=threads or (1 if jobs == 1 else None))
    if failed:
        print(
            f"bytelab compare: {len(failed)} runs failed, see their log.txt: {failed[0].run_dir}",
            file=sys.stderr,
        )
        return 1
    report = analyze([run.run_dir for run in expand(grid)], Path(out))
    print(describe(report))
    print(f"bytelab compare: {len(expand(grid))} runs and the analysis in {time.monotonic() - start:.0f} s")
    return 0
