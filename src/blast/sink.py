"""``blast sink``: a local capture SMTP server for demos and trials (like Mailpit, smaller).

aiosmtpd with PIPELINING advertised and, with ``tls``, STARTTLS on a certificate generated at
start by trustme. The generated CA is written to ``ca_out`` so a campaign's ``transport.ca_file``
can verify the sink the way it verifies a real relay. Messages go to a Maildir (stdlib
``mailbox``, with ``Return-Path``/``Delivered-To`` headers for the envelope) or are only
counted. Runs until SIGTERM or SIGINT, then prints what it received per TLS version.

Nothing about a message's content is printed or logged: only counts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import mailbox
import signal
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from blast.errors import ConfigError

__all__ = ["SinkStats", "run_sink", "serve_sink"]


@dataclass
class SinkStats:
    """What the sink received: messages, and how many arrived per TLS version."""

    messages: int = 0
    recipients: int = 0
    tls: collections.Counter[str] = field(default_factory=collections.Counter)

    def summary(self) -> str:
        parts = ", ".join(f"{version} {count}" for version, count in sorted(self.tls.items()))
        return f"received {self.messages} messages for {self.recipients} recipients ({parts})"


class _SinkHandler:
    def __init__(self, stats: SinkStats, maildir: mailbox.Maildir | None) -> None:
        self.stats = stats
        self.maildir = maildir

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        ssl_object = session.ssl.get("ssl_object") if session.ssl else None
        version = ssl_object.version() if ssl_object else "plaintext"
        stats = self.stats
        stats.messages += 1
        stats.recipients += len(envelope.rcpt_tos)
        stats.tls[version] += 1
        key = f"S{stats.messages:08d}"
        if self.maildir is not None:
            content = envelope.original_content or b""
            head = (
                b"Return-Path: <" + (envelope.mail_from or "").encode() + b">\n"
                b"Delivered-To: " + ", ".join(envelope.rcpt_tos).encode() + b"\n"
            )
            key = self.maildir.add(head + content.replace(b"\r\n", b"\n"))
        return f"250 2.0.0 Ok: queued as {key}"


def _tls_context(host: str, ca_out: Path | None) -> ssl.SSLContext:
    import trustme

    ca = trustme.CA(organization_name="blast sink")
    names = dict.fromkeys([host, "localhost", "127.0.0.1"])
    cert = ca.issue_cert(*names)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert.configure_cert(context)
    if ca_out is not None:
        try:
            ca_out.parent.mkdir(parents=True, exist_ok=True)
            ca.cert_pem.write_to_path(str(ca_out))
        except OSError as exc:
            raise ConfigError(f"--ca-out: cannot write {ca_out}: {exc.strerror}") from exc
    return context


async def serve_sink(
    *,
    host: str = "127.0.0.1",
    port: int = 2525,
    tls: bool = False,
    maildir: Path | None = None,
    ca_out: Path | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> SinkStats:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None); return the stats.

    ``on_ready(port)`` is called once listening (``port`` 0 picks a free port).
    """
    stats = SinkStats()
    box = None
    if maildir is not None:
        try:
            maildir.parent.mkdir(parents=True, exist_ok=True)
            box = mailbox.Maildir(maildir, factory=None, create=True)
        except OSError as exc:
            raise ConfigError(f"--maildir: cannot use {maildir}: {exc.strerror}") from exc
    context = _tls_context(host, ca_out) if tls else None
    handler = _SinkHandler(stats, box)

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname="blast-sink",
            tls_context=context,
            enable_SMTPUTF8=True,
            timeout=60,
        )

    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(factory, host, port)
    except OSError as exc:
        raise ConfigError(f"--port: cannot listen on {host}:{port}: {exc.strerror}") from exc
    own_signals = stop is None
    stop = stop or asyncio.Event()
    if own_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    try:
        if on_ready is not None:
            on_ready(server.sockets[0].getsockname()[1])
        await stop.wait()
    finally:
        server.close()
        if own_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)
        if box is not None:
            box.close()
    return stats


def run_sink(**options: Any) -> SinkStats:
    """Run ``serve_sink`` on a fresh event loop (the CLI's entry point).

    Prints the port alone as the first line of stdout (for scripts), a description on stderr,
    and the summary on stderr when stopped.
    """

    def ready(port: int) -> None:
        print(port, flush=True)
        where = f"{options.get('host', '127.0.0.1')}:{port}"
        extras = []
        if options.get("tls"):
            ca_out = options.get("ca_out")
            extras.append(f"STARTTLS, CA certificate in {ca_out}" if ca_out else "STARTTLS")
        maildir = options.get("maildir")
        extras.append(f"Maildir {maildir}" if maildir else "counting only")
        print(
            f"blast sink: listening on {where} ({'; '.join(extras)}); SIGTERM or Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )

    stats = asyncio.run(serve_sink(on_ready=ready, **options))
    print(f"blast sink: {stats.summary()}", file=sys.stderr, flush=True)
    return stats
