"""The ``blast`` command line: typer, thin. Each command parses options, calls one function,
prints. Progress goes to stderr; ``--json`` output to stdout. A ``ConfigError`` becomes one line
on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import datetime as dt
import functools
import sys
from collections.abc import Callable
from pathlib import Path
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


def parse_as_of(value: str | None) -> dt.date | None:
    """The ``--as-of`` option as a date (None when not given); a bad one is a usage error."""
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--as-of: not a date (YYYY-MM-DD): {value!r}") from None


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
    import time
    from pathlib import Path

    from blast.generate import AS_OF, generate_contacts

    started = time.perf_counter()
    path = generate_contacts(rows, Path(out), seed=seed, as_of=parse_as_of(as_of) or AS_OF)
    elapsed = time.perf_counter() - started
    typer.echo(f"wrote {rows:,} contacts to {path} in {elapsed:.1f}s", err=True)


segment_app = typer.Typer(
    help="Count, sample and explain a segment over a contacts file.\n\n"
    "Example:\n\n    blast segment count segments/seniors-due-flu-shot.yml "
    "--contacts data/contacts.parquet",
    context_settings=CONTEXT,
    no_args_is_help=True,
)
app.add_typer(segment_app, name="segment")

_SEGMENT_ARG = typer.Argument(..., metavar="SEGMENT.yml", help="The segment file.")
_CONTACTS_OPT = typer.Option(
    ..., "--contacts", "-c", metavar="FILE", help="Contacts: .parquet, .csv or .ndjson."
)
_AS_OF_OPT = typer.Option(
    None, "--as-of", metavar="DATE", help="Date relative rules count from (YYYY-MM-DD; today)."
)
_JSON_OPT = typer.Option(False, "--json", help="Print JSON on stdout.")


def _prepare_segment(segment_path: str, contacts_path: str, as_of: str | None) -> Any:
    """Load the segment and the contacts and plan the segment over them (for the commands)."""

    from blast.contacts import load_contacts
    from blast.segments import load_segment, prepare

    as_of_date = parse_as_of(as_of) or dt.date.today()
    segment = load_segment(segment_path)
    return prepare(segment, load_contacts(contacts_path), as_of=as_of_date)


@segment_app.command("count")
@handles_errors
def segment_count_command(
    segment: str = _SEGMENT_ARG,
    contacts: str = _CONTACTS_OPT,
    as_of: str | None = _AS_OF_OPT,
    json_output: bool = _JSON_OPT,
) -> None:
    """Count the contacts in a segment (matching its rules, in none of its exclusions).

    Example:

        blast segment count segments/seniors-due-flu-shot.yml -c data/contacts.parquet --json
    """
    import json

    from blast.segments import count

    result = count(_prepare_segment(segment, contacts, as_of))
    if json_output:
        typer.echo(json.dumps(result.as_dict()))
    else:
        typer.echo(f"{result.segment}: {result.count:,} of {result.total:,} contacts")


@segment_app.command("sample")
@handles_errors
def segment_sample_command(
    segment: str = _SEGMENT_ARG,
    contacts: str = _CONTACTS_OPT,
    as_of: str | None = _AS_OF_OPT,
    rows: int = typer.Option(10, "-n", "--rows", min=1, help="How many contacts to show."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed, for a repeatable sample."),
    json_output: bool = _JSON_OPT,
) -> None:
    """Show a few contacts of a segment: id, email and the fields its rules use.

    Example:

        blast segment sample segments/overdue-checkup.yml --contacts data/contacts.parquet -n 10
    """
    import json

    import polars as pl

    from blast.segments import sample

    shown = sample(_prepare_segment(segment, contacts, as_of), rows, seed=seed)
    if json_output:
        typer.echo(json.dumps(shown.to_dicts(), default=str))
        return
    with pl.Config(
        tbl_rows=rows,
        tbl_cols=-1,
        tbl_width_chars=1000,
        fmt_str_lengths=60,
        tbl_hide_dataframe_shape=True,
    ):
        typer.echo(shown)


@segment_app.command("explain")
@handles_errors
def segment_explain_command(
    segment: str = _SEGMENT_ARG,
    contacts: str = _CONTACTS_OPT,
    as_of: str | None = _AS_OF_OPT,
    json_output: bool = _JSON_OPT,
) -> None:
    """Print the segment's rules as a funnel: how many contacts are left after each clause.

    Example:

        blast segment explain segments/seniors-due-flu-shot.yml --contacts data/contacts.parquet
    """
    import json

    from blast.segments import explain, format_funnel

    funnel = explain(_prepare_segment(segment, contacts, as_of))
    typer.echo(json.dumps(funnel.as_dict()) if json_output else format_funnel(funnel))


@app.command("sink", context_settings=CONTEXT)
@handles_errors
def sink_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(
        2525, "--port", min=0, max=65535, help="Port to listen on; 0 picks a free one."
    ),
    tls: bool = typer.Option(
        False, "--tls", help="Offer STARTTLS on a certificate generated at start."
    ),
    maildir: Path | None = typer.Option(
        None, "--maildir", help="Store each message in this Maildir (default: only count)."
    ),
    ca_out: Path | None = typer.Option(
        None, "--ca-out", help="Write the generated CA certificate here (a campaign's ca_file)."
    ),
) -> None:
    """Run a local capture SMTP server for demos and trials, until SIGTERM or Ctrl-C.

    The first line on stdout is the port it listens on; a summary per TLS version goes to
    stderr when it stops.

    Example:

        blast sink --port 2525 --tls --ca-out sink-ca.pem --maildir sink/
    """
    from blast.sink import run_sink

    run_sink(host=host, port=port, tls=tls, maildir=maildir, ca_out=ca_out)


_CAMPAIGN_ARG = typer.Argument(..., metavar="CAMPAIGN.yml", help="The campaign file.")


@app.command("validate", context_settings=CONTEXT)
@handles_errors
def validate_command(
    campaign: str = _CAMPAIGN_ARG,
    samples: int = typer.Option(
        20, "--samples", min=0, help="How many contacts of the segment to render and check."
    ),
    as_of: str | None = typer.Option(
        None, "--as-of", metavar="DATE", help="Date the segment's rules count from (today)."
    ),
) -> None:
    """Check a campaign: YAML, segment, templates and compliance. Exit 0 if it passes, else 1.

    One line per finding on stdout (file, YAML path, what is wrong): unsubscribe link and
    postal address in both parts, a valid From, a subject, TLS and subject rules for sensitive
    segments, DLP rules; then sample contacts are rendered.

    Example:

        blast validate campaigns/flu-shot.yml --samples 50
    """

    from blast.compliance import validate_campaign

    day = parse_as_of(as_of)
    findings = validate_campaign(campaign, samples=samples, as_of=day)
    for finding in findings:
        typer.echo(str(finding))
    errors = sum(finding.error for finding in findings)
    warnings = len(findings) - errors
    verdict = f"{errors} error(s)" if errors else "ok"
    typer.echo(f"{campaign}: {verdict}, {warnings} warning(s)", err=True)
    raise typer.Exit(1 if errors else 0)


@app.command("preview", context_settings=CONTEXT)
@handles_errors
def preview_command(
    campaign: str = _CAMPAIGN_ARG,
    contact: str = typer.Option(..., "--contact", metavar="ID", help="The contact's id."),
    raw: bool = typer.Option(False, "--raw", help="Print the exact bytes that would be sent."),
    html: Path | None = typer.Option(
        None, "--html", metavar="FILE", help="Also write the HTML part to FILE (for a browser)."
    ),
    as_of: str | None = typer.Option(
        None, "--as-of", metavar="DATE", help="Date derived fields count from (today)."
    ),
) -> None:
    """Show one contact's message as they would get it: headers, text part, HTML part.

    Tracking links are signed with a throwaway key unless BLAST_TRACKING_KEY is set.

    Example:

        blast preview campaigns/flu-shot.yml --contact 42 --html /tmp/flu.html
    """

    from blast.preview import preview

    day = parse_as_of(as_of)
    result = preview(campaign, contact, as_of=day)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    if html is not None and result.html is not None:
        html.write_text(result.html, encoding="utf-8")
    if raw:
        sys.stdout.buffer.write(result.message.data)
        sys.stdout.flush()
    else:
        typer.echo(result.shown)


@app.command("schema", context_settings=CONTEXT)
@handles_errors
def schema_command(
    kind: str = typer.Argument(..., metavar="campaign|segment", help="Which file's schema."),
) -> None:
    """Print the JSON Schema of campaign or segment YAML, for editor completion.

    Example:

        blast schema campaign > .schemas/campaign.json
    """
    import json

    from blast.config import campaign_schema, segment_schema

    schemas = {"campaign": campaign_schema, "segment": segment_schema}
    if kind not in schemas:
        raise ConfigError(f"schema: unknown kind {kind!r}; expected campaign or segment")
    typer.echo(json.dumps(schemas[kind](), indent=2))


_DB_OPT = typer.Option(
    None,
    "--db",
    metavar="URL",
    help="The store: a SQLite file or a database URL ($BLAST_DB; blast.db).",
)


@app.command("run", context_settings=CONTEXT)
@handles_errors
def run_command(
    campaign: str = typer.Argument(..., metavar="CAMPAIGN.yml", help="The campaign file."),
    db: str | None = _DB_OPT,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Render everything, send nothing, change nothing in the store."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, metavar="N", help="Send (or render) at most N messages now."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, metavar="N", help="Sending processes (default: one per CPU)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    new_run: bool = typer.Option(
        False,
        "--new-run",
        help="Start a new run (needed once the last run finished; else it is resumed).",
    ),
    as_of: str | None = typer.Option(
        None, "--as-of", metavar="DATE", help="Date the segment's rules count from (today)."
    ),
) -> None:
    """Send a campaign: freeze its audience in the store, send, print a summary.

    Resumes the campaign's unfinished run if there is one: what was sent is never sent again,
    due retries go out, and messages in flight when a run was killed follow on_unknown.
    Exit 0 when done (bounces and drops are counted, not errors), 1 if the run could not
    complete, 2 for a usage or configuration error.

    Example:

        blast run campaigns/flu-shot.yml --db blast.db --workers 2
    """
    import json

    from rich.console import Console

    from blast.report import summary_table
    from blast.run import RunOptions, run_campaign
    from blast.run import dry_run as preview_run

    day = parse_as_of(as_of)
    options = RunOptions(
        db=db, limit=limit, workers=workers, new_run=new_run, as_of=day, quiet=quiet
    )
    if dry_run:
        result = preview_run(campaign, options)
        if json_output:
            typer.echo(json.dumps(result.as_dict(), indent=2))
            return
        _print_dry_run(result)
        return
    report = run_campaign(campaign, options)
    if json_output:
        shown = {k: v for k, v in report.items() if k not in ("notes", "interrupted")}
        typer.echo(json.dumps(shown, indent=2))
    else:
        Console().print(summary_table(report))
    for note in report.get("notes", []):
        typer.echo(f"note: {note}", err=True)
    if report.get("interrupted"):
        raise typer.Exit(1)


def _print_dry_run(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from blast.preview import show_message

    console = Console()
    table = Table(title=f"{result.campaign} · dry run (nothing sent)", title_justify="left")
    table.add_column("status")
    table.add_column("count", justify="right")
    table.add_row("recipients", f"{result.recipients:,}", style="bold")
    for name, value in sorted(result.status.items()):
        table.add_row(name, f"{value:,}")
    table.add_row("duplicates dropped", f"{result.duplicates:,}")
    table.add_row("without an address", f"{result.invalid:,}")
    console.print(table)
    domains = Table(title="would send, per domain", title_justify="left")
    domains.add_column("domain")
    domains.add_column("messages", justify="right")
    for domain, value in result.domains.most_common(20):
        domains.add_row(domain, f"{value:,}")
    if len(result.domains) > 20:
        domains.add_row(f"... {len(result.domains) - 20} more", "")
    console.print(domains)
    if result.sample is not None:
        shown, _ = show_message(result.sample)
        typer.echo("\n----- sample message -----")
        typer.echo(shown)


@app.command("report", context_settings=CONTEXT)
@handles_errors
def report_command(
    campaign: str = typer.Argument(
        ..., metavar="CAMPAIGN", help="The campaign's name, or its YAML file."
    ),
    run: str | None = typer.Option(None, "--run", metavar="ID", help="Which run (the newest)."),
    db: str | None = _DB_OPT,
    json_output: bool = typer.Option(False, "--json", help="Print the report JSON on stdout."),
) -> None:
    """Print what a run did, from the store: statuses, TLS versions, engagement.

    Example:

        blast report flu-shot-2026 --json
    """
    import json

    from rich.console import Console

    from blast.ledger import Ledger
    from blast.report import build_report, summary_table

    with Ledger.open(db) as ledger:
        report = build_report(ledger, campaign, run)
    if json_output:
        typer.echo(json.dumps(report, indent=2))
    else:
        Console().print(summary_table(report))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
