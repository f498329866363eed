"""The Maildir outbox and the in-memory transport."""

from __future__ import annotations

import mailbox
import os
import stat

import pytest

from blast.delivery import Message, Outcome, Status
from blast.errors import ConfigError
from blast.transports import MemoryTransport, OutboxTransport, Transport


def _message(
    n: int, data: bytes = b"Subject: hello\r\n\r\nbody line\r\n.leading dot\r\n"
) -> Message:
    return Message(
        row_id=n,
        sender="news@clinic.test",
        recipient=f"patient{n}@example.test",
        data=data,
        message_id=f"run-{n}@clinic.test",
    )


async def test_outbox_writes_one_maildir_file_per_message_with_the_envelope(tmp_path):
    outbox = OutboxTransport(tmp_path / "fallback")
    assert isinstance(outbox, Transport)
    outcomes = await outbox.send_many([_message(1), _message(2)])
    single = await outbox.send(_message(3))
    await outbox.aclose()

    assert [o.status for o in [*outcomes, single]] == [Status.SENT] * 3
    box = mailbox.Maildir(tmp_path / "fallback", factory=None, create=False)
    assert sorted(box.keys()) == sorted(o.queue_id for o in [*outcomes, single])
    stored = box.get_bytes(single.queue_id)
    assert stored.startswith(
        b"Return-Path: <news@clinic.test>\nDelivered-To: patient3@example.test\n"
    )
    # Maildir files use LF line endings; the content is otherwise untouched (no dot-stuffing).
    assert stored.endswith(b"Subject: hello\n\nbody line\n.leading dot\n")
    assert b"\r" not in stored
    mode = stat.S_IMODE(os.stat(tmp_path / "fallback").st_mode)
    assert mode & 0o077 == 0, "the outbox holds ePHI: owner-only"


async def test_outbox_defers_when_the_disk_refuses(tmp_path):
    outbox = OutboxTransport(tmp_path / "box")
    # Replace the Maildir's tmp/ folder by a file: writes fail even for root, which
    # ignores permission bits.
    (tmp_path / "box" / "tmp").rmdir()
    (tmp_path / "box" / "tmp").write_text("not a folder")
    outcome = await outbox.send(_message(1))
    assert outcome.status is Status.DEFERRED
    assert "maildir write failed" in outcome.reply


def test_outbox_on_an_unusable_path_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot use as a Maildir outbox"):
        OutboxTransport(tmp_path / "file" / "box")


async def test_memory_transport_records_and_scripts_outcomes():
    def handler(message: Message) -> Outcome:
        if message.row_id == 2:
            return Outcome(status=Status.DEFERRED, code=451, reply="try later")
        return Outcome(status=Status.SENT, code=250, queue_id=f"q{message.row_id}")

    memory = MemoryTransport(handler)
    assert isinstance(memory, Transport)
    outcomes = await memory.send_many([_message(1), _message(2), _message(3)])
    assert [o.status for o in outcomes] == [Status.SENT, Status.DEFERRED, Status.SENT]
    assert [m.row_id for m in memory.messages] == [1, 2, 3]
    await memory.aclose()
    with pytest.raises(RuntimeError):
        await memory.send(_message(4))


async def test_memory_transport_accepts_by_default():
    memory = MemoryTransport()
    outcome = await memory.send(_message(1))
    assert outcome.status is Status.SENT and outcome.queue_id == "mem-1"
    assert outcome.tls is not None
