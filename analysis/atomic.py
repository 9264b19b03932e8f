"""Atomic file writes: a result is either the old complete file or the new complete file.

A full disk (``ENOSPC``, or a quota: ``EDQUOT``) in the middle of a write leaves the previous version
in place and becomes one ``OSError`` whose message names the file, how much it needed and how much
is free, so ``bytelab`` prints it as one line and the run can go on once space is freed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def human_bytes(n: float) -> str:
    """A byte count for a message: 912 B, 6.4 MB, 1.2 GB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def disk_full_error(path: Path, needed: int | None, error: OSError, written: int = 0) -> OSError:
    """The one-line error for a write to ``path`` that ran out of space (``error``): it names the
    file, the space the write needed (or at least ``written`` bytes when the total is unknown) and
    what is free now that the partial file is gone."""
    try:
        free = human_bytes(shutil.disk_usage(path.parent).free)
    except OSError:
        free = "unknown"
    need = human_bytes(needed) if needed is not None else f"more than {human_bytes(written)}"
    reason = "no space left on device" if error.errno == errno.ENOSPC else "disk quota exceeded"
    message = (
        f"{reason} writing {path}: it needs {need}, {free} free; the previous version is kept, "
        "free some space and run the same command again"
    )
    return OSError(error.errno, message, str(path))


@contextmanager
def atomic_path(path: Path, size: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers can infer the format) that replaces
    ``path`` with ``os.replace`` when the block succeeds, and is removed when it fails: a kill or a
    full disk in the middle of a write never leaves half a table, plot or manifest behind.

    ``size``: how many bytes the write needs, if known, for the message of a full disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; results are as readable as any file
        os.replace(tmp, path)
    except OSError as error:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if error.errno in DISK_FULL:
            raise disk_full_error(path, size, error, written) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(
    path: Path, data: bytes | memoryview, verify: Callable[[Path], None] | None = None
) -> None:
    """Write ``data`` to ``path`` atomically and durably (fsync before the rename); ``verify(tmp)``,
    if given, checks the written copy before it replaces the previous version (it raises if not)."""
    with atomic_path(path, size=len(data)) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path``, atomically (values JSON lacks become strings)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
