"""One SMTP client session over aiosmtplib's protocol, with RFC 2920 pipelining.

aiosmtplib's ``SMTP`` client sends commands in lock-step, and its protocol drops reply bytes that
arrive while no command is waiting, so pipelined replies would be lost. ``PipeliningProtocol``
subclasses aiosmtplib's ``SMTPProtocol`` and only changes how replies are collected: every reply
that arrives is parsed (by aiosmtplib's own parser) into a queue, and ``read_response`` takes the
next one. Everything else is aiosmtplib's: the connection, writes, STARTTLS upgrade, ESMTP
extension parsing, AUTH encodings, error types.

``Session`` drives one connection: greeting, EHLO, STARTTLS under the caller's ``SSLContext``,
AUTH, then ``deliver`` for messages. With PIPELINING advertised, a message costs one round trip
for MAIL + RCPT + DATA and one for the content; while more messages are waiting, the next
message's MAIL + RCPT + DATA ride in the same write as the previous message's content, so a
busy connection needs about one round trip per message. Without PIPELINING it falls back to
lock-step. After a failed transaction the next write starts with RSET.

Failures while setting a session up raise blast's own errors (``TemporaryFailure``, ``TLSRequired``
subclasses carrying the stage); once a session is up, partial failure is data: one ``Outcome``
per message.
"""

from __future__ import annotations

import asyncio
import enum
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

