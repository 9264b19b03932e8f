"""The ``bytelab`` command line.

``bytelab fit|validate|test --config ...`` is LightningCLI (``trainer_cli.py``); every other
subcommand is a typed function named in ``COMMANDS`` and parsed from its signature and docstring
(``subcommand.py``), each taking ``--config FILE``. A subcommand's module is imported only when it
runs, so ``bytelab fit`` loads neither pandas nor matplotlib; none of them imports this module.
Errors of every subcommand end as one line (``errors.py``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import guarded
from .subcommand import call
from .trainer_cli import run_lightning

# Subcommand -> "module:function".
COMMANDS = {
    "sweep": "experiments.sweep:sweep",
    "compare": "experiments.compare:compare",
    "study": "experiments.study:study",
    "generate": "experiments.generate:generate_bytes",
    "bench": "experiments.bench.command:bench",
    "data": "experiments.data:data_command",
    "analyze": "analysis.report:analyze_runs",
}


def command(name: str) -> Callable[..., Any]:
    """The function behind a subcommand."""
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bytelab`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if args and args[0] in COMMANDS:
        name = args[0]
        return guarded(lambda: call(command(name), f"bytelab {name}", args[1:]), name, debug)
    return run_lightning(args, debug)


if __name__ == "__main__":
    sys.exit(main())
