"""A sweep's worker process: runs ``bytelab fit`` runs one after another without starting Python,
torch and Lightning again for each (about 5 s per run on the 2-core VM, a minute of a 12-run sweep).

``python -m experiments.worker`` reads one JSON request per line on stdin, ``{"args": [...], "log":
PATH}``, runs it with its output (file descriptors 1 and 2, so C libraries' output too) appended to
PATH, and answers ``{"code": N}`` on a line of its own stdout. It ends at the end of its input, or
after a run that SIGTERM stopped (``EXIT_PREEMPTED``: its sweep is being interrupted). Every run
seeds itself, so a run gives the same numbers here as in a fresh process (tests/test_sweep.py).
"""

from __future__ import annotations

import json
import os
import sys

from .callbacks import EXIT_PREEMPTED
from .quiet import quiet
from .trainer_cli import run_lightning


def run_logged(args: list[str], log_path: str) -> int:
    """One ``bytelab fit`` with file descriptors 1 and 2 appended to ``log_path``; its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        return run_lightning(args)
    except SystemExit as exit_:  # Lightning ends a Ctrl-C (or a bad config) with sys.exit
        return exit_.code if isinstance(exit_.code, int) else 1
    except Exception as error:  # noqa: BLE001 - one failed run must not end the worker
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)


def main() -> int:
    quiet()
    replies = os.fdopen(os.dup(1), "w")  # answers go to the sweep, whatever the runs print
    for line in sys.stdin:
        request = json.loads(line)
        code = run_logged(request["args"], request["log"])
        replies.write(json.dumps({"code": code}) + "\n")
        replies.flush()
        if code == EXIT_PREEMPTED:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
