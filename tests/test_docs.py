"""The README documents the public surface (STYLE "docs are tested"): every name in
``codeflow.__all__`` and every command of the ``codeflow`` CLI appears in it, and the
tour of the flow names functions that exist, in the order the module defines them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import codeflow

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def cli_commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Every leaf command of the CLI, as typed: "serve", "user totp enable", ..."""
    found: list[str] = []
    for action in parser._actions:  # argparse keeps its subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += cli_commands(sub, f"{prefix}{name} ")
    return found or [prefix.strip()]


@pytest.mark.parametrize("name", codeflow.__all__)
def test_every_public_name_is_in_the_readme(name: str) -> None:
    assert re.search(rf"\b{re.escape(name)}\b", README), f"{name} is not in README.md"


@pytest.mark.parametrize("command", cli_commands(codeflow._parser()))
def test_every_cli_command_is_in_the_readme(command: str) -> None:
    assert f"codeflow {command}" in README, f"'codeflow {command}' is not in README.md"


def test_the_tour_names_functions_that_exist_in_file_order() -> None:
    """README "A tour of the flow in codeflow.py": each `name()` it mentions is defined
    in codeflow.py, and they come in the order of the file."""
    tour = README.split("## A tour of the flow in codeflow.py", 1)[1].split("\n## ", 1)[0]
    source = Path(codeflow.__file__).read_text(encoding="utf-8")
    names = list(dict.fromkeys(re.findall(r"`(\w+)\(\)`", tour)))
    assert len(names) >= 10
    lines = {}
    for name in names:
        match = re.search(rf"^(?:def|class) {name}\b", source, re.MULTILINE)
        assert match, f"the tour names {name}(), which codeflow.py does not define"
        lines[name] = match.start()
    assert names == sorted(names, key=lines.__getitem__), "the tour is not in file order"
