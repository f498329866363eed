"""The ``blast`` command line: typer, thin. Each command parses options, calls one function,
prints. Progress goes to stderr; ``--json`` output to stdout. A ``ConfigError`` becomes one line
on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from blast import __version__
from blast.errors import BlastError, ConfigError

__all__ = ["app", "main"]

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="blast",
    help="Send personalised email campaigns to segments of contacts, strictly over TLS.\n\n"
    "Example:\n\n    blast run campaigns/flu-shot.yml",
    context_settings=CONTEXT,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    typer.echo(f"blast: error: {message}", err=True)
    return typer.Exit(code)


def handles_errors(func: F) -> F:
    """Turn blast's own errors into one line on stderr and the matching exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise fail(str(exc), 2) from None
        except BlastError as exc:
            raise fail(str(exc), getattr(exc, "exit_code", 1)) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"blast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Send personalised email campaigns to segments of contacts, strictly over TLS."""


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
