"""Tables from the runs frame, written as Markdown, CSV and LaTeX (booktabs).

1. ``paper_table``: the paper's Table 2 layout: architectures x datasets, bits per byte at one
   budget, the best size of each architecture with its parameters and FLOPs per byte.
2. ``grid_table``: every run, with a flag on the compute-optimal size per budget.
3. ``fits_table`` / multipliers: the L(C) fit per architecture and the compute multipliers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_text_atomic
from .fits import frontier


def require_dataset(frame: pd.DataFrame) -> None:
    """A table that mixes datasets must say which row is which."""
    if "dataset" not in frame.columns and "dataset_id" in frame.columns and frame["dataset_id"].nunique() > 1:
        dirs = frame.drop_duplicates("dataset_id")["run_dir"].tolist() if "run_dir" in frame else []
        raise ValueError(
            f"these runs are on {frame['dataset_id'].nunique()} different datasets "
            f"({', '.join(map(str, dirs))}) but the table has no dataset column"
        )


def common_budget(runs: pd.DataFrame) -> float:
    """The largest FLOP budget at which every architecture of the frame has a run."""
    per_arch = runs.dropna(subset=["budget_flops"]).groupby("architecture")["budget_flops"].apply(set)
    shared = set.intersection(*per_arch) if len(per_arch) else set()
    if not shared or per_arch.index.size < runs["architecture"].nunique():
        raise ValueError(
            "no FLOP budget is shared by every architecture: give runs with a common --budget.flops"
        )
    return max(shared)


def paper_table(runs: pd.DataFrame, budget: float | None = None) -> pd.DataFrame:
    """Rows: architectures; per dataset: bits per byte of the best size at the budget, and that size.

    ``budget`` defaults, per dataset, to the largest FLOP budget every architecture ran at.
    """
    require_dataset(runs)
    datasets = sorted(runs["dataset"].unique())
    single = len(datasets) == 1
    columns: dict[str, pd.Series] = {}
    for dataset in datasets:
        group = runs[runs["dataset"] == dataset]
        at = common_budget(group) if budget is None else budget
        chosen = group[np.isclose(group["budget_flops"], at)]
        if chosen.empty:
            raise ValueError(f"no run of dataset {dataset} has budget_flops={at:g}")
        best = chosen.sort_values("val_bpb").groupby("architecture").head(1).set_index("architecture")
        suffix = "" if single else f" ({dataset})"
        columns[f"size{suffix}"] = best["size"]
        columns[f"params{suffix}"] = best["params"]
        columns[f"inference FLOPs/byte{suffix}"] = best["inference_flops_per_byte"]
        columns[f"budget{suffix}"] = best["budget_flops"]
        columns[f"{dataset} val bpb"] = best["val_bpb"]
    table = pd.DataFrame(columns).rename_axis("architecture").reset_index()
    return table.sort_values(table.columns[-1]).reset_index(drop=True)


def grid_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run, sorted by dataset, architecture, budget and size, with ``compute_optimal`` marked."""
    require_dataset(runs)
    optimal = set(frontier(runs)["run_dir"])
    columns = [
        "dataset",
        "architecture",
        "size",
        "budget_flops",
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
    return table.sort_values(["dataset", "architecture", "budget_flops", "params"])[
        [*columns, "compute_optimal"]
    ]


def fits_table(fits: pd.DataFrame, multipliers: pd.DataFrame) -> pd.DataFrame:
    """The fit parameters per dataset and architecture, with the compute multiplier vs the reference."""
    table = fits.merge(multipliers, on=["dataset", "architecture"], how="left", suffixes=("", "_at"))
    keep = [
        "dataset",
        "architecture",
        "points",
        "l_inf",
        "c0",
        "alpha",
        "rmse",
        "reference",
        "loss",
        "multiplier",
    ]
    return table[keep].rename(columns={"loss": "at bpb", "multiplier": "compute multiplier"})


def _cell(value: object, column: str) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if "bpb" in column or column in ("l_inf", "rmse", "alpha", "compute multiplier"):
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
    """A GitHub Markdown table."""
    shown = formatted(table)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
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


def write_table(table: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """Write ``name.md``, ``name.csv`` (raw numbers) and ``name.tex`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("md", "csv", "tex")]
    write_text_atomic(paths[0], to_markdown(table))
    with atomic_path(paths[1]) as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(paths[2], to_latex(table))
    return paths
