"""The ``bytelab`` command line.

``bytelab fit|validate|test --config ...`` is LightningCLI (``trainer_cli.py``); every other
subcommand is a typed function named in ``COMMANDS`` and parsed from its signature and docstring
(``subcommand.py``), each taking ``--config FILE``. ``bytelab`` alone or ``bytelab --help`` lists them
all (``SUBCOMMANDS``) without importing any. A subcommand's module is imported only when it runs, so
``bytelab fit`` loads neither pandas nor matplotlib; none of them imports this module. Errors of
every subcommand end as one line (``errors.py``).
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

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
LIGHTNING = ("fit", "validate", "test")

# What `bytelab --help` lists, grouped by what a user does: one line each, the first line of the
# function's docstring for the typed subcommands (tests/test_cli.py keeps them equal).
SUBCOMMANDS = {
    "train and evaluate": {
        "fit": "Train a model (LightningCLI: --config YAML files compose trainer, data and model).",
        "validate": "Score a checkpoint on the validation split.",
        "test": "Score a checkpoint on the test split.",
    },
    "run studies": {
        "compare": "Run a compute-matched comparison of two decoders, PerceiverAR and MEGABYTE, then "
        "its analysis.",
        "sweep": "Run a compute-matched grid of ``bytelab fit`` runs, or print their commands.",
        "study": "Run one of the MEGABYTE paper's tables, then lay it out beside the paper's numbers.",
    },
    "analyse": {
        "analyze": "Read run directories and write tables (Markdown, CSV, LaTeX), L(C) fits and plots.",
    },
    "generate and benchmark": {
        "generate": "Sample bytes from a trained checkpoint with cached decoding.",
        "bench": "Measure training throughput, peak memory and FLOP/s over sequence lengths, and "
        "generation speed.",
    },
    "data": {
        "data": "Inspect a corpus's cache (building it if needed), or build it alone (``prepare``).",
    },
}


def usage() -> str:
    """``bytelab --help``: every subcommand with its line, by group."""
    lines = [
        "usage: bytelab <subcommand> [options]   (bytelab <subcommand> --help: its options)",
        "",
        "Compute-matched comparisons of MEGABYTE with flat byte-level transformers (README.md, docs/).",
    ]
    for group, commands in SUBCOMMANDS.items():
        lines += ["", f"{group}:"]
        lines += [f"  {name:<10}{line.replace('``', '')}" for name, line in commands.items()]
    lines += ["", "Any subcommand takes --debug: a traceback in place of the one-line error."]
    return "\n".join(lines)


def unknown(name: str) -> str:
    """The one-line error for a subcommand bytelab does not have, with the nearest one."""
    if name.startswith("-"):
        return f"bytelab: error: {name} before a subcommand: the subcommand comes first (bytelab --help)"
    known = [command for commands in SUBCOMMANDS.values() for command in commands]
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    return f"bytelab: error: no subcommand '{name}': {hint}bytelab --help lists them"


def command(name: str) -> Callable[..., Any]:
    """The function behind a subcommand."""
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bytelab`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] not in COMMANDS and args[0] not in LIGHTNING:
        sys.stderr.write(unknown(args[0]) + "\n")
        return 2
    from .errors import guarded  # Lightning and torch: only once a subcommand runs
    from .quiet import quiet
    from .subcommand import call
    from .trainer_cli import run_lightning

    quiet()
    if args[0] in COMMANDS:
        name = args[0]
        return guarded(lambda: call(command(name), f"bytelab {name}", args[1:]), name, debug)
    return run_lightning(args, debug)


if __name__ == "__main__":
    sys.exit(main())
