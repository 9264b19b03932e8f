"""Tables from the runs frame, written as Markdown, CSV and LaTeX (booktabs).

1. ``paper_table``: the paper's Table 2 layout: architectures x datasets, bits per byte at one
   budget, the best size of each architecture with its parameters and FLOPs per byte.
   Every (dataset, architecture, size, budget) point is aggregated over its seeds: mean, std,
   min, max and the number of seeds (``paper_display`` shows mean ± std and min-max).
2. ``grid_table``: every run (each seed, each learning rate), with the compute-optimal size marked.
3. ``ranking_table``: the architectures at the table's budget, each against the next: in how many
   seeds the order holds, and a tie where the difference is smaller than the spread over seeds.
4. ``fits_table`` / multipliers: the L(C) fit per architecture with its bootstrap interval, or why
   there is none, and the compute multipliers, or why there is none.
5. ``lr_tuning_table``: val bpb at each tuned learning rate, the chosen one marked.

Every table that shows a split's bits per byte carries the reference rows (``with_reference``:
zlib, bz2, xz alone and given the training split, the order-0 entropy, on the same scored bytes),
and ``write_table`` refuses to write one without them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_text_atomic
from .fits import frontier, main_runs, points, seed_values

# A column holding a split's bits per byte: "val_bpb", "best_val_bpb", "val bpb", "<dataset> test bpb".
SPLIT_BPB = re.compile(r"(?:^|[ _])(?P<split>val|test)[ _]bpb$")
LABELS = ("architecture", "row", "run")  # the column a reference row's name goes in, if the table has it


def require_dataset(frame: pd.DataFrame) -> None:
    """A table that mixes datasets must say which row is which."""
    if "dataset" not in frame.columns and "dataset_id" in frame.columns and frame["dataset_id"].nunique() > 1:
        dirs = frame.drop_duplicates("dataset_id")["run_dir"].tolist() if "run_dir" in frame else []
        raise ValueError(
            f"these runs are on {frame['dataset_id'].nunique()} different datasets "
            f"({', '.join(map(str, dirs))}) but the table has no dataset column"
        )


def common_budget(runs: pd.DataFrame) -> float:
    """The largest FLOP budget at which every architecture of the frame has a (main) run."""
    runs = main_runs(runs)
    per_arch = runs.dropna(subset=["budget_flops"]).groupby("architecture")["budget_flops"].apply(set)
    shared = set.intersection(*per_arch) if len(per_arch) else set()
    if not shared or per_arch.index.size < runs["architecture"].nunique():
        raise ValueError(
            "no FLOP budget is shared by every architecture: give runs with a common --budget.flops"
        )
    return max(shared)


def best_at_budget(runs: pd.DataFrame, dataset: str, budget: float | None) -> tuple[float, pd.DataFrame]:
    """The table's budget of one dataset and, per architecture, its size of lowest mean bpb there."""
    group = main_runs(runs)
    group = group[group["dataset"] == dataset]
    at = common_budget(group) if budget is None else budget
    chosen = points(group)
    chosen = chosen[np.isclose(chosen["budget_flops"], at)]
    if chosen.empty:
        raise ValueError(f"no run of dataset {dataset} has budget_flops={at:g}")
    best = chosen.sort_values("val_bpb", kind="stable").groupby("architecture").head(1)
    return at, best.set_index("architecture")


SPREAD = ["std", "min", "max"]


