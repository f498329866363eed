"""Ledger and sender-pool overhead per message, on SQLite and on PostgreSQL.

    .venv/bin/python bench/ledger.py [--rows 200000] [--batch 200] [--pg URL] [--no-pg]

Two figures per database:

- claim + record: ``Ledger.claim`` batches (``queued`` -> ``sending``, committed) and
  ``Ledger.record`` batches (one transaction each) over a fresh run of ``--rows`` rows, as the
  pool calls them (claiming past the highest id it holds). Goal: well under 50 us per message.
- pool: the whole ``SenderPool`` (claims, queue, per-message bookkeeping, batched records) with a
  renderer and a transport that do nothing, so only blast's own sending machinery is measured.

PostgreSQL runs in a throw-away schema of the given database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from blast.delivery import Message, Outcome, Status, TLSEvidence, Trust
from blast.ledger import Ledger, Result
from blast.sender import PoolSettings, RetryPolicy, SenderPool, install_uvloop

TLS = TLSEvidence(
    host="relay.example",
    ip="127.0.0.1",
    version="TLSv1.3",
    cipher="TLS_AES_256_GCM_SHA384",
    bits=256,
    trust=Trust.VERIFIED,
)
OK = Outcome(status=Status.SENT, code=250, reply="2.0.0 Ok: queued as ABC", queue_id="ABC", tls=TLS)


class NullRenderer:
    def render(self, *, row_id: int, recipient: str, context: object) -> Message:
        return Message(row_id=row_id, sender="a@b.example", recipient=recipient, data=b"x",
                       message_id="m@b.example")  # fmt: skip


class NullTransport:
    async def send(self, message: Message) -> Outcome:
        return OK

    async def send_many(self, messages: list[Message]) -> list[Outcome]:
        return [OK for _ in messages]

    async def aclose(self) -> None:
        pass


@contextmanager
def database(kind: str, pg: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{Path(folder) / 'bench.db'}"
        return
    schema = "blast_bench_" + uuid.uuid4().hex[:8]
    engine = sa.create_engine(pg)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{pg}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


def fresh_run(url: str, rows: int) -> Ledger:
    ledger = Ledger.open(url)
    ledger.start_run(run_id="r", campaign="bench", segment_hash="s", template_hash="t",
                     settings={})  # fmt: skip
    frame = pl.DataFrame(
        {
            "id": range(rows),
            "email": [f"patient{i}@clinic{i % 50}.example" for i in range(rows)],
            "first_name": ["Ana"] * rows,
            "last_visit": ["2026-03-01"] * rows,
        }
    )
    ledger.enqueue("r", frame, id_column="id", email_column="email",
                   fields=["first_name", "last_visit"])  # fmt: skip
    return ledger


def claim_record(url: str, rows: int, batch: int) -> str:
    with fresh_run(url, rows) as ledger:
        claim = record = 0.0
        after = done = 0
        cpu = time.process_time()
        while True:
            t0 = time.perf_counter()
            got = ledger.claim("r", batch, after_id=after) or ledger.claim("r", batch)
            t1 = time.perf_counter()
            if not got:
                break
            after = max(after, *(r.id for r in got))
            ledger.record([Result(r.id, Status.SENT, code=250, reply=OK.reply, queue_id="ABC",
                                  tls=TLS) for r in got])  # fmt: skip
            record += time.perf_counter() - t1
            claim += t1 - t0
            done += len(got)
        cpu = time.process_time() - cpu
        assert ledger.status_counts("r") == {"sent": rows}
    us = 1e6 / done
    return (f"claim {claim * us:.1f} + record {record * us:.1f} = "
            f"{(claim + record) * us:.1f} us/msg wall ({cpu * us:.1f} us client CPU)")  # fmt: skip


def pool(url: str, rows: int, batch: int) -> str:
    with fresh_run(url, rows) as ledger:
        settings = PoolSettings(concurrency=200, batch_size=batch, per_domain_connections=200)
        sender = SenderPool(ledger, "r", renderer=NullRenderer(), transport=NullTransport(),
                            settings=settings, retry=RetryPolicy(window=3600))  # fmt: skip
        cpu, wall = time.process_time(), time.perf_counter()
        asyncio.run(sender.run())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert ledger.status_counts("r") == {"sent": rows}
    return (f"{rows / wall:,.0f} msg/s, {wall / rows * 1e6:.1f} us/msg wall, "
            f"{cpu / rows * 1e6:.1f} us/msg CPU")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    install_uvloop()
    print(f"rows {args.rows:,}, batch {args.batch}, load average {os.getloadavg()[0]:.2f}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    for kind in ("sqlite", *(() if args.no_pg else ("postgresql",))):
        with database(kind, args.pg) as url:
            print(f"{kind:10} ledger claim+record: {claim_record(url, args.rows, args.batch)}")
        with database(kind, args.pg) as url:
            print(
                f"{kind:10} sender pool (null render/transport): {pool(url, args.rows, args.batch)}"
            )


if __name__ == "__main__":
    main()
