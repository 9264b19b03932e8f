"""Docs that cannot rot: every ``bytelab`` command in README.md and docs/*.md parses, every error
they show is the line bytelab prints, and the README's ``make run`` output is what it printed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from experiments.cli import COMMANDS, LIGHTNING, main

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A command that cannot run here says so in its comment: `# needs: data`, `# needs: a GPU`.
NEEDS = re.compile(r"#\s*needs:")
# A placeholder for the reader to fill in (`--config ...`, `NAME`, `<study>`, `[--mini]`, `fit|test`).
PLACEHOLDER = re.compile(r"\.\.\.|[<>\[\]|]|^[A-Z][A-Z0-9_]*$|=[A-Z][A-Z0-9_]*$")


def commands(page: Path) -> list[tuple[str, str | None]]:
    """The ``bytelab`` commands of a page, continuation lines joined, each with the error line shown
    right after it (``$ bytelab ...`` then ``bytelab: error: ...``) or None: code-block lines, and
    inline code that starts with ``bytelab``."""
    found: list[tuple[str, str | None]] = []
    fence, pending = False, ""
    lines = page.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fence = not fence
        elif fence:
            text = pending + line.strip()
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            text = re.sub(r"^(\$ |srun )?(\.venv/bin/)?", "", text)
            if text.startswith("bytelab "):
                after = lines[i + 1] if i + 1 < len(lines) else ""
                found.append((text, after if after.startswith("bytelab: error: ") else None))
        else:
            found += [(m, None) for m in re.findall(r"`(bytelab [^`]+)`", line)]
    return found


def words(command: str) -> list[str] | None:
    """The arguments of a command (its comment and any shell redirection left out); None when it
    holds a placeholder or is marked as needing data or a GPU."""
    if NEEDS.search(command):
        return None
    args = shlex.split(command, comments=True)[1:]
    for stop in (">", "&&", "|"):
        args = args[: args.index(stop)] if stop in args else args
    if not args or args[0] not in (*COMMANDS, *LIGHTNING) or any(PLACEHOLDER.search(a) for a in args):
        return None
    return args


DOCUMENTED = sorted(
    {(text, error) for page in PAGES for text, error in commands(page)},
    key=lambda item: item[0],
)
PARSED = [(text, error) for text, error in DOCUMENTED if words(text) is not None]


def test_the_docs_hold_the_commands_this_test_reads():
    """The reader finds the commands (a broken pattern would pass every other test here)."""
    assert len(PARSED) >= 40 and {words(t)[0] for t, _ in PARSED} >= {"fit", "compare", "sweep", "bench"}
    assert sum(error is not None for _, error in PARSED) >= 4


@pytest.mark.parametrize("text,error", PARSED, ids=[text[:80] for text, _ in PARSED])
def test_every_documented_command_parses(text, error, capsys, monkeypatch):
    """Its subcommand's parser accepts it (``--print_config`` parses and exits; ``--help`` too); a
    command shown with its error prints exactly that line."""
    monkeypatch.chdir(REPO)
    args = words(text)
    if error is not None:
        assert main(args) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == error
        return
    helps = {"--help", "-h"} & set(args) or any(a.endswith(".help") for a in args)
    probe = [] if helps else ["--print_config"]
    try:
        code = main([*args, *probe])
    except SystemExit as exit_:  # --print_config and --help print, then exit
        code = exit_.code
    assert code in (0, None), capsys.readouterr().err[-500:]


MAKE_RUN = "<!-- make run prints"


def make_run_example() -> list[str]:
    """The lines of the README's block of what ``make run`` prints."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(MAKE_RUN) :].split("```")[1]
    return [line for line in block.splitlines() if line.strip()]


def shape(line: str) -> str:
    """A printed line with its numbers and run names replaced, to compare forms, not values."""
    line = re.sub(r"\S+-seed\d+", "RUN", line)
    return re.sub(r"\s+", " ", re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "N", line)).strip()


def test_the_make_run_example_is_an_excerpt_of_what_make_run_printed():
    """Every line of the README's example, but its "...", is a line of ``results/compare/run.log``
    (the terminal output of the committed main job), in the same order; wrapped lines read as one."""
    log = (REPO / "results" / "compare" / "run.log").read_text().splitlines()
    position = 0
    pending = ""
    for line in make_run_example():
        if line.strip() == "...":
            continue
        wanted = (pending + " " + line.strip()) if pending else line
        matches = [i for i in range(position, len(log)) if log[i].rstrip() == wanted.rstrip()]
        if not matches:  # a line the README wraps: the log's line starts with it
            starts = [i for i in range(position, len(log)) if log[i].startswith(wanted.rstrip())]
            assert starts, f"not in run.log after line {position}: {wanted!r}"
            pending = wanted.rstrip()
            continue
        position, pending = matches[0] + 1, ""
    assert pending == ""


def test_the_make_run_example_has_the_forms_the_code_prints_now(tmp_path, capsys, monkeypatch):
    """The smoke preset's lines of the kinds it prints (each run, the ranking) have the same form as
    the example's lines of those kinds, so a changed format fails here, not for a reader. One run at
    a time, in this process (8 s; the ``parallel:`` line of worker processes would cost 20 s more)."""
    monkeypatch.setenv("BYTELAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "corpus.txt").write_bytes(b"the quick brown fox jumps over the lazy dog. " * 200)
    data = tmp_path / "data.yaml"
    data.write_text(f"class_path: datamodules.TextBytes\ninit_args:\n  paths: {tmp_path / 'corpus.txt'}\n")
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = [
        "compare",
        "--preset=smoke",
        "--budgets=2e8",
        "--jobs=1",
        f"--data={data}",
        f"--runs={runs}",
        f"--out={out}",
    ]
    assert main(args) == 0
    printed = {shape(line) for line in capsys.readouterr().out.splitlines()}
    kinds = ("  start ", "Ranking (")
    example = [line for line in make_run_example() if line.startswith(kinds)]
    assert all(any(line.startswith(kind) for line in example) for kind in kinds)
    for line in example:
        assert shape(line) in printed, line


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip("# ").lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_between_the_pages_resolves(page):
    """A moved section leaves no link to where it was: files exist, anchors are headings there."""
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if fragment:
            headings = [anchor(h) for h in re.findall(r"^#+ .*$", linked.read_text(), flags=re.M)]
            assert fragment in headings, f"{page.name}: {target}"
