"""RFC 2920 pipelining over aiosmtplib's protocol, and the lock-step fallback."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiosmtplib.errors import SMTPReadTimeoutError, SMTPServerDisconnected

from blast.config import TLSMode, TransportSpec
from blast.delivery import Message, Status
from blast.transports import RelayTransport
from blast.transports.smtp import PipeliningProtocol, queue_id_from, wire_data
from tests.smtpserver import Faults, LatencyProxy, ServerTLS, SMTPTestServer

TRICKY = (
    b"Subject: dots\r\n\r\n"
    b".starts with a dot\r\n"
    b"..two dots\r\n"
    b"middle . dot\r\n"
    b".\r\n"  # a line that is only a dot: must not end the message
    b"last line"  # no final CRLF
)


def _message(n: int, data: bytes = b"Subject: hi\r\n\r\nbody\r\n") -> Message:
    return Message(
        row_id=n,
        sender="news@clinic.test",
        recipient=f"p{n}@example.test",
        data=data,
        message_id=f"m{n}@clinic.test",
    )


# -- pure helpers -----------------------------------------------------------------------------


def test_wire_data_dot_stuffs_and_terminates():
    assert wire_data(TRICKY) == (
        b"Subject: dots\r\n\r\n"
        b"..starts with a dot\r\n"
        b"...two dots\r\n"
        b"middle . dot\r\n"
        b"..\r\n"
        b"last line\r\n"
        b".\r\n"
    )


def test_wire_data_normalises_bare_line_feeds_and_carriage_returns():
    assert wire_data(b"a\nb\rc\r\n.d") == b"a\r\nb\r\nc\r\n..d\r\n.\r\n"


def test_wire_data_leaves_clean_data_alone():
    data = b"Subject: x\r\n\r\nplain body\r\n"
    assert wire_data(data) == data + b".\r\n"


@pytest.mark.parametrize(
    ("reply", "queue_id"),
    [
        ("2.0.0 Ok: queued as 4ZxYk12abc", "4ZxYk12abc"),
        ("OK id=1tLx2a-0003Jk-Q1", "1tLx2a-0003Jk-Q1"),
        ("2.0.0 48AEbZ0b012345 Message accepted for delivery", "48AEbZ0b012345"),
        ("OK", None),
    ],
)
def test_queue_id_from_common_relays(reply, queue_id):
    assert queue_id_from(reply) == queue_id


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def get_extra_info(self, name, default=None):
        return default

    def is_closing(self) -> bool:
        return self.closing


async def test_protocol_keeps_every_reply_of_one_chunk():
    proto = PipeliningProtocol(asyncio.get_running_loop())
    proto.connection_made(_FakeTransport())
    proto.data_received(b"250 2.1.0 OK\r\n250-2.1.5 multi\r\n250 2.1.5 line\r\n354 go")
    proto.data_received(b" ahead\r\n")
    assert (await proto.read_response(1)).code == 250
    second = await proto.read_response(1)
    assert second.code == 250 and second.message == "2.1.5 multi\n2.1.5 line"
    assert await proto.read_response(1) == (354, "go ahead")


async def test_protocol_delivers_a_reply_that_arrives_while_waiting_and_times_out():
    proto = PipeliningProtocol(asyncio.get_running_loop())
    proto.connection_made(_FakeTransport())
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, proto.data_received, b"221 bye\r\n")
    assert (await proto.read_response(1)).code == 221
    with pytest.raises(SMTPReadTimeoutError):
        await proto.read_response(0.05)
    proto.connection_lost(None)
    with pytest.raises(SMTPServerDisconnected):
        await proto.read_response(1)


# -- against a real server --------------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lock-step"])
async def test_both_paths_deliver_every_message_byte_exact(pipelining):
    async with SMTPTestServer(tls=ServerTLS.GOOD, pipelining=pipelining) as server:
        spec = TransportSpec(host=server.host, port=server.port, ca_file=server.ca_file, timeout=5)
        relay = RelayTransport(spec, TLSMode.EXCLUSIVE, concurrency=1)
        outcomes = await relay.send_many([_message(n, TRICKY) for n in range(30)])
        await relay.aclose()
    assert [o.status for o in outcomes] == [Status.SENT] * 30
    assert [o.queue_id for o in outcomes] == [f"Q{n:06d}" for n in range(1, 31)]
    assert server.connections == 1
    assert [r.rcpt_tos for r in server.received] == [(f"p{n}@example.test",) for n in range(30)]
    assert {r.data for r in server.received} == {TRICKY + b"\r\n"}
    # The server saw RCPT and DATA already waiting behind MAIL only when pipelining was offered.
    assert all(r.pipelined for r in server.received) is pipelining
    assert any(r.pipelined for r in server.received) is pipelining


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lock-step"])
async def test_a_failed_transaction_is_reset_before_the_next(pipelining):
    faults = Faults(rcpt={"p1@example.test": "550 5.1.1 no such user"})
    async with SMTPTestServer(tls=ServerTLS.NONE, pipelining=pipelining, faults=faults) as server:
        spec = TransportSpec(host=server.host, port=server.port, timeout=5)
        relay = RelayTransport(spec, TLSMode.NONE, concurrency=1)
        outcomes = await relay.send_many([_message(n) for n in range(4)])
        await relay.aclose()
    assert [o.status for o in outcomes] == [Status.SENT, Status.BOUNCED, Status.SENT, Status.SENT]
    assert outcomes[1].code == 550
    assert [r.rcpt_tos[0] for r in server.received] == [
        "p0@example.test",
        "p2@example.test",
        "p3@example.test",
    ]
    assert server.connections == 1


async def _rate_through_latency(pipelining: bool, count: int) -> float:
    async with (
        SMTPTestServer(tls=ServerTLS.NONE, pipelining=pipelining) as server,
        LatencyProxy(server.port, delay=0.01) as proxy,
    ):
        spec = TransportSpec(host=server.host, port=proxy.port, timeout=5)
        relay = RelayTransport(spec, TLSMode.NONE, concurrency=1)
        await relay.send(_message(0))  # connection set up outside the timing
        started = time.perf_counter()
        outcomes = await relay.send_many([_message(n) for n in range(1, count + 1)])
        elapsed = time.perf_counter() - started
        await relay.aclose()
    assert {o.status for o in outcomes} == {Status.SENT}
    return count / elapsed


async def test_pipelining_saves_round_trips_over_a_20ms_link():
    pipelined = await _rate_through_latency(True, 40)
    lockstep = await _rate_through_latency(False, 10)
    # Lock-step costs 4 round trips a message (MAIL, RCPT, DATA, content): about 12/s at 20 ms.
    # Pipelined and chained, a busy connection needs about one: about 50/s.
    print(f"one connection, 20 ms RTT: pipelined {pipelined:.1f} msg/s, lock-step {lockstep:.1f}")
    assert lockstep < 14
    assert pipelined > 3 * lockstep


def test_an_unexpected_positive_reply_before_the_data_is_never_a_delivery():
    from aiosmtplib.response import SMTPResponse

    from blast.transports.smtp import refusal_outcome

    assert refusal_outcome(SMTPResponse(250, "OK"), None).status is Status.DEFERRED
    assert refusal_outcome(SMTPResponse(451, "later"), None).status is Status.DEFERRED
    assert refusal_outcome(SMTPResponse(550, "no"), None).status is Status.BOUNCED
    assert refusal_outcome(SMTPResponse(530, "auth first"), None).status is Status.DEFERRED


async def test_a_cancelled_batch_does_not_disturb_the_next():
    """send_many waits on one future per batch: cancelling it leaves the pool working."""
    async with SMTPTestServer(tls=ServerTLS.NONE) as server:
        spec = TransportSpec(host=server.host, port=server.port, timeout=5)
        relay = RelayTransport(spec, TLSMode.NONE, concurrency=2)
        first = asyncio.ensure_future(relay.send_many([_message(n) for n in range(6)]))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        outcomes = await relay.send_many([_message(n) for n in range(6, 10)])
        assert await relay.send_many([]) == []
        await relay.aclose()
    assert [o.status for o in outcomes] == [Status.SENT] * 4
    assert {f"p{n}@example.test" for n in range(6, 10)} <= {r.rcpt_tos[0] for r in server.received}