def paper_table(runs: pd.DataFrame, budget: float | None = None) -> pd.DataFrame:
    """Rows: architectures; per dataset: bits per byte of the best size at the budget, and that size.

    Bits per byte are over seeds: ``<dataset> val bpb`` is the mean, followed by its std (ddof=1,
    NaN for one seed), min, max and the number of seeds; the best size is the one of lowest mean.
    ``budget`` defaults, per dataset, to the largest FLOP budget every architecture ran at. Only
    main runs count (not learning-rate tuning runs).
    """
    require_dataset(runs)
    runs = main_runs(runs)
    if runs.empty:
        raise ValueError("no main runs to tabulate (only learning-rate tuning runs): finish the sweep")
    datasets = sorted(runs["dataset"].unique())
    single = len(datasets) == 1
    columns: dict[str, pd.Series] = {}
    for dataset in datasets:
        _, best = best_at_budget(runs, dataset, budget)
        suffix = "" if single else f" ({dataset})"
        columns[f"size{suffix}"] = best["size"]
        for column, name in (("seq_len", "window"), ("batch_size", "windows/step")):
            if column in best.columns and best[column].notna().any():
                columns[f"{name}{suffix}"] = best[column]
        columns[f"params{suffix}"] = best["params"]
        if "lr" in best.columns and best["lr"].notna().any():
            columns[f"lr{suffix}"] = best["lr"]
        columns[f"inference FLOPs/byte{suffix}"] = best["inference_flops_per_byte"]
        columns[f"budget{suffix}"] = best["budget_flops"]
        splits = ["val"] + (["test"] if "test_bpb" in best.columns and best["test_bpb"].notna().any() else [])
        for split in splits:
            name = f"{dataset} {split} bpb"
            columns[name] = best[f"{split}_bpb"]
            for stat in SPREAD:
                columns[f"{name} {stat}"] = best[f"{split}_bpb_{stat}"]
        columns[f"{dataset} seeds"] = best["seeds"]
    table = pd.DataFrame(columns).rename_axis("architecture").reset_index()
    return table.sort_values(f"{datasets[-1]} val bpb", kind="stable").reset_index(drop=True)


def paper_display(table: pd.DataFrame) -> pd.DataFrame:
    """The paper table as shown (Markdown, LaTeX, terminal): ``mean ± std`` and ``min-max`` cells."""
    shown = formatted(table)
    for name in [c for c in table.columns if c.endswith(" bpb") and f"{c} std" in table.columns]:
        std = ["-" if np.isnan(v) else f"{v:.4f}" for v in table[f"{name} std"]]
        single = table[f"{name} min"].isna()  # a reference row: one number, no seeds
        shown[name] = [m if one else f"{m} ± {s}" for m, s, one in zip(shown[name], std, single, strict=True)]
        shown[f"{name} min"] = [
            "-" if np.isnan(lo) else f"{lo:.4f}-{hi:.4f}"
            for lo, hi in zip(table[f"{name} min"], table[f"{name} max"], strict=True)
        ]
        shown = shown.drop(columns=[f"{name} std", f"{name} max"]).rename(
            columns={name: f"{name} (mean ± std)", f"{name} min": f"{name} min-max"}
        )
    return shown


