"""Compute scaling fits: L(C) = L_inf + (C0 / C)^alpha per architecture (Henighan et al. 2020).

Each architecture is fitted on its compute-optimal frontier: at every budget, the best bits per byte
over its sizes, against the FLOPs that run spent. For a fixed L_inf the law is a straight line in
log-log space, log(L - L_inf) = alpha log C0 - alpha log C, so the fit profiles L_inf (least squares
in L over a grid, then a golden-section refinement) and solves the line exactly for each value: no
optimiser starting point to tune and no dependency beyond numpy. With 3 budgets the 3 parameters are
exactly determined; more budgets give a real fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

MIN_POINTS = 3
GRID = 400


@dataclass
class PowerLaw:
    """L(C) = l_inf + (c0 / C) ** alpha, fitted on ``points`` frontier points with ``rmse`` in bits."""

    l_inf: float
    c0: float
    alpha: float
    rmse: float
    points: int

    def loss(self, compute: np.ndarray | float) -> np.ndarray | float:
        """Predicted bits per byte at training compute C."""
        return self.l_inf + (self.c0 / np.asarray(compute, dtype=float)) ** self.alpha

    def compute(self, loss: float) -> float:
        """Training compute at which the fit reaches ``loss`` (inf at or below L_inf)."""
        if loss <= self.l_inf:
            return math.inf
        return self.c0 / (loss - self.l_inf) ** (1 / self.alpha)


def _line(log_c: np.ndarray, loss: np.ndarray, l_inf: float) -> tuple[float, float, float]:
    """For fixed L_inf: (alpha, log C0, squared error in L) of the best log-log line."""
    slope, intercept = np.polyfit(log_c, np.log(loss - l_inf), 1)
    alpha = -slope
    log_c0 = intercept / alpha if alpha != 0 else math.inf
    predicted = l_inf + np.exp(intercept + slope * log_c)
    return alpha, log_c0, float(np.sum((predicted - loss) ** 2))


def fit_power_law(compute: np.ndarray, loss: np.ndarray) -> PowerLaw:
    """Fit L(C) = L_inf + (C0/C)^alpha with 0 <= L_inf < min(L) to points (C, L)."""
    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    if len(compute) < MIN_POINTS or len(np.unique(compute)) < MIN_POINTS:
        raise ValueError(
            f"a power-law fit needs at least {MIN_POINTS} distinct budgets, got {len(np.unique(compute))}"
        )
    log_c = np.log(compute)
    top = loss.min() * (1 - 1e-9)
    grid = np.linspace(0.0, top, GRID, endpoint=False)
    errors = [_line(log_c, loss, value)[2] for value in grid]
    best = int(np.argmin(errors))
    lo, hi = grid[max(best - 1, 0)], grid[best + 1] if best + 1 < GRID else top
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(100):  # golden section on the bracket around the best grid point
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _line(log_c, loss, a)[2] < _line(log_c, loss, b)[2]:
            hi = b
        else:
            lo = a
    l_inf = (lo + hi) / 2
    alpha, log_c0, error = _line(log_c, loss, l_inf)
    return PowerLaw(l_inf, math.exp(log_c0), alpha, math.sqrt(error / len(loss)), len(loss))


def frontier(runs: pd.DataFrame) -> pd.DataFrame:
    """The compute-optimal runs: per dataset, architecture and budget, the one with the lowest val bpb."""
    budget = runs["budget_flops"].fillna(runs["flops_seen"])
    best = (
        runs.assign(budget=budget)
        .sort_values("val_bpb")
        .groupby(["dataset", "architecture", "budget"])
        .head(1)
    )
    return best.sort_values(["dataset", "architecture", "budget"])


def fit_frontiers(runs: pd.DataFrame) -> pd.DataFrame:
    """One fit per dataset and architecture (NaN parameters where there are too few budgets)."""
    rows = []
    for (dataset, arch), group in frontier(runs).groupby(["dataset", "architecture"]):
        row = {
            "dataset": dataset,
            "architecture": arch,
            "min_bpb": group["val_bpb"].min(),
            "max_bpb": group["val_bpb"].max(),
        }
        try:
            row |= asdict(fit_power_law(group["flops_seen"].to_numpy(), group["val_bpb"].to_numpy()))
        except ValueError:
            row |= {"l_inf": np.nan, "c0": np.nan, "alpha": np.nan, "rmse": np.nan, "points": len(group)}
        rows.append(row)
    return pd.DataFrame(rows)


def as_law(row: pd.Series) -> PowerLaw:
    """The PowerLaw of one row of ``fit_frontiers``."""
    return PowerLaw(row["l_inf"], row["c0"], row["alpha"], row["rmse"], int(row["points"]))


def compute_multipliers(fits: pd.DataFrame, reference: str = "Decoder") -> pd.DataFrame:
    """How many times the reference's compute each architecture needs to reach the same loss.

    Compared at the middle of the loss range both architectures' frontiers cover (where both fits
    interpolate); ``multiplier`` < 1 means the architecture needs less compute than the reference.
    No overlap, or no fit, gives NaN rather than an extrapolation.
    """
    rows = []
    for dataset, group in fits.groupby("dataset"):
        ref = group[group["architecture"] == reference]
        for _, row in group[group["architecture"] != reference].iterrows():
            out = {
                "dataset": dataset,
                "architecture": row["architecture"],
                "reference": reference,
                "loss": np.nan,
                "multiplier": np.nan,
            }
            if len(ref) and not (np.isnan(row["alpha"]) or np.isnan(ref["alpha"].iloc[0])):
                r = ref.iloc[0]
                lo, hi = max(row["min_bpb"], r["min_bpb"]), min(row["max_bpb"], r["max_bpb"])
                if lo <= hi:
                    loss = (lo + hi) / 2
                    out |= {"loss": loss, "multiplier": as_law(row).compute(loss) / as_law(r).compute(loss)}
            rows.append(out)
    return pd.DataFrame(rows, columns=["dataset", "architecture", "reference", "loss", "multiplier"])
