"""The outbox transport: writes each message into a Maildir (stdlib ``mailbox``).

Used as a campaign's transport (``kind: outbox``, for trials and hand-off to another system) and
as forced mode's secure fallback. Each file gets ``Return-Path`` and ``Delivered-To`` headers
carrying the envelope, as a local delivery agent would add them, and LF line endings as Maildir
readers expect. Files are written in a worker thread, one hop per batch, so the event loop never
blocks on the disk.
"""

from __future__ import annotations

import asyncio
import mailbox
import os
from collections.abc import Sequence
from pathlib import Path

from blast.delivery import Message, Outcome, Status, TLSEvidence
from blast.errors import ConfigError

__all__ = ["OutboxTransport"]


class OutboxTransport:
    """Delivers into the Maildir at ``path`` (created, owner-only, when missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Maildir creates the folder and tmp/new/cur owner-only (0o700).
            self._maildir = mailbox.Maildir(self.path, factory=None, create=True)
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot use as a Maildir outbox: {exc.strerror}"
            ) from exc
        self._evidence = TLSEvidence(host=f"maildir:{self.path}")

    async def send(self, message: Message) -> Outcome:
        """Write one message; the Maildir key is the outcome's queue id."""
        return (await self.send_many([message]))[0]

    async def send_many(self, messages: Sequence[Message]) -> list[Outcome]:
        """Write a batch in one worker-thread hop; one outcome per message, in order."""
        return await asyncio.to_thread(self._write_all, list(messages))

    def _write_all(self, messages: list[Message]) -> list[Outcome]:
        return [self._write(message) for message in messages]

    def _write(self, message: Message) -> Outcome:
        envelope = (
            b"Return-Path: <" + message.sender.encode() + b">\n"
            b"Delivered-To: " + message.recipient.encode() + b"\n"
        )
        try:
            key = self._maildir.add(envelope + message.data.replace(b"\r\n", b"\n"))
        except OSError as exc:
            # A full or unwritable disk is temporary from the sender's point of view.
            return Outcome(
                status=Status.DEFERRED,
                reply=f"maildir write failed: {exc.strerror}",
                tls=self._evidence,
            )
        return Outcome(
            status=Status.SENT,
            code=250,
            reply="written to maildir",
            queue_id=key,
            tls=self._evidence,
        )

    async def aclose(self) -> None:
        self._maildir.close()