def grid_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run (tuning runs too), sorted by dataset, architecture, budget, size and seed.

    ``compute_optimal`` marks the main runs of the size of lowest mean bpb per budget."""
    require_dataset(runs)
    optimal = {run for dirs in frontier(runs)["run_dirs"] for run in dirs}
    columns = [
        "dataset",
        "architecture",
        "size",
        "budget_flops",
        "stage",
        "seed",
        "lr",
        "params",
        "params_non_embedding",
        "inference_flops_per_byte",
        "steps",
        "bytes_seen",
        "flops_seen",
        "val_bpb",
        "wall_time_s",
    ]
    table = runs.assign(compute_optimal=runs["run_dir"].isin(optimal))
    order = [
        c for c in ("dataset", "architecture", "budget_flops", "params", "stage", "lr", "seed") if c in table
    ]
    return table.sort_values(order, kind="stable")[[c for c in [*columns, "compute_optimal"] if c in table]]


def pair_verdict(better: pd.Series, worse: pd.Series, runs: pd.DataFrame) -> dict[str, object]:
    """How far one architecture's point ranks before the next one's (rows of ``points``).

    The spread of a pair is the larger of the two standard deviations over seeds (ddof=1) of val
    bits per byte at their points: a mean difference smaller than it is a tie, not a ranking. With
    one seed on either side there is no spread, so no ranking claim. ``holds`` counts the seeds
    both ran in which the order of the means holds, pairing runs by seed.
    """
    a, b = (seed_values(runs, p).set_index("seed")["val_bpb"] for p in (better, worse))
    both = a.index[a.index.notna()].intersection(b.index[b.index.notna()])
    holds = int((a[both] < b[both]).sum())
    difference = worse["val_bpb"] - better["val_bpb"]
    spread = max(better["val_bpb_std"], worse["val_bpb_std"])
    order = f"{better.name} < {worse.name} in {holds}/{len(both)} seeds"
    if min(better["seeds"], worse["seeds"]) < 2:
        verdict, claim = "no claim", f"{order}; 1 seed: no spread, no ranking claim"
    elif abs(difference) < spread:
        verdict, claim = "tie", f"tie: |difference| {abs(difference):.3f} < spread {spread:.3f} ({order})"
    else:
        verdict, claim = "ranked", f"{order} (difference {difference:.3f} >= spread {spread:.3f})"
    return {
        "next": worse.name,
        "difference": difference,
        "spread": spread,
        "seeds holding": f"{holds}/{len(both)}",
        "verdict": verdict,
        "claim": claim,
    }


def ranking_table(runs: pd.DataFrame, budget: float | None = None) -> pd.DataFrame:
    """The architectures at the paper table's budget, best mean first, each against the next.

    ``rank`` is shared with the architecture before where their order is a tie or unclaimed.
    """
    require_dataset(runs)
    rows = []
    for dataset in sorted(main_runs(runs)["dataset"].unique()):
        at, best = best_at_budget(runs, dataset, budget)
        best = best.sort_values("val_bpb", kind="stable")
        rank = 1
        for i, (arch, point) in enumerate(best.iterrows()):
            row = {
                "dataset": dataset,
                "budget": at,
                "rank": rank,
                "architecture": arch,
                "size": point["size"],
            }
            row |= {"val bpb": point["val_bpb"], "val bpb std": point["val_bpb_std"], "seeds": point["seeds"]}
            if i + 1 < len(best):
                row |= pair_verdict(point, best.iloc[i + 1], runs)
                rank = rank if row["verdict"] != "ranked" else i + 2
            rows.append(row)
    return pd.DataFrame(rows)


def ranking_words(ranking: pd.DataFrame) -> list[str]:
    """The ranking in sentences, one per dataset."""
    lines = []
    for dataset, group in ranking.groupby("dataset", sort=False):
        claims = "; ".join(group["claim"].dropna()) if "claim" in group else ""
        seeds = "-".join(map(str, sorted({int(s) for s in group["seeds"]})))
        head = f"{dataset} at {group['budget'].iloc[0]:.3g} FLOPs ({seeds} seeds per architecture)"
        lines.append(f"{head}: {claims or 'one architecture, nothing to rank'}.")
    return lines


def lr_tuning_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Learning-rate tuning runs (``stage == "tune"``): val bpb per dataset, architecture, size and lr.

    ``chosen`` marks the lr of lowest val bpb (mean over its runs) per dataset, architecture and
    size; ``at the edge`` says "lowest" or "highest" when that lr is an end of the rates tried (the
    optimum may lie past it: widen ``lrs`` or raise ``lr_extend``); ``used by main runs`` says
    whether the main runs of that architecture and size ran at it.
    """
    if "stage" not in runs.columns:
        return pd.DataFrame()
    tune = runs[runs["stage"] == "tune"]
    key = ["dataset", "architecture", "size"]
    table = tune.groupby([*key, "lr"])["val_bpb"].agg(["mean", "count"]).reset_index()
    table = table.rename(columns={"mean": "val_bpb", "count": "runs"})
    best = table.dropna(subset=["val_bpb"]).sort_values(["val_bpb", "lr"]).groupby(key).head(1)
    table["chosen"] = table.index.isin(best.index)
    low = table.groupby(key)["lr"].transform("min")
    high = table.groupby(key)["lr"].transform("max")
    edge = np.where(table["lr"] == low, "lowest", np.where(table["lr"] == high, "highest", ""))
    table["at the edge"] = np.where(table["chosen"] & (low < high), edge, "")
    main_lrs = main_runs(runs).groupby(key)["lr"].apply(set)
    table["used by main runs"] = [
        lr in main_lrs.get(tuple(k), set())
        for k, lr in zip(table[key].itertuples(index=False), table["lr"], strict=True)
    ]
    return table


