"""SMTP faults through the relay transport: each maps to deferred or bounced, per message, and a
fault on one message never costs the others sharing its connection."""

from __future__ import annotations

import asyncio
import collections
import socket
import time

import pytest

from blast.config import TLSMode, TransportSpec
from blast.delivery import Message, Status
from blast.transports import RelayTransport
from tests.smtpserver import Faults, ServerTLS, SMTPTestServer

BOTH = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lock-step"])


def _message(n: int) -> Message:
    return Message(
        row_id=n,
        sender="news@clinic.test",
        recipient=f"p{n}@example.test",
        data=b"Subject: hi\r\n\r\nbody\r\n",
        message_id=f"m{n}@clinic.test",
    )


async def _send(server: SMTPTestServer, count: int, *, concurrency: int = 1, timeout: float = 5):
    spec = TransportSpec(
        host=server.host, port=server.port, ca_file=server.ca_file, timeout=timeout
    )
    relay = RelayTransport(spec, TLSMode.EXCLUSIVE, concurrency=concurrency)
    try:
        return await relay.send_many([_message(n) for n in range(count)])
    finally:
        await relay.aclose()


def _received(server: SMTPTestServer) -> list[str]:
    return [r.rcpt_tos[0] for r in server.received]


async def test_421_at_greeting_defers():
    async with SMTPTestServer(faults=Faults(greeting="421 4.3.2 too busy")) as server:
        (outcome,) = await _send(server, 1)
    assert outcome.status is Status.DEFERRED and outcome.code == 421
    assert not outcome.tls_failed
    assert server.received == []


async def test_next_message_reconnects_after_a_421_greeting():
    faults = Faults(greeting="421 4.3.2 too busy", greeting_times=1)
    async with SMTPTestServer(faults=faults) as server:
        spec = TransportSpec(host=server.host, port=server.port, ca_file=server.ca_file, timeout=5)
        relay = RelayTransport(spec, TLSMode.EXCLUSIVE)
        first = await relay.send(_message(1))
        second = await relay.send(_message(2))
        await relay.aclose()
    assert (first.status, second.status) == (Status.DEFERRED, Status.SENT)
    assert _received(server) == ["p2@example.test"]


@BOTH
@pytest.mark.parametrize(
    ("reply", "status"),
    [("451 4.3.0 mailbox busy", Status.DEFERRED), ("550 5.1.1 no such user", Status.BOUNCED)],
)
async def test_a_refused_recipient_does_not_fail_the_others(pipelining, reply, status):
    faults = Faults(rcpt={"p3@example.test": reply, "p7@example.test": reply})
    async with SMTPTestServer(faults=faults, pipelining=pipelining) as server:
        outcomes = await _send(server, 10)
    code = int(reply[:3])
    assert [(o.status, o.code) for o in outcomes] == [
        (status, code) if n in (3, 7) else (Status.SENT, 250) for n in range(10)
    ]
    assert _received(server) == [f"p{n}@example.test" for n in range(10) if n not in (3, 7)]
    assert server.connections == 1, "one connection: a refusal is not a reason to reconnect"


@BOTH
async def test_552_on_data_bounces_that_message_only(pipelining):
    faults = Faults(data={"p1@example.test": "552 5.3.4 message too big"})
    async with SMTPTestServer(faults=faults, pipelining=pipelining) as server:
        outcomes = await _send(server, 3)
    assert [o.status for o in outcomes] == [Status.SENT, Status.BOUNCED, Status.SENT]
    assert outcomes[1].code == 552
    assert server.connections == 1


@BOTH
async def test_disconnect_mid_data_defers_that_message_and_reconnects(pipelining):
    faults = Faults(disconnect_in_data=frozenset({"p2@example.test"}))
    async with SMTPTestServer(faults=faults, pipelining=pipelining) as server:
        outcomes = await _send(server, 5)
    assert [o.status for o in outcomes] == [
        Status.SENT,
        Status.SENT,
        Status.DEFERRED,
        Status.SENT,
        Status.SENT,
    ]
    assert "after the message data" in outcomes[2].reply
    assert _received(server) == [
        "p0@example.test",
        "p1@example.test",
        "p3@example.test",
        "p4@example.test",
    ]
    assert server.connections == 2


async def test_read_timeout_defers_within_the_timeout():
    async with SMTPTestServer(faults=Faults(data_delay=3.0)) as server:
        started = time.perf_counter()
        (outcome,) = await _send(server, 1, timeout=0.3)
        elapsed = time.perf_counter() - started
    assert outcome.status is Status.DEFERRED
    assert "timed out" in outcome.reply
    assert elapsed < 2.0


