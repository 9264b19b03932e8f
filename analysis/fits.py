"""Compute scaling fits: L(C) = L_inf + (C0 / C)^alpha per architecture (Henighan et al. 2020).

A point is one (dataset, architecture, size, budget) of the grid, aggregated over its seeds (mean,
std with ddof=1, min, max and the number of seeds). Each architecture is fitted on its
compute-optimal frontier: at every budget, the size with the lowest mean bits per byte over seeds,
against the mean FLOPs its runs spent. Only the sweep's ``main`` runs count: learning-rate tuning
runs (``stage == "tune"``) have their own table.

For a fixed L_inf the law is a straight line in log-log space, log(L - L_inf) = alpha log C0 -
alpha log C, so the fit profiles L_inf (least squares in L over a grid, then a golden-section
refinement) and solves the line exactly for each value: no optimiser starting point to tune and no
dependency beyond numpy. The fit is vectorised over rows so that a bootstrap of hundreds of
resamples costs about as much as one fit.

A fit is refused with fewer than ``MIN_BUDGETS`` distinct budgets or budgets spanning less than
``MIN_SPAN`` (max / min): three parameters on three points pass exactly through them (rmse 0) and
say nothing, and a span of a few x says nothing about an exponent. A fit comes with a bootstrap
percentile interval (``bootstrap_fit``).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

MIN_BUDGETS = 5
MIN_SPAN = 10.0
GRID = 400
RESAMPLES = 200
LEVEL = 0.9  # the bootstrap interval: 5th to 95th percentile
BOOTSTRAP_SEED = 0
POINT = ["dataset", "architecture", "size", "budget"]


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


def fit_refusal(compute: np.ndarray) -> str | None:
    """Why the budgets ``compute`` cannot carry a fit (None: they can), e.g. ``3 budgets over 4x``."""
    budgets = np.unique(np.asarray(compute, dtype=float))
    span = budgets.max() / budgets.min() if len(budgets) else 1.0
    if len(budgets) >= MIN_BUDGETS and span >= MIN_SPAN:
        return None
    return f"{len(budgets)} budgets over {span:.3g}x"


def _lines(log_c: np.ndarray, loss: np.ndarray, l_inf: np.ndarray) -> tuple[np.ndarray, ...]:
    """For fixed L_inf values: (alpha, log C0, squared error in L) of the best log-log lines.

    ``log_c`` and ``loss`` are (rows, 1, points), ``l_inf`` is (rows, k, 1); results are (rows, k).
    """
    y = np.log(loss - l_inf)
    x = log_c - log_c.mean(-1, keepdims=True)
    slope = (x * (y - y.mean(-1, keepdims=True))).sum(-1) / (x**2).sum(-1)
    intercept = y.mean(-1) - slope * log_c.mean(-1)
    predicted = l_inf + np.exp(intercept[..., None] + slope[..., None] * log_c)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_c0 = intercept / -slope
    return -slope, log_c0, ((predicted - loss) ** 2).sum(-1)


def _fit_rows(log_c: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, ...]:
    """Fit every row of (rows, points) arrays: (l_inf, alpha, log C0, squared error), each (rows,)."""
    log_c, loss = log_c[:, None, :], loss[:, None, :]
    top = loss.min(-1)[:, 0] * (1 - 1e-9)
    grid = top[:, None] * np.arange(GRID) / GRID  # 0 <= L_inf < min(L)
    errors = _lines(log_c, loss, grid[..., None])[2]
    best = np.argmin(errors, axis=1)
    rows = np.arange(len(grid))
    lo = grid[rows, np.maximum(best - 1, 0)]
    hi = np.where(best + 1 < GRID, grid[rows, np.minimum(best + 1, GRID - 1)], top)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(100):  # golden section on the bracket around the best grid point
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        error = _lines(log_c, loss, np.stack([a, b], axis=1)[..., None])[2]
        left = error[:, 0] < error[:, 1]
        hi, lo = np.where(left, b, hi), np.where(left, lo, a)
    l_inf = (lo + hi) / 2
    alpha, log_c0, error = (v[:, 0] for v in _lines(log_c, loss, l_inf[:, None, None]))
    return l_inf, alpha, log_c0, error


def fit_power_law(compute: np.ndarray, loss: np.ndarray) -> PowerLaw:
    """Fit L(C) = L_inf + (C0/C)^alpha with 0 <= L_inf < min(L) to points (C, L).

    Refuses (ValueError) fewer than ``MIN_BUDGETS`` distinct budgets or a span under ``MIN_SPAN``.
    """
    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    refusal = fit_refusal(compute)
    if refusal:
        raise ValueError(
            f"a power-law fit needs at least {MIN_BUDGETS} distinct budgets over at least "
            f"{MIN_SPAN:g}x of compute, got {refusal}"
        )
    l_inf, alpha, log_c0, error = (float(v[0]) for v in _fit_rows(np.log(compute)[None], loss[None]))
    return PowerLaw(l_inf, math.exp(log_c0), alpha, math.sqrt(error / len(loss)), len(loss))


def bootstrap_draws(
    budgets: list[tuple[np.ndarray, np.ndarray]], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Refits on resampled data: (l_inf, alpha, log C0) arrays, one entry per resample, and how the
    data were resampled.

    ``budgets`` holds, per frontier budget, the (compute, loss) arrays of its runs, one per seed.
    Where any budget has several seeds, each resample draws that many seeds with replacement within
    every budget and fits the means (a budget with one seed keeps it); with one seed everywhere
    it draws the frontier points themselves with replacement (resamples with fewer than 3 distinct
    budgets cannot be fitted and are redrawn). Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    counts = [len(loss) for _, loss in budgets]
    if max(counts) > 1:
        log_c = np.empty((resamples, len(budgets)))
        loss = np.empty_like(log_c)
        for j, (compute, bpb) in enumerate(budgets):
            pick = rng.integers(0, len(bpb), size=(resamples, len(bpb)))
            log_c[:, j], loss[:, j] = np.log(compute[pick].mean(1)), bpb[pick].mean(1)
        single = sum(n == 1 for n in counts)
        method = "seeds within budgets" + (f" ({single} with 1 seed kept)" if single else "")
    else:
        compute = np.array([c[0] for c, _ in budgets])
        bpb = np.array([b[0] for _, b in budgets])
        pick = rng.integers(0, len(compute), size=(8 * resamples, len(compute)))
        pick = pick[[len(set(row)) >= 3 for row in pick]][:resamples]
        log_c, loss = np.log(compute[pick]), bpb[pick]
        method = "points (1 seed per budget)"
    l_inf, alpha, log_c0, _ = _fit_rows(log_c, loss)
    return l_inf, alpha, log_c0, method


def bootstrap_fit(
    budgets: list[tuple[np.ndarray, np.ndarray]],
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float | str | int]:
    """Percentile interval of alpha and L_inf from refits on resampled data (``bootstrap_draws``).

    The frontier's sizes stay those the means chose: the interval is conditional on that choice,
    and with few seeds it is narrow by the bootstrap's factor sqrt((n - 1) / n) (0.82 for 3 seeds,
    0.71 for 2).
    """
    l_inf, alpha, _, method = bootstrap_draws(budgets, resamples, seed)
    tail = 100 * (1 - level) / 2
    return {
        "alpha_lo": float(np.nanpercentile(alpha, tail)),
        "alpha_hi": float(np.nanpercentile(alpha, 100 - tail)),
        "l_inf_lo": float(np.nanpercentile(l_inf, tail)),
        "l_inf_hi": float(np.nanpercentile(l_inf, 100 - tail)),
        "resamples": len(alpha),
        "ci": f"{level:.0%} percentile, {method}",
    }


def main_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the main tables, frontiers and fits use: all but the learning-rate tuning runs."""
    return runs[runs["stage"] == "main"] if "stage" in runs.columns else runs


