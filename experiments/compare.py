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
from .sweep import (
    REPO,
    Architecture,
    Run,
    Sweep,
    expand,
    expand_main,
    expand_tuning,
    grid_count,
    group,
    run_interruptible,
    tune_budget,
    use_data,
    use_seeds,
)

DEFAULT_SWEEP = REPO / "experiments" / "sweeps" / "compare.yaml"
# --preset NAME: experiments/sweeps/compare_NAME.yaml (default: compare.yaml, the main job).
PRESETS = {
    "default": DEFAULT_SWEEP,
    "smoke": REPO / "experiments" / "sweeps" / "compare_smoke.yaml",
    "scaling": REPO / "experiments" / "sweeps" / "compare_scaling.yaml",
    "context": REPO / "experiments" / "sweeps" / "compare_context.yaml",
    "scaling_gpu": REPO / "experiments" / "sweeps" / "compare_scaling_gpu.yaml",
}
GPU_TRAINER = "experiments/configs/trainer/gpu.yaml"
# What a plan's GPU-hours assume: an H100's dense bf16 peak (NVIDIA's datasheet, SXM), at the model
# FLOP utilisation the decoder and MEGABYTE reached on the one GPU lent so far (an H200, 8K bytes).
GPU_PEAK_FLOPS = 989e12
MFUS = {"the decoder's measured 35%": 0.35, "MEGABYTE's measured 9%": 0.09}


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


def training_bytes_per_flop(run: Run) -> float:
    """Training bytes one FLOP buys in ``run`` (its model built on the meta device from its command)."""
    import torch
    import yaml

    from modules.base import build_model

    options = dict(arg[2:].split("=", 1) for arg in run.args if arg.startswith("--") and "=" in arg)
    prefix = "model.model.init_args."
    init = {k[len(prefix) :]: yaml.safe_load(v) for k, v in options.items() if k.startswith(prefix)}
    seq_len = int(options.get("data.init_args.seq_len", init.get("max_seq_len", 1024)))
    with torch.device("meta"):
        model = build_model({"class_path": ARCHITECTURES[run.info["architecture"]], "init_args": init})
    return model.scored_len(seq_len) / (3 * model.forward_flops(seq_len))


def plan(grid: Sweep) -> list[str]:
    """What a study costs before it runs: its runs, their training FLOPs, the GPU-hours those FLOPs
    take at the MFUs measured so far, and the most training bytes one run reads."""
    tuning = expand_tuning(grid)
    extra = grid.tune_seeds * grid.lr_extend * len({group(r) for r in tuning})
    tune_flops = (len(tuning) + extra) * (tune_budget(grid) or 0)
    rows = sum(len(spec.rows()) for spec in grid.architectures.values())
    grid_flops = rows * len(grid.seeds) * sum(grid.budgets)
    total = tune_flops + grid_flops
    hours = ", ".join(f"{total / (GPU_PEAK_FLOPS * mfu) / 3600:.3g} at {name}" for name, mfu in MFUS.items())
    candidates = tuning or expand_main(grid)
    most = max(grid.budgets, default=0) * max(training_bytes_per_flop(run) for run in candidates)
    budgets = f"{len(grid.budgets)} budgets {min(grid.budgets):.3g}-{max(grid.budgets):.3g} FLOPs"
    return [
        f"# plan of {grid.name}: {len(tuning)} tuning runs at {tune_budget(grid) or 0:.3g} FLOPs (and up to "
        f"{extra} past the rate grids' edges), then {grid_count(grid)} grid runs: {rows} rows x {budgets} x "
        f"{len(grid.seeds)} seeds",
        f"# training FLOPs: {total:.3g} at most ({tune_flops:.3g} tuning, {grid_flops:.3g} grid); "
        "evaluation adds its own (max_eval_bytes x validations per run)",
        f"# GPU-hours from those FLOPs on one H100 (bf16 peak {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s): {hours}; "
        "models this small may reach less: `bytelab bench` on the GPU measures the rate",
        f"# the largest run trains on {most:.3g} bytes: a corpus with fewer training bytes repeats them "
        "(pass one with --data)",
    ]


def compare(
    sweep: str | None = None,
    preset: Literal["default", "smoke", "scaling", "scaling_gpu", "context"] = "default",
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
    print_commands: bool = False,
) -> int:
    """Run a compute-matched comparison of two decoders, PerceiverAR and MEGABYTE, then its analysis.

    Args:
        sweep: The sweep file to run (replaces ``preset``).
        preset: ``default`` (the main job: 3 seeds, tuned learning rates, minutes on 2 CPU cores),
            ``smoke`` (seconds, for tests and a first look), ``scaling`` (every family at 2 sizes
            and 5 budgets over 16x: the fits, in about 90 minutes on 2 CPU cores), ``scaling_gpu``
            (the same 100x, for one GPU; give a corpus with ``--data``) or ``context`` (4 families
            at windows of 128, 512 and 2048 bytes at equal FLOPs); docs/SCALING.md.
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
        print_commands: Print the plan (runs, training FLOPs, GPU-hours, the bytes the largest run
            reads) and the ``bytelab fit`` line of every run that can be known before any has run
            (the tuning runs, where there are), then exit.
    """
    from analysis.report import analyze, describe  # pandas and matplotlib: only when analysing

    grid = configure(sweep or PRESETS[preset], data, budgets, sizes, device, runs, architectures, seeds, lrs)
    if print_commands:
        tuning = expand_tuning(grid)
        note = ["# the tuning runs; the grid's commands follow once they have run"] if tuning else []
        print("\n".join([*plan(grid), *note, *(run.command for run in tuning or expand_main(grid))]))
        return 0
    out = out or str(Path(grid.run_root) / "results")
    start = time.monotonic()
    try:
        failed = run_interruptible(
            grid, "compare", jobs=jobs, inline=jobs == 1, threads=threads or (1 if jobs == 1 else None)
        )
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
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
