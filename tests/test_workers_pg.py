"""``--workers 3`` on the local PostgreSQL: three processes claim from one ledger with
``FOR UPDATE SKIP LOCKED`` and every recipient is received exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from blast.ledger import Ledger
from tests.campaign_files import write_campaign
from tests.pg import pg_url  # noqa: F401  (fixture)
from tests.smtpserver import ServerTLS, SMTPTestServer

BLAST = str(Path(sys.executable).with_name("blast"))


@pytest.mark.postgres
def test_three_workers_on_postgres_send_each_recipient_once(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    n = 900
    server = SMTPTestServer(tls=ServerTLS.NONE)
    with server.in_thread():
        transport = f"kind: relay\n  host: {server.host}\n  port: {server.port}\n  timeout: 5"
        campaign = write_campaign(
            tmp_path / "c", n=n, transport=transport, concurrency=30, batch_size=20
        )
        done = subprocess.run(
            [BLAST, "run", str(campaign), "--db", pg_url, "--workers", "3", "--json", "--quiet"],
            capture_output=True,
            timeout=90,
            env={**os.environ, "BLAST_DB": ""},
        )
        assert done.returncode == 0, done.stderr.decode()
    received = Counter(rcpt for message in server.received for rcpt in message.rcpt_tos)
    assert len(received) == n
    assert set(received.values()) == {1}
    with Ledger.open(pg_url) as ledger:
        run = ledger.latest_run("trial")
        assert run is not None and run.finished_at is not None
        rows = ledger.rows(run.run_id)
        assert Counter(r["status"] for r in rows) == Counter({"sent": n})
        assert {r["address"] for r in rows} == set(received)
        assert all(r["attempts"] == 1 for r in rows)