def spread_stats(values: pd.core.groupby.SeriesGroupBy, name: str) -> pd.DataFrame:
    """Mean, std over seeds (ddof=1: NaN for one seed), min and max of one column per group."""
    stats = values.agg(["mean", "std", "min", "max"])
    return stats.rename(columns={"mean": name, **{s: f"{name}_{s}" for s in ("std", "min", "max")}})


def points(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, architecture, size, budget) of the main runs, aggregated over seeds.

    ``val_bpb`` (and ``test_bpb``, over the runs that recorded it) is the mean over seeds, with
    ``_std`` (ddof=1, NaN for one seed), ``_min`` and ``_max``; ``seeds`` counts the runs (a sweep
    gives each seed one); ``flops_seen`` is their mean; ``run_dirs`` lists them. ``budget`` is the
    FLOP budget, or the FLOPs spent for a run without one.
    """
    runs = main_runs(runs)
    runs = runs.assign(budget=runs["budget_flops"].fillna(runs["flops_seen"]))
    grouped = runs.groupby(POINT, sort=True)
    parts = [spread_stats(grouped["val_bpb"], "val_bpb"), grouped["val_bpb"].count().rename("seeds")]
    if "test_bpb" in runs.columns:
        parts.append(spread_stats(grouped["test_bpb"], "test_bpb"))
    same = [
        "family",
        "params",
        "params_non_embedding",
        "inference_flops_per_byte",
        "budget_flops",
        "lr",
        "seq_len",
        "score_len",
        "batch_size",
    ]
    parts += [
        grouped["flops_seen"].mean(),
        grouped[[c for c in same if c in runs.columns]].first(),
        grouped["run_dir"].agg(tuple).rename("run_dirs"),
    ]
    return pd.concat(parts, axis=1).reset_index()


def frontier(runs: pd.DataFrame) -> pd.DataFrame:
    """The compute-optimal points: per dataset, architecture and budget, the size of lowest mean bpb."""
    best = points(runs).sort_values("val_bpb", kind="stable").groupby(POINT[:2] + POINT[3:]).head(1)
    return best.sort_values(["dataset", "architecture", "budget"])


def seed_values(runs: pd.DataFrame, point: pd.Series) -> pd.DataFrame:
    """The main runs of one point (a row of ``points``): its seeds."""
    return runs[runs["run_dir"].isin(point["run_dirs"])]


def frontier_seeds(runs: pd.DataFrame, group: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frontier point of ``group`` (rows of ``frontier``), the (FLOPs, bpb) arrays of its seeds."""
    seeds = [seed_values(runs, point) for _, point in group.iterrows()]
    return [(s["flops_seen"].to_numpy(), s["val_bpb"].to_numpy()) for s in seeds]


