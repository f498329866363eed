"""The relay transport: SMTP through one relay, under one of the four TLS modes.

A pool of up to ``concurrency`` connections, opened as demand grows and reused: each connection
is worked by one task that takes waiting messages from a shared queue and sends them back to back
(pipelined where the relay offers PIPELINING, see ``blast.transports.smtp``). A connection that
breaks, or answers 421, is replaced; a message whose content had not gone out yet when that
happened is retried once on the new connection, any other gets ``deferred``.

The TLS modes for the relay hop (DESIGN, "TLS modes"; a single host, so no next MX):

==============  ====================  ============================  ============================
mode            no STARTTLS offered   handshake fails               certificate invalid
==============  ====================  ============================  ============================
none            plaintext             not tried                     not checked
opportunistic   plaintext, logged     new plaintext connection      delivered, trust=untrusted
forced          deferred, tls_failed  deferred, tls_failed          deferred, tls_failed
exclusive       dropped_no_tls        dropped_no_tls                dropped_no_tls
==============  ====================  ============================  ============================

AUTH happens only over TLS with a verified certificate: never on plaintext, and not to a relay
whose certificate failed verification (opportunistic's untrusted session), since credentials
sent there could be anyone's. A ``sensitive`` message is never sent over a plaintext session
whatever the mode (``dropped_no_tls``); campaign validation refuses such campaigns earlier.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Mapping, Sequence

from blast.config import TLSMode, TransportSpec
from blast.delivery import Message, Outcome, Status, TLSEvidence, Trust
from blast.errors import ConfigError, DeliveryError
from blast.tls.policy import RULES, client_context
from blast.transports.smtp import Batch, Job, NoTLS, Session, TLSFailure, finish

__all__ = ["RelayTransport"]

log = logging.getLogger(__name__)


def _credentials(spec: TransportSpec, environ: Mapping[str, str]) -> tuple[str, str] | None:
    names = (spec.username_env, spec.password_env)
    if names == (None, None):
        return None
    if None in names:
        raise ConfigError("transport: username_env and password_env must be given together")
    for name in names:
        if name not in environ:
            raise ConfigError(f"transport: environment variable {name} is not set")
    return environ[names[0]], environ[names[1]]  # type: ignore[index]


def _helo_name(spec: TransportSpec) -> str | None:
    if spec.helo is None:
        return None
    try:
        spec.helo.encode("ascii")
    except UnicodeEncodeError:
        raise ConfigError("transport.helo: must be an ASCII host name") from None
    if not spec.helo or any(c.isspace() for c in spec.helo):
        raise ConfigError("transport.helo: must be a host name without spaces")
    return spec.helo


class RelayTransport:
    """Delivers through the relay ``spec.host:spec.port`` under TLS ``mode``.

    ``concurrency`` bounds the open connections. Credentials come from the environment variables
    ``spec.username_env`` / ``spec.password_env`` (read here, once). ``spec.ca_file`` replaces
    the system trust store for verifying the relay's certificate.
    """

    def __init__(
        self,
        spec: TransportSpec,
        mode: TLSMode,
        *,
        concurrency: int = 1,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not spec.host:
            raise ConfigError("transport.host: required for a relay")
        if concurrency < 1:
            raise ConfigError("sending.concurrency: must be at least 1")
        self.host = spec.host
        self.port = spec.port
        self.mode = mode
        self._rules = RULES[mode]
        self._timeout = spec.timeout
        self._helo = _helo_name(spec)
        self._credentials = _credentials(spec, os.environ if environ is None else environ)
        self._verified: ssl.SSLContext | None = None
        self._unverified: ssl.SSLContext | None = None
        if self._rules.try_tls:
            try:
                self._verified = client_context(verify=True, ca_file=spec.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"transport.ca_file: cannot load {spec.ca_file}: {exc}") from exc
            if self._rules.accept_untrusted:
                self._unverified = client_context(verify=False)
        self._concurrency = concurrency
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._workers: set[asyncio.Task[None]] = set()
        self._idle = 0
        self._closed = False
        self._no_tls_evidence = TLSEvidence(host=self.host)

    # -- the Transport interface --------------------------------------------------------------

    async def send(self, message: Message) -> Outcome:
        """Deliver one message over a pooled connection; concurrent calls share connections."""
        future = self._enqueue(message)
        return await future

    async def send_many(self, messages: Sequence[Message]) -> list[Outcome]:
        """Deliver a batch over the pool; one ``Outcome`` per message, in order."""
        if not messages:
            return []
        batch = Batch(asyncio.get_running_loop().create_future(), len(messages))
        for index, message in enumerate(messages):
            self._put(Job(message, None, batch=batch, index=index))
        return await batch.future

    async def aclose(self) -> None:
        """Say QUIT on every connection. Messages still waiting are answered ``deferred``."""
        self._closed = True
        closed = Outcome(status=Status.DEFERRED, reply="transport closed before sending", tls=None)
        while not self._queue.empty():
            finish(self._queue.get_nowait(), closed)
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    # -- the pool -----------------------------------------------------------------------------

    def _enqueue(self, message: Message) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._put(Job(message, future))
        return future

    def _put(self, job: Job) -> None:
        if self._closed:
            raise RuntimeError("RelayTransport used after aclose()")
        queue = self._queue
        queue.put_nowait(job)
        if self._idle < queue.qsize() and len(self._workers) < self._concurrency:
            task = asyncio.get_running_loop().create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def _more(self) -> Job | None:
        queue = self._queue
        return None if queue.empty() else queue.get_nowait()

    async def _next(self) -> Job:
        queue = self._queue
        if not queue.empty():
            return queue.get_nowait()
        self._idle += 1
        try:
            return await queue.get()
        finally:
            self._idle -= 1

    async def _work(self) -> None:
        """One connection's life: take messages, (re)connect as needed, deliver them."""
        session: Session | None = None
        job: Job | None = None
        on_hold: list[Job] = []
        try:
            while True:
                if job is None:
                    job = await self._next()
                if session is None or not session.usable:
                    if session is not None:
                        session.close()
                        session = None
                    try:
                        session = await self._open()
                    except DeliveryError as exc:
                        finish(job, self._failure(exc))
                        job = None
                        continue
                retry = await session.deliver(job, self._more, on_hold)
                on_hold.clear()
                job = None
                if retry is not None:
                    retry.attempts += 1
                    if retry.attempts <= 1:
                        job = retry  # once more, on a new connection
                    else:
                        finish(retry, retry.fail or self._failure(None))
        except asyncio.CancelledError:
            closed = Outcome(status=Status.DEFERRED, reply="transport closed mid-transaction")
            for held in (job, *on_hold):
                if held is not None:
                    finish(held, closed)
            raise
        except Exception:
            # A bug must not leave callers waiting forever; no message content is logged.
            log.exception("relay %s: connection worker failed", self.host)
            broken = Outcome(status=Status.DEFERRED, reply="internal error in the relay transport")
            for held in (job, *on_hold):
                if held is not None:
                    finish(held, broken)
        finally:
            if session is not None:
                session.quit()

    # -- opening a session under the mode's rules ---------------------------------------------

    async def _open(self) -> Session:
        if self._helo is None:
            self._helo = await asyncio.to_thread(socket.getfqdn) or "localhost"
        rules = self._rules
        if not rules.try_tls:
            return await self._session(None, Trust.NONE, plaintext_allowed=True)
        try:
            return await self._session(
                self._verified, Trust.VERIFIED, plaintext_allowed=rules.plaintext_fallback
            )
        except NoTLS as exc:
            if not rules.plaintext_fallback:
                raise
            reason = exc.failure
        if reason is TLSFailure.CERTIFICATE and self._unverified is not None:
            try:
                session = await self._session(
                    self._unverified, Trust.UNTRUSTED, plaintext_allowed=True, authenticate=False
                )
            except NoTLS as exc:
                reason = exc.failure
            else:
                log.warning("relay %s: certificate invalid; TLS session untrusted", self.host)
                return session
        log.warning("relay %s: %s; opportunistic mode sends in plaintext", self.host, reason.value)
        return await self._session(None, Trust.NONE, plaintext_allowed=True, authenticate=False)

    async def _session(
        self,
        context: ssl.SSLContext | None,
        trust: Trust,
        *,
        plaintext_allowed: bool,
        authenticate: bool = True,
    ) -> Session:
        session = await Session.open(
            self.host,
            self.port,
            helo=self._helo or "localhost",
            timeout=self._timeout,
            tls_context=context,
            trust=trust,
            credentials=self._credentials if authenticate else None,
            plaintext_allowed=plaintext_allowed,
            ask_requiretls=self._rules.ask_requiretls,
        )
        if context is not None and not session.encrypted:
            log.warning("relay %s: STARTTLS unavailable; opportunistic plaintext", self.host)
        return session

    def _failure(self, exc: DeliveryError | None) -> Outcome:
        """The outcome for a message whose session could not be opened."""
        if exc is None:
            return Outcome(status=Status.DEFERRED, reply="connection lost", tls=None)
        if isinstance(exc, NoTLS):
            return Outcome(
                status=self._rules.no_tls_status,
                code=exc.code,
                reply=str(exc),
                tls=exc.evidence or self._no_tls_evidence,
                tls_failed=True,
            )
        return Outcome(
            status=Status.DEFERRED, code=exc.code, reply=str(exc), tls=self._no_tls_evidence
        )