def config_tuning_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The configurations an architecture was tuned over (sweep ``configs``): per dataset,
    architecture and candidate, its best tuning rate's mean val bpb, its window and windows per
    step; ``chosen`` marks the candidate of lowest val bpb, the one its main runs use. Empty where no
    architecture had several candidates."""
    if "stage" not in runs.columns or "config" not in runs.columns:
        return pd.DataFrame()
    tune = runs[(runs["stage"] == "tune") & (runs["config"] != "")]
    if tune.empty:
        return pd.DataFrame()
    key = ["dataset", "architecture", "size"]
    rates = tune.groupby([*key, "lr"]).agg(
        val_bpb=("val_bpb", "mean"),
        window=("seq_len", "first"),
        scored=("score_len", "first"),
        windows_per_step=("batch_size", "first"),
        params=("params", "first"),
        model_size=("model_size", "first"),
    )
    best = rates.reset_index().sort_values(["val_bpb", "lr"]).groupby(key).head(1)
    table = best.sort_values([*key]).reset_index(drop=True)
    # The sweep chooses per model size (its row): "cpu-xs w128x8" competes with "cpu-xs w256x4".
    ranked = table.sort_values("val_bpb", kind="stable")
    winner = ranked.groupby(["dataset", "architecture", "model_size"]).head(1)
    table["chosen"] = table.index.isin(winner.index)
    table = table.drop(columns="model_size")
    names = {"size": "configuration", "lr": "best lr", "windows_per_step": "windows/step"}
    table = table.rename(columns=names)
    return table.sort_values(["dataset", "architecture", "val_bpb"]).reset_index(drop=True)


# The flat models of a context study; every other family is multiscale.
FLAT = ("Decoder", "Windowed decoder")


def context_points(runs: pd.DataFrame) -> pd.DataFrame:
    """The points (``points``) of every family that ran at several training windows (``seq_len``) at
    one budget and size: a context-length study. Empty where no family did (a scaling study whose
    sizes chose different windows is not one)."""
    pts = points(runs)
    if pts.empty or "family" not in pts:
        return pd.DataFrame()
    windows = pts.groupby(["dataset", "family", "budget", "size"])["seq_len"].transform("nunique")
    return pts[windows > 1].sort_values(["dataset", "family", "seq_len"]).reset_index(drop=True)


def context_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Bits per byte against context length: per dataset, family and training window, the mean over
    seeds with its spread, the bytes scored per window and the budget."""
    pts = context_points(runs)
    if pts.empty:
        return pd.DataFrame()
    table = pts.rename(columns={"seq_len": "window", "score_len": "scored"})
    columns = ["dataset", "family", "window", "scored", "budget", "val_bpb", "val_bpb_std"]
    columns += ["val_bpb_min", "val_bpb_max", "seeds", "architecture"]
    return table[columns].rename(columns={"architecture": "row"})


def crossover_table(runs: pd.DataFrame) -> pd.DataFrame:
    """At each window of a context study, the best flat family (``FLAT``) against the best multiscale
    one (lowest mean bits per byte each), with ``pair_verdict``'s rule: a mean difference smaller
    than the larger spread over seeds is a tie. ``ahead``: which kind leads, or tie."""
    pts = context_points(runs)
    rows = []
    for (dataset, budget, window), group in pts.groupby(["dataset", "budget", "seq_len"]):
        flat = group[group["family"].isin(FLAT)].sort_values("val_bpb", kind="stable")
        multi = group[~group["family"].isin(FLAT)].sort_values("val_bpb", kind="stable")
        if flat.empty or multi.empty:
            continue
        best_flat, best_multi = (kind.iloc[0].rename(kind.iloc[0]["family"]) for kind in (flat, multi))
        better, worse = sorted((best_flat, best_multi), key=lambda p: p["val_bpb"])
        pair = pair_verdict(better, worse, runs)
        ahead = "tie" if pair["verdict"] == "tie" else "flat" if better is best_flat else "multiscale"
        if pair["verdict"] == "no claim":
            ahead = f"{ahead} (1 seed: no claim)"
        rows.append(
            {
                "dataset": dataset,
                "budget": budget,
                "window": int(window),
                "best flat": best_flat.name,
                "flat bpb": best_flat["val_bpb"],
                "best multiscale": best_multi.name,
                "multiscale bpb": best_multi["val_bpb"],
                "multiscale - flat": best_multi["val_bpb"] - best_flat["val_bpb"],
                "spread": pair["spread"],
                "seeds holding": pair["seeds holding"],
                "ahead": ahead,
            }
        )
    return pd.DataFrame(rows)


