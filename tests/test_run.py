"""A whole run in-process: freeze, send, resume, --new-run, --dry-run, the CLI and its JSON."""

from __future__ import annotations

import hashlib
import json
import mailbox
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blast.cli import app
from blast.delivery import Message, Outcome, Status
from blast.errors import ConfigError
from blast.ledger import Ledger
from blast.run import RunOptions, dry_run, run_campaign
from blast.transports import MemoryTransport
from tests.campaign_files import write_campaign, write_contacts
from tests.pg import pg_url  # noqa: F401  (fixture)

REPORT_KEYS = {"campaign", "run_id", "recipients", "status", "tls", "engagement"}
STATUS_KEYS = {
    "sent",
    "deferred",
    "bounced",
    "dropped_no_tls",
    "fallback",
    "suppressed",
    "failed",
    "blocked",
    "unknown",
}
ENGAGEMENT_KEYS = {"opens", "unique_opens", "clicks", "unique_clicks", "unsubscribes"}


class KeptOpen(MemoryTransport):
    """A memory transport that outlives a run, so one test can follow several runs."""

    async def aclose(self) -> None:
        pass


def options(tmp_path: Path, transport: MemoryTransport, **kw: object) -> RunOptions:
    return RunOptions(
        db=str(tmp_path / "blast.db"),
        workers=1,
        quiet=True,
        transport_factory=lambda campaign, concurrency: transport,
        **kw,  # type: ignore[arg-type]
    )


