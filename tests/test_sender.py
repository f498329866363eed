"""The sender pool against the in-memory transport and a SQLite ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
import mailbox
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import tenacity

from blast.delivery import Message, Outcome, Status, TLSEvidence, Trust
from blast.errors import BlockedMessage
from blast.ledger import Ledger
from blast.sender import FieldDecoder, PoolSettings, RetryPolicy, SenderPool
from blast.transports import MemoryTransport, OutboxTransport

TLS = TLSEvidence(
    host="relay", ip="127.0.0.1", version="TLSv1.3", cipher="X", bits=256, trust=Trust.VERIFIED
)


class StubRenderer:
    """Renders a tiny message from the frozen fields; blocks recipients named 'blocked'."""

    def __init__(self) -> None:
        self.contexts: list[Mapping[str, Any]] = []

    def render(self, *, row_id: int, recipient: str, context: Mapping[str, Any]) -> Message:
        self.contexts.append(context)
        if recipient.startswith("blocked"):
            raise BlockedMessage("dlp: ssn")
        body = f"Subject: hi {context.get('first_name')}\r\n\r\nhello\r\n".encode()
        return Message(
            row_id=row_id,
            sender="news@example.org",
            recipient=recipient,
            data=body,
            message_id=f"{row_id}@example.org",
        )


def make_ledger(tmp_path: Path, addresses: Sequence[str]) -> Ledger:
    ledger = Ledger.open(str(tmp_path / "blast.db"))
    ledger.start_run(run_id="r", campaign="c", segment_hash="s", template_hash="t", settings={})
    frame = pl.DataFrame(
        {
            "id": list(range(1, len(addresses) + 1)),
            "email": list(addresses),
            "first_name": [f"N{i}" for i in range(len(addresses))],
            "birth": [dt.date(1950, 1, 2)] * len(addresses),
        }
    )
    ledger.enqueue("r", frame, id_column="id", email_column="email", fields=["first_name", "birth"])
    return ledger


def pool(
    ledger: Ledger,
    transport: Any,
    *,
    settings: PoolSettings | None = None,
    retry: RetryPolicy | None = None,
    fallback: Any = None,
    renderer: Any = None,
) -> SenderPool:
    return SenderPool(
        ledger,
        "r",
        renderer=renderer or StubRenderer(),
        transport=transport,
        settings=settings or PoolSettings(concurrency=10, batch_size=20, linger=5),
        retry=retry or RetryPolicy(window=3600, wait=tenacity.wait_fixed(0.05)),
        decoder=FieldDecoder({"birth": "date"}),
        fallback=fallback,
    )


async def test_sends_every_row_once_and_records_in_batches(tmp_path: Path) -> None:
    addresses = [f"u{i}@d{i % 7}.example" for i in range(500)]
    ledger = make_ledger(tmp_path, addresses)
    transport = MemoryTransport()
    calls: list[int] = []
    record = ledger.record
    ledger.record = lambda results, **kw: (calls.append(len(results)), record(results, **kw))[1]  # type: ignore[method-assign]
    renderer = StubRenderer()
    stats = await pool(
        ledger, transport, renderer=renderer, settings=PoolSettings(concurrency=50, batch_size=100)
    ).run()
    assert sorted(m.recipient for m in transport.messages) == sorted(addresses)
    assert stats.status == Counter({"sent": 500})
    assert ledger.status_counts("r") == {"sent": 500}
    assert len(calls) < 100, "outcomes must be written in batches"
    # frozen fields come back typed
    assert renderer.contexts[0]["birth"] == dt.date(1950, 1, 2)


async def test_sending_rows_never_exceed_concurrency(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, [f"u{i}@example.org" for i in range(120)])
    seen: list[int] = []

    def handler(message: Message) -> Outcome:
        seen.append(ledger.status_counts("r").get("sending", 0))
        return Outcome(status=Status.SENT, code=250, tls=TLS)

    await pool(
        ledger, MemoryTransport(handler), settings=PoolSettings(concurrency=8, batch_size=50)
    ).run()
    assert max(seen) <= 8
    assert ledger.status_counts("r") == {"sent": 120}


async def test_the_window_of_messages_in_flight_can_exceed_the_connections(
    tmp_path: Path,
) -> None:
    ledger = make_ledger(tmp_path, [f"u{i}@example.org" for i in range(200)])
    seen: list[int] = []

    def handler(message: Message) -> Outcome:
        seen.append(ledger.status_counts("r").get("sending", 0))
        return Outcome(status=Status.SENT, code=250, tls=TLS)

    settings = PoolSettings(concurrency=2, in_flight=24, per_domain_connections=2, batch_size=50)
    await pool(ledger, MemoryTransport(handler), settings=settings).run()
    # More rows than connections are claimed at once (the pipelining window), never more than
    # in_flight; and a per-domain limit equal to the connections does not bind.
    assert 2 < max(seen) <= 24
    assert ledger.status_counts("r") == {"sent": 200}


async def test_temporary_failure_is_retried_then_sent(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, ["a@example.org", "b@example.org"])
    attempts: Counter[str] = Counter()

    def handler(message: Message) -> Outcome:
        attempts[message.recipient] += 1
        if message.recipient == "a@example.org" and attempts[message.recipient] < 3:
            return Outcome(status=Status.DEFERRED, code=451, reply="4.3.0 try later")
        return Outcome(status=Status.SENT, code=250, queue_id="Q", tls=TLS)

    await pool(ledger, MemoryTransport(handler)).run()
    assert attempts == Counter({"a@example.org": 3, "b@example.org": 1})
    rows = {r["address"]: r for r in ledger.rows("r")}
    assert rows["a@example.org"]["status"] == "sent"
    assert rows["a@example.org"]["attempts"] == 3


async def test_retry_window_closed_means_failed(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, ["a@example.org"])
    transport = MemoryTransport(lambda m: Outcome(status=Status.DEFERRED, code=421))
    await pool(
        ledger, transport, retry=RetryPolicy(window=0.3, wait=tenacity.wait_fixed(0.1))
    ).run()
    row = ledger.rows("r")[0]
    assert row["status"] == "failed"
    assert 2 <= row["attempts"] <= 4
    assert row["last_code"] == 421


async def test_forced_tls_failure_goes_to_fallback_outbox(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, ["a@example.org", "b@example.org"])

    def handler(message: Message) -> Outcome:
        if message.recipient == "a@example.org":
            return Outcome(
                status=Status.DEFERRED, code=454, reply="TLS not available", tls_failed=True
            )
        return Outcome(status=Status.DEFERRED, code=451, reply="later")

    outbox = OutboxTransport(tmp_path / "fallback")
    await pool(
        ledger,
        MemoryTransport(handler),
        retry=RetryPolicy(window=0, wait=tenacity.wait_fixed(1)),
        fallback=outbox,
    ).run()
    rows = {r["address"]: r for r in ledger.rows("r")}
    assert rows["a@example.org"]["status"] == "fallback"
    assert rows["b@example.org"]["status"] == "failed"
    kept = list(mailbox.Maildir(tmp_path / "fallback", create=False))
    assert len(kept) == 1 and kept[0]["Delivered-To"] == "a@example.org"


async def test_bounce_block_and_drop_are_final(tmp_path: Path) -> None:
    ledger = make_ledger(
        tmp_path, ["bounce@example.org", "blocked@example.org", "drop@example.org"]
    )

    def handler(message: Message) -> Outcome:
        if message.recipient.startswith("bounce"):
            return Outcome(status=Status.BOUNCED, code=550, reply="5.1.1 no such user")
        return Outcome(status=Status.DROPPED_NO_TLS, reply="no STARTTLS")

    transport = MemoryTransport(handler)
    await pool(ledger, transport).run()
    rows = {r["address"]: r for r in ledger.rows("r")}
    assert rows["bounce@example.org"]["status"] == "bounced"
    assert rows["bounce@example.org"]["last_code"] == 550
    assert rows["blocked@example.org"]["status"] == "blocked"
    assert rows["blocked@example.org"]["blocked_reason"] == "dlp: ssn"
    assert rows["drop@example.org"]["status"] == "dropped_no_tls"
    assert len(transport.messages) == 2  # the blocked one never reached the transport


async def test_transport_exception_is_a_deferral(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, ["a@example.org"])

    def handler(message: Message) -> Outcome:
        raise ConnectionResetError("boom")

    await pool(ledger, MemoryTransport(handler), retry=RetryPolicy(window=0)).run()
    row = ledger.rows("r")[0]
    assert row["status"] == "failed"
    assert row["last_reply"] == "transport error: ConnectionResetError"


async def test_rate_limit(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, [f"u{i}@example.org" for i in range(30)])
    started = time.perf_counter()
    await pool(
        ledger, MemoryTransport(), settings=PoolSettings(concurrency=10, rate_per_second=100)
    ).run()
    assert time.perf_counter() - started >= 0.28


class SlowTransport:
    """Holds each message a little and tracks how many are in flight per domain."""

    def __init__(self) -> None:
        self.in_flight: Counter[str] = Counter()
        self.peak: defaultdict[str, int] = defaultdict(int)

    async def send(self, message: Message) -> Outcome:
        domain = message.recipient.rpartition("@")[2]
        self.in_flight[domain] += 1
        self.peak[domain] = max(self.peak[domain], self.in_flight[domain])
        await asyncio.sleep(0.005)
        self.in_flight[domain] -= 1
        return Outcome(status=Status.SENT, code=250, tls=TLS)

    async def send_many(self, messages: Sequence[Message]) -> list[Outcome]:
        return [await self.send(m) for m in messages]

    async def aclose(self) -> None:
        pass


async def test_per_domain_connection_limit(tmp_path: Path) -> None:
    addresses = [f"u{i}@big.example" for i in range(60)] + [f"v{i}@small.example" for i in range(5)]
    ledger = make_ledger(tmp_path, addresses)
    transport = SlowTransport()
    await pool(
        ledger,
        transport,
        settings=PoolSettings(concurrency=40, per_domain_connections=3, batch_size=40),
    ).run()
    assert transport.peak["big.example"] == 3
    assert ledger.status_counts("r") == {"sent": 65}


async def test_per_domain_limit_scales_with_the_window_per_connection(tmp_path: Path) -> None:
    addresses = [f"u{i}@big.example" for i in range(120)] + [
        f"v{i}@small.example" for i in range(5)
    ]
    ledger = make_ledger(tmp_path, addresses)
    transport = SlowTransport()
    # 10 connections, 40 messages in flight: 4 per connection, so 2 connections' share is 8.
    settings = PoolSettings(concurrency=10, in_flight=40, per_domain_connections=2, batch_size=40)
    await pool(ledger, transport, settings=settings).run()
    assert transport.peak["big.example"] == 8
    assert ledger.status_counts("r") == {"sent": 125}


async def test_limit_sends_only_that_many(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, [f"u{i}@example.org" for i in range(50)])
    transport = MemoryTransport()
    await pool(ledger, transport, settings=PoolSettings(concurrency=7, limit=12)).run()
    assert len(transport.messages) == 12
    assert ledger.status_counts("r") == {"sent": 12, "queued": 38}


async def test_deferred_beyond_linger_is_left_for_later(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, ["a@example.org"])
    transport = MemoryTransport(lambda m: Outcome(status=Status.DEFERRED, code=451))
    started = time.perf_counter()
    await pool(
        ledger,
        transport,
        settings=PoolSettings(linger=1),
        retry=RetryPolicy(window=3600, wait=tenacity.wait_fixed(600)),
    ).run()
    assert time.perf_counter() - started < 2
    assert ledger.status_counts("r") == {"deferred": 1}


def test_retry_policy_uses_tenacity_backoff() -> None:
    policy = RetryPolicy(window=3600, wait=tenacity.wait_exponential(multiplier=60, max=1800))
    first = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    delays = [
        (policy.next_attempt(n, first, first) - first).total_seconds()  # type: ignore[operator]
        for n in (1, 2, 3)
    ]
    assert delays == [60, 120, 240]
    # the window closes: no retry scheduled past it
    late = first + dt.timedelta(minutes=50)
    assert policy.next_attempt(6, first, late) is None
    assert RetryPolicy.for_hours(24).window == 86400


@pytest.mark.parametrize("bad", ["not-a-date", None])
def test_field_decoder_keeps_unparseable_values(bad: Any) -> None:
    decode = FieldDecoder({"d": "date"})
    assert decode('{"d": "2020-02-03", "n": 1}') == {"d": dt.date(2020, 2, 3), "n": 1}
    assert (
        decode(f'{{"d": {"null" if bad is None else repr(bad).replace(chr(39), chr(34))}}}')["d"]
        == bad
    )