@BOTH
async def test_a_421_mid_session_reconnects_and_loses_nothing(pipelining):
    async with SMTPTestServer(faults=Faults(reply_421_after=2), pipelining=pipelining) as server:
        outcomes = await _send(server, 5)
    assert [o.status for o in outcomes] == [Status.SENT] * 5
    assert _received(server) == [f"p{n}@example.test" for n in range(5)]
    assert server.connections == 3


async def test_a_pooled_connection_the_server_dropped_is_replaced_transparently():
    async with SMTPTestServer(faults=Faults(close_after=1)) as server:
        spec = TransportSpec(host=server.host, port=server.port, ca_file=server.ca_file, timeout=5)
        relay = RelayTransport(spec, TLSMode.EXCLUSIVE)
        first = await relay.send(_message(1))
        await asyncio.sleep(0.05)  # the server hangs up on the idle pooled connection
        second = await relay.send(_message(2))
        await relay.aclose()
    assert (first.status, second.status) == (Status.SENT, Status.SENT)
    assert server.connections == 2


async def test_nothing_listening_defers_quickly():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        spec = TransportSpec(host="127.0.0.1", port=port, timeout=2)
        relay = RelayTransport(spec, TLSMode.FORCED)
        outcome = await relay.send(_message(1))
        await relay.aclose()
    assert outcome.status is Status.DEFERRED and "cannot connect" in outcome.reply
    assert not outcome.tls_failed


async def test_mixed_faults_over_a_pool_count_up():
    faults = Faults(
        rcpt={f"p{n}@example.test": "451 4.3.0 later" for n in range(0, 200, 7)}
        | {f"p{n}@example.test": "550 5.1.1 unknown" for n in range(3, 200, 11)},
        data={f"p{n}@example.test": "552 5.3.4 too big" for n in range(5, 200, 13)},
        disconnect_in_data=frozenset(f"p{n}@example.test" for n in range(1, 200, 17)),
        reply_421_after=25,
    )
    async with SMTPTestServer(tls=ServerTLS.GOOD, faults=faults) as server:
        outcomes = await _send(server, 200, concurrency=8)
    counts = collections.Counter(o.status for o in outcomes)
    assert sum(counts.values()) == 200
    assert counts[Status.SENT] == len(server.received)
    sent = {f"p{n}@example.test" for n, o in enumerate(outcomes) if o.status is Status.SENT}
    assert sent == set(_received(server)), "the server's record and the outcomes agree"
    assert len(server.received) == len(set(_received(server))), "nobody received twice"
    assert counts[Status.DEFERRED] and counts[Status.BOUNCED]
    assert 1 < server.connections <= 8 + 200 // 25 + 20


async def test_the_pool_never_exceeds_its_concurrency():
    async with SMTPTestServer(tls=ServerTLS.GOOD) as server:
        outcomes = await _send(server, 300, concurrency=6)
    assert {o.status for o in outcomes} == {Status.SENT}
    assert server.connections <= 6


async def test_a_421_to_every_mail_is_retried_once_then_deferred_with_its_code():
    async with SMTPTestServer(faults=Faults(reply_421_after=0)) as server:
        (outcome,) = await _send(server, 1)
    assert outcome.status is Status.DEFERRED and outcome.code == 421
    assert server.connections == 2 and server.received == []


@BOTH
async def test_an_address_that_could_inject_commands_is_blocked_before_any_byte(pipelining):
    evil = Message(
        row_id=99,
        sender="news@clinic.test",
        recipient="x@example.test>\r\nRCPT TO:<victim@example.test",
        data=b"Subject: hi\r\n\r\nbody\r\n",
        message_id="evil@clinic.test",
    )
    async with SMTPTestServer(pipelining=pipelining) as server:
        spec = TransportSpec(host=server.host, port=server.port, ca_file=server.ca_file, timeout=5)
        relay = RelayTransport(spec, TLSMode.EXCLUSIVE)
        outcomes = await relay.send_many([_message(1), evil, _message(2)])
        await relay.aclose()
    assert [o.status for o in outcomes] == [Status.SENT, Status.BLOCKED, Status.SENT]
    assert _received(server) == ["p1@example.test", "p2@example.test"]


def test_the_test_server_also_runs_in_a_thread_for_sync_tests_and_subprocesses():
    with SMTPTestServer(faults=Faults(rcpt={"p1@example.test": "550 5.1.1 no"})).in_thread() as s:
        outcomes = asyncio.run(_send(s, 3))
    assert [o.status for o in outcomes] == [Status.SENT, Status.BOUNCED, Status.SENT]
    assert _received(s) == ["p0@example.test", "p2@example.test"]
