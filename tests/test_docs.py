"""docs/cli.md documents every command, argument and option of the CLI (a test fails otherwise)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from emsbms.cli import app
from emsbms.cli.common import global_option

DOCS = (Path(__file__).parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")


def commands(group: Any, prefix: str = "emsbms") -> list[tuple[str, Any]]:
    """Every leaf command as (full name, click command)."""
    out = []
    for name, cmd in sorted(group.commands.items()):
        full = f"{prefix} {name}"
        if hasattr(cmd, "commands"):
            out.extend(commands(cmd, full))
        else:
            out.append((full, cmd))
    return out


ROOT = typer.main.get_command(app)
COMMANDS = commands(ROOT)


def section(title: str) -> str:
    """The text of the `## title` section of docs/cli.md."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOCS, re.M | re.S)
    assert match is not None, f"docs/cli.md has no section '## {title}'"
    return match.group(1)


def documented_names(param: Any) -> list[str]:
    if param.param_type_name == "argument":
        return [param.metavar or param.name.upper()]
    return [o for o in param.opts if o != "--help"]


def test_the_contract_commands_exist() -> None:
    # the names issue 2 fixes as a contract; later commands are checked by the test below
    assert {name for name, _ in COMMANDS} >= {
        "emsbms demo", "emsbms run", "emsbms simulate", "emsbms read", "emsbms write", "emsbms monitor",
        "emsbms profiles list", "emsbms profiles show", "emsbms profiles validate",
    }


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_and_option_is_documented(name: str, command: Any) -> None:
    text = section(f"`{name}`")
    assert f"[`{name}`]" in DOCS, f"{name} is missing from the command table"
    assert "Exit codes" in text, f"{name}: exit codes are not documented"
    assert "```" in text, f"{name}: no example"
    for param in command.params:
        if param.callback is global_option:
            continue  # a global option given after the command: documented once, under Global options
        for opt in documented_names(param):
            assert f"`{opt}" in text, f"{name}: {opt} is not documented"


def test_global_options_are_documented() -> None:
    text = section("Global options")
    for param in ROOT.params:
        for opt in documented_names(param):
            assert f"`{opt}" in text, f"global option {opt} is not documented"
    assert "`EMSBMS_SITE`" in text and "`EMSBMS_DB`" in text


def test_exit_codes_are_documented() -> None:
    text = section("Exit codes")
    for code in range(5):
        assert re.search(rf"^\| {code} \|", text, re.M), f"exit code {code} is not documented"
