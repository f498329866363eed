"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, port 0, trustme certificates, a recording
handler and fault injectors selected per test.

Importable by any test (``from tests.smtpserver import SMTPTestServer, ServerTLS, Faults``).

In an async test the server runs on the test's own event loop::

    faults = Faults(rcpt={"b@x.test": "451 4.3.0 later"})
    async with SMTPTestServer(tls=ServerTLS.GOOD, faults=faults) as s:
        spec = TransportSpec(host=s.host, port=s.port, ca_file=s.ca_file, timeout=2)
        ...
        assert s.received[0].tls_version == "TLSv1.3"

In a sync test, or while a ``blast`` subprocess talks to it, the server runs in its own thread::

    with SMTPTestServer(pipelining=False).in_thread() as s:
        subprocess.run(["blast", "run", ...], timeout=60)
        assert len(s.received) == 100

What it records:

- ``received``: one ``Received`` per accepted DATA: envelope, the bytes as stored (dot-stuffing
  undone), whether it arrived under TLS and which version, whether the session had
  authenticated, the MAIL parameters, and whether the client had already sent the following
  commands when MAIL arrived (``pipelined``: proof of RFC 2920 pipelining).
- ``refused``: the recipients it answered with a fault, and ``plaintext_auth_attempts`` /
  ``tls_auth_attempts`` (the server advertises AUTH even without TLS so a test can prove the
  client never uses it there).
- ``connections``: how many sessions were opened; ``ehlo_names``: the EHLO names it saw.

The certificate authorities are module constants: ``TRUSTED_CA`` signs every certificate except
the ``UNKNOWN_CA`` case; ``server.ca_file`` is a PEM file of ``TRUSTED_CA`` for the client's
``ca_file``. Every certificate names ``127.0.0.1`` and ``localhost`` except ``WRONG_NAME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import ssl
import tempfile
import threading
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = [
    "OTHER_CA",
    "TRUSTED_CA",
    "Faults",
    "LatencyProxy",
    "Received",
    "SMTPTestServer",
    "ServerTLS",
    "tls10_available",
]

HOST = "127.0.0.1"

TRUSTED_CA = trustme.CA()
OTHER_CA = trustme.CA()  # nobody trusts it: the "unknown CA" case


class ServerTLS(enum.Enum):
    """What the server does about STARTTLS."""

    NONE = "no STARTTLS offered"
    GOOD = "good certificate, TLS 1.2 or 1.3"
    TLS12 = "good certificate, TLS 1.2 only"
    TLS13 = "good certificate, TLS 1.3 only"
    TLS10 = "TLS 1.0/1.1 only"
    WRONG_NAME = "certificate for another name"
    EXPIRED = "expired certificate"
    UNKNOWN_CA = "certificate from an unknown CA"
    WEAK_CIPHER = "TLS 1.2 with only a non-forward-secret, non-AEAD cipher"
    REFUSE_454 = "STARTTLS offered, answered 454"
    GARBAGE = "220 to STARTTLS, then plaintext instead of a handshake"


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Misbehaviour to inject. Keys of the per-recipient maps are RCPT addresses, or ``"*"``."""

    greeting: str | None = (
        None  # a reply sent instead of the 220 greeting; then the server hangs up
    )
    greeting_times: int | None = None  # only the first N connections get it (None: all)
    rcpt: Mapping[str, str] = field(default_factory=dict)  # recipient -> reply to its RCPT
    data: Mapping[str, str] = field(default_factory=dict)  # recipient -> reply at end of DATA
    disconnect_in_data: frozenset[str] = frozenset()  # hang up instead of answering end of DATA
    data_delay: float = 0.0  # seconds to wait before answering end of DATA (read timeouts)
    close_after: int | None = None  # hang up silently after N messages on a connection
    reply_421_after: int | None = None  # answer "421" to the MAIL after N messages, then hang up


@dataclass(frozen=True, kw_only=True)
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool
    tls_version: str | None
    cipher: str | None
    authenticated: bool
    mail_options: tuple[str, ...]
    pipelined: bool
    ehlo_name: str | None


def tls10_available() -> bool:
    """Can this OpenSSL serve TLS 1.0 at all (with ``@SECLEVEL=0``)?"""
    try:
        _legacy_context()
    except (ValueError, ssl.SSLError):
        return False
    return True


def _legacy_context() -> ssl.SSLContext:
    """A server context speaking only TLS 1.0 and 1.1, as old appliances still do."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # OpenSSL 3 refuses TLS 1.0/1.1 at the default security level; level 0 allows it.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def _server_context(tls: ServerTLS) -> ssl.SSLContext | None:
    if tls is ServerTLS.NONE:
        return None
    names = ("127.0.0.1", "localhost")
    if tls is ServerTLS.WRONG_NAME:
        cert = TRUSTED_CA.issue_cert("relay.wrong-name.test")
    elif tls is ServerTLS.EXPIRED:
        now = dt.datetime.now(dt.UTC)
        cert = TRUSTED_CA.issue_cert(
            *names, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
        )
    elif tls is ServerTLS.UNKNOWN_CA:
        cert = OTHER_CA.issue_cert(*names)
    elif tls is ServerTLS.WEAK_CIPHER:
        cert = TRUSTED_CA.issue_cert(*names, key_type=trustme.KeyType.RSA)
    else:
        cert = TRUSTED_CA.issue_cert(*names)
    context = (
        _legacy_context() if tls is ServerTLS.TLS10 else ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    )
    cert.configure_cert(context)
    if tls is ServerTLS.TLS12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    elif tls is ServerTLS.TLS13:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    elif tls is ServerTLS.WEAK_CIPHER:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("AES128-SHA:@SECLEVEL=0")
    return context