def test_new_run_sends_everyone_once_and_reports(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", n=40)
    transport = KeptOpen()
    report = run_campaign(campaign, options(tmp_path, transport))
    assert set(report) >= REPORT_KEYS
    assert set(report["status"]) == STATUS_KEYS
    assert set(report["engagement"]) == ENGAGEMENT_KEYS
    assert report["recipients"] == 40 and report["status"]["sent"] == 40
    assert Counter(m.recipient for m in transport.messages).most_common(1)[0][1] == 1
    first = next(m for m in transport.messages if m.recipient == "patient1@south.example")
    assert b"Dear Ana1," in first.data
    with Ledger.open(str(tmp_path / "blast.db")) as ledger:
        run = ledger.get_run(report["run_id"])
        assert run is not None and run.finished_at is not None
        assert len(run.segment_hash) == len(run.template_hash) == 64
        rows = ledger.rows(report["run_id"])
    # only the template fields are frozen, never the whole contact
    row = next(r for r in rows if r["contact_id"] == "1")
    assert json.loads(row["fields"]) == {"first_name": "Ana1", "visit_date": "2026-03-01"}


def test_resume_continues_the_same_run_with_frozen_values(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", n=30)
    transport = KeptOpen()
    first = run_campaign(campaign, options(tmp_path, transport, limit=12))
    assert first["status"]["sent"] == 12
    # the source changes after the run started: the run keeps what it froze
    write_contacts(tmp_path / "c" / "contacts.csv", 30, first_name="Changed")
    second = run_campaign(campaign, options(tmp_path, transport))
    assert second["run_id"] == first["run_id"]
    assert second["status"]["sent"] == 30
    recipients = [m.recipient for m in transport.messages]
    assert len(recipients) == len(set(recipients)) == 30
    assert not any(b"Changed" in m.data for m in transport.messages)
    # Message-IDs are per (run, recipient): stable across the resume
    assert len({m.message_id for m in transport.messages}) == 30


def test_finished_run_needs_new_run(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", n=5)
    transport = KeptOpen()
    first = run_campaign(campaign, options(tmp_path, transport))
    with pytest.raises(ConfigError, match="--new-run"):
        run_campaign(campaign, options(tmp_path, transport))
    again = run_campaign(campaign, options(tmp_path, transport, new_run=True))
    assert again["run_id"] != first["run_id"]
    assert len(transport.messages) == 10


@pytest.mark.parametrize(("on_unknown", "resent"), [("skip", 0), ("resend", 3)])
def test_rows_in_flight_at_a_crash_follow_on_unknown(
    tmp_path: Path, on_unknown: str, resent: int
) -> None:
    campaign = write_campaign(tmp_path / "c", n=10, on_unknown=on_unknown)
    transport = KeptOpen()
    first = run_campaign(campaign, options(tmp_path, transport, limit=2))
    with Ledger.open(str(tmp_path / "blast.db")) as ledger:
        in_flight = ledger.claim(first["run_id"], 3)  # a process claimed these, then died
    report = run_campaign(campaign, options(tmp_path, transport))
    sent_now = {m.recipient for m in transport.messages[2:]}
    assert len(sent_now & {r.address for r in in_flight}) == resent
    assert report["status"]["unknown"] == 3 - resent
    assert report["status"]["sent"] == 10 - (3 - resent)


def test_suppressed_addresses_are_not_sent(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", n=6)
    with Ledger.open(str(tmp_path / "blast.db")) as ledger:
        ledger.suppress(["PATIENT2@east.example"], "unsubscribe")
    transport = KeptOpen()
    report = run_campaign(campaign, options(tmp_path, transport))
    assert report["status"]["suppressed"] == 1
    assert "patient2@east.example" not in {m.recipient for m in transport.messages}


def test_bounces_and_blocks_are_counted(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", n=9)

    def handler(message: Message) -> Outcome:
        if message.recipient.endswith("@east.example"):
            return Outcome(status=Status.BOUNCED, code=550, reply="5.1.1 unknown")
        return Outcome(status=Status.SENT, code=250)

    report = run_campaign(campaign, options(tmp_path, KeptOpen(handler)))
    assert report["status"]["bounced"] == 3
    assert report["status"]["sent"] == 6


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("blast.db*"))
    }


def test_dry_run_creates_no_store(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", n=12)
    result = dry_run(campaign, RunOptions(db=str(tmp_path / "blast.db")))
    assert not list(tmp_path.glob("blast.db*"))
    assert result.status["would_send"] == 12
    assert sum(result.domains.values()) == 12 and len(result.domains) == 3
    assert result.sample is not None and b"Subject: Hello Ana1" in result.sample
    assert not (tmp_path / "c" / "outbox").exists()


def test_dry_run_changes_nothing_in_an_existing_store(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", n=12)
    transport = KeptOpen()
    run_campaign(campaign, options(tmp_path, transport, limit=4))
    with Ledger.open(str(tmp_path / "blast.db")) as ledger:
        ledger.suppress(["patient1@south.example"], "unsubscribe")
    before = _digest(tmp_path)
    result = CliRunner().invoke(
        app, ["run", str(campaign), "--dry-run", "--json", "--db", str(tmp_path / "blast.db")]
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["dry_run"] is True
    assert shown["status"]["suppressed"] == 1
    assert shown["status"]["would_send"] == 11
    assert _digest(tmp_path) == before
    assert len(transport.messages) == 4


def test_cli_run_json_and_report(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", n=8)
    db = str(tmp_path / "blast.db")
    runner = CliRunner()
    result = runner.invoke(
        app, ["run", str(campaign), "--db", db, "--workers", "1", "--json", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"]["sent"] == 8 and report["campaign"] == "trial"
    assert len(list(mailbox.Maildir(tmp_path / "c" / "outbox", create=False))) == 8
    shown = runner.invoke(app, ["report", "trial", "--db", db, "--json"])
    assert shown.exit_code == 0, shown.output
    again = json.loads(shown.stdout)
    assert again["run_id"] == report["run_id"]
    assert again["status"] == report["status"]
    by_file = runner.invoke(app, ["report", str(campaign), "--db", db, "--run", report["run_id"]])
    assert by_file.exit_code == 0 and "sent" in by_file.stdout


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", n=3)
    runner = CliRunner()
    bad_date = runner.invoke(
        app, ["run", str(campaign), "--as-of", "soon", "--db", str(tmp_path / "b.db")]
    )
    assert bad_date.exit_code == 2
    missing = runner.invoke(
        app, ["run", str(tmp_path / "nope.yml"), "--db", str(tmp_path / "b.db")]
    )
    assert missing.exit_code == 2
    no_run = runner.invoke(app, ["report", "never-ran", "--db", str(tmp_path / "b.db")])
    assert no_run.exit_code == 2
    assert "blast: error:" in no_run.output


def test_run_refuses_what_validate_refuses(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", n=3)
    text = campaign.read_text().replace('tracking: {base_url: "https://t.riverside.example"}\n', "")
    campaign.write_text(text)
    db = tmp_path / "blast.db"
    result = CliRunner().invoke(app, ["run", str(campaign), "--db", str(db), "--workers", "1"])
    assert result.exit_code == 1
    assert "refusing to send" in result.output
    assert not (tmp_path / "c" / "outbox").exists()


def test_dry_run_reads_suppressions_from_postgres(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    campaign = write_campaign(tmp_path / "c", n=6)
    with Ledger.open(pg_url) as ledger:
        ledger.suppress(["patient1@south.example"], "unsubscribe")
        runs_before = ledger.latest_run("trial")
    result = dry_run(campaign, RunOptions(db=pg_url.replace("postgresql+psycopg", "postgresql")))
    assert result.status["suppressed"] == 1 and result.status["would_send"] == 5
    with Ledger.open(pg_url) as ledger:
        assert runs_before is None and ledger.latest_run("trial") is None  # nothing written
