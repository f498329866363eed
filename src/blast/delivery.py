"""Value types that cross stages: a built message, a delivery status, TLS evidence, an outcome.

They are small frozen values so that the renderer, the transports, the sender pool and the ledger
can hand them to each other without sharing any mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Message", "Outcome", "Status", "TLSEvidence", "Trust"]


class Status(StrEnum):
    """A ledger row's status (DESIGN: "Ledger, statuses and exactly-once intent")."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    DROPPED_NO_TLS = "dropped_no_tls"
    FALLBACK = "fallback"
    SUPPRESSED = "suppressed"
    FAILED = "failed"
    BLOCKED = "blocked"
    UNKNOWN = "unknown"


class Trust(StrEnum):
    """How far the peer's certificate was trusted on a hop."""

    NONE = "none"  # no TLS at all
    ANONYMOUS = "anonymous"  # TLS without a certificate check worth the name
    UNTRUSTED = "untrusted"  # a certificate was offered and failed verification
    VERIFIED = "verified"  # chain and name verified


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSEvidence:
    """What one SMTP session negotiated, recorded with every delivery row."""

    host: str
    ip: str | None = None
    version: str | None = None  # "TLSv1.3"; None for plaintext
    cipher: str | None = None
    bits: int | None = None
    trust: Trust = Trust.NONE


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One rendered message, ready for a transport: the envelope and the exact bytes."""

    row_id: int  # the ledger row this message belongs to
    sender: str  # envelope MAIL FROM
    recipient: str  # envelope RCPT TO
    data: bytes  # the whole message, CRLF line endings, headers included
    message_id: str  # without angle brackets
    sensitive: bool = False  # the campaign's segment is sensitive (stricter TLS rules)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The result of one delivery attempt for one message. Partial failure is data."""

    status: Status
    code: int | None = None  # SMTP reply code, when there was one
    reply: str = ""  # reply text or a short reason; never message content
    queue_id: str | None = None  # the next hop's queue id, parsed from its 250 reply
    tls: TLSEvidence | None = None
    # The attempt failed because TLS could not be had (forced mode: after the retry window the
    # sender hands such a message to the secure fallback instead of marking it failed).
    tls_failed: bool = False
