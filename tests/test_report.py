"""Reports from the ledger: the JSON shape, the table, the progress bar's counting."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from blast.delivery import Status, TLSEvidence, Trust
from blast.errors import ConfigError
from blast.ledger import Ledger, Result
from blast.report import RunProgress, build_report, busy, summary_table


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger.open(str(tmp_path / "blast.db")) as opened:
        opened.start_run(
            run_id="r1", campaign="flu", segment_hash="s", template_hash="t", settings={}
        )
        frame = pl.DataFrame({"id": range(6), "email": [f"u{i}@example.org" for i in range(6)]})
        opened.enqueue("r1", frame, id_column="id", email_column="email", fields=[])
        rows = sorted(opened.claim("r1", 5), key=lambda r: r.id)
        tls13 = TLSEvidence(host="relay", version="TLSv1.3", bits=256, trust=Trust.VERIFIED)
        tls12 = TLSEvidence(host="relay", version="TLSv1.2", bits=256, trust=Trust.VERIFIED)
        opened.record(
            [
                Result(rows[0].id, Status.SENT, tls=tls13),
                Result(rows[1].id, Status.SENT, tls=tls13),
                Result(rows[2].id, Status.SENT, tls=tls12),
                Result(rows[3].id, Status.BOUNCED, code=550),
                Result(rows[4].id, Status.DROPPED_NO_TLS),
            ]
        )
        yield opened


def test_report_json_shape_and_counts(ledger: Ledger) -> None:
    report = build_report(ledger, "flu")
    assert report["campaign"] == "flu" and report["run_id"] == "r1"
    assert report["recipients"] == 6
    assert report["status"]["sent"] == 3
    assert report["status"]["bounced"] == 1
    assert report["status"]["dropped_no_tls"] == 1
    assert report["status"]["queued"] == 1  # not yet sent: shown so the numbers add up
    assert sum(report["status"].values()) == report["recipients"]
    assert report["tls"] == {"TLSv1.2": 1, "TLSv1.3": 2}
    assert report["engagement"] == {
        "opens": 0,
        "unique_opens": 0,
        "clicks": 0,
        "unique_clicks": 0,
        "unsubscribes": 0,
    }


def test_report_by_run_and_errors(ledger: Ledger) -> None:
    assert build_report(ledger, "flu", "r1")["run_id"] == "r1"
    with pytest.raises(ConfigError, match="no run"):
        build_report(ledger, "flu", "r2")
    with pytest.raises(ConfigError, match="no run"):
        build_report(ledger, "other")


def test_summary_table_renders(ledger: Ledger) -> None:
    out = io.StringIO()
    Console(file=out, width=100).print(summary_table(build_report(ledger, "flu")))
    text = out.getvalue()
    assert "recipients" in text and "dropped_no_tls" in text and "sent over TLSv1.3" in text


def test_progress_counts_even_when_not_a_terminal() -> None:
    out = io.StringIO()
    with RunProgress(10, console=Console(file=out)) as progress:
        progress.update({"sent": 4, "deferred": 2})
        progress.update({"bounced": 1, "sent": 1})
    assert progress.counts == {"sent": 5, "deferred": 2, "bounced": 1}
    assert out.getvalue() == ""  # not a terminal: no bar


def test_busy_shows_a_spinner_only_on_a_terminal(monkeypatch) -> None:
    quiet_out = io.StringIO()
    with busy("freezing", console=Console(file=quiet_out)):
        pass
    assert quiet_out.getvalue() == ""  # not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    out = io.StringIO()
    with busy("freezing", console=Console(file=out, force_terminal=True)):
        pass
    assert "freezing" in out.getvalue()
    hushed = io.StringIO()
    with busy("freezing", quiet=True, console=Console(file=hushed, force_terminal=True)):
        pass
    assert hushed.getvalue() == ""