class _Recorder:
    """The aiosmtpd handler: records what arrives and applies the per-recipient faults."""

    def __init__(self, owner: SMTPTestServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list[str]:
        session.host_name = hostname
        self.owner.ehlo_names.append(hostname)
        extra = []
        if self.owner.pipelining:
            extra.append("250-PIPELINING")
        if self.owner.requiretls and session.ssl is not None:
            extra.append("250-REQUIRETLS")
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        conn: _FaultySMTP = server  # type: ignore[assignment]
        faults = self.owner.faults
        if faults.reply_421_after is not None and conn.messages >= faults.reply_421_after:
            conn.hang_up_after_reply = True
            return "421 4.3.2 closing this connection"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        # Were RCPT and DATA already waiting behind this MAIL? Then the client pipelined.
        conn.pipelined = bool(server._reader._buffer)  # type: ignore[attr-defined]
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        reply = self.owner.faults.rcpt.get(address) or self.owner.faults.rcpt.get("*")
        if reply:
            self.owner.refused.append(address)
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        conn: _FaultySMTP = server  # type: ignore[assignment]
        faults = self.owner.faults
        rcpts = envelope.rcpt_tos
        if faults.data_delay:
            await asyncio.sleep(faults.data_delay)
        if "*" in faults.disconnect_in_data or faults.disconnect_in_data.intersection(rcpts):
            self.owner.refused.extend(rcpts)
            conn.hang_up_now()
            return "421 never seen"  # the transport is closed; this goes nowhere
        reply = next((faults.data[r] for r in rcpts if r in faults.data), faults.data.get("*"))
        if reply:
            self.owner.refused.extend(rcpts)
            return reply
        ssl_object = session.ssl.get("ssl_object") if session.ssl else None
        cipher = session.ssl.get("cipher") if session.ssl else None
        self.owner.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(rcpts),
                data=bytes(envelope.original_content or b""),
                tls=session.ssl is not None,
                tls_version=ssl_object.version() if ssl_object else None,
                cipher=cipher[0] if cipher else None,
                authenticated=bool(session.authenticated),
                mail_options=tuple(envelope.mail_options),
                pipelined=conn.pipelined,
                ehlo_name=session.host_name,
            )
        )
        conn.messages += 1
        if faults.close_after is not None and conn.messages >= faults.close_after:
            conn.hang_up_after_reply = True
        self.owner._queue_ids += 1
        return f"250 2.0.0 Ok: queued as Q{self.owner._queue_ids:06d}"


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP with the connection-level fault injectors."""

    def __init__(self, owner: SMTPTestServer, **kwargs: Any) -> None:
        super().__init__(_Recorder(owner), **kwargs)
        self.owner = owner
        self.messages = 0
        self.pipelined = False
        self.hang_up_after_reply = False

    def hang_up_now(self) -> None:
        transport = self._original_transport or self.transport
        if transport is not None:
            transport.abort()

    async def push(self, status: Any) -> None:
        await super().push(status)
        if self.hang_up_after_reply:
            self.hang_up_after_reply = False
            self.messages = 0
            self.hang_up_now()

    async def _handle_client(self) -> None:
        owner = self.owner
        owner.connections += 1
        faults = owner.faults
        if faults.greeting and (
            faults.greeting_times is None or owner.connections <= faults.greeting_times
        ):
            await self.push(faults.greeting)
            self.hang_up_now()
            return
        await super()._handle_client()

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.owner.tls is ServerTLS.REFUSE_454:
            await self.push("454 4.7.0 TLS not available due to temporary reason")
            return
        if self.owner.tls is ServerTLS.GARBAGE:
            await self.push("220 2.0.0 Ready to start TLS")
            assert self.transport is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader.read(5), 2)  # the ClientHello begins
            self.transport.write(b"HTTP/1.1 400 this is not a TLS handshake\r\n\r\n")
            await asyncio.sleep(0.2)
            self.hang_up_now()
            return
        await super().smtp_STARTTLS(arg)

    def _getparams(self, params: Any) -> Any:
        result = super()._getparams(params)
        if result is not None and self.owner.requiretls:
            result.pop("REQUIRETLS", None)
        return result


class SMTPTestServer:
    """One aiosmtpd server on 127.0.0.1:0 with the given TLS behaviour and faults.

    ``pipelining`` adds ``PIPELINING`` to EHLO (aiosmtpd does not advertise it by itself, though
    it reads pipelined commands correctly); ``requiretls`` advertises ``REQUIRETLS`` after TLS and
    accepts it on MAIL; ``credentials`` (user, password) enables AUTH PLAIN/LOGIN, advertised even
    on plaintext so that a test can catch a client using it there.
    """

    def __init__(
        self,
        *,
        tls: ServerTLS = ServerTLS.GOOD,
        faults: Faults | None = None,
        pipelining: bool = True,
        requiretls: bool = False,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.tls = tls
        self.faults = faults or Faults()
        self.pipelining = pipelining
        self.requiretls = requiretls
        self.credentials = credentials
        self.host = HOST
        self.port = 0
        self.received: list[Received] = []
        self.refused: list[str] = []
        self.ehlo_names: list[str] = []
        self.plaintext_auth_attempts = 0
        self.tls_auth_attempts = 0
        self.connections = 0
        self._queue_ids = 0
        self._context = _server_context(tls)
        self._server: asyncio.Server | None = None
        self._sessions: set[_FaultySMTP] = set()
        self._tmp = tempfile.TemporaryDirectory(prefix="blast-smtpserver-")
        self.ca_file = Path(self._tmp.name) / "ca.pem"
        TRUSTED_CA.cert_pem.write_to_path(str(self.ca_file))

    @property
    def plaintext_received(self) -> list[Received]:
        """Messages that arrived without TLS."""
        return [r for r in self.received if not r.tls]

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if session.ssl is None:
            self.plaintext_auth_attempts += 1
        else:
            self.tls_auth_attempts += 1
        ok = (
            isinstance(data, LoginPassword)
            and self.credentials is not None
            and (data.login.decode(), data.password.decode()) == self.credentials
        )
        return AuthResult(success=ok, handled=False)

    def _protocol(self) -> _FaultySMTP:
        kwargs: dict[str, Any] = {
            "hostname": "relay.test",
            "tls_context": self._context,
            "timeout": 10,
        }
        if self.credentials is not None:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        session = _FaultySMTP(self, **kwargs)
        self._sessions.add(session)
        return session

    async def start(self) -> SMTPTestServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for session in self._sessions:
                session.hang_up_now()
            await asyncio.sleep(0)
            self._server = None
        self._sessions.clear()
        self._tmp.cleanup()

    async def __aenter__(self) -> SMTPTestServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[SMTPTestServer]:
        """Run the server on its own event loop in a daemon thread (sync tests, subprocesses)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=run, name="smtp-test-server", daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the SMTP test server did not start")
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


@contextlib.asynccontextmanager
async def smtp_server(**kwargs: Any) -> AsyncIterator[SMTPTestServer]:
    """``async with smtp_server(tls=..., faults=...) as server``: shorthand for the class."""
    async with SMTPTestServer(**kwargs) as server:
        yield server


class LatencyProxy:
    """A TCP proxy on 127.0.0.1:0 that delays every chunk by ``delay`` seconds each way.

    ``async with LatencyProxy(server.port, delay=0.01) as proxy`` then dial ``proxy.port``: a
    20 ms round trip on loopback, to show what pipelining saves over a real network.
    """

    def __init__(self, target_port: int, *, delay: float, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await chunks.get()
                if not chunk:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = loop.create_task(deliver())
        try:
            while chunk := await reader.read(65536):
                chunks.put_nowait((loop.time() + self.delay, chunk))
        except ConnectionError:
            pass
        chunks.put_nowait((loop.time() + self.delay, b""))
        with contextlib.suppress(ConnectionError):
            await sender

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        task = asyncio.ensure_future(asyncio.gather(*pumps, return_exceptions=True))
        self._tasks.add(task)  # type: ignore[arg-type]
        await task

    async def __aenter__(self) -> LatencyProxy:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