def fit_frontiers(runs: pd.DataFrame) -> pd.DataFrame:
    """One fit per dataset and architecture, with a bootstrap interval, or NaN and ``why`` not.

    ``points``: the frontier's budgets; ``seeds``: the fewest seeds at any of them."""
    rows = []
    for (dataset, arch), group in frontier(runs).groupby(["dataset", "architecture"]):
        row = {
            "dataset": dataset,
            "architecture": arch,
            "min_bpb": group["val_bpb"].min(),
            "max_bpb": group["val_bpb"].max(),
            "seeds": int(group["seeds"].min()),
        }
        compute, loss = group["flops_seen"].to_numpy(), group["val_bpb"].to_numpy()
        refusal = fit_refusal(compute)
        if refusal:
            row |= {"l_inf": np.nan, "c0": np.nan, "alpha": np.nan, "rmse": np.nan, "points": len(group)}
            row["why"] = f"no fit: {refusal}; a fit needs at least {MIN_BUDGETS} over at least {MIN_SPAN:g}x"
        else:
            row |= asdict(fit_power_law(compute, loss))
            row |= bootstrap_fit(frontier_seeds(runs, group))
            row["why"] = ""
        rows.append(row)
    return pd.DataFrame(rows)


def as_law(row: pd.Series) -> PowerLaw:
    """The PowerLaw of one row of ``fit_frontiers``."""
    return PowerLaw(row["l_inf"], row["c0"], row["alpha"], row["rmse"], int(row["points"]))