def crossover_words(crossover: pd.DataFrame) -> list[str]:
    """Where multiscale overtakes flat, per dataset: the shortest window from which a multiscale
    family leads beyond the spread at every longer window too, or that it does not."""
    lines = []
    for dataset, group in crossover.groupby("dataset"):
        group = group.sort_values("window")
        leads = group["ahead"].eq("multiscale").to_numpy()
        windows = group["window"].tolist()
        start = next((i for i in range(len(leads)) if leads[i:].all()), None)
        span = f"windows {windows[0]}-{windows[-1]} at {group['budget'].iloc[0]:.3g} FLOPs"
        if start is None:
            best = group.loc[group["multiscale - flat"].idxmin()]
            lines.append(
                f"{dataset}, {span}: multiscale does not overtake flat; its closest is "
                f"{best['best multiscale']} at {best['window']} bytes, {best['multiscale - flat']:+.3f} bits "
                f"against {best['best flat']} ({best['ahead']})"
            )
        else:
            row = group.iloc[start]
            lines.append(
                f"{dataset}, {span}: multiscale overtakes flat from {row['window']} bytes "
                f"({row['best multiscale']} {row['multiscale bpb']:.3f} against {row['best flat']} "
                f"{row['flat bpb']:.3f}, seeds holding {row['seeds holding']})"
            )
    return lines


def fits_table(fits: pd.DataFrame, multipliers: pd.DataFrame) -> pd.DataFrame:
    """The fit parameters per dataset and architecture with their bootstrap interval (or ``why``
    there is no fit), and the compute multiplier vs the reference (or ``why no multiplier``)."""
    table = fits.merge(multipliers, on=["dataset", "architecture"], how="left", suffixes=("", "_at"))
    reference = multipliers["reference"].dropna()
    if len(reference):
        is_reference = table["architecture"] == reference.iloc[0]
        table.loc[is_reference, "reference"] = reference.iloc[0]
        table.loc[is_reference, "why no multiplier"] = "the reference"
    keep = [
        "dataset",
        "architecture",
        "points",
        "seeds",
        "l_inf",
        "l_inf_lo",
        "l_inf_hi",
        "c0",
        "alpha",
        "alpha_lo",
        "alpha_hi",
        "rmse",
        "resamples",
        "ci",
        "why",
        "reference",
        "loss",
        "multiplier",
        "why no multiplier",
    ]
    table = table.reindex(columns=keep)  # a frame where no architecture was fitted has no CI columns
    return table.rename(columns={"loss": "at bpb", "multiplier": "compute multiplier"})


def _cell(value: object, column: str) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if column.startswith("lr"):
        return f"{value:.3g}"
    if (
        "bpb" in column
        or column.startswith(("l_inf", "alpha"))
        or column in ("rmse", "difference", "spread", "compute multiplier")
    ):
        return f"{value:.4f}" if column != "compute multiplier" else f"{value:.2f}x"
    if "params" in column:
        return f"{value / 1e6:.2f}M"
    counts = ("flops", "budget", "bytes", "c0")
    if isinstance(value, int | float | np.number) and any(k in column.lower() for k in counts):
        return f"{value:.3g}"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """The table as display strings (bpb to 4 decimals, parameters in millions, FLOPs to 3 digits)."""
    return pd.DataFrame({c: [_cell(v, c) for v in table[c]] for c in table.columns})


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (a ``|`` inside a cell escaped)."""
    shown = formatted(table)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
        for row in shown.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("±", r"$\pm$"),
    ):
        text = text.replace(char, escaped)
    return text


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs ``tabular``."""
    shown = formatted(table)
    spec = "l" * 2 + "r" * (len(shown.columns) - 2)
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(map(_tex, shown.columns)) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(map(_tex, row)) + r" \\" for row in shown.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def split_columns(table: pd.DataFrame) -> dict[str, tuple[str | None, str]]:
    """The columns of a table that hold a split's bits per byte: column -> (dataset named in the
    column or None, split)."""
    found = {}
    for column in table.columns:
        match = SPLIT_BPB.search(str(column))
        if match:
            prefix = str(column)[: match.start()]
            dataset = prefix if match.group(0).startswith(" ") and prefix else None
            found[column] = (dataset, match.group("split"))
    return found


