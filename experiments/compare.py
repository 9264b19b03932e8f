"""``bytelab compare``: the main job. A compute-matched comparison of Decoder, PerceiverAR and
MEGABYTE, then its analysis: the table in the terminal, tables and plots under ``results/compare``.

It is a sweep (``experiments/sweeps/compare.yaml`` unless ``--sweep`` names another) followed by
``bytelab analyze``; options replace the sweep's data, budgets, sizes or device. Like any sweep it
skips finished runs, so a second call only redoes the analysis.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .sweep import REPO, Sweep, expand, resolve_config, run_sweep

DEFAULT_SWEEP = REPO / "experiments" / "sweeps" / "compare.yaml"
GPU_TRAINER = "experiments/configs/trainer/gpu.yaml"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bytelab compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default=str(DEFAULT_SWEEP), help="the sweep to run (default: %(default)s)")
    p.add_argument("--data", help="a DataModule config (YAML) replacing the sweep's data config")
    p.add_argument("--budgets", type=float, nargs="+", help="training-FLOP budgets replacing the sweep's")
    p.add_argument("--sizes", nargs="+", help="named sizes (modules/sizes.py) for every architecture")
    p.add_argument(
        "--device", choices=["cpu", "gpu"], default="cpu", help="gpu adds the one-GPU trainer config"
    )
    p.add_argument("--runs", help="folder of the run directories (default: the sweep's run_root)")
    p.add_argument(
        "--out", default="results/compare", help="folder for tables and plots (default: %(default)s)"
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="runs at a time in child processes (1: in this process)"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per run (default: 1, for small models)"
    )
    return p


def configure(args: argparse.Namespace) -> Sweep:
    """The sweep file with the command line's replacements applied."""
    sweep = Sweep.from_yaml(args.sweep)
    if args.data:
        resolve_config(args.data)
        sweep.configs = [c for c in sweep.configs if "/data/" not in c.replace("\\", "/")] + [args.data]
    if args.device == "gpu":
        sweep.configs = [GPU_TRAINER, *sweep.configs]
    if args.budgets:
        sweep.budgets = sorted(args.budgets)
    if args.sizes:
        for spec in sweep.architectures.values():
            spec.sizes = list(args.sizes)
    if args.runs:
        sweep.run_root = args.runs
    return Sweep.from_dict(
        vars(sweep) | {"architectures": {k: vars(v) for k, v in sweep.architectures.items()}}
    )


def main(argv: list[str]) -> int:
    """``bytelab compare``."""
    from analysis.report import analyze, describe  # pandas and matplotlib: only when analysing

    args = parser().parse_args(argv)
    sweep = configure(args)
    start = time.monotonic()
    failed = run_sweep(sweep, jobs=args.jobs, inline=args.jobs == 1, threads=args.threads)
    if failed:
        print(
            f"bytelab compare: {len(failed)} runs failed, see their log.txt: {failed[0].run_dir}",
            file=sys.stderr,
        )
        return 1
    report = analyze([run.run_dir for run in expand(sweep)], Path(args.out))
    print(describe(report))
    print(f"bytelab compare: {len(expand(sweep))} runs and the analysis in {time.monotonic() - start:.0f} s")
    return 0
