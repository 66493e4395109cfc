"""The README is the whole truth: its commands are read here as text and checked
against the real Makefile, the real command-line parser and the real tree.

- the test command it shows is what `make print-test-cmd` prints;
- every verb and flag of its "Command line" synopsis exists in the parser, and
  every verb of the parser is in the synopsis;
- every `minicontainer ...` example it shows parses;
- its module table names every package and module of minicontainer/, and names
  nothing that is not there.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from minicontainer import cli
from minicontainer.errors import UserError

README = (REPO / "README.md").read_text()
PACKAGE = REPO / "minicontainer"


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def code_lines(text: str) -> list[str]:
    """Indented code-block lines (4 spaces), as the README writes commands."""
    return [line[4:] for line in text.splitlines() if line.startswith("    ")]


# --------------------------------------------------------------------------- make test


def test_the_test_command_is_what_make_test_runs() -> None:
    block = section("The two commands")
    after = block[block.index("runs exactly:") :]
    shown = next(line.strip() for line in after.splitlines()[1:] if line.strip())
    made = subprocess.run(
        ["make", "--no-print-directory", "-s", "print-test-cmd"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert shown == made
    makefile = (REPO / "Makefile").read_text()
    assert "bash scripts/with-services.sh $(RUN_TEST_CMD)" in makefile  # services around it


# --------------------------------------------------------------------------- the CLI


def synopsis() -> list[list[str]]:
    """The "Command line" block as segments, each a token list starting with the verb."""
    joined: list[str] = []
    for line in code_lines(section("Command line")):
        if line.startswith("minicontainer "):
            joined.append(line.removeprefix("minicontainer "))
        else:
            joined[-1] += " " + line.strip()
    return [segment.split() for line in joined for segment in line.split(" | ")]


def help_text(*words: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.parse([*words, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


FLAG = re.compile(r"^\[?(--?[A-Za-z][\w-]*)")


def test_every_verb_and_flag_in_the_synopsis_exists(capsys: pytest.CaptureFixture[str]) -> None:
    segments = synopsis()
    assert len(segments) > 20
    for tokens in segments:
        verb, rest = tokens[0], tokens[1:]
        assert verb in cli.VERBS, f"the README names {verb!r}, which the CLI does not have"
        # `image inspect|prune [-a]|verify`: the subcommands, each with its own flags
        subs = rest[0].split("|") if rest and re.fullmatch(r"[a-z|]+", rest[0]) else []
        subs = [s for s in subs if s]
        helps = [help_text(verb, capsys=capsys)]
        helps += [help_text(verb, s, capsys=capsys) for s in subs]
        for token in rest:
            for piece in token.split("]|"):
                m = FLAG.match(piece)
                if m is None:
                    continue
                flag = m.group(1)
                pattern = re.compile(rf"(?<![\w-]){re.escape(flag)}(?![\w-])")
                assert any(pattern.search(h) for h in helps), f"{verb}: README shows {flag}"


def test_every_verb_of_the_cli_is_in_the_synopsis() -> None:
    shown = {tokens[0] for tokens in synopsis()}
    assert set(cli.VERBS) <= shown, f"not in the README: {sorted(set(cli.VERBS) - shown)}"


def examples() -> list[list[str]]:
    found = []
    for line in code_lines(README):
        for command in line.split("&&"):
            words = shlex.split(command.split("#", 1)[0])
            if words[:1] == ["sudo"]:
                words = words[1:]
            if words and Path(words[0]).name == "minicontainer" and "/" in words[0]:
                found.append(words[1:])
    return found


def test_every_example_parses() -> None:
    shown = examples()
    assert len(shown) >= 8, shown
    for argv in shown:
        try:
            args = cli.parse(argv)
        except (UserError, SystemExit) as e:
            pytest.fail(f"README example `minicontainer {' '.join(argv)}` does not parse: {e}")
        assert args is not None and args.verb == argv[0]


# --------------------------------------------------------------------------- modules


def module_table() -> dict[str, str]:
    """First cell (a package `x/` or module `x.py`, several split by commas) -> its row."""
    rows = {}
    for line in section("How it works").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([^`]+)`", cells[0]):
            rows[name] = cells[1]
    return rows


def tree() -> dict[str, list[str]]:
    """Package (relative, with a slash) -> the module files directly in it."""
    found = {}
    for init in sorted(PACKAGE.rglob("__init__.py")):
        pkg = init.parent
        if pkg == PACKAGE:
            continue
        rel = pkg.relative_to(PACKAGE).as_posix() + "/"
        found[rel] = sorted(
            p.name
            for p in pkg.iterdir()
            if p.suffix in (".py", ".c", ".json") and p.name != "__init__.py"
        )
    return found


def test_module_table_matches_the_tree() -> None:
    rows = module_table()
    packages = tree()
    top = sorted(
        p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")
    )
    for name in top:
        assert name in rows, f"the README's module table does not name minicontainer/{name}"
    for pkg, modules in packages.items():
        assert pkg in rows, f"the README's module table does not name minicontainer/{pkg}"
        named = set(re.findall(r"`([\w.-]+)`", rows[pkg]))
        for module in modules:
            assert module in named, f"the README's row for {pkg} does not name {module}"
        for name in named:  # (`config.json` is a file the runtime reads, not a module)
            if re.fullmatch(r"\w+\.(py|c)", name):
                assert name in modules, f"the README's row for {pkg} names {name}: not there"
    for name in rows:
        assert name in top or name in packages, f"the README names {name}: not in minicontainer/"
