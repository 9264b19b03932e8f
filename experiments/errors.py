"""How every ``bytelab`` command ends: a status, and on failure one line (``bytelab: error: ...``).

A command runs through ``guarded``, which turns the errors a user can cause (a bad option, a missing
file, a value out of range, a full disk, another rank's failure) into one line on stderr and an exit
status, leaves that line for the other ranks of a distributed run, and releases the run locks.
"""

from __future__ import annotations

import sys
from argparse import ArgumentError
from collections.abc import Callable

from lightning.pytorch.utilities.exceptions import SIGTERMException

from analysis.atomic import DISK_FULL
from datamodules.native import MissingLibrary

from . import ranks
from .callbacks import EXIT_PREEMPTED
from .runlock import release_runs


def one_line(error: BaseException) -> str:
    """An error message on one line (jsonargparse nests its explanations over several)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


# The errors a user can cause that end as one line (besides a bad option, ArgumentError).
USER_ERRORS = (ValueError, FloatingPointError, FileNotFoundError, NotADirectoryError, PermissionError)


def raised_by_jsonargparse(error: BaseException) -> bool:
    """Whether ``error`` was raised inside jsonargparse (the last frame of its traceback)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("jsonargparse")


def unwrapped(error: BaseException) -> BaseException:
    """The error a class's ``__init__`` raised (``paths='x' does not exist``) when jsonargparse wrapped
    it in its own, which lists every type it tried and the whole namespace it was given."""
    inner = error.__cause__ or error.__context__
    while raised_by_jsonargparse(error) and isinstance(inner, USER_ERRORS):
        error, inner = inner, inner.__cause__ or inner.__context__
    return error


def missing_library(error: BaseException) -> MissingLibrary | None:
    """The ``MissingLibrary`` behind ``error``, if any: jsonargparse wraps what a class's ``__init__``
    raised in its own union and class_path errors, which would bury the one line that matters."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, MissingLibrary):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def say(line: str) -> None:
    """Print one line to stderr in a single write: the ranks of a run share that stream, and print()
    writes the line and its newline separately, so two ranks' lines could interleave."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def report(line: str, status: int) -> int:
    """Print a one-line error, leave it for the other ranks of a distributed run, return ``status``."""
    say(line)
    ranks.record(line, status)
    return status


def guarded(command: Callable[[], int | None], name: str, debug: bool = False) -> int:
    """Run ``command`` (the ``bytelab`` subcommand ``name``) and return its exit status; the errors a
    user can cause end as one line (``--debug``: the traceback instead)."""
    try:
        return command() or 0
    except SIGTERMException:  # Preemption saved the run and printed where; the job script may requeue
        return EXIT_PREEMPTED
    except ArgumentError as error:
        if debug:
            raise
        if missing := missing_library(error):
            return report(f"bytelab: error: {missing}", 2)
        return report(f"bytelab: error: {one_line(error)} (see bytelab {name} --help)", 2)
    except (*USER_ERRORS, MissingLibrary) as error:
        if debug:
            raise
        if missing := missing_library(error):
            return report(f"bytelab: error: {missing}", 2)
        return report(f"bytelab: error: {one_line(unwrapped(error))} (run with --debug for the traceback)", 2)
    except OSError as error:
        if debug or error.errno not in DISK_FULL:
            raise
        return report(f"bytelab: error: {error.strerror}", 2)
    except RuntimeError as error:
        # Another rank failed and its process ended: say what it said, not that a socket closed.
        if debug or not ranks.in_distributed_run() or not ranks.peer_gone(error):
            raise
        peer = ranks.peer_error()
        if peer is None:
            return report(
                "bytelab: error: another process of this distributed run ended without a message "
                f"(killed, or out of memory?): {one_line(error)}",
                1,
            )
        say(peer[0])
        return peer[1]
    finally:
        release_runs()
