"""Reports: what a run did, from the ledger, as DESIGN's report JSON or a table; and the live
progress bar a run shows on stderr.

``build_report(ledger, campaign, run_id=None)`` returns the report as a plain dict::

    {"campaign", "run_id", "recipients", "status": {sent, deferred, bounced, dropped_no_tls,
     fallback, suppressed, failed, blocked, unknown}, "tls": {"TLSv1.3": n, ...},
     "engagement": {opens, unique_opens, clicks, unique_clicks, unsubscribes}, ...}
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from blast.delivery import Status
from blast.errors import ConfigError
from blast.ledger import Ledger, RunInfo

__all__ = [
    "REPORT_STATUSES",
    "RunProgress",
    "build_report",
    "busy",
    "empty_engagement",
    "report_for_run",
    "summary_table",
]

#: The statuses a report always lists (zero when absent), in display order.
REPORT_STATUSES = (
    Status.SENT,
    Status.DEFERRED,
    Status.BOUNCED,
    Status.DROPPED_NO_TLS,
    Status.FALLBACK,
    Status.SUPPRESSED,
    Status.FAILED,
    Status.BLOCKED,
    Status.UNKNOWN,
)
#: Statuses that end a row without delivery (the progress bar's "dropped").
DROPPED = frozenset(
    {Status.BOUNCED, Status.DROPPED_NO_TLS, Status.FAILED, Status.BLOCKED, Status.FALLBACK}
)


def empty_engagement() -> dict[str, int]:
    """Engagement counts before any tracking event exists."""
    return {"opens": 0, "unique_opens": 0, "clicks": 0, "unique_clicks": 0, "unsubscribes": 0}


def report_for_run(ledger: Ledger, run: RunInfo) -> dict[str, Any]:
    """The report of one run, read from the ledger."""
    counts, tls = ledger.report_counts(run.run_id)
    status = {s.value: int(counts.get(s.value, 0)) for s in REPORT_STATUSES}
    # Rows still queued or in flight are shown too, so the numbers always add up.
    for extra in (Status.QUEUED, Status.SENDING):
        if counts.get(extra.value):
            status[extra.value] = int(counts[extra.value])
    return {
        "campaign": run.campaign,
        "run_id": run.run_id,
        "recipients": sum(int(n) for n in counts.values()),
        "status": status,
        "tls": dict(sorted(tls.items())),
        "engagement": empty_engagement(),
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def build_report(ledger: Ledger, campaign: str, run_id: str | None = None) -> dict[str, Any]:
    """The report of ``run_id`` (default: the campaign's newest run).

    ``campaign`` is the campaign's name, or the path of its YAML file. Raises ``ConfigError``
    when there is no such run.
    """
    name = _campaign_name(campaign)
    if run_id is not None:
        run = ledger.get_run(run_id)
        if run is None or run.campaign != name:
            raise ConfigError(f"--run: no run {run_id!r} of campaign {name!r} in the store")
    else:
        run = ledger.latest_run(name)
        if run is None:
            raise ConfigError(f"{campaign}: no run of campaign {name!r} in the store")
    return report_for_run(ledger, run)


def _campaign_name(campaign: str) -> str:
    if campaign.endswith((".yml", ".yaml")):
        from blast.config import load_campaign

        return load_campaign(campaign).name
    return campaign


def summary_table(report: Mapping[str, Any], *, title: str | None = None) -> Table:
    """The report as a rich table: status counts, then TLS versions, then engagement."""
    table = Table(
        title=title or f"{report['campaign']} · run {report['run_id']}",
        show_header=True,
        title_justify="left",
    )
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("recipients", f"{report['recipients']:,}", style="bold")
    for name, value in report["status"].items():
        table.add_row(name, f"{value:,}", style=None if value else "dim")
    tls = report.get("tls") or {}
    if tls:
        table.add_section()
        for version, value in tls.items():
            table.add_row(f"sent over {version}" if version != "none" else "sent in plaintext",
                          f"{value:,}")  # fmt: skip
    engagement = report.get("engagement") or {}
    if any(engagement.values()):
        table.add_section()
        for name, value in engagement.items():
            table.add_row(name, f"{value:,}")
    return table


class _Rate(ProgressColumn):
    """Messages per second over the whole run so far."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        done = task.fields.get("sent", 0)
        rate = done / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} sent/s", style="progress.data.speed")


def _live(console: Console, quiet: bool) -> bool:
    return not quiet and console.is_terminal and sys.stderr.isatty()


@contextmanager
def busy(message: str, *, quiet: bool = False, console: Console | None = None) -> Iterator[None]:
    """A spinner on stderr while a step with nothing to count runs (loading the contacts and
    freezing the audience of a big run takes seconds). Off like the progress bar."""
    console = console or Console(stderr=True)
    if not _live(console, quiet):
        yield
        return
    with console.status(message):
        yield


class RunProgress:
    """The live progress bar on stderr: sent/s, sent, deferred, dropped, ETA.

    Off with ``quiet`` or when stderr is not a terminal; then ``update`` only counts.
    """

    def __init__(self, total: int, *, quiet: bool = False, console: Console | None = None) -> None:
        self.counts: Counter[str] = Counter()
        console = console or Console(stderr=True)
        enabled = _live(console, quiet)
        self._progress = Progress(
            TextColumn("[bold]sending"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            _Rate(),
            TextColumn("sent {task.fields[sent]:,}"),
            TextColumn("deferred {task.fields[deferred]:,}"),
            TextColumn("dropped {task.fields[dropped]:,}"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task("send", total=total, sent=0, deferred=0, dropped=0)
        self._deferred_rows = 0

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, delta: Mapping[str, int]) -> None:
        """Add a recorded batch's statuses."""
        self.counts.update(delta)
        done = sum(n for s, n in delta.items() if s != Status.DEFERRED)
        c = self.counts
        self._progress.update(
            self._task,
            advance=done,
            sent=c[Status.SENT],
            deferred=c[Status.DEFERRED],
            dropped=sum(c[s] for s in DROPPED),
        )
