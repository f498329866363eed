"""DESIGN's TLS table for the relay hop, against real servers that misbehave in every column.

For each server behaviour x each mode: the outcome's status and TLS evidence, what the server
recorded (did each DATA arrive under TLS, and which version), and that nothing ever arrives in
plaintext under forced or exclusive.
"""

from __future__ import annotations

import pytest

from blast.config import TLSMode, TransportSpec
from blast.delivery import Message, Status, Trust
from blast.transports import RelayTransport
from tests.smtpserver import ServerTLS, SMTPTestServer, tls10_available

SENT_PLAIN = "sent in plaintext"
SENT_UNTRUSTED = "sent over TLS, untrusted"
SENT_TLS12 = "sent over TLS 1.2, verified"
SENT_TLS13 = "sent over TLS 1.3, verified"
DEFERRED = "deferred, tls_failed"
DROPPED = "dropped_no_tls"

FAILURES = {TLSMode.FORCED: DEFERRED, TLSMode.EXCLUSIVE: DROPPED}
BROKEN_TLS = {TLSMode.NONE: SENT_PLAIN, TLSMode.OPPORTUNISTIC: SENT_PLAIN, **FAILURES}
BAD_CERT = {TLSMode.NONE: SENT_PLAIN, TLSMode.OPPORTUNISTIC: SENT_UNTRUSTED, **FAILURES}

EXPECTED: dict[ServerTLS, dict[TLSMode, str]] = {
    ServerTLS.NONE: BROKEN_TLS,
    ServerTLS.REFUSE_454: BROKEN_TLS,
    ServerTLS.GARBAGE: BROKEN_TLS,
    ServerTLS.TLS10: BROKEN_TLS,
    ServerTLS.WEAK_CIPHER: BROKEN_TLS,
    ServerTLS.WRONG_NAME: BAD_CERT,
    ServerTLS.EXPIRED: BAD_CERT,
    ServerTLS.UNKNOWN_CA: BAD_CERT,
    ServerTLS.TLS12: {
        TLSMode.NONE: SENT_PLAIN,
        TLSMode.OPPORTUNISTIC: SENT_TLS12,
        TLSMode.FORCED: SENT_TLS12,
        TLSMode.EXCLUSIVE: SENT_TLS12,
    },
    ServerTLS.TLS13: {
        TLSMode.NONE: SENT_PLAIN,
        TLSMode.OPPORTUNISTIC: SENT_TLS13,
        TLSMode.FORCED: SENT_TLS13,
        TLSMode.EXCLUSIVE: SENT_TLS13,
    },
}

CASES = [
    pytest.param(server_tls, mode, expected, id=f"{server_tls.name.lower()}-{mode.value}")
    for server_tls, row in EXPECTED.items()
    for mode, expected in row.items()
]


def _message(n: int, *, sensitive: bool = False) -> Message:
    return Message(
        row_id=n,
        sender="news@clinic.test",
        recipient=f"patient{n}@example.test",
        data=b"Subject: reminder\r\n\r\nYour appointment.\r\n",
        message_id=f"m{n}@clinic.test",
        sensitive=sensitive,
    )


def _spec(server: SMTPTestServer, **extra) -> TransportSpec:
    return TransportSpec(
        host=server.host, port=server.port, ca_file=server.ca_file, timeout=5, **extra
    )


def test_this_openssl_can_serve_tls10():
    # The TLS 1.0/1.1 rows are only meaningful if the test server really speaks TLS 1.0/1.1
    # (OpenSSL 3 needs @SECLEVEL=0 for it); tests/smtpserver.py configures exactly that.
    if not tls10_available():
        pytest.skip("this OpenSSL cannot serve TLS 1.0/1.1 at all; the TLS10 rows test refusal")


@pytest.mark.parametrize(("server_tls", "mode", "expected"), CASES)
async def test_tls_matrix(server_tls: ServerTLS, mode: TLSMode, expected: str):
    async with SMTPTestServer(tls=server_tls) as server:
        relay = RelayTransport(_spec(server), mode, concurrency=1)
        outcomes = await relay.send_many([_message(1), _message(2)])
        await relay.aclose()

    for outcome in outcomes:
        tls = outcome.tls
        assert tls is not None and tls.host == "127.0.0.1"
        if expected == DEFERRED:
            assert outcome.status is Status.DEFERRED and outcome.tls_failed
        elif expected == DROPPED:
            assert outcome.status is Status.DROPPED_NO_TLS and outcome.tls_failed
        else:
            assert outcome.status is Status.SENT, outcome
            assert not outcome.tls_failed
            assert outcome.queue_id is not None and tls.ip == "127.0.0.1"
        if expected in (DEFERRED, DROPPED, SENT_PLAIN):
            assert (tls.version, tls.cipher, tls.bits, tls.trust) == (None, None, None, Trust.NONE)
        else:
            assert tls.version == ("TLSv1.2" if expected == SENT_TLS12 else "TLSv1.3")
            assert tls.cipher and tls.bits and tls.bits >= 128
            assert tls.trust is (Trust.UNTRUSTED if expected == SENT_UNTRUSTED else Trust.VERIFIED)

    if expected in (DEFERRED, DROPPED):
        assert server.received == []
    else:
        assert len(server.received) == 2
        for received, outcome in zip(server.received, outcomes, strict=True):
            assert received.tls is (expected != SENT_PLAIN)
            assert received.tls_version == outcome.tls.version
            assert received.cipher == outcome.tls.cipher
    if mode in (TLSMode.FORCED, TLSMode.EXCLUSIVE):
        assert server.plaintext_received == []


