"""Typed functions as ``bytelab`` subcommands, parsed by jsonargparse as LightningCLI parses ``fit``.

A subcommand is a function with type hints and a docstring with an ``Args:`` section; every parameter
becomes an option (its description is the ``--help`` line), a parameter without a default becomes a
positional argument (a required option if it is keyword-only: ``def f(*, ckpt: str)``), and
``--config FILE`` reads any of the options from a YAML mapping. As on a shell command line: a
``bool`` is a flag (``--mini``), a ``list`` takes one or more values (``--budgets 1e12 2e12``), and a
hyphen in an option's name reads as an underscore (``--print-commands`` is ``--print_commands``).

A parameter annotated ``DataConfig`` is a DataModule config, read exactly as ``bytelab fit --data``
reads it: on fit's default data config (``experiments/configs/data/text.yaml``), a YAML file with
``class_path``/``init_args`` or a class name replaces it (or changes its ``init_args``, for the same
class), ``--data.init_args.KEY=VALUE`` changes one value; None when not given.
"""

from __future__ import annotations

import inspect
import types
import typing
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from typing import Any, NewType

import docstring_parser
import yaml
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace, strip_meta

from datamodules import ByteDataModule

from .option_errors import concise
from .trainer_cli import DEFAULT_DATA

# A DataModule config, ``{"class_path": ..., "init_args": {...}}``, as ``bytelab fit --data`` reads it
# (a YAML file holding that mapping, a class name, JSON, ``--data.init_args.KEY=VALUE``) on its default.
DataConfig = NewType("DataConfig", dict)


def _list_item(hint: Any) -> Any | None:
    """The item type of ``list[T]`` or ``list[T] | None``; None for any other type."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    lists = [h for h in options if typing.get_origin(h) is list]
    return typing.get_args(lists[0])[0] if lists else None


def _is_data(hint: Any) -> bool:
    return hint == DataConfig or hint == (DataConfig | None)


def parser_for(command: Callable[..., Any], prog: str) -> ArgumentParser:
    """The parser of a typed function: one option per parameter, help from its docstring."""
    doc = inspect.getdoc(command) or ""
    parser = ArgumentParser(prog=prog, description=doc.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file holding any of these options")
    hints = typing.get_type_hints(command)
    by_hand = set()
    for name, parameter in inspect.signature(command).parameters.items():
        hint, default = hints[name], parameter.default
        required = default is inspect.Parameter.empty
        positional = required and parameter.kind is not inspect.Parameter.KEYWORD_ONLY
        flag = name if positional else f"--{name}"
        help_ = _parameter_help(command, name)
        if required and not positional:
            parser.add_argument(flag, type=hint, required=True, help=help_)
        elif hint is bool:
            parser.add_argument(flag, action=ActionYesNo(no_prefix=None), default=default, help=help_)
        elif (item := _list_item(hint)) is not None:
            nargs = "+" if positional or default is None else "*"
            defaults = {} if positional else {"default": default}
            parser.add_argument(flag, type=item, nargs=nargs, help=help_, **defaults)
        elif _is_data(hint):
            parser.add_subclass_arguments(ByteDataModule, name, required=False, help=help_)
            parser.set_defaults({name: yaml.safe_load(DEFAULT_DATA.read_text())["data"]})
        else:
            continue
        by_hand.add(name)
    parser.add_function_arguments(command, skip=by_hand, as_positional=True)
    return parser


def _parameter_help(command: Callable[..., Any], name: str) -> str | None:
    """The docstring's description of one parameter (``Args:`` section)."""
    for param in docstring_parser.parse(inspect.getdoc(command) or "").params:
        if param.arg_name == name:
            return param.description
    return None


def underscored(argv: Sequence[str]) -> list[str]:
    """``--print-commands`` as ``--print_commands`` (the option name only, never a value)."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            arg = f"--{name.replace('-', '_')}{sep}{value}"
        out.append(arg)
    return out


def call(command: Callable[..., int | None], prog: str, argv: Sequence[str]) -> int | None:
    """Parse ``argv`` for ``command`` and call it; a bad option raises ``ArgumentError``."""
    argv = underscored(argv)
    parser = parser_for(command, prog)
    try:
        config = parser.parse_args(argv)
        given = parser.parse_args(argv, defaults=False)  # what the command line and --config set
    except ArgumentError as error:
        raise ArgumentError(None, concise(error, parser, argv)) from error
    values = {name: config[name] for name in inspect.signature(command).parameters}
    for name, value in values.items():
        if isinstance(value, Namespace):  # a DataConfig: None unless given
            values[name] = strip_meta(value).as_dict() if given.get(name) is not None else None
    return command(**values)