def _multiplier(row: pd.Series, ref: pd.DataFrame, reference: str) -> dict[str, float | str]:
    """The multiplier of one fit against the reference's, or NaN and why not."""
    if ref.empty:
        return {"why no multiplier": f"no {reference} runs on this dataset"}
    r = ref.iloc[0]
    missing = [name for name, fit in ((row["architecture"], row), (reference, r)) if np.isnan(fit["alpha"])]
    if missing:
        return {"why no multiplier": f"no fit for {' and '.join(missing)}"}
    lo, hi = max(row["min_bpb"], r["min_bpb"]), min(row["max_bpb"], r["max_bpb"])
    if lo > hi:
        return {
            "why no multiplier": (
                f"frontiers do not overlap: {row['architecture']} covers {row['min_bpb']:.4f}-"
                f"{row['max_bpb']:.4f} bpb, {reference} {r['min_bpb']:.4f}-{r['max_bpb']:.4f}"
            )
        }
    loss = (lo + hi) / 2
    return {"loss": loss, "multiplier": as_law(row).compute(loss) / as_law(r).compute(loss)}


def draws_seed(dataset: str, architecture: str) -> int:
    """The bootstrap seed of one fit's draws: fixed, and different for every architecture, so that
    the resamples of two fits are independent (equal seeds would pair their draws)."""
    return BOOTSTRAP_SEED + zlib.crc32(f"{dataset}/{architecture}".encode())


def multiplier_interval(
    runs: pd.DataFrame, dataset: str, architecture: str, reference: str, loss: float, level: float = LEVEL
) -> tuple[float, float]:
    """The percentile interval of the compute multiplier at ``loss``: both frontiers refitted on
    independent resamples of their seeds (``bootstrap_draws``), the multiplier read off each pair.
    A resample whose L_inf lies at or above ``loss`` never reaches it: its compute is infinite."""
    best = frontier(runs)
    computes = []
    for arch in (architecture, reference):
        group = best[(best["dataset"] == dataset) & (best["architecture"] == arch)]
        l_inf, alpha, log_c0, _ = bootstrap_draws(frontier_seeds(runs, group), seed=draws_seed(dataset, arch))
        gap = np.maximum(loss - l_inf, 1e-300)
        computes.append(np.where(loss > l_inf, log_c0 - np.log(gap) / alpha, np.inf))
    with np.errstate(invalid="ignore"):
        ratio = np.exp(computes[0] - computes[1])  # inf/inf: NaN, left out
    tail = 100 * (1 - level) / 2
    return float(np.nanpercentile(ratio, tail)), float(np.nanpercentile(ratio, 100 - tail))


def verdict(lo: float, hi: float, reference: str) -> str:
    """What a multiplier's interval says: less or more compute than the reference, or a tie."""
    if hi < 1:
        return f"less compute than {reference}"
    if lo > 1:
        return f"more compute than {reference}"
    return "tie: the interval holds 1"


def compute_multipliers(
    fits: pd.DataFrame, reference: str = "Decoder", runs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """How many times the reference's compute each architecture needs to reach the same loss.

    Read at the middle of the loss range both architectures' frontiers (mean bpb over seeds) cover,
    where both fits interpolate; ``multiplier`` < 1 means the architecture needs less compute than
    the reference. No overlap, or no fit, gives NaN and ``why no multiplier`` rather than an
    extrapolation. Given the ``runs`` the fits came from, each multiplier also gets its 90%
    bootstrap interval (``multiplier_lo``, ``multiplier_hi``) and a ``verdict``: less or more compute
    where the interval excludes 1, else a tie.
    """
    columns = ["dataset", "architecture", "reference", "loss", "multiplier", "why no multiplier"]
    if runs is not None:
        columns[5:5] = ["multiplier_lo", "multiplier_hi", "verdict"]
    rows = []
    for dataset, group in fits.groupby("dataset"):
        ref = group[group["architecture"] == reference]
        for _, row in group[group["architecture"] != reference].iterrows():
            out = {"dataset": dataset, "architecture": row["architecture"], "reference": reference}
            rows.append(out | {"loss": np.nan, "multiplier": np.nan, "why no multiplier": ""})
            rows[-1] |= _multiplier(row, ref, reference)
            if runs is not None and not np.isnan(rows[-1]["multiplier"]):
                lo, hi = multiplier_interval(runs, dataset, row["architecture"], reference, rows[-1]["loss"])
                rows[-1] |= {"multiplier_lo": lo, "multiplier_hi": hi, "verdict": verdict(lo, hi, reference)}
    return pd.DataFrame(rows, columns=columns)
