"""What a run directory holds on disk, as its readers see it: ``run.json``'s name, format and reading.

``bytelab fit`` writes run directories (``experiments/manifest.py``, the writing side, imports these
names); ``bytelab analyze``, sweeps and studies read them through :func:`read_manifest`. Analysis
owns the reading side so that it depends on nothing but the files a run left behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1  # of run.json; a manifest of another version is started afresh, not merged
MANIFEST = "run.json"


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The ``run.json`` of a run directory, with one-line errors for a missing or broken file."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {MANIFEST}, so not a bytelab run directory")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg}): a half-written or foreign file") from None
    if not isinstance(manifest, dict) or "status" not in manifest:
        raise ValueError(f"{path} is not a bytelab run manifest (no 'status' field)")
    return manifest
