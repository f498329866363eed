"""Every CLI command is documented in the README and has help text with an example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from blast.cli import app

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    found = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            found.extend(_commands(command, path))
        else:
            found.append((path, command))
    return found


COMMANDS = _commands(typer.main.get_group(app), "blast")


def test_the_cli_has_the_commands_the_design_names():
    names = {path for path, _ in COMMANDS}
    assert {"blast segment count", "blast segment explain", "blast generate contacts"} <= names


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS])
def test_every_command_appears_in_the_readme(path):
    assert f"`{path}" in README or f"\n{path}" in README or f" {path} " in README, (
        f"README.md does not document '{path}'"
    )


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS])
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(app, [*path.split()[1:], "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output, f"'{path} --help' shows no example"
    assert len(result.output.strip().splitlines()) > 3


def test_version_prints_the_package_version():
    from blast import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
