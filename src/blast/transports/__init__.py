"""Transports: the last stage, moving one message to the next hop and reporting an ``Outcome``.

``Transport`` is the interface; ``MemoryTransport`` (tests, ``--dry-run``), ``OutboxTransport``
(Maildir) and ``RelayTransport`` (SMTP through a relay, every TLS mode, pipelined) implement it.
``open_transport`` builds the one a campaign's ``transport:`` section names.
"""

from __future__ import annotations

from blast.config import TLSMode, TransportSpec
from blast.errors import ConfigError
from blast.transports.base import Transport
from blast.transports.memory import MemoryTransport
from blast.transports.outbox import OutboxTransport
from blast.transports.relay import RelayTransport

__all__ = ["MemoryTransport", "OutboxTransport", "RelayTransport", "Transport", "open_transport"]


def open_transport(spec: TransportSpec, mode: TLSMode, *, concurrency: int = 1) -> Transport:
    """The transport a campaign's ``transport:`` section names, under its TLS ``mode``.

    ``concurrency`` bounds a relay's open connections (the campaign's ``sending.concurrency``).
    """
    if spec.kind == "relay":
        return RelayTransport(spec, mode, concurrency=concurrency)
    if spec.kind == "outbox":
        if spec.path is None:
            raise ConfigError("transport.path: required for an outbox")
        return OutboxTransport(spec.path)
    raise ConfigError(f"transport.kind: {spec.kind!r} is not available yet (use relay or outbox)")
