"""One error for every rank: when one process of a distributed run fails, the others say why.

A rank that raises (its data unreadable, a bug on one node) leaves the others waiting in their next
collective; gloo and NCCL end that wait with "Connection closed by peer" once the failed process has
exited (or at the process group's timeout if it hangs), which says nothing of the cause. So each
rank records the one line it prints in ``<run_dir>/.rank-errors/``, and a rank whose collective
broke because a peer was gone prints the line that peer recorded: every rank ends with the same
error. (A loss that is not finite on one rank only is agreed on before any rank stops:
``ByteLM.check_finite``.)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch.distributed as dist

ERRORS = ".rank-errors"
STARTED = time.time()  # files older than this process are from an earlier launch of the run
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator")

error_dir: Path | None = None  # set for the run this process works on (ByteLabCLI)


def in_distributed_run() -> bool:
    """Whether this process is one of several ranks of a run."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def record(line: str, status: int) -> None:
    """Leave this rank's error line (and exit status) for the other ranks of the run."""
    if error_dir is None or not in_distributed_run():
        return
    error_dir.mkdir(parents=True, exist_ok=True)
    path = error_dir / f"rank{dist.get_rank()}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"line": line, "status": status}))
    os.replace(tmp, path)  # a peer reads the whole line or nothing


def peer_gone(error: BaseException) -> bool:
    """Whether ``error`` is a collective broken because another rank's process ended."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(text in str(error) for text in PEER_GONE)
    )


def peer_error() -> tuple[str, int] | None:
    """The line and status another rank of this launch recorded, if any (the earliest)."""
    if error_dir is None or not error_dir.is_dir():
        return None
    found = []
    for path in error_dir.glob("rank*.json"):
        mtime = path.stat().st_mtime
        if mtime >= STARTED:
            found.append((mtime, json.loads(path.read_text())))
    if not found:
        return None
    _, first = min(found, key=lambda item: item[0])
    return first["line"], int(first["status"])
