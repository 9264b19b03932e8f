"""A study's table beside the paper's (``bytelab study``): our numbers, the paper's, and the orderings.

Rows are the paper's rows (a study maps its run labels onto them), columns the paper's columns;
where a row was run at several sizes the best (by mean validation bits per byte over its seeds) is
shown, with the spread over seeds. An ordering matches when every pair of rows
is ordered the same way by our numbers and by the paper's (lower is better; pairs the paper ties
count neither way); otherwise the table says how many pairs agree. Under our rows, each column's
reference rows (zlib, bz2, xz alone and given the training split, the order-0 entropy) on the test
bytes its evaluations scored, which the evaluation runs recorded; the paper has no such rows.
"""

from __future__ import annotations

from itertools import combinations, pairwise
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from . import plots  # noqa: E402
from .atomic import atomic_path, write_text_atomic  # noqa: E402
from .collect import collect  # noqa: E402
from .paper_numbers import PAPER  # noqa: E402
from .reference import reference_frame, runs_reference  # noqa: E402
from .tables import grid_table, to_markdown, write_table  # noqa: E402


def compare_with_paper(study: Any, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Long form: one row per (paper row, column) with ours and the paper's number. Where a row was
    run at several sizes, the one with the lowest validation bits per byte (``val_bpb``) is kept and
    its test number (``bpb``) reported: selection never looks at the test split."""
    ours = pd.DataFrame(rows)
    ours["row"] = ours["label"].map(lambda label: study.rows.get(label, label))
    ours = over_seeds(ours)
    selected_by = "val_bpb" if "val_bpb" in ours else "bpb"
    best = ours.sort_values(selected_by).groupby(["row", "column"], sort=False).head(1)
    paper = PAPER.get(study.name, {})
    best = best.assign(
        paper=[paper.get(r, {}).get(c) for r, c in zip(best["row"], best["column"], strict=True)]
    )
    order = {row: i for i, row in enumerate(dict.fromkeys(study.rows.values()))}
    return best.sort_values(["column", "row"], key=lambda s: s.map(order) if s.name == "row" else s)


def over_seeds(ours: pd.DataFrame) -> pd.DataFrame:
    """One row per (paper row, column, size): the mean over its seeds of every number, and the
    spread of the reported one (``bpb_std``, ddof=1, NaN for one seed; ``bpb_min``, ``bpb_max``;
    ``seeds``), so that sizes are selected, and rows ordered, by means rather than by a lucky seed."""
    keys = ["row", "column", "size"]
    numbers = [
        c for c in ("bpb", "val_bpb", "flops_per_byte", "train_flops", "train_bytes", "params") if c in ours
    ]
    spread = ours.groupby(keys, sort=False)["bpb"].agg(
        bpb_std="std", bpb_min="min", bpb_max="max", seeds="size"
    )
    means = ours.groupby(keys, sort=False)[numbers].mean()
    first = ours.groupby(keys, sort=False)[["label", "run_dir"]].first()
    parts = [first, means, spread]
    if "seed" in ours:  # each seed's number, to pair rows seed by seed in the orderings
        by_seed = ours.groupby(keys, sort=False)[["seed", "bpb"]].apply(
            lambda g: dict(zip(g["seed"], g["bpb"], strict=True))
        )
        parts.append(by_seed.rename("bpb_by_seed"))
    return pd.concat(parts, axis=1).reset_index()


def ordering(long: pd.DataFrame, column: str) -> str:
    """One line: our order and the paper's for one column, and whether they agree."""
    group = long[(long["column"] == column) & long["paper"].notna()]
    if len(group) < 2:
        return f"- {column}: fewer than two rows with a paper number, no ordering to compare"
    ours = " < ".join(group.sort_values("bpb")["row"])
    theirs = " < ".join(group.sort_values("paper")["row"])
    # Rows the paper ties (Table 10: MEGABYTE and w/ CNN encoder, 0.6871) order neither way.
    pairs = [(a, b) for a, b in combinations(group.itertuples(), 2) if a.paper != b.paper]
    agree = sum((a.bpb - b.bpb) * (a.paper - b.paper) > 0 for a, b in pairs)
    untied = "" if len(pairs) == len(group) * (len(group) - 1) // 2 else " untied"
    verdict = "matches" if agree == len(pairs) else f"differs ({agree} of {len(pairs)}{untied} pairs agree)"
    # Ours tie where the difference of the means is below the larger std over seeds.
    ties = [
        f"{a.row} ~ {b.row}"
        for a, b in combinations(group.itertuples(), 2)
        if abs(a.bpb - b.bpb) < max(getattr(a, "bpb_std", 0) or 0, getattr(b, "bpb_std", 0) or 0)
    ]
    within = f" Within the spread over seeds (a tie, not a ranking): {', '.join(ties)}." if ties else ""
    return f"- {column}: ordering {verdict}. Ours: {ours}. Paper: {theirs}.{within}{seed_pairs(group)}"


def seed_pairs(group: pd.DataFrame) -> str:
    """Each neighbour pair of our order, paired seed by seed: "a < b in 2/3 seeds" (the seeds both
    rows ran); empty where no pair has two seeds in common."""
    if "bpb_by_seed" not in group:
        return ""
    ranked = list(group.sort_values("bpb").itertuples())
    words = []
    for a, b in pairwise(ranked):
        seeds = sorted(set(a.bpb_by_seed) & set(b.bpb_by_seed))
        if len(seeds) >= 2:
            wins = sum(a.bpb_by_seed[s] < b.bpb_by_seed[s] for s in seeds)
            words.append(f"{a.row} < {b.row} in {wins}/{len(seeds)}")
    return f" Seed by seed: {', '.join(words)} seeds." if words else ""


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """The Markdown layout: per column, ours (test split) and the paper's side by side, then our
    evaluation cost, the FLOPs and bytes training spent, and the size."""
    table = pd.DataFrame({"row": list(dict.fromkeys(long["row"]))}).set_index("row")
    for column, group in long.groupby("column", sort=False):
        group = group.set_index("row")
        unit = "" if column == "seconds" else " bpb"
        table[f"{column}{unit} (ours)"] = group["bpb"]
        if "seeds" in group and group["seeds"].max() > 1:
            table[f"{column} std over seeds"] = group["bpb_std"]
            table[f"{column} seeds"] = group["seeds"]
        table[f"{column}{unit} (paper)"] = group["paper"]
        if column != "seconds":
            table[f"{column} eval FLOPs/byte"] = group["flops_per_byte"]
            for name, label in [("train_flops", "train FLOPs"), ("train_bytes", "train bytes")]:
                if name in group:  # what training spent: the paper controls compute and data
                    table[f"{column} {label}"] = group[name]
            table[f"{column} params"] = group["params"]
    return table.reset_index()


def column_reference(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The reference rows of every bits-per-byte column of a study (``analysis.reference``, with the
    column as dataset): what its evaluation runs recorded for the test split they scored; a
    ValueError names a column without them."""
    evaluated = {row["eval_dir"]: row["column"] for row in rows if row["column"] != "seconds"}
    reference = reference_frame(evaluated)
    reference = reference[reference["split"] == "test"]
    missing = sorted(set(evaluated.values()) - set(reference["dataset"]))
    if missing:
        raise ValueError(
            f"study columns {missing}: their evaluation runs recorded no reference numbers; every "
            "bits-per-byte table carries the compressor and order-0 rows (run the evaluations again)"
        )
    return reference.rename(columns={"dataset": "column", "reference": "row"})


def plot_against_paper(long: pd.DataFrame, path: Path, reference: pd.DataFrame) -> list[Path]:
    """One panel per column: our number against the paper's for each row (a rising cloud = agreement),
    with the column's reference rows as horizontal lines."""
    columns = list(dict.fromkeys(long["column"]))
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.8), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        lines = reference[reference["column"] == column]
        plots.draw_reference(ax, dict(zip(lines["row"], lines["bpb"], strict=True)))
        group = long[(long["column"] == column) & long["paper"].notna()]
        ax.scatter(group["paper"], group["bpb"], color="tab:red")
        for row in group.itertuples():
            ax.annotate(row.row, (row.paper, row.bpb), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=f"paper ({column})", ylabel="ours", title=column)
        ax.grid(True, alpha=0.3)
    return plots._save(fig, path)


def write_study(
    study: Any, rows: list[dict[str, Any]], run_dirs: list[Path], out: Path, variant: str
) -> Path:
    """Write ``table.md`` / ``table.csv`` (ours beside the paper's), ``grid.*`` and plots under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    long = compare_with_paper(study, rows)
    reference = column_reference(rows)
    with atomic_path(out / "table.csv") as tmp:
        shown = pd.concat([long, reference[["row", "column", "bpb"]]], ignore_index=True)
        shown.drop(columns=["label", "bpb_by_seed", "eval_dir"], errors="ignore").to_csv(tmp, index=False)
    lines = [
        f"# {study.name} ({variant}): {study.reproduces}",
        "",
        to_markdown(wide(pd.concat([long, reference[["row", "column", "bpb"]]], ignore_index=True))),
        *dict.fromkeys(reference["rule"]),
        "",
        "Lower is better. Orderings (lower first):",
        "",
        *[ordering(long, column) for column in dict.fromkeys(long["column"])],
        "",
    ]
    if study.notes:
        lines += [study.notes.strip(), ""]
    write_text_atomic(out / "table.md", "\n".join(lines))
    plot_against_paper(long, out / "ours_vs_paper", reference)
    runs, curves = collect(run_dirs, same_protocol=False)  # the paper's contexts differ per model
    runs = runs.assign(architecture=runs["variant"], size=runs["size"])
    grid_reference = runs_reference(runs)
    write_table(grid_table(runs), out, "grid", grid_reference)
    several = runs["dataset"].nunique() > 1
    lines = {
        f"{dataset}: {name}" if several else name: bpb
        for dataset in sorted(runs["dataset"].unique())
        for name, bpb in plots.reference_lines(grid_reference, dataset).items()
    }
    plots.plot_learning_curves(runs, curves, out / "learning_curves", lines)
    return out / "table.md"
