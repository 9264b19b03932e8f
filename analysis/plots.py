"""Plots of one dataset's runs, saved as PNG and PDF.

- ``plot_training_compute``: bits per byte against training FLOPs (log x), every run as a point,
  each architecture's compute-optimal frontier (mean over seeds, bars from the min to the max
  seed) as a line and its L(C) fit dashed.
- ``plot_inference_pareto``: bits per byte against inference FLOPs per byte at each budget, with the
  Pareto frontier over all architectures (SpaceByte's view: what a byte costs at generation time).
- ``plot_learning_curves``: validation bits per byte against training FLOPs, one panel per budget,
  one line per architecture and size: the mean over seeds with the min-max band shaded.

Each draws the reference rows of the validation split (``reference_lines``: the compressors alone
and given the training split, the order-0 entropy) as labelled horizontal lines.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, and none may exist

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .atomic import atomic_path  # noqa: E402
from .fits import as_law, frontier  # noqa: E402
from .tables import FLAT  # noqa: E402

# The paper's three keep their colours from earlier plots, and the other registered families take
# one each so that a plot of all seven has no two alike; any other architecture (or study variant)
# takes one of the remaining colours, chosen by its name, so a new model needs no entry here and
# keeps its colour from plot to plot whatever else is drawn beside it.
COLORS = {"Decoder": "tab:blue", "PerceiverAR": "tab:green", "Megabyte": "tab:red"}
FAMILY_COLORS = {
    "Windowed decoder": "tab:cyan",
    "SpaceByte": "tab:olive",
    "Hourglass": "tab:purple",
    "HNet": "tab:brown",
}
PALETTE = ["tab:orange", "tab:pink", "tab:gray", "gold", "black", "lightcoral", "teal"]
MARKERS = ["o", "s", "^", "D", "v", "P"]


def architecture_color(arch: str) -> str:
    """The colour of an architecture: its own, or a stable one from ``PALETTE`` (crc32 of its name)."""
    return COLORS.get(arch) or FAMILY_COLORS.get(arch) or PALETTE[zlib.crc32(arch.encode()) % len(PALETTE)]


def reference_lines(reference: pd.DataFrame, dataset: str, split: str = "val") -> dict[str, float]:
    """The reference rows of one dataset's split (``analysis.reference``) as label -> bits per byte;
    a ValueError if the runs recorded none, as ``tables.with_reference``."""
    rows = (
        reference[(reference["dataset"] == dataset) & (reference["split"] == split)] if len(reference) else []
    )
    if not len(rows):
        raise ValueError(
            f"no reference numbers for the {split} split of dataset {dataset}: every bits-per-byte plot "
            "draws the compressor and order-0 rows; use runs written by bytelab fit (run.json records them)"
        )
    return dict(zip(rows["reference"], rows["bpb"], strict=True))


def draw_reference(ax: plt.Axes, lines: dict[str, float], labelled: bool = True) -> None:
    """The reference rows as grey dotted horizontal lines, each labelled at the right edge (of the
    last panel only, where panels sit side by side), labels of close lines pushed apart. None for a
    panel that shows no bits per byte (a study's timing column)."""
    if not lines:
        return
    gap = 0.045 * (max(lines.values()) - min(lines.values()) or 1.0)
    label_at = -np.inf
    for label, bpb in sorted(lines.items(), key=lambda item: item[1]):
        ax.axhline(bpb, color="0.45", linestyle=":", linewidth=0.9, zorder=0)
        label_at = max(bpb, label_at + gap)
        if labelled:
            ax.text(
                1.01,
                label_at,
                f"{label} {bpb:.3f}",
                transform=ax.get_yaxis_transform(),
                fontsize=6,
                va="center",
            )


def _save(fig: plt.Figure, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    with atomic_path(paths[0]) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
    with atomic_path(paths[1]) as tmp:
        fig.savefig(tmp, bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)
    return paths


def plot_training_compute(
    runs: pd.DataFrame, fits: pd.DataFrame, path: Path, reference: dict[str, float]
) -> list[Path]:
    """Bits per byte vs training FLOPs: runs, frontier per architecture (mean, min-max bars), its fit,
    and the reference lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw_reference(ax, reference)
    best = frontier(runs)
    for arch, group in runs.groupby("architecture"):
        color = architecture_color(arch)
        ax.scatter(group["flops_seen"], group["val_bpb"], color=color, alpha=0.35, s=18)
        line = best[best["architecture"] == arch]
        bars = [line["val_bpb"] - line["val_bpb_min"], line["val_bpb_max"] - line["val_bpb"]]
        ax.errorbar(
            line["flops_seen"], line["val_bpb"], yerr=bars, fmt="o-", color=color, capsize=3, label=arch
        )
        fit = fits[fits["architecture"] == arch]
        if len(fit) and not np.isnan(fit["alpha"].iloc[0]):
            law = as_law(fit.iloc[0])
            c = np.geomspace(group["flops_seen"].min() / 1.5, group["flops_seen"].max() * 1.5, 100)
            ci = fit.iloc[0]
            label = rf"fit $\alpha$={law.alpha:.3f} [{ci['alpha_lo']:.3f}, {ci['alpha_hi']:.3f}]"
            ax.plot(c, law.loss(c), "--", color=color, linewidth=1, label=label)
    ax.set(xscale="log", xlabel="training FLOPs", ylabel="validation bits per byte")
    low, high = runs["flops_seen"].min(), runs["flops_seen"].max()
    if high < 4 * low:  # one budget (runs stop within a step of it): a readable span around it
        ax.set_xlim(low / 2, high * 2)
    ax.set_title(
        f"{runs['dataset'].iloc[0]}: compute-matched runs\n"
        "frontier: mean over seeds, bars min-max over seeds; fit: 90% bootstrap CI of alpha",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The points no other point beats on both x and y (lower is better), sorted by x."""
    ordered = points.sort_values([x, y])
    return ordered[ordered[y] < ordered[y].cummin().shift(fill_value=np.inf)]


def plot_inference_pareto(runs: pd.DataFrame, path: Path, reference: dict[str, float]) -> list[Path]:
    """Bits per byte vs inference FLOPs per byte, one panel per training budget, with the Pareto front
    and the reference lines."""
    budgets = sorted(runs["budget_flops"].dropna().unique()) or [np.nan]
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.8), sharey=True, squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        group = runs if np.isnan(budget) else runs[np.isclose(runs["budget_flops"], budget)]
        draw_reference(ax, reference, labelled=ax is axes[0][-1])
        for arch, points in group.groupby("architecture"):
            ax.scatter(
                points["inference_flops_per_byte"],
                points["val_bpb"],
                color=architecture_color(arch),
                label=arch,
            )
        front = pareto(group, "inference_flops_per_byte", "val_bpb")
        ax.step(front["inference_flops_per_byte"], front["val_bpb"], where="post", color="black", alpha=0.5)
        ax.set(xscale="log", xlabel="inference FLOPs per byte", title=f"budget {budget:.3g} FLOPs")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("validation bits per byte")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def plot_context(table: pd.DataFrame, path: Path, reference: dict[str, float]) -> list[Path]:
    """Bits per byte against the training window (``context_table`` rows of one dataset): each
    family's mean over seeds with min-max bars, on the same scored bytes, and the reference lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw_reference(ax, reference)
    for family, group in table.groupby("family"):
        group = group.sort_values("window")
        bars = [group["val_bpb"] - group["val_bpb_min"], group["val_bpb_max"] - group["val_bpb"]]
        style = "s--" if family in FLAT else "o-"
        ax.errorbar(
            group["window"],
            group["val_bpb"],
            yerr=bars,
            fmt=style,
            color=architecture_color(family),
            capsize=3,
            label=family,
        )
    windows = sorted(table["window"].unique())
    ax.set(xscale="log", xlabel="training and evaluation window (bytes)", ylabel="validation bits per byte")
    ax.set_xticks(windows, [str(int(w)) for w in windows])
    ax.minorticks_off()
    scored = ", ".join(str(int(s)) for s in sorted(table["scored"].unique()))
    ax.set_title(
        f"{table['dataset'].iloc[0]}: context length at {table['budget'].iloc[0]:.3g} training FLOPs\n"
        f"the same bytes scored at every window (the last {scored} of each); mean over seeds, bars min-max",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def seed_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Validation curves per architecture, size and budget over seeds: at the i-th validation of
    the runs, their mean FLOPs and the mean, min and max bits per byte (``seeds``: runs there)."""
    key = ["architecture", "size", "budget_flops"]
    val = curves[curves["split"] == "val"].merge(runs[["run_dir", *key]], on="run_dir")
    val = val.sort_values(["run_dir", "flops"], kind="stable")
    val["validation"] = val.groupby("run_dir").cumcount()
    grouped = val.groupby([*key, "validation"], dropna=False)
    stats = grouped["bpb"].agg(["mean", "min", "max"]).join(grouped["flops"].mean())
    return stats.join(grouped["run_dir"].nunique().rename("seeds")).reset_index()


def plot_learning_curves(
    runs: pd.DataFrame, curves: pd.DataFrame, path: Path, reference: dict[str, float]
) -> list[Path]:
    """Validation bits per byte against training FLOPs, one panel per budget, one line per
    architecture and size: the mean over seeds, with the min-max band over seeds shaded, and the
    reference lines."""
    budgets = sorted(runs["budget_flops"].dropna().unique()) or [np.nan]
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.8), sharey=True, squeeze=False)
    sizes = {size: MARKERS[i % len(MARKERS)] for i, size in enumerate(sorted(runs["size"].unique()))}
    lines = seed_curves(runs, curves)
    for ax, budget in zip(axes[0], budgets, strict=True):
        group = (
            lines[lines["budget_flops"].isna()]
            if np.isnan(budget)
            else lines[np.isclose(lines["budget_flops"], budget)]
        )
        draw_reference(ax, reference, labelled=ax is axes[0][-1])
        for (arch, size), points in group.groupby(["architecture", "size"]):
            color = architecture_color(arch)
            label = f"{arch} {size}".strip() + f" ({points['seeds'].max()} seeds)"
            ax.plot(
                points["flops"], points["mean"], marker=sizes[size], markersize=3, color=color, label=label
            )
            ax.fill_between(
                points["flops"], points["min"], points["max"], color=color, alpha=0.2, linewidth=0
            )
        ax.set(xlabel="training FLOPs", title=f"budget {budget:.3g} FLOPs", xlim=(0, None))
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("validation bits per byte")
    fig.suptitle("lines: mean over seeds; shaded: min-max over seeds", fontsize=9)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)