from aiosmtplib.auth import auth_login_encode, auth_plain_encode
from aiosmtplib.errors import (
    SMTPReadTimeoutError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.esmtp import parse_esmtp_extensions
from aiosmtplib.protocol import (
    MAX_RESPONSE_LENGTH,
    PERIOD_REGEX,
    SMTPProtocol,
    normalize_message_line_endings,
)
from aiosmtplib.response import SMTPResponse

from blast.delivery import Message, Outcome, Status, TLSEvidence, Trust
from blast.errors import DeliveryError, TemporaryFailure, TLSRequired
from blast.tls.policy import evidence, negotiated_problem

__all__ = [
    "Job",
    "NoTLS",
    "PipeliningProtocol",
    "Session",
    "TLSFailure",
    "finish",
    "outcome_for_reply",
    "queue_id_from",
    "refusal_outcome",
    "wire_data",
]

# Replies about our session rather than the recipient (authentication, encryption required):
# retrying later, after an operator fixes the relay settings, is right; bouncing is not.
_SESSION_CODES = frozenset({530, 534, 535, 538})
_REPLY_LIMIT = 300  # characters of a reply kept in an Outcome
_UNSAFE_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")
_QUEUE_ID = re.compile(
    r"queued as ([A-Za-z0-9._-]+)"  # Postfix, aiosmtpd-based sinks
    r"|\bid=([A-Za-z0-9._-]+)"  # Exim
    r"|([A-Za-z0-9._-]{6,}) [Mm]essage accepted"  # Sendmail
)


class TLSFailure(enum.Enum):
    """Why TLS could not be had on a hop (the columns of DESIGN's TLS table)."""

    NOT_OFFERED = "STARTTLS not offered"
    REFUSED = "STARTTLS refused"
    HANDSHAKE = "TLS handshake failed"
    CERTIFICATE = "certificate invalid"
    WEAK = "negotiated TLS below policy"


class NoTLS(TLSRequired):
    """TLS could not be established; ``failure`` says at which stage."""

    def __init__(self, message: str, *, failure: TLSFailure, code: int | None = None) -> None:
        super().__init__(message, code=code)
        self.failure = failure
        self.evidence: TLSEvidence | None = None  # host and IP of the session that failed


# ---------------------------------------------------------------------------------------------
# Pure helpers


def wire_data(data: bytes) -> bytes:
    """The bytes to send after ``354``: CRLF line endings, dot-stuffed, ending ``CRLF.CRLF``."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf or not data.endswith(b"\r\n"):
        data = normalize_message_line_endings(data)
    # Every LF now follows a CR, so a line starting with "." shows as CRLF "." (or at the very
    # start): the three-byte needle lets bytes.find skip ahead faster than b"\n." would.
    if data.startswith(b".") or b"\r\n." in data:
        data = PERIOD_REGEX.sub(b"..", data)
    return data + b".\r\n"


def queue_id_from(reply: str) -> str | None:
    """The next hop's queue id from its ``250`` reply to the end of DATA, when it names one."""
    match = _QUEUE_ID.search(reply)
    if match is None:
        return None
    return next(group for group in match.groups() if group)


def outcome_for_reply(reply: SMTPResponse, tls: TLSEvidence | None) -> Outcome:
    """Map one final SMTP reply to an ``Outcome``: 2xx sent, 4xx deferred, 5xx bounced."""
    code = reply.code
    text = reply.message[:_REPLY_LIMIT]
    if 200 <= code < 300:
        return Outcome(
            status=Status.SENT, code=code, reply=text, queue_id=queue_id_from(text), tls=tls
        )
    if code >= 500 and code not in _SESSION_CODES:
        return Outcome(status=Status.BOUNCED, code=code, reply=text, tls=tls)
    return Outcome(status=Status.DEFERRED, code=code, reply=text, tls=tls)


def refusal_outcome(reply: SMTPResponse, tls: TLSEvidence | None) -> Outcome:
    """The outcome for a reply that ended a transaction before the content went out.

    A 2xx/3xx here (say ``250`` to DATA) is a protocol error, never a delivery: deferred.
    """
    if reply.code < 400:
        return Outcome(
            status=Status.DEFERRED,
            code=reply.code,
            reply=f"unexpected reply before the message data: {reply.message[:_REPLY_LIMIT]}",
            tls=tls,
        )
    return outcome_for_reply(reply, tls)


def _unsafe(address: str) -> bool:
    return _UNSAFE_ADDRESS.search(address) is not None


# ---------------------------------------------------------------------------------------------
# Bytes


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(SMTPReadTimeoutError("Timed out waiting for server response"))


class PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol, keeping every reply that arrives in order (RFC 2920)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._replies: deque[SMTPResponse | BaseException] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._response_waiter = None  # created by read_response when it has to wait

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        while True:
            reply: SMTPResponse | BaseException | None
            try:
                reply = self._read_response_from_buffer()
            except SMTPResponseException as exc:  # malformed reply: the session is unusable
                reply = exc
                del self._buffer[:]
            if reply is None:
                break
            waiter = self._response_waiter
            if waiter is not None and not waiter.done():
                if isinstance(reply, BaseException):
                    self._set_response_exception(waiter, reply)
                else:
                    waiter.set_result(reply)
            else:
                self._replies.append(reply)
        if len(self._buffer) > MAX_RESPONSE_LENGTH:
            del self._buffer[:]
            self._replies.append(SMTPResponseException(-1, "Response too long"))

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        """The next reply, waiting at most ``timeout`` seconds for it."""
        if self._replies:
            reply = self._replies.popleft()
            if isinstance(reply, BaseException):
                raise reply
            return reply
        if self.transport is None:
            raise SMTPServerDisconnected("Connection lost")
        waiter = self._response_waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _expire, waiter) if timeout else None
        try:
            return await waiter
        finally:
            self._response_waiter = None
            if timer is not None:
                timer.cancel()

    async def start_tls(self, *args: Any, **kwargs: Any) -> SMTPResponse:
        try:
            return await super().start_tls(*args, **kwargs)
        finally:
            # RFC 3207 4.2: nothing the server sent before the handshake may be believed after it.
            self._replies.clear()
            del self._buffer[:]

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if self._paused:
            await self._drain_helper()


# ---------------------------------------------------------------------------------------------
# The session


class Batch:
    """The outcomes of one ``send_many`` call: a single future for the whole batch, resolved
    once every job in it is finished (no future, callback or gather per message)."""

    __slots__ = ("future", "left", "outcomes")

    def __init__(self, future: asyncio.Future[list[Outcome]], size: int) -> None:
        self.future = future
        self.left = size
        self.outcomes: list[Outcome | None] = [None] * size