@pytest.mark.parametrize("mode", [TLSMode.FORCED, TLSMode.EXCLUSIVE])
async def test_requiretls_is_asked_for_when_offered(mode):
    async with SMTPTestServer(tls=ServerTLS.GOOD, requiretls=True) as server:
        relay = RelayTransport(_spec(server), mode)
        outcome = await relay.send(_message(1))
        await relay.aclose()
    assert outcome.status is Status.SENT
    assert "REQUIRETLS" in server.received[0].mail_options


async def test_opportunistic_does_not_ask_for_requiretls():
    async with SMTPTestServer(tls=ServerTLS.GOOD, requiretls=True) as server:
        relay = RelayTransport(_spec(server), TLSMode.OPPORTUNISTIC)
        await relay.send(_message(1))
        await relay.aclose()
    assert "REQUIRETLS" not in server.received[0].mail_options


AUTH_ENV = {"RELAY_USER": "blast", "RELAY_PASSWORD": "s3cret"}


@pytest.mark.parametrize(
    ("server_tls", "mode", "authenticated"),
    [
        (ServerTLS.GOOD, TLSMode.EXCLUSIVE, True),
        (ServerTLS.GOOD, TLSMode.OPPORTUNISTIC, True),
        (ServerTLS.GOOD, TLSMode.NONE, False),  # plaintext: never AUTH
        (ServerTLS.NONE, TLSMode.OPPORTUNISTIC, False),
        (ServerTLS.REFUSE_454, TLSMode.OPPORTUNISTIC, False),
        (ServerTLS.GARBAGE, TLSMode.OPPORTUNISTIC, False),
        (ServerTLS.UNKNOWN_CA, TLSMode.OPPORTUNISTIC, False),  # not to an unverified relay
    ],
)
async def test_auth_only_over_verified_tls(server_tls, mode, authenticated):
    async with SMTPTestServer(tls=server_tls, credentials=("blast", "s3cret")) as server:
        spec = _spec(server, username_env="RELAY_USER", password_env="RELAY_PASSWORD")
        relay = RelayTransport(spec, mode, environ=AUTH_ENV)
        outcome = await relay.send(_message(1))
        await relay.aclose()
    assert outcome.status is Status.SENT
    assert server.plaintext_auth_attempts == 0
    assert server.received[0].authenticated is authenticated
    assert server.tls_auth_attempts == (1 if authenticated else 0)


async def test_wrong_credentials_defer_rather_than_bounce():
    async with SMTPTestServer(tls=ServerTLS.GOOD, credentials=("blast", "right")) as server:
        spec = _spec(server, username_env="RELAY_USER", password_env="RELAY_PASSWORD")
        relay = RelayTransport(spec, TLSMode.EXCLUSIVE, environ=AUTH_ENV)
        outcome = await relay.send(_message(1))
        await relay.aclose()
    assert outcome.status is Status.DEFERRED and outcome.code == 535
    assert "s3cret" not in outcome.reply and server.received == []


@pytest.mark.parametrize("server_tls", [ServerTLS.NONE, ServerTLS.GARBAGE])
@pytest.mark.parametrize("mode", [TLSMode.NONE, TLSMode.OPPORTUNISTIC])
async def test_a_sensitive_message_never_goes_out_in_plaintext(server_tls, mode):
    async with SMTPTestServer(tls=server_tls) as server:
        relay = RelayTransport(_spec(server), mode)
        sensitive, ordinary = await relay.send_many([_message(1, sensitive=True), _message(2)])
        await relay.aclose()
    assert sensitive.status is Status.DROPPED_NO_TLS and sensitive.tls_failed
    assert ordinary.status is Status.SENT
    assert [r.rcpt_tos for r in server.received] == [("patient2@example.test",)]


async def test_helo_name_is_the_configured_one():
    async with SMTPTestServer(tls=ServerTLS.GOOD) as server:
        relay = RelayTransport(_spec(server, helo="mailer.clinic.test"), TLSMode.EXCLUSIVE)
        await relay.send(_message(1))
        await relay.aclose()
    assert server.ehlo_names == ["mailer.clinic.test", "mailer.clinic.test"]  # before/after TLS