def with_reference(table: pd.DataFrame, reference: pd.DataFrame | None, name: str = "table") -> pd.DataFrame:
    """The table with its reference rows appended: per dataset, one row per reference (``zlib -9``,
    ``zlib -9 | train``, ..., ``order-0 entropy``; long form as ``analysis.reference``) holding its
    bits per byte on the same split's scored bytes in each bits-per-byte column.

    A table without such a column is returned as it is. A ValueError names the table and the
    dataset and split whose reference numbers are missing: no bits-per-byte table goes without
    them."""
    columns = split_columns(table)
    if not columns:
        return table
    reference = pd.DataFrame() if reference is None else reference
    datasets = (
        sorted(table["dataset"].dropna().unique())
        if "dataset" in table.columns
        else sorted(set(reference["dataset"]))
        if len(reference)
        else []
    )
    if "dataset" not in table.columns and len(datasets) > 1 and any(d is None for d, _ in columns.values()):
        raise ValueError(
            f"table {name}: no dataset column, but reference numbers of {len(datasets)} datasets"
        )
    label = next((c for c in LABELS if c in table.columns), table.columns[0])
    rows: dict[tuple[str | None, str], dict[str, object]] = {}
    for column, (named, split) in columns.items():
        for dataset in [named] if named is not None else datasets or [None]:
            numbers = (
                reference[(reference["dataset"] == dataset) & (reference["split"] == split)]
                if len(reference)
                else reference
            )
            if numbers.empty:
                raise ValueError(
                    f"table {name}: no reference numbers for {split} bits per byte of dataset {dataset} "
                    f"(column {column!r}); every bits-per-byte table carries the compressor and order-0 rows "
                    "on the same scored bytes: use runs written by bytelab fit (their run.json records them) "
                    "and pass them as reference="
                )
            for ref, bpb in zip(numbers["reference"], numbers["bpb"], strict=True):
                key = (dataset if "dataset" in table.columns else None, ref)
                row = rows.setdefault(key, {label: ref} | ({"dataset": dataset} if key[0] else {}))
                row[column] = bpb
    joined = pd.concat([table, pd.DataFrame(list(rows.values()))], ignore_index=True)
    flags = [c for c in table.columns if table[c].dtype == bool]  # "chosen", "compute_optimal": no
    return joined.fillna(dict.fromkeys(flags, False)).astype(dict.fromkeys(flags, bool))


def write_table(
    table: pd.DataFrame,
    out: Path,
    name: str,
    reference: pd.DataFrame | None = None,
    display: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> list[Path]:
    """Write ``name.md``, ``name.csv`` (raw numbers) and ``name.tex`` under ``out``.

    A table with a split's bits per byte gets its reference rows (``with_reference``; a ValueError
    without them) and, in Markdown and LaTeX, the rule they follow as a note. ``display``: how
    Markdown and LaTeX show the table, where that differs from the numbers (``paper_display``)."""
    table = with_reference(table, reference, name)
    shown = table if display is None else display(table)
    rules = [] if reference is None or "rule" not in reference else list(dict.fromkeys(reference["rule"]))
    note = "".join(f"\n{rule}\n" for rule in rules) if split_columns(table) else ""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("md", "csv", "tex")]
    write_text_atomic(paths[0], to_markdown(shown) + note)
    with atomic_path(paths[1]) as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(paths[2], to_latex(shown) + "".join(f"% {line}\n" for line in note.split("\n") if line))
    return paths
