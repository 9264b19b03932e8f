"""Run directories -> pandas: one row per run (from ``run.json``), one row per logged point (curves).

Everything that could silently give a wrong table is an error naming the directory instead: a
folder without runs, a run without ``run.json``, an unfinished or half-written run, and runs of the
same dataset evaluated with different windows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .rundir import MANIFEST, read_manifest

# The protocol that makes bits per byte comparable: same evaluation windows and scored bytes.
EVAL_PROTOCOL = ["seq_len", "score_len", "max_eval_bytes"]
# What makes two runs' bits per byte comparable: the same bytes scored. Every byte of an evaluation
# split's first max_eval_bytes is scored once whatever the window (seq_len) and the bytes scored per
# window (score_len), which are each architecture's own configuration (docs/PROTOCOL.md).
SCORED_BYTES = ["max_eval_bytes"]


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories named by ``paths``: each is a run (holds run.json) or a folder of runs."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if (path / MANIFEST).is_file():
            found.append(path)
            continue
        if not path.is_dir():
            raise ValueError(f"{path} is not a run directory")
        inside = sorted(p.parent for p in path.rglob(MANIFEST))
        if not inside:
            raise ValueError(f"{path}: no {MANIFEST} in it or below it, so it holds no bytelab runs")
        found += inside
    if not found:
        raise ValueError("no run directories given")
    return list(dict.fromkeys(found))


def _get(manifest: dict[str, Any], run_dir: Path, *keys: str) -> Any:
    value: Any = manifest
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise ValueError(
                f"{run_dir}/{MANIFEST} has no {'.'.join(keys)}: half-written or not from bytelab fit"
            )
        value = value[key]
    return value


def run_row(run_dir: Path, manifest: dict[str, Any], allow_unfinished: bool = False) -> dict[str, Any]:
    """The table row of one run."""
    status = manifest["status"]
    if status != "finished" and not allow_unfinished:
        raise ValueError(
            f"{run_dir}: the run is {status}, not finished; resume it (bytelab sweep, or bytelab fit "
            "--ckpt_path last) or leave it out"
        )
    final = _get(manifest, run_dir, "metrics", "final")
    if "val/bpb" not in final:
        raise ValueError(f"{run_dir}: no val/bpb recorded (the run never validated)")
    model, data = _get(manifest, run_dir, "model"), _get(manifest, run_dir, "data")
    params = model["params"]
    budget = manifest.get("budget") or {}
    sweep = manifest.get("sweep") or {}
    config = manifest.get("config") or {}
    lr = (config.get("model") or {}).get("lr") if isinstance(config, dict) else None
    return {
        "run": sweep.get("id", run_dir.name),
        "run_dir": str(run_dir),
        "status": status,
        "dataset": data["name"],
        "dataset_id": data["id"] or data["name"],
        **{key: data.get(key) for key in EVAL_PROTOCOL},
        "architecture": model["class"],
        "variant": sweep.get("variant", model["class"]),  # a sweep's label for an option set
        # The registered architecture whatever the label (a context study's decoder-w512 is a Decoder).
        "family": NAMES.get(sweep.get("architecture"), model["class"]),
        # A tuned configuration (sweep ``configs``) is part of what a row is: "cpu-xs w128x8".
        "size": " ".join(str(part) for part in (sweep.get("size", ""), sweep.get("config")) if part),
        "config": sweep.get("config") or "",
        "model_size": sweep.get("size", ""),  # the size alone: a sweep chooses a configuration per size
        "batch_size": data.get("batch_size"),
        "seed": sweep.get("seed", np.nan),
        "lr": float(next((v for v in (lr, sweep.get("lr")) if v is not None), np.nan)),
        # "tune": a learning-rate tuning run at the sweep's smallest budget, kept out of the main
        # tables, frontiers and fits (analysis.tables.lr_tuning_table reads it); "main": the rest.
        "stage": sweep.get("stage", "main"),
        "budget_flops": budget.get("flops") or np.nan,
        "budget_bytes": budget.get("bytes") or np.nan,
        "steps": manifest["step"],
        "bytes_seen": manifest["bytes_seen"],
        "flops_seen": manifest["flops_seen"],
        "params": params["total"],
        "params_non_embedding": params["non_embedding"],
        "params_global": params.get("global", np.nan),
        "params_local": params.get("local", np.nan),
        "inference_flops_per_byte": model["flops_per_byte"]["inference"],
        "training_flops_per_byte": model["flops_per_byte"]["training"],
        "val_bpb": final["val/bpb"],
        "best_val_bpb": manifest["metrics"]["best"].get("val/bpb", {}).get("value", np.nan),
        "test_bpb": final.get("test/bpb", np.nan),
        "wall_time_s": manifest.get("wall_time_s", np.nan),
    }


def curve_rows(run_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Learning-curve points of one run: validations from run.json, training bpb from metrics.csv."""
    run = str(run_dir)
    rows = [
        {"run_dir": run, "split": "val", "step": h["step"], "flops": h["flops_seen"], "bpb": h["val/bpb"]}
        for h in manifest.get("history", [])
        if "val/bpb" in h
    ]
    csv = run_dir / "metrics.csv"
    if csv.is_file():
        log = pd.read_csv(csv)
        if {"train/bpb", "train/flops"} <= set(log.columns):
            train = log.dropna(subset=["train/bpb", "train/flops"])
            rows += [
                {"run_dir": run, "split": "train", "step": int(s) + 1, "flops": f, "bpb": b}
                for s, f, b in zip(train["step"], train["train/flops"], train["train/bpb"], strict=True)
            ]
    return rows


