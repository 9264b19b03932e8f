"""The reference rows as analysis reads them: what every run recorded in its ``run.json`` under
``reference`` (``datamodules/reference.py`` computes them: zlib, bz2 and xz alone and given the
training split, and the order-0 entropy, on exactly the bytes the run's evaluation scored).

``reference_frame`` gives them in long form, one row per (dataset, split, reference): the numbers
every bits-per-byte table carries (``tables.with_reference``) and every bits-per-byte plot draws.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .rundir import read_manifest

COLUMNS = ["dataset", "split", "reference", "bpb", "bytes", "rule"]


def reference_frame(datasets: dict[str, str]) -> pd.DataFrame:
    """The reference numbers recorded by run directories (run dir -> the dataset label its rows
    get), long form.

    Runs of one dataset that scored different bytes of a split (another ``max_eval_bytes``) have
    different reference numbers: each set is kept, its rows labelled with the bytes scored
    ("zlib -9 (16384 bytes)"), so a table never pairs a model with the wrong reference. A run
    without recorded numbers adds none (a table of its dataset then refuses to be written)."""
    rows = []
    for run_dir, dataset in datasets.items():
        recorded = read_manifest(Path(run_dir)).get("reference") or {}
        for split, numbers in (recorded.get("splits") or {}).items():
            rows += [
                {
                    "dataset": dataset,
                    "split": split,
                    "reference": name,
                    "bpb": bpb,
                    "bytes": numbers["bytes"],
                    "rule": recorded.get("rule", ""),
                }
                for name, bpb in numbers["bpb"].items()
            ]
    frame = pd.DataFrame(rows, columns=COLUMNS).drop_duplicates(["dataset", "split", "reference", "bytes"])
    several = frame.groupby(["dataset", "split"])["bytes"].transform("nunique") > 1
    frame.loc[several, "reference"] += " (" + frame.loc[several, "bytes"].astype(str) + " bytes)"
    return frame.reset_index(drop=True)


def runs_reference(runs: pd.DataFrame) -> pd.DataFrame:
    """``reference_frame`` of the runs of a runs frame (``collect``), under their dataset labels."""
    return reference_frame(dict(zip(runs["run_dir"].astype(str), runs["dataset"], strict=True)))
