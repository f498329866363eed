"""Transports: the last stage, moving one message to the next hop and reporting an ``Outcome``.

``Transport`` is the interface; ``MemoryTransport`` (tests, ``--dry-run``), ``OutboxTransport``
(Maildir) implement it, and ``RelayTransport`` (SMTP through a relay, every TLS mode) once
present. ``open_transport`` builds the one a campaign's ``transport:`` section names.
"""

from __future__ import annotations

from blast.transports.base import Transport
from blast.transports.memory import MemoryTransport
from blast.transports.outbox import OutboxTransport

__all__ = ["MemoryTransport", "OutboxTransport", "Transport"]
