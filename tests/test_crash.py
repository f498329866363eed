"""Crash safety: ``kill -9`` a real ``blast run`` mid-run, several times at random points, resume,
and check the ledger against what a real SMTP server received.

Under ``on_unknown: skip`` (at-most-once for rows in flight at a crash):

- no recipient is received twice;
- every row is ``sent`` or ``unknown`` in the end, and every ``sent`` row was received once;
- an ``unknown`` row was received at most once;
- each crash leaves at most ``in_flight`` rows in flight (they become ``unknown``).

Under ``on_unknown: resend`` every recipient is received at least once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from blast.errors import StoreError
from blast.ledger import Ledger
from tests.campaign_files import write_campaign
from tests.smtpserver import ServerTLS, SMTPTestServer

BLAST = str(Path(sys.executable).with_name("blast"))
IN_FLIGHT = 16  # over 4 connections: a window of 4 messages per connection


def _blast(campaign: Path, db: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [BLAST, "run", str(campaign), "--db", str(db), "--quiet", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "BLAST_DB": ""},
    )


def _in_flight(db: Path) -> set[int]:
    """Rows a killed run left ``sending``, once its orphaned workers are gone too (they hold
    the campaign's shared lock until they exit)."""
    if not db.exists():
        return set()
    try:
        with (
            Ledger.open(str(db), migrate_schema=False) as ledger,
            ledger.campaign_lock("trial", wait=10),
            ledger.engine.connect() as conn,
        ):
            sql = "SELECT id FROM deliveries WHERE status = 'sending'"
            return set(conn.exec_driver_sql(sql).scalars())
    except (sa.exc.OperationalError, StoreError):
        return set()  # killed before the schema or the run existed


def _kill_when(server: SMTPTestServer, proc: subprocess.Popen[bytes], received: int) -> bool:
    """SIGKILL ``proc`` once the server has received ``received`` messages; False if it ended."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if len(server.received) >= received:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return True
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("blast run made no progress")


def _crash_and_resume(
    tmp_path: Path, *, n: int, kills: int, on_unknown: str, seed: int, workers: list[str]
) -> tuple[SMTPTestServer, dict[str, dict[str, object]], list[set[int]]]:
    rng = random.Random(seed)
    server = SMTPTestServer(tls=ServerTLS.NONE, pipelining=True)
    with server.in_thread():
        transport = f"kind: relay\n  host: {server.host}\n  port: {server.port}\n  timeout: 5"
        campaign = write_campaign(
            tmp_path / "c",
            n=n,
            transport=transport,
            tls="none",
            on_unknown=on_unknown,
            concurrency=4,
            in_flight=IN_FLIGHT,
            batch_size=32,
            rate=2500,
        )
        db = tmp_path / "blast.db"
        in_flight: list[set[int]] = []
        for i in range(kills):
            target = len(server.received) + rng.randint(20, n // (kills + 1))
            proc = _blast(campaign, db, "--workers", workers[i % len(workers)])
            if not _kill_when(server, proc, target):
                break
            in_flight.append(_in_flight(db))
        final = _blast(campaign, db, "--workers", "1")
        _, err = final.communicate(timeout=60)
        assert final.returncode == 0, err.decode()
    with Ledger.open(str(db)) as ledger:
        run = ledger.latest_run("trial")
        assert run is not None and run.finished_at is not None
        rows = {str(r["address"]): r for r in ledger.rows(run.run_id)}
    return server, rows, in_flight


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_skip(tmp_path: Path) -> None:
    n = 1200
    server, rows, in_flight = _crash_and_resume(
        tmp_path, n=n, kills=4, on_unknown="skip", seed=int(time.time()), workers=["1", "2"]
    )
    assert len(in_flight) >= 2, "the runs finished before they could be killed"
    assert all(len(ids) <= IN_FLIGHT for ids in in_flight), in_flight
    received = Counter(rcpt for message in server.received for rcpt in message.rcpt_tos)
    assert max(received.values()) == 1, "a recipient was sent twice under on_unknown: skip"
    assert len(rows) == n
    statuses = Counter(str(r["status"]) for r in rows.values())
    assert set(statuses) <= {"sent", "unknown"}, statuses
    unknown = {int(str(r["id"])) for r in rows.values() if r["status"] == "unknown"}
    assert unknown == set().union(*in_flight)
    for address, row in rows.items():
        if row["status"] == "sent":
            assert received[address] == 1, address
        else:
            assert received[address] <= 1, address
    # the server got nothing the ledger does not know about
    assert set(received) <= set(rows)
    # ... and everything but the unknown rows was received
    assert sum(received.values()) >= n - statuses["unknown"]


@pytest.mark.slow
def test_kill_9_then_resume_resend_delivers_everyone(tmp_path: Path) -> None:
    n = 500
    server, rows, in_flight = _crash_and_resume(
        tmp_path, n=n, kills=2, on_unknown="resend", seed=7, workers=["1"]
    )
    received = Counter(rcpt for message in server.received for rcpt in message.rcpt_tos)
    assert set(received) == set(rows)
    assert Counter(str(r["status"]) for r in rows.values()) == Counter({"sent": n})
    # duplicates happen only for rows that were in flight at a crash
    assert sum(received.values()) - n <= sum(len(ids) for ids in in_flight)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_stops_gracefully_and_nothing_is_unknown(tmp_path: Path, workers: str) -> None:
    n = 400
    server = SMTPTestServer(tls=ServerTLS.NONE)
    with server.in_thread():
        transport = f"kind: relay\n  host: {server.host}\n  port: {server.port}\n  timeout: 5"
        campaign = write_campaign(
            tmp_path / "c", n=n, transport=transport, concurrency=4, in_flight=IN_FLIGHT, rate=800
        )
        db = tmp_path / "blast.db"
        proc = _blast(campaign, db, "--workers", workers)
        deadline = time.monotonic() + 30
        while len(server.received) < 40 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:  # pragma: no cover - a hang: leave nothing behind
                proc.kill()
        assert proc.returncode == 1, err.decode()
        assert b"stopped by a signal" in err
        assert _in_flight(db) == set()  # everything in flight was finished and recorded
        assert len(server.received) < n
        final = _blast(campaign, db, "--workers", "1")
        _, err = final.communicate(timeout=60)
        assert final.returncode == 0, err.decode()
    received = Counter(rcpt for message in server.received for rcpt in message.rcpt_tos)
    assert len(received) == n and set(received.values()) == {1}
    with Ledger.open(str(db)) as ledger:
        run = ledger.latest_run("trial")
        assert run is not None
        assert ledger.status_counts(run.run_id) == {"sent": n}
