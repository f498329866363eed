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


generate_app = typer.Typer(
    help="Generate synthetic example data.\n\n"
    "Example:\n\n    blast generate contacts --rows 10000 --out data/contacts.parquet",
    context_settings=CONTEXT,
    no_args_is_help=True,
)
app.add_typer(generate_app, name="generate")


@generate_app.command("contacts")
@handles_errors
def generate_contacts_command(
    rows: int = typer.Option(..., "--rows", "-n", min=0, help="How many contacts to write."),
    out: str = typer.Option(
        ..., "--out", "-o", help="Output file: .parquet/.pq, .csv or .ndjson/.jsonl."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same file."),
    as_of: str = typer.Option(
        "2026-12-01", "--as-of", help="Date ages and journey stages are relative to (YYYY-MM-DD)."
    ),
) -> None:
    """Write synthetic contacts (demographic, clinical, journey, behavioural fields).

    Deterministic for a seed; written in chunks, so 10M rows need little memory. In CSV, list
    columns (conditions, medications, ...) are joined with ';'.

    Example:

        blast generate contacts --rows 10000 --out data/contacts.parquet --seed 7
    """
    import datetime as dt
    import time
    from pathlib import Path

    from blast.generate import generate_contacts

    try:
        as_of_date = dt.date.fromisoformat(as_of)
    except ValueError:
        raise ConfigError(f"--as-of: not a date (YYYY-MM-DD): {as_of!r}") from None
    started = time.perf_counter()
    path = generate_contacts(rows, Path(out), seed=seed, as_of=as_of_date)
    elapsed = time.perf_counter() - started
    typer.echo(f"wrote {rows:,} contacts to {path} in {elapsed:.1f}s", err=True)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
