"""The ledger: schema, enqueue, exclusive claims, batch records, resume semantics.

Every test runs on a SQLite file and on the local PostgreSQL (a throw-away schema).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import stat
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from blast.delivery import Status, TLSEvidence, Trust
from blast.errors import StoreError
from blast.ledger import Ledger, Result, db_url, deliveries, metadata, now
from tests.pg import pg_url  # noqa: F401  (fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'blast.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def ledger(url: str):
    with Ledger.open(url) as opened:
        yield opened


def audience(n: int, *, domain: str = "example.org") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": list(range(1, n + 1)),
            "email": [f"user{i}@{domain}" for i in range(1, n + 1)],
            "first_name": [f"Name{i}" for i in range(1, n + 1)],
            "secret_diagnosis": ["do-not-freeze"] * n,
            "birth_date": [dt.date(1950, 1, 1)] * n,
        }
    )


def start(ledger: Ledger, run_id: str = "run-1", campaign: str = "flu") -> str:
    ledger.start_run(
        run_id=run_id, campaign=campaign, segment_hash="s" * 64, template_hash="t" * 64, settings={}
    )
    return run_id


def test_schema_matches_migrations(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_sqlite_file_is_owner_only_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "blast.db"
    with Ledger.open(str(path)) as ledger:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
        start(ledger)
        ledger.enqueue("run-1", audience(3), id_column="id", email_column="email", fields=[])
        for extra in ("-wal", "-shm"):
            side = Path(str(path) + extra)
            if side.exists():
                assert stat.S_IMODE(os.stat(side).st_mode) & 0o077 == 0


def test_db_url_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLAST_DB", raising=False)
    assert db_url() == "sqlite:///blast.db"
    monkeypatch.setenv("BLAST_DB", "/tmp/x.db")
    assert db_url() == "sqlite:////tmp/x.db"
    assert db_url("postgresql://h/db") == "postgresql://h/db"


def test_reopen_keeps_data_and_tracking_key(url: str) -> None:
    with Ledger.open(url) as first:
        key = first.tracking_key()
        start(first)
    with Ledger.open(url) as second:
        assert second.tracking_key() == key
        assert len(key) == 32
        assert second.get_run("run-1") is not None


def test_enqueue_dedupes_suppresses_and_freezes_only_template_fields(ledger: Ledger) -> None:
    start(ledger)
    ledger.suppress(["Suppressed@Example.org"], "unsubscribe")
    frame = pl.DataFrame(
        {
            "id": [5, 2, 9, 4, 7],
            "email": [
                "dup@example.org",
                "DUP@example.org",
                "suppressed@example.org",
                "not-an-address",
                " ok@example.org ",
            ],
            "first_name": ["E", "B", "I", "D", "G"],
            "secret_diagnosis": ["x"] * 5,
        }
    )
    counts = ledger.enqueue(
        "run-1", frame, id_column="id", email_column="email", fields=["first_name"]
    )
    assert (counts.rows, counts.suppressed, counts.duplicates, counts.invalid) == (3, 1, 1, 1)
    rows = ledger.rows("run-1")
    by_address = {r["address"]: r for r in rows}
    # first by id wins among duplicates
    assert by_address["DUP@example.org"]["contact_id"] == "2"
    assert "dup@example.org" not in by_address
    assert by_address["suppressed@example.org"]["status"] == Status.SUPPRESSED
    assert by_address["ok@example.org"]["status"] == Status.QUEUED
    for row in rows:
        assert "secret_diagnosis" not in row["fields"]
        assert "first_name" in row["fields"]
    assert ledger.get_run("run-1").recipients == 3  # type: ignore[union-attr]


def test_unique_run_address(ledger: Ledger) -> None:
    start(ledger)
    stamp = now()
    row = {
        "run_id": "run-1",
        "contact_id": "1",
        "address": "a@example.org",
        "status": "queued",
        "fields": "{}",
        "created_at": stamp,
        "updated_at": stamp,
    }
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(deliveries), row)
    with pytest.raises(sa.exc.IntegrityError), ledger.engine.begin() as conn:
        conn.execute(sa.insert(deliveries), row)
    # the same address in another run is fine
    start(ledger, "run-2")
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(deliveries), {**row, "run_id": "run-2"})


def test_claim_is_exclusive_across_concurrent_claimers(url: str) -> None:
    with Ledger.open(url) as setup:
        start(setup)
        setup.enqueue("run-1", audience(3000), id_column="id", email_column="email", fields=[])
    claimed: list[list[int]] = [[], [], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def claimer(slot: int) -> None:
        try:
            with Ledger.open(url, migrate_schema=False) as mine:
                barrier.wait()
                while rows := mine.claim("run-1", 37):
                    claimed[slot].extend(r.id for r in rows)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    every = [i for part in claimed for i in part]
    assert len(every) == len(set(every)) == 3000


def test_claim_marks_sending_and_counts_attempts(ledger: Ledger) -> None:
    start(ledger)
    ledger.enqueue("run-1", audience(5), id_column="id", email_column="email", fields=[])
    rows = ledger.claim("run-1", 3)
    assert [r.attempts for r in rows] == [1, 1, 1]
    assert sorted(r.id for r in rows) == [r.id for r in rows] or len(rows) == 3
    assert ledger.status_counts("run-1") == {"sending": 3, "queued": 2}
    assert rows[0].first_attempt_at.tzinfo is not None


def test_record_writes_a_batch(ledger: Ledger) -> None:
    start(ledger)
    ledger.enqueue("run-1", audience(4), id_column="id", email_column="email", fields=[])
    rows = sorted(ledger.claim("run-1", 4), key=lambda r: r.id)
    tls = TLSEvidence(
        host="relay.example",
        ip="127.0.0.1",
        version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        bits=256,
        trust=Trust.VERIFIED,
    )
    later = now() + dt.timedelta(minutes=5)
    ledger.record(
        [
            Result(rows[0].id, Status.SENT, code=250, reply="ok", queue_id="Q1", tls=tls),
            Result(rows[1].id, Status.DEFERRED, code=451, reply="later", next_attempt_at=later),
            Result(rows[2].id, Status.BOUNCED, code=550, reply="no such user"),
            Result(rows[3].id, Status.BLOCKED, blocked_reason="dlp: ssn"),
        ]
    )
    got = {r["id"]: r for r in ledger.rows("run-1")}
    sent = got[rows[0].id]
    assert (sent["status"], sent["queue_id"], sent["tls_version"], sent["tls_bits"]) == (
        "sent",
        "Q1",
        "TLSv1.3",
        256,
    )
    assert (sent["tls_trust"], sent["tls_host"], sent["tls_ip"]) == (
        "verified",
        "relay.example",
        "127.0.0.1",
    )
    assert got[rows[1].id]["status"] == "deferred"
    assert got[rows[1].id]["next_attempt_at"] is not None
    assert (got[rows[2].id]["status"], got[rows[2].id]["last_code"]) == ("bounced", 550)
    assert got[rows[3].id]["blocked_reason"] == "dlp: ssn"
    assert ledger.tls_counts("run-1") == {"TLSv1.3": 1}


def test_resume_semantics_for_each_status(ledger: Ledger) -> None:
    start(ledger)
    ledger.enqueue("run-1", audience(7), id_column="id", email_column="email", fields=[])
    ledger.suppress(["nobody@example.org"], "test")
    rows = sorted(ledger.claim("run-1", 6), key=lambda r: r.id)
    soon = now() - dt.timedelta(seconds=1)
    later = now() + dt.timedelta(hours=1)
    ledger.record(
        [
            Result(rows[0].id, Status.SENT, code=250),
            Result(rows[1].id, Status.DEFERRED, code=451, next_attempt_at=soon),
            Result(rows[2].id, Status.DEFERRED, code=451, next_attempt_at=later),
            Result(rows[3].id, Status.BOUNCED, code=550),
            Result(rows[4].id, Status.FAILED, code=451),
        ]
    )
    # rows[5] stays `sending`: a crash left it in flight. Row 7 is still queued.
    assert ledger.recover("run-1", resend_unknown=False) == 1
    counts = ledger.status_counts("run-1")
    assert counts["unknown"] == 1 and "sending" not in counts
    due = {r.id for r in ledger.claim("run-1", 100)}
    queued_id = next(r["id"] for r in ledger.rows("run-1") if r["contact_id"] == "7")
    # due deferred and queued rows only: never sent, bounced, failed, unknown or not-yet-due
    assert due == {rows[1].id, queued_id}
    pending, earliest = ledger.next_due("run-1")
    assert pending == 3  # two sending again, one deferred for later
    assert earliest is not None and abs((earliest - later).total_seconds()) < 1


def test_recover_with_resend_requeues_unknown(ledger: Ledger) -> None:
    start(ledger)
    ledger.enqueue("run-1", audience(3), id_column="id", email_column="email", fields=[])
    ledger.claim("run-1", 2)
    assert ledger.recover("run-1", resend_unknown=True) == 2
    assert ledger.status_counts("run-1") == {"queued": 3}
    again = ledger.claim("run-1", 10)
    assert {r.attempts for r in again} == {1, 2}


def test_runs_unfinished_and_finished(ledger: Ledger) -> None:
    start(ledger, "a-1", "flu")
    assert ledger.unfinished_run("flu").run_id == "a-1"  # type: ignore[union-attr]
    ledger.finish_run("a-1")
    assert ledger.unfinished_run("flu") is None
    assert ledger.latest_run("flu").finished_at is not None  # type: ignore[union-attr]
    assert ledger.unfinished_run("other") is None


def test_expire_deferred(ledger: Ledger) -> None:
    start(ledger)
    ledger.enqueue("run-1", audience(2), id_column="id", email_column="email", fields=[])
    rows = ledger.claim("run-1", 2)
    ledger.record([Result(r.id, Status.DEFERRED, next_attempt_at=now()) for r in rows])
    assert (
        ledger.expire_deferred("run-1", now() + dt.timedelta(seconds=1), status=Status.FAILED) == 2
    )
    assert ledger.status_counts("run-1") == {"failed": 2}


def test_store_errors_are_blast_errors(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError):
        Ledger.open(f"sqlite:///{tmp_path / 'a-file' / 'blast.db'}")


def _hold_lock(url: str, shared: bool, ready: Any, release: Any) -> None:
    with (
        Ledger.open(url, migrate_schema=False) as ledger,
        ledger.campaign_lock("flu", shared=shared),
    ):
        ready.set()
        release.wait(20)


@pytest.mark.parametrize(
    ("held", "wanted", "blocked"), [(False, True, True), (True, True, False), (True, False, True)]
)
def test_campaign_lock_across_processes(url: str, held: bool, wanted: bool, blocked: bool) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    with Ledger.open(url) as ledger:
        holder = ctx.Process(target=_hold_lock, args=(url, held, ready, release))
        holder.start()
        try:
            assert ready.wait(20)
            if blocked:
                with (
                    pytest.raises(StoreError, match="another blast process"),
                    ledger.campaign_lock("flu", shared=wanted, wait=0.2),
                ):
                    pass
            else:
                with ledger.campaign_lock("flu", shared=wanted, wait=0.2):
                    pass
            with ledger.campaign_lock("other-campaign", wait=0.2):
                pass  # other campaigns are not affected
        finally:
            release.set()
            holder.join(20)
        # released when the holder is gone
        with ledger.campaign_lock("flu", wait=5) as lock:
            lock.downgrade()


def test_frozen_fields_round_trip_with_their_types() -> None:
    from blast.ledger import field_types, prepare_audience
    from blast.sender import FieldDecoder

    frame = pl.DataFrame(
        {
            "id": [2, 1],
            "email": ["b@example.org", "a@example.org"],
            "visit": [dt.date(2020, 1, 2), None],
            "seen": [dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC), None],
            "tags": [["flu", "copd"], []],
            "score": [1.5, None],
            "portal": [True, False],
        }
    )
    fields = ["visit", "seen", "tags", "score", "portal"]
    prepared = prepare_audience(frame, id_column="id", email_column="email", fields=fields)
    decode = FieldDecoder(field_types(dict(frame.schema), fields))
    values = [decode(text) for text in prepared["fields"]]
    assert prepared["contact_id"].to_list() == ["1", "2"]  # ordered by contact id
    assert values[1] == {
        "visit": dt.date(2020, 1, 2),
        "seen": dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC),
        "tags": ["flu", "copd"],
        "score": 1.5,
        "portal": True,
    }
    assert values[0] == {"visit": None, "seen": None, "tags": [], "score": None, "portal": False}


def test_report_counts_match_the_per_status_and_tls_queries(ledger: Ledger) -> None:
    """One grouped count per run, even when another run's rows sit inside its id range."""
    tls = TLSEvidence(host="relay.example", version="TLSv1.3", bits=256, trust=Trust.VERIFIED)
    start(ledger, "run-1")
    ledger.enqueue("run-1", audience(3), id_column="id", email_column="email", fields=[])
    start(ledger, "run-2")
    ledger.enqueue("run-2", audience(2), id_column="id", email_column="email", fields=[])
    ledger.enqueue(
        "run-1", audience(4, domain="b.example"), id_column="id", email_column="email", fields=[]
    )
    rows = sorted(ledger.claim("run-1", 5), key=lambda r: r.id)
    ledger.record(
        [
            Result(rows[0].id, Status.SENT, code=250, tls=tls),
            Result(rows[1].id, Status.SENT, code=250),
            Result(rows[2].id, Status.SENT, code=250, tls=tls),
            Result(rows[3].id, Status.BOUNCED, code=550, tls=tls),
        ]
    )  # rows[4] stays sending, two rows queued
    ledger.record([Result(r.id, Status.SENT, code=250) for r in ledger.claim("run-2", 1)])
    for run_id in ("run-1", "run-2", "run-3"):
        status, by_tls = ledger.report_counts(run_id)
        assert status == ledger.status_counts(run_id)
        assert by_tls == ledger.tls_counts(run_id)
    assert ledger.report_counts("run-1") == (
        {"sent": 3, "bounced": 1, "sending": 1, "queued": 2},
        {"TLSv1.3": 2, "none": 1},
    )