def label_datasets(runs: pd.DataFrame) -> pd.DataFrame:
    """Make ``dataset`` unique per ``dataset_id`` (two corpora that share a name get their id appended)."""
    names = runs.groupby("dataset")["dataset_id"].nunique()
    clash = runs["dataset"].isin(names[names > 1].index)
    runs.loc[clash, "dataset"] = (
        runs.loc[clash, "dataset"] + " (" + runs.loc[clash, "dataset_id"].str[:6] + ")"
    )
    return runs


def label_architectures(runs: pd.DataFrame) -> pd.DataFrame:
    """Name each row by its sweep label where one model class ran under several labels.

    ``architecture`` is the model class; a sweep may run one class as several variants (MEGABYTE
    and MEGABYTE without its local model). Their seeds must not be pooled into one table row, so
    the runs of such a class take their ``variant`` label as ``architecture``.
    """
    labels = runs.groupby("architecture")["variant"].nunique()
    shared = runs["architecture"].isin(labels[labels > 1].index)
    runs.loc[shared, "architecture"] = [
        variant_name(variant, cls)
        for variant, cls in zip(runs.loc[shared, "variant"], runs.loc[shared, "architecture"], strict=True)
    ]
    return runs


# Registered architectures that share a model class with another (modules/sizes.py ARCHITECTURES),
# by the name their rows carry.
NAMES = {"decoder_windowed": "Windowed decoder"}


def variant_name(variant: str, cls: str) -> str:
    """A row's name when its class ran under several labels: a registered architecture's name
    (``decoder`` is still ``Decoder``, the class it is registered first for; ``decoder_windowed`` is
    ``Windowed decoder``), else the sweep's label (``no_local``)."""
    from modules.sizes import ARCHITECTURES  # torch: only once there are runs to name

    if variant in NAMES:
        return NAMES[variant]
    first = next((key for key, path in ARCHITECTURES.items() if path.rsplit(".", 1)[-1] == cls), None)
    return cls if variant == first else variant


def plain(value: object) -> object:
    """A frame's value as run.json had it: NaN is None, a whole float an int (pandas turns a column of
    integers and None into floats)."""
    if isinstance(value, float):
        return None if np.isnan(value) else int(value) if value.is_integer() else value
    return value


def check_protocols(runs: pd.DataFrame) -> None:
    """Runs on one dataset must score the same bytes, or their bits per byte do not compare; their
    windows (seq_len, score_len) may differ, each architecture's own configuration."""
    for dataset, group in runs.groupby("dataset"):
        protocols = group[SCORED_BYTES].astype(str).drop_duplicates()
        if len(protocols) > 1:
            first, other = (group.loc[protocols.index[i]] for i in (0, 1))
            describe = ", ".join(
                f"{k}={plain(first[k])} vs {plain(other[k])}"
                for k in SCORED_BYTES
                if str(first[k]) != str(other[k])
            )
            raise ValueError(
                f"{first['run_dir']} and {other['run_dir']} score different bytes of dataset {dataset} "
                f"({describe}): bits per byte are only comparable on the same bytes; analyze them separately"
            )


def collect(
    paths: Iterable[str | Path], allow_unfinished: bool = False, same_protocol: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read run directories (or folders of them) into a runs frame and a learning-curves frame.

    ``same_protocol=False`` admits runs of one dataset evaluated with different windows (a study
    that, like the paper, scores each model with its own context)."""
    rows, curves = [], []
    for run_dir in find_runs(paths):
        manifest = read_manifest(run_dir)
        rows.append(run_row(run_dir, manifest, allow_unfinished))
        curves += curve_rows(run_dir, manifest)
    runs = label_architectures(label_datasets(pd.DataFrame(rows)))
    if same_protocol:
        check_protocols(runs)
    return runs, pd.DataFrame(curves, columns=["run_dir", "split", "step", "flops", "bpb"])