class Job:
    """One message waiting for its outcome; ``fail`` is the outcome if it is not retried.

    The outcome goes to ``future``, or to slot ``index`` of ``batch`` when the job is part of
    one."""

    __slots__ = ("attempts", "batch", "fail", "future", "index", "message")

    def __init__(
        self,
        message: Message,
        future: asyncio.Future[Outcome] | None,
        *,
        batch: Batch | None = None,
        index: int = 0,
    ) -> None:
        self.message = message
        self.future = future
        self.batch = batch
        self.index = index
        self.attempts = 0
        self.fail: Outcome | None = None


def finish(job: Job, outcome: Outcome) -> None:
    """Hand a job its outcome (once), unless its caller has gone (cancelled)."""
    batch = job.batch
    if batch is None:
        if job.future is not None and not job.future.done():
            job.future.set_result(outcome)
        return
    if batch.outcomes[job.index] is None:
        batch.outcomes[job.index] = outcome
        batch.left -= 1
        if not batch.left and not batch.future.done():
            batch.future.set_result(batch.outcomes)  # type: ignore[arg-type]  # all set now


class Session:
    """One open SMTP connection, ready for MAIL. Build with ``await Session.open(...)``."""

    __slots__ = (
        "eightbit",
        "encrypted",
        "evidence",
        "extensions",
        "host",
        "needs_rset",
        "pipelining",
        "proto",
        "requiretls",
        "smtputf8",
        "timeout",
        "usable",
    )

    def __init__(self, proto: PipeliningProtocol, host: str, timeout: float) -> None:
        self.proto = proto
        self.host = host
        self.timeout = timeout
        self.usable = True
        self.needs_rset = False
        self.encrypted = False
        self.extensions: dict[str, str] = {}
        self.pipelining = False
        self.requiretls = False
        self.eightbit = False
        self.smtputf8 = False
        self.evidence = TLSEvidence(host=host)

    # -- setting up ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        helo: str,
        timeout: float,
        tls_context: ssl.SSLContext | None,
        trust: Trust = Trust.VERIFIED,
        credentials: tuple[str, str] | None = None,
        plaintext_allowed: bool = False,
        ask_requiretls: bool = False,
    ) -> Session:
        """Connect, read the greeting, EHLO, STARTTLS under ``tls_context`` (when given), AUTH.

        Raises ``NoTLS`` when ``tls_context`` is given and TLS cannot be had, unless
        ``plaintext_allowed`` and the session is still usable in plaintext (STARTTLS not offered
        or refused with a reply), in which case the session continues without TLS and without
        AUTH. Raises ``TemporaryFailure`` for anything else that stops the session.
        """
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await asyncio.wait_for(
                loop.create_connection(lambda: PipeliningProtocol(loop), host, port), timeout
            )
        except (OSError, TimeoutError) as exc:
            raise TemporaryFailure(f"{host}:{port}: cannot connect ({type(exc).__name__})") from exc
        session = cls(proto, host, timeout)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else None
        session.evidence = evidence(host, ip)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await session._setup(
                helo=helo,
                ip=ip,
                tls_context=tls_context,
                trust=trust,
                credentials=credentials,
                plaintext_allowed=plaintext_allowed,
                ask_requiretls=ask_requiretls,
            )
        except NoTLS as exc:
            session.close()
            exc.evidence = session.evidence
            raise
        except BaseException:
            session.close()
            raise
        return session

    async def _command(self, *parts: bytes) -> SMTPResponse:
        self.proto.write(b" ".join(parts) + b"\r\n")
        return await self.proto.read_response(self.timeout)

    async def _ehlo(self, helo: str) -> None:
        reply = await self._command(b"EHLO", helo.encode("idna"))
        if reply.code != 250:
            reply = await self._command(b"HELO", helo.encode("idna"))
            if reply.code != 250:
                raise TemporaryFailure(f"{self.host}: HELO refused", code=reply.code)
            self.extensions = {}
            return
        self.extensions, _ = parse_esmtp_extensions(reply.message)

    async def _setup(
        self,
        *,
        helo: str,
        ip: str | None,
        tls_context: ssl.SSLContext | None,
        trust: Trust,
        credentials: tuple[str, str] | None,
        plaintext_allowed: bool,
        ask_requiretls: bool,
    ) -> None:
        host = self.host
        try:
            greeting = await self.proto.read_response(self.timeout)
            if greeting.code != 220:
                raise TemporaryFailure(
                    f"{host}: greeting {greeting.code} {greeting.message[:80]}", code=greeting.code
                )
            await self._ehlo(helo)
        except DeliveryError:
            raise
        except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException, OSError) as exc:
            raise TemporaryFailure(f"{host}: session setup failed ({type(exc).__name__})") from exc

        if tls_context is not None:
            if "starttls" not in self.extensions:
                if not plaintext_allowed:
                    raise NoTLS(f"{host}: STARTTLS not offered", failure=TLSFailure.NOT_OFFERED)
            else:
                await self._starttls(tls_context, helo, ip, trust, plaintext_allowed)

        if credentials is not None and self.encrypted:
            await self._auth(*credentials)  # never on plaintext

        self.pipelining = "pipelining" in self.extensions
        self.requiretls = ask_requiretls and self.encrypted and "requiretls" in self.extensions
        self.eightbit = "8bitmime" in self.extensions
        self.smtputf8 = "smtputf8" in self.extensions

    async def _starttls(
        self,
        context: ssl.SSLContext,
        helo: str,
        ip: str | None,
        trust: Trust,
        plaintext_allowed: bool,
    ) -> None:
        host = self.host
        proto = self.proto
        try:
            await proto.start_tls(context, server_hostname=host, timeout=self.timeout)
        except SMTPResponseException as exc:
            if plaintext_allowed and proto.is_connected:
                return  # refused with a reply: the plaintext session goes on (opportunistic)
            raise NoTLS(
                f"{host}: STARTTLS refused with {exc.code}",
                failure=TLSFailure.REFUSED,
                code=exc.code,
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise NoTLS(
                f"{host}: certificate invalid ({exc.verify_message})",
                failure=TLSFailure.CERTIFICATE,
            ) from exc
        except (SMTPServerDisconnected, SMTPTimeoutError, ssl.SSLError, OSError) as exc:
            # aiosmtplib reports a peer that only speaks TLS 1.0/1.1 as a disconnect: by stage,
            # anything that goes wrong here is a failed handshake.
            raise NoTLS(
                f"{host}: TLS handshake failed ({type(exc).__name__})",
                failure=TLSFailure.HANDSHAKE,
            ) from exc
        ssl_object = proto.transport.get_extra_info("ssl_object") if proto.transport else None
        version = ssl_object.version() if ssl_object else None
        cipher = ssl_object.cipher() if ssl_object else None
        problem = negotiated_problem(version, cipher)
        if problem is not None:
            raise NoTLS(f"{host}: {problem}", failure=TLSFailure.WEAK)
        self.encrypted = True
        self.evidence = evidence(host, ip, version, cipher, trust)
        try:
            await self._ehlo(helo)  # RFC 3207: forget what was said before TLS; ask again
        except DeliveryError:
            raise
        except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException, OSError) as exc:
            raise TemporaryFailure(f"{host}: EHLO after STARTTLS failed") from exc

    async def _auth(self, username: str, password: str) -> None:
        methods = self.extensions.get("auth", "").upper().split()
        try:
            if "PLAIN" in methods:
                reply = await self._command(
                    b"AUTH", b"PLAIN", auth_plain_encode(username, password)
                )
            elif "LOGIN" in methods:
                user, secret = auth_login_encode(username, password)
                reply = await self._command(b"AUTH", b"LOGIN", user)
                if reply.code == 334:
                    reply = await self._command(secret)
            else:
                raise TemporaryFailure(f"{self.host}: no AUTH PLAIN or LOGIN offered after TLS")
        except DeliveryError:
            raise
        except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException, OSError) as exc:
            raise TemporaryFailure(f"{self.host}: AUTH failed ({type(exc).__name__})") from exc
        if reply.code != 235:
            raise TemporaryFailure(f"{self.host}: authentication failed", code=reply.code)

    # -- sending ------------------------------------------------------------------------------

    def _envelope(self, message: Message) -> bytes | Outcome:
        """MAIL + RCPT + DATA for one message, or the outcome refusing it before any byte."""
        sender, recipient = message.sender, message.recipient
        if _unsafe(sender) or _unsafe(recipient):
            return Outcome(
                status=Status.BLOCKED,
                reply="envelope address contains a control character, space or angle bracket",
                tls=self.evidence,
            )
        if message.sensitive and not self.encrypted:
            return Outcome(
                status=Status.DROPPED_NO_TLS,
                reply="sensitive message not sent over a plaintext session",
                tls=self.evidence,
                tls_failed=True,
            )
        params = b""
        if not (sender.isascii() and recipient.isascii()):
            if not self.smtputf8:
                return Outcome(
                    status=Status.BOUNCED,
                    reply="non-ASCII address and the relay does not offer SMTPUTF8",
                    tls=self.evidence,
                )
            params += b" SMTPUTF8"
        if self.eightbit and not message.data.isascii():
            params += b" BODY=8BITMIME"
        if self.requiretls:
            params += b" REQUIRETLS"
        head = b"RSET\r\n" if self.needs_rset else b""
        return (
            head
            + b"MAIL FROM:<"
            + sender.encode()
            + b">"
            + params
            + b"\r\nRCPT TO:<"
            + recipient.encode()
            + b">\r\nDATA\r\n"
        )

    def _lost(self, job: Job, reason: str, code: int | None = None) -> None:
        """The connection broke before ``job``'s content went out: the caller may retry it."""
        self.close()
        job.fail = Outcome(status=Status.DEFERRED, code=code, reply=reason, tls=self.evidence)

    def _lost_after_data(self, job: Job, on_hold: list[Job]) -> None:
        """The connection broke after ``job``'s content went out: the next hop may have it."""
        self.close()
        finish(
            job,
            Outcome(
                status=Status.DEFERRED,
                reply="connection lost or timed out after the message data",
                tls=self.evidence,
            ),
        )
        on_hold.remove(job)

    async def deliver(
        self, job: Job, more: Callable[[], Job | None], on_hold: list[Job]
    ) -> Job | None:
        """Send ``job`` and then whatever ``more()`` hands out, while the session lasts.

        Every job handed in gets its outcome through ``finish``, except at most one returned:
        the connection broke before that job's content was sent, so it is safe to retry it on
        another connection (its ``fail`` says what happened). ``on_hold`` lists the jobs this
        call holds unresolved at any moment, so that a cancelled caller can resolve them.
        """
        if self.pipelining:
            return await self._deliver_pipelined(job, more, on_hold)
        return await self._deliver_lockstep(job, more, on_hold)

    def _first(self, job: Job, more: Callable[[], Job | None]) -> tuple[Job, bytes] | None:
        """The first job from ``job`` onwards that has an envelope, and that envelope."""
        current: Job | None = job
        while current is not None:
            envelope = self._envelope(current.message)
            if isinstance(envelope, bytes):
                return current, envelope
            finish(current, envelope)
            current = more()
        return None

    async def _deliver_pipelined(
        self, job: Job, more: Callable[[], Job | None], on_hold: list[Job]
    ) -> Job | None:
        proto = self.proto
        read = proto.read_response
        timeout = self.timeout
        first = self._first(job, more)
        if first is None:
            return None
        current, envelope = first
        if not self._write_envelope(current, envelope, on_hold):
            return current
        while True:
            expected = 4 if self.needs_rset else 3  # [RSET] MAIL RCPT DATA
            replies: list[SMTPResponse] = []
            try:
                while len(replies) < expected:
                    reply = await read(timeout)
                    if reply.code == 421:  # closing: the server may hang up before the rest
                        self._lost(current, "421 service closing", 421)
                        return current
                    replies.append(reply)
            except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException) as exc:
                self._lost(current, f"{type(exc).__name__} before DATA")
                return current
            mail, rcpt, data = replies[-3:]
            nxt: Job | None = None
            if mail.code == 250 and rcpt.code in (250, 251) and data.code == 354:
                self.needs_rset = False
                first = self._first_chained(more)
                payload = wire_data(current.message.data)
                if first is not None:
                    nxt, next_envelope = first
                    on_hold.append(nxt)
                    payload += next_envelope
                try:
                    proto.write(payload)
                    await proto.drain()
                    final = await read(timeout)
                except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException, OSError):
                    self._lost_after_data(current, on_hold)
                    if nxt is not None:
                        self._lost(nxt, "connection lost")
                    return nxt
                finish(current, outcome_for_reply(final, self.evidence))
                on_hold.remove(current)
                if final.code == 421:
                    self.close()
                    if nxt is not None:
                        self._lost(nxt, "421 service closing", 421)
                    return nxt
            else:
                if data.code == 354:
                    self.needs_rset = False
                    # A server that accepts DATA with no valid recipient gets an empty message,
                    # which it must refuse (RFC 2920 3.1).
                    try:
                        proto.write(b".\r\n")
                        await read(timeout)
                    except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException):
                        self.close()
                else:
                    self.needs_rset = mail.code == 250
                failed = mail if mail.code != 250 else rcpt if rcpt.code not in (250, 251) else data
                finish(current, refusal_outcome(failed, self.evidence))
                on_hold.remove(current)
                if not self.usable:
                    return None
                first = self._first_chained(more)
                if first is not None:
                    nxt, next_envelope = first
                    if not self._write_envelope(nxt, next_envelope, on_hold):
                        return nxt
            if nxt is None:
                return None
            current = nxt

    def _write_envelope(self, job: Job, envelope: bytes, on_hold: list[Job]) -> bool:
        """Put ``job`` on hold and write its envelope; False (``job`` safe to retry) if the
        connection is already gone."""
        on_hold.append(job)
        try:
            self.proto.write(envelope)
        except SMTPServerDisconnected:
            self._lost(job, "connection lost")
            return False
        return True

    def _first_chained(self, more: Callable[[], Job | None]) -> tuple[Job, bytes] | None:
        job = more()
        return None if job is None else self._first(job, more)

    async def _deliver_lockstep(
        self, job: Job, more: Callable[[], Job | None], on_hold: list[Job]
    ) -> Job | None:
        proto = self.proto
        timeout = self.timeout
        current: Job | None = job
        while current is not None:
            envelope = self._envelope(current.message)
            if not isinstance(envelope, bytes):
                finish(current, envelope)
                current = more()
                continue
            on_hold.append(current)
            commands = envelope.split(b"\r\n")[:-1]
            replies: list[SMTPResponse] = []
            try:
                for command in commands:
                    proto.write(command + b"\r\n")
                    reply = await proto.read_response(timeout)
                    if reply.code == 421:
                        self._lost(current, "421 service closing", 421)
                        return current
                    replies.append(reply)
                    if command != b"RSET" and reply.code not in (250, 251, 354):
                        break
            except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException) as exc:
                self._lost(current, f"{type(exc).__name__} before DATA")
                return current
            last = replies[-1]
            if last.code != 354:
                # MAIL was accepted unless it is the one that failed: then RSET before the next.
                self.needs_rset = len(replies) - (1 if self.needs_rset else 0) > 1
                finish(current, refusal_outcome(last, self.evidence))
            else:
                self.needs_rset = False
                try:
                    proto.write(wire_data(current.message.data))
                    await proto.drain()
                    final = await proto.read_response(timeout)
                except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException, OSError):
                    self._lost_after_data(current, on_hold)
                    return None
                finish(current, outcome_for_reply(final, self.evidence))
                if final.code == 421:
                    self.close()
            on_hold.remove(current)
            if not self.usable:
                return None
            current = more()
        return None

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the connection now (no QUIT): used when the session is broken or desynced."""
        self.usable = False
        transport = self.proto.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def quit(self) -> None:
        """Say QUIT without waiting for the reply, and close."""
        if self.usable and self.proto.is_connected:
            try:
                self.proto.write(b"QUIT\r\n")
            except (SMTPServerDisconnected, RuntimeError):
                pass
        self.close()
