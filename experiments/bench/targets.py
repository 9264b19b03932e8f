"""Issue 6's targets (``presets.TARGETS``) against what ``bytelab bench`` measured."""

from __future__ import annotations

import math

import pandas as pd

from .presets import MEMORY_LIMIT, MODELS, TARGETS, Preset


def memory_exponent(train: pd.DataFrame, model: str) -> tuple[float, int | None]:
    """Log-log slope of peak memory above the baseline between the two longest measured T, and
    the largest T whose extrapolated (linear) peak fits in MEMORY_LIMIT."""
    rows = train[(train.model == model) & (train.status == "ok")].sort_values("seq_len")
    if len(rows) < 2:
        return float("nan"), None
    growth = rows.peak_mem_bytes - rows.baseline_mem_bytes
    (t0, t1), (m0, m1) = rows.seq_len.iloc[-2:], growth.iloc[-2:]
    slope = math.log(m1 / m0) / math.log(t1 / t0)
    per_byte = (m1 - m0) / (t1 - t0)
    fits = int(rows.seq_len.iloc[-1] + (MEMORY_LIMIT - rows.peak_mem_bytes.iloc[-1]) / per_byte)
    return slope, fits


def measured(
    train: pd.DataFrame, gen: pd.DataFrame, preset: Preset, peak: float, mfu_peak: float | None
) -> list[tuple[str, str, float]]:
    """(target key, model, measured value) for every target that applies (NaN where a number is
    missing; MFU only with a spec-sheet peak, counting model FLOPs as PaLM's definition does)."""

    def train_value(model: str, column: str) -> float:
        rows = train[(train.model == model) & (train.seq_len == preset.target_len) & (train.status == "ok")]
        return float(rows[column].iloc[0]) if len(rows) else float("nan")

    def gen_value(model: str, column: str) -> float:
        rows = gen[gen.model == model]
        return float(rows[column].iloc[0]) if len(rows) else float("nan")

    mb_flops = train_value("megabyte", "executed_flops_per_s")
    values = [
        (
            "training_speed",
            "",
            train_value("megabyte", "bytes_per_s") / train_value("decoder", "bytes_per_s"),
        ),
        ("training_flops", "", mb_flops / train_value("decoder", "executed_flops_per_s")),
        ("training_vs_peak", "", mb_flops / peak),
    ]
    if mfu_peak:
        values.append(("training_mfu", "", train_value("megabyte", "flops_per_s") / mfu_peak))
    values += [("cached_speedup", m, gen_value(m, "speedup")) for m in (*MODELS, "decoder_flops_matched")]
    matched = gen_value("decoder_flops_matched", "cached_bytes_per_s")
    values.append(("generation_vs_matched", "", gen_value("megabyte", "cached_bytes_per_s") / matched))
    values.append(("memory_exponent", "", memory_exponent(train, "megabyte")[0]))
    return values


def targets(
    train: pd.DataFrame, gen: pd.DataFrame, preset: Preset, peak: float, mfu_peak: float | None
) -> pd.DataFrame:
    """Issue 6's targets with the measured values and PASS, FAIL or n/a (no number)."""
    rows = []
    for key, model, value in measured(train, gen, preset, peak, mfu_peak):
        target = TARGETS[key]
        name = target.target.format(t=preset.target_len, n=preset.gen_bytes, model=model)
        rows.append((name, value, target.op, target.threshold))
    table = pd.DataFrame(rows, columns=["target", "measured", "op", "threshold"])
    table["result"] = [
        "n/a" if math.isnan(v) else ("PASS" if (v >= th if op == ">=" else v <= th) else "FAIL")
        for v, op, th in zip(table.measured, table.op, table.threshold, strict=True)
    ]
    table.attrs["megabyte_max_T_in_24GB"] = memory_exponent(train, "megabyte")[1]
    return table
