"""``bytelab study NAME [--mini]``: one of the MEGABYTE paper's tables, run, then laid out beside the paper's.

A study file, ``experiments/sweeps/paper/NAME.yaml``, names the table it reproduces and holds two
variants: ``paper`` (the paper's sizes, batches, context and learning rates, for GPUs) and ``mini``
(2 CPU cores, minutes, the embedded data). A variant is a list of parts, one per column of the
paper's table; a part is a sweep (``experiments/sweep.py``: compute-matched runs, skipped when
finished, resumed when interrupted) plus, optionally, ``evaluations`` (other ways of scoring the
trained models, as ``bytelab validate`` options: Table 11) or ``generate_bytes`` (time cached
generation: Table 9). The analysis writes ``results/paper/NAME/``: ``table.md`` (ours beside the
paper's numbers from ``analysis/paper_numbers.py``, and which orderings match), ``table.csv``,
``grid.md`` (every run) and plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .manifest import MANIFEST, read_manifest, write_json_atomic
from .subcommand import DataConfig
from .sweep import REPO, Run, Sweep, expand, flag, run_inline, run_sweep, use_data, use_seeds

STUDIES = REPO / "experiments" / "sweeps" / "paper"
EVALUATIONS = "evaluations"  # <run_dir>/evaluations/<name>: one `bytelab validate` each
TEST = "test"  # the plain test-split evaluation of a part without evaluations
GENERATION = "generation.json"  # <run_dir>/generation.json: the timed generation


@dataclass
class Part:
    """One column of a study's table.

    Args:
        column: The paper's column this part reproduces (``arXiv``, ``Image256``, ...).
        sweep: The runs (a sweep mapping, see ``experiments/sweep.py``).
        evaluations: Row label -> ``bytelab validate`` options, each applied to every trained run
            (its checkpoint) instead of the run's own final validation.
        generate_bytes: Time cached generation of this many bytes from every trained run.
        paper_params: Row label -> the sizes the paper gives that row's model in this column
            (``["758M", "262M"]``: global and local for MEGABYTE, one for the others), counted as the
            paper counts (``modules.sizes.paper_counts``); tests/test_study.py holds every
            paper-scale model to them within 10%.
    """

    column: str
    sweep: Sweep
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    generate_bytes: int | None = None
    paper_params: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Study:
    """A study file: which table, how our row labels map to the paper's rows, and its two variants.

    Args:
        name: The study's name (the file's stem and the key of ``analysis/paper_numbers.py``).
        reproduces: The paper's table, in words.
        rows: Our row label (a sweep's architecture key, or an evaluation's name) -> the paper's row.
        paper: Parts at the paper's scale.
        mini: Parts sized for 2 CPU cores.
        notes: What differs from the paper, printed under the table.
    """

    name: str
    reproduces: str
    rows: dict[str, str]
    paper: list[Part]
    mini: list[Part]
    notes: str = ""

    @classmethod
    def load(cls, name: str | Path) -> Study:
        """Read ``experiments/sweeps/paper/NAME.yaml`` (or a path), with one-line errors that name it."""
        path = Path(name) if str(name).endswith(".yaml") else STUDIES / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in STUDIES.glob("*.yaml")))
            raise FileNotFoundError(f"no study {name!r} ({path} does not exist); known: {known}")
        data = yaml.safe_load(path.read_text())
        known_keys = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) - known_keys or {"paper", "mini", "rows"} - set(data):
            raise ValueError(f"{path}: a study file is a mapping with keys {sorted(known_keys)}")
        parts = {
            variant: [part(p, f"{path} {variant}") for p in data[variant]] for variant in ("paper", "mini")
        }
        return cls(**{**data, **parts, "name": data.get("name", path.stem)})

    def parts(self, mini: bool) -> list[Part]:
        return self.mini if mini else self.paper

    def keep_columns(self, mini: bool, columns: list[str]) -> None:
        """Keep only the parts of these columns (a one-line error names an unknown one)."""
        known = [p.column for p in self.parts(mini)]
        if unknown := set(columns) - set(known):
            raise ValueError(f"study {self.name} has no column {sorted(unknown)}; it has {known}")
        kept = [p for p in self.parts(mini) if p.column in columns]
        if mini:
            self.mini = kept
        else:
            self.paper = kept


def part(data: dict[str, Any], source: str) -> Part:
    """A part from its mapping; its sweep checked like any sweep file."""
    unknown = set(data) - set(Part.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{source}: unknown keys {sorted(unknown)} in a part")
    return Part(
        **{
            **data,
            "sweep": Sweep.from_dict(data["sweep"], source),
            "evaluations": data.get("evaluations") or {},
        }
    )


def evaluation_runs(run: Run, evaluations: dict[str, dict[str, Any]]) -> list[tuple[str, Run]]:
    """How a trained run is reported: the checkpoint it selected on validation (``best.ckpt``,
    lowest ``val/bpb``) scored on the test split by ``bytelab test`` with the run's own options, in
    ``<run_dir>/evaluations/<name>``; one per evaluation (its options on top), or one named ``test``
    when the part has none."""
    runs = []
    checkpoint = run.run_dir / "checkpoints" / "best.ckpt"
    for name, options in (evaluations or {TEST: {}}).items():
        run_dir = run.run_dir / EVALUATIONS / "".join(c if c.isalnum() else "_" for c in name)
        args = ["test", *run.args[1:-2], f"--run_dir={run_dir}", f"--ckpt_path={checkpoint}"]
        args += [flag(k, v) for k, v in options.items()]
        runs.append((name, Run(f"{run.id}/{name}", run_dir, args, {**run.info, "evaluation": name})))
    return runs


def evaluate(part: Part, echo: Any = print) -> None:
    """Score every trained run of the part on the test split (each evaluation, or plain), unless done."""
    for run in expand(part.sweep):
        for _, evaluation in evaluation_runs(run, part.evaluations):
            manifest = evaluation.run_dir / MANIFEST
            if manifest.is_file() and read_manifest(evaluation.run_dir)["status"] == "finished":
                continue
            evaluation.run_dir.mkdir(parents=True, exist_ok=True)
            start = time.monotonic()
            if run_inline(evaluation) != 0:
                raise ValueError(f"evaluation {evaluation.id} failed: see {evaluation.run_dir / 'log.txt'}")
            echo(f"  eval    {evaluation.id:44} {time.monotonic() - start:5.0f} s")


def time_generation(part: Part, echo: Any = print) -> None:
    """Time cached generation of ``generate_bytes`` bytes (batch 1, no prompt) from every run, on
    the GPU if there is one."""
    import torch

    from modules import ByteLM
    from modules.generate import generate

    for run in expand(part.sweep):
        out = run.run_dir / GENERATION
        if out.is_file():
            continue
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = ByteLM.from_checkpoint(run.run_dir / "checkpoints" / "last.ckpt").model.eval().to(device)
        prompt = torch.zeros(1, 0, dtype=torch.long, device=device)
        generate(model, prompt, min(16, part.generate_bytes))  # warm-up
        start = time.perf_counter()
        generate(model, prompt, part.generate_bytes, generator=torch.Generator(device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()  # the sampled bytes are on the GPU until this returns
        seconds = time.perf_counter() - start
        record = {"bytes": part.generate_bytes, "seconds": seconds, "threads": torch.get_num_threads()}
        write_json_atomic(out, {**record, "device": str(device)})
        echo(f"  generate {run.id:43} {seconds:5.1f} s for {part.generate_bytes} bytes")


def results(part: Part) -> list[dict[str, Any]]:
    """Our numbers of one part: one row per run (per evaluation, if the part has evaluations): the
    test bits per byte of the checkpoint selected on validation (``bpb``), the validation bits per
    byte it was selected by (``val_bpb``), what evaluating cost, and what training spent (FLOPs and
    bytes)."""
    rows = []
    for run in expand(part.sweep):
        manifest = read_manifest(run.run_dir)
        best = manifest["metrics"].get("best", {}).get("val/bpb", {})
        base = {
            "label": run.info["variant"],
            "column": part.column,
            "size": run.info["size"],
            "seed": run.info["seed"],
            "run_dir": str(run.run_dir),
            "params": manifest["model"]["params"]["total"],
            "val_bpb": best.get("value", manifest["metrics"]["final"].get("val/bpb")),
            "train_flops": manifest.get("flops_seen"),
            "train_bytes": manifest.get("bytes_seen"),
        }
        for label, evaluation in evaluation_runs(run, part.evaluations):
            final = read_manifest(evaluation.run_dir)["metrics"]["final"]
            label = run.info["variant"] if label == TEST and not part.evaluations else label
            rows.append(
                {
                    **base,
                    "label": label,
                    "bpb": final["test/bpb"],
                    "flops_per_byte": final.get("test/flops_per_byte"),
                    "eval_dir": str(evaluation.run_dir),  # its run.json: the reference rows
                }
            )
        if part.generate_bytes:
            generation = json.loads((run.run_dir / GENERATION).read_text())
            seconds = generation["seconds"]
            rows.append({**rows[-1], "column": "seconds", "bpb": seconds, "val_bpb": seconds})
    return rows


def run_study(
    study: Study, mini: bool, out: Path, jobs: int = 1, echo: Any = print, threads: int | None = None
) -> Path:
    """Run every part of one variant (sweep, evaluations, generation timing), then the analysis."""
    from analysis.paper import write_study  # pandas and matplotlib: only when analysing

    parts = study.parts(mini)
    for p in parts:
        failed = run_sweep(p.sweep, jobs=jobs, inline=jobs == 1, echo=echo, threads=threads)
        if failed:
            raise ValueError(
                f"{len(failed)} runs of study {study.name} failed, see {failed[0].run_dir}/log.txt"
            )
        evaluate(p, echo)
        if p.generate_bytes:
            time_generation(p, echo)
    rows = [row for p in parts for row in results(p)]
    run_dirs = [run.run_dir for p in parts for run in expand(p.sweep)]
    return write_study(study, rows, run_dirs, out, variant="mini" if mini else "paper")


def configure(
    study: Study,
    mini: bool,
    runs: str | None,
    options: list[str],
    budgets: list[float] | None = None,
    data: DataConfig | None = None,
    seeds: list[int] | None = None,
) -> None:
    """Apply ``--runs``, ``--set``, ``--budgets``, ``--seeds`` and ``--data`` to every part of the
    chosen variant, in place."""
    extra = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: give KEY=VALUE")
        extra[key] = yaml.safe_load(value)
    for i, p in enumerate(study.parts(mini)):
        if data is not None:
            use_data(p.sweep, data)
        p.sweep.options = {**p.sweep.options, **extra}
        if budgets:
            p.sweep.budgets = sorted(budgets)
        if seeds:
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"--seeds {seeds}: give distinct seeds")
            use_seeds(p.sweep, seeds)
        if runs:
            p.sweep.run_root = str(Path(runs) / f"{i}-{p.column}")


def study(
    name: str,
    mini: bool = False,
    out: str | None = None,
    runs: str | None = None,
    data: DataConfig | None = None,
    set: list[str] | None = None,
    columns: list[str] | None = None,
    budgets: list[float] | None = None,
    seeds: list[int] | None = None,
    jobs: int = 1,
    threads: int | None = None,
    print_commands: bool = False,
) -> int:
    """Run one of the MEGABYTE paper's tables, then lay it out beside the paper's numbers.

    Args:
        name: A study of experiments/sweeps/paper/ (its file name without .yaml), or a path.
        mini: The CPU-sized variant (default: the paper's scale).
        out: Output folder (default: results/paper/NAME).
        runs: Folder for the run directories (default: each part's run_root).
        data: A DataModule config replacing every part's data config, read as ``bytelab fit
            --data`` reads it: a YAML file with class_path and init_args, a class name, and/or
            ``--data.init_args.KEY=VALUE``, on fit's default (the embedded text).
        set: ``bytelab fit`` options for every run, KEY=VALUE (YAML values), e.g.
            data.init_args.paths=data/pg19.
        columns: Run only these columns of the paper's table (default: all).
        budgets: Training-FLOP budgets replacing every part's.
        seeds: Seeds replacing every part's (the tables give the mean and spread over them;
            learning-rate tuning with at most that many: ``tune_seeds``).
        jobs: Runs at a time in child processes (1: in this process).
        threads: Torch CPU threads per run (default: the cores shared among the jobs; 1 suits the
            minis).
        print_commands: Print every ``bytelab fit`` line and exit.
    """
    chosen = Study.load(name)
    if columns:
        chosen.keep_columns(mini, columns)
    configure(chosen, mini, runs, set or [], budgets, data, seeds)
    if print_commands:
        for p in chosen.parts(mini):
            print("\n".join(run.command for run in expand(p.sweep)))
        return 0
    folder = Path(out or f"results/paper/{chosen.name}")
    table = run_study(chosen, mini, folder, jobs, threads=threads)
    print(table.read_text())
    return 0
