"""``bytelab analyze RUN_DIRS... --out results/<study>``: runs -> tables, fits and plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import plots
from .collect import collect
from .fits import compute_multipliers, fit_frontiers, main_runs
from .reference import runs_reference
from .tables import (
    FLAT,
    config_tuning_table,
    context_table,
    crossover_table,
    crossover_words,
    fits_table,
    grid_table,
    lr_tuning_table,
    paper_display,
    paper_table,
    ranking_table,
    ranking_words,
    to_markdown,
    with_reference,
    write_table,
)


@dataclass
class Report:
    """What an analysis produced: the frames and the files written.

    ``ranking``: the architectures at the table's budget against each other, over seeds;
    ``tuning``: the learning-rate tuning table (empty without tuning runs); ``configs``: the
    configuration tuning table (empty where no architecture had candidate configurations);
    ``reference``: the reference rows the runs recorded (``analysis.reference``), which every
    bits-per-byte table and plot carries."""

    runs: pd.DataFrame
    paper: pd.DataFrame
    fits: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    ranking: pd.DataFrame = field(default_factory=pd.DataFrame)
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)
    configs: pd.DataFrame = field(default_factory=pd.DataFrame)
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)
    multipliers: pd.DataFrame = field(default_factory=pd.DataFrame)
    context: pd.DataFrame = field(default_factory=pd.DataFrame)
    crossover: pd.DataFrame = field(default_factory=pd.DataFrame)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def analyze(
    paths: list[str | Path],
    out: str | Path,
    budget: float | None = None,
    reference: str = "Decoder",
    allow_unfinished: bool = False,
) -> Report:
    """Collect runs, write the tables (Markdown, CSV, LaTeX) and plots (PNG, PDF) under ``out``.

    Always: ``table``, ``ranking``, ``grid``, ``fits`` and the plots; ``lr_tuning`` where the runs
    include learning-rate tuning runs; ``multipliers`` where two architectures have fits (against
    ``reference`` and each flat decoder that ran, with bootstrap intervals); ``context``,
    ``crossover`` and their plot where a family ran at several training windows. Tables, fits and
    plots use the main runs, ``grid`` all."""
    out = Path(out)
    runs, curves = collect(paths, allow_unfinished)
    fits = fit_frontiers(runs)
    report = Report(runs, paper_table(runs, budget), fits_table(fits, compute_multipliers(fits, reference)))
    references = [reference, *(name for name in FLAT if name != reference)]
    references = [name for name in references if name in set(fits["architecture"])]
    if fits["alpha"].notna().sum() > 1 and references:
        report.multipliers = pd.concat(
            [compute_multipliers(fits, name, main_runs(runs)) for name in references], ignore_index=True
        ).rename(columns={"loss": "at bpb", "multiplier": "compute multiplier"})
    report.ranking, report.tuning = ranking_table(runs, budget), lr_tuning_table(runs)
    report.reference = refs = runs_reference(runs)
    report.files += write_table(report.paper, out, "table", refs, paper_display)
    report.files += write_table(report.ranking, out, "ranking", refs)
    report.files += write_table(grid_table(runs), out, "grid", refs)
    report.files += write_table(report.fits, out, "fits")
    if len(report.multipliers):
        report.files += write_table(report.multipliers, out, "multipliers")
    report.context, report.crossover = context_table(runs), crossover_table(runs)
    if len(report.context):
        report.files += write_table(report.context, out, "context", refs)
    if len(report.crossover):
        report.files += write_table(report.crossover, out, "crossover")
    if len(report.tuning):
        report.files += write_table(report.tuning, out, "lr_tuning", refs)
    report.configs = config_tuning_table(runs)
    if len(report.configs):
        report.files += write_table(report.configs, out, "config_tuning", refs)
    main = main_runs(runs)
    several = main["dataset"].nunique() > 1
    for dataset, group in main.groupby("dataset"):
        suffix = f"-{_slug(dataset)}" if several else ""
        ds_fits = fits[fits["dataset"] == dataset]
        lines = plots.reference_lines(refs, dataset)
        report.files += plots.plot_training_compute(
            group, ds_fits, out / f"bpb_vs_training_flops{suffix}", lines
        )
        report.files += plots.plot_inference_pareto(group, out / f"bpb_vs_inference_flops{suffix}", lines)
        ds_curves = curves[curves["run_dir"].isin(group["run_dir"])]
        report.files += plots.plot_learning_curves(group, ds_curves, out / f"learning_curves{suffix}", lines)
        context = report.context[report.context["dataset"] == dataset] if len(report.context) else []
        if len(context):
            report.files += plots.plot_context(context, out / f"bpb_vs_context{suffix}", lines)
    return report


def describe(report: Report) -> str:
    """The terminal summary: learning-rate tuning (where run), the paper-style table, the ranking
    in words and the fits."""
    tuning = (
        ["Learning-rate tuning (chosen: lowest val bpb):", to_markdown(report.tuning)]
        if len(report.tuning)
        else []
    )
    if len(report.tuning):
        edges = report.tuning[report.tuning["at the edge"] != ""]
        tuning += [
            f"- {r['architecture']} {r['size']} ({r['dataset']}): chose the {r['at the edge']} rate tried, "
            f"{r['lr']:g}; "
            "its best rate may lie past it (widen lrs or raise lr_extend)"
            for _, r in edges.iterrows()
        ]
    configs = (
        [
            "Configuration tuning (each candidate at its best rate; chosen: lowest val bpb):",
            to_markdown(report.configs),
        ]
        if len(report.configs)
        else []
    )
    return "\n".join(
        [
            "",
            *tuning,
            *configs,
            to_markdown(paper_display(with_reference(report.paper, report.reference))),
            *list(dict.fromkeys(report.reference.get("rule", []))),
            "",
            "Ranking (a difference smaller than the spread over seeds is a tie):",
            *[f"- {line}" for line in ranking_words(report.ranking)],
            "",
            to_markdown(report.fits),
            *(
                ["", "Compute multipliers (90% bootstrap intervals; an interval holding 1 is a tie):"]
                + [to_markdown(report.multipliers)]
                if len(report.multipliers)
                else []
            ),
            *(
                ["", "Context length (the same bytes scored at every window):", to_markdown(report.crossover)]
                + [f"- {line}" for line in crossover_words(report.crossover)]
                if len(report.crossover)
                else []
            ),
            f"wrote {len(report.files)} files to {report.files[0].parent}",
        ]
    )


def analyze_runs(
    runs: list[str],
    *,
    out: str,
    budget: float | None = None,
    reference: str = "Decoder",
    allow_unfinished: bool = False,
) -> int:
    """Read run directories and write tables (Markdown, CSV, LaTeX), L(C) fits and plots.

    Args:
        runs: Run directories, or folders holding them.
        out: Output folder, e.g. results/<study>.
        budget: FLOP budget of the paper-style table (default: the largest shared).
        reference: Architecture the compute multipliers compare with.
        allow_unfinished: Include running or failed runs.
    """
    print(describe(analyze(runs, out, budget, reference, allow_unfinished)))
    return 0
