"""jsonargparse's parse errors as one short line: the option, the value, and the fix.

jsonargparse explains a bad option over several lines, nesting the union of types it tried and the
whole namespace it was given; the point (``--trainer.max_steps=abc`` is not an int) is somewhere in
the middle. ``concise`` finds it for the errors a user makes: an unknown option (with the nearest
known one), a value of the wrong type, an unknown class, a missing or non-mapping ``--config`` file.
Any other message keeps its text, less the namespace dump.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import typing
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser

from .errors import one_line

KEY = r'Parser key "(?P<key>[^"]+)": '
IN_CLASS = r"(?:.*?Problem with given class_path '(?P<cls>[^']+)': (?:Parser key \"(?P<inner>[^\"]+)\": )?)?"
UNKNOWN = re.compile(r"unrecognized arguments: (?P<option>\S+)")
NOT_ACCEPTED = re.compile(KEY + IN_CLASS + r"Option '(?P<option>[^']+)' is not accepted")
WRONG_TYPE = re.compile(
    KEY + IN_CLASS + r"Expected a <class '(?P<type>\w+)'>\. Got value: (?P<value>.*?)(?: - |$)"
)
WRONG_UNION = re.compile(
    KEY + r"Does not validate .*?Subtypes: \[(?P<types>[^\]]+)\].*Given value: (?P<value>.*)$"
)
WRONG_CHOICE = re.compile(
    KEY + r"Expected a typing\.Literal\[(?P<choices>[^\]]*)\]\. Got value: (?P<value>.*)$"
)
NO_CLASS = re.compile(KEY + r"- Expected a path but (?P<value>\S+) either not accessible or invalid")
NO_FILE = re.compile(KEY + r"File does not exist: '(?P<value>[^']+)'")
DUMP = re.compile(r" - Expected a <class 'NoneType'> Given value type: .*$")
ARTICLE = {"int": "an int", "float": "a float", "bool": "true or false", "str": "a string"}


def concise(error: ArgumentError, parser: ArgumentParser, argv: Sequence[str]) -> str:
    """The one line that says what is wrong with ``argv`` for ``parser`` and how to fix it."""
    message = one_line(error)
    if bad := next(not_a_mapping(argv), None):
        return bad
    if match := UNKNOWN.search(message):
        option = match["option"].split("=")[0]
        return f"unknown option {option}{nearest(option, option_names(parser))}"
    if match := NOT_ACCEPTED.search(message):
        option = f"--{nested(match)}"
        prefix, _, name = option.rpartition(".")
        near = nearest(name, parameters(match["cls"]) if match["cls"] else [])
        return f"unknown option {option}{near.replace('mean ', f'mean {prefix}.')}"
    if match := WRONG_TYPE.search(message):
        return f"--{nested(match)}={match['value']}: expected {ARTICLE.get(match['type'], match['type'])}"
    if match := WRONG_CHOICE.search(message):
        choices = re.findall(r"'([^']*)'", match["choices"])
        hint = nearest(match["value"], choices) or f": give one of {', '.join(choices)}"
        return f"--{match['key']}={match['value']}: not one of the choices{hint}"
    if match := WRONG_UNION.search(message):
        types = [ARTICLE.get(t, t) for t in re.findall(r"<class '(?:\w+\.)*(\w+)'>", match["types"])]
        return f"--{match['key']}={match['value']}: expected {' or '.join(types).replace('NoneType', 'null')}"
    if (match := NO_CLASS.search(message)) and re.search(r"[/\\]|\.(ya?ml|json)$", match["value"]):
        return f"--{match['key']}={match['value']}: no such file (nor a class name)"
    if match := NO_CLASS.search(message):
        classes = subclass_names(parser, match["key"])
        name = match["value"].rpartition(".")[2]
        hint = nearest(name, classes) or (f" (known: {', '.join(classes)})" if classes else "")
        return f"--{match['key']}={match['value']}: no such class{hint}"
    if match := NO_FILE.search(message):
        return f"--{match['key']} {match['value']}: no such file"
    return DUMP.sub("", message)


def nested(match: re.Match[str]) -> str:
    """The dotted option of a match, through a class's ``init_args`` when the error was inside one."""
    inner = match.groupdict().get("inner") or match.groupdict().get("option")
    if match["cls"] and inner:
        return f"{match['key']}.init_args.{inner}"
    return match["key"]


def nearest(name: str, known: Sequence[str]) -> str:
    """``: did you mean X?`` for the known name closest to ``name``; empty when none is close."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f": did you mean {close[0]}?" if close else ""


def option_names(parser: ArgumentParser) -> list[str]:
    """Every ``--option`` of a parser."""
    return [name for name in parser._option_string_actions if name.startswith("--")]


def parameters(class_path: str) -> list[str]:
    """The ``__init__`` parameters of the class at ``class_path``, through the base classes its
    ``**kwargs`` reach (none if it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in (k for k in cls.__mro__ if "__init__" in k.__dict__ and k is not object):
        signature = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in signature if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)][1:]
        if all(p.kind is not p.VAR_KEYWORD for p in signature):
            break
    return names


def subclass_names(parser: ArgumentParser, key: str) -> list[str]:
    """The names of the concrete classes an option of class type accepts (the type's subclasses)."""
    action = next((a for a in parser._actions if a.dest == key), None)
    hint = getattr(action, "_typehint", None)
    bases = [t for t in typing.get_args(hint) or (hint,) if isinstance(t, type) and t is not type(None)]
    return sorted({cls.__name__ for base in bases for cls in concrete(base)})


def concrete(base: type) -> Iterator[type]:
    """``base`` and its subclasses, recursively, leaving out abstract and private ones."""
    if not inspect.isabstract(base) and not base.__name__.startswith("_"):
        yield base
    for cls in base.__subclasses__():
        yield from concrete(cls)


def not_a_mapping(argv: Sequence[str]) -> Iterator[str]:
    """The ``--config`` files in ``argv`` that exist but do not hold a mapping of options."""
    for index, arg in enumerate(argv):
        path = arg.partition("=")[2] if arg.startswith("--config=") else None
        if arg in ("--config", "-c") and index + 1 < len(argv):
            path = argv[index + 1]
        if path and Path(path).is_file():
            try:
                content = yaml.safe_load(Path(path).read_text())
            except yaml.YAMLError:
                continue  # jsonargparse says where the YAML is broken
            if not isinstance(content, dict | None):
                kind = {list: "a list", str: "a string"}.get(type(content), type(content).__name__)
                yield f"--config {path}: holds {kind}, not a mapping of options (key: value lines)"
