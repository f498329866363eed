"""``blast sink``: the local capture server, in process and as a real subprocess."""

from __future__ import annotations

import asyncio
import mailbox
import signal
import socket
import subprocess
import sys

from blast.config import TLSMode, TransportSpec
from blast.delivery import Message, Status, Trust
from blast.sink import serve_sink
from blast.transports import RelayTransport

BLAST = [sys.executable, "-c", "from blast.cli import main; main()"]


def _message(n: int) -> Message:
    return Message(
        row_id=n,
        sender="news@clinic.test",
        recipient=f"p{n}@example.test",
        data=b"Subject: hi\r\n\r\n.dot\r\nbody\r\n",
        message_id=f"m{n}@clinic.test",
    )


async def test_sink_with_tls_verifies_through_its_ca_and_stores_a_maildir(tmp_path):
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    ca_file = tmp_path / "ca" / "sink-ca.pem"
    task = asyncio.ensure_future(
        serve_sink(
            port=0,
            tls=True,
            maildir=tmp_path / "sink",
            ca_out=ca_file,
            stop=stop,
            on_ready=ready.set_result,
        )
    )
    port = await asyncio.wait_for(ready, 10)
    spec = TransportSpec(host="127.0.0.1", port=port, ca_file=ca_file, timeout=5)
    relay = RelayTransport(spec, TLSMode.EXCLUSIVE, concurrency=2)
    outcomes = await relay.send_many([_message(n) for n in range(5)])
    await relay.aclose()
    stop.set()
    stats = await asyncio.wait_for(task, 10)

    assert {o.status for o in outcomes} == {Status.SENT}
    assert {o.tls.trust for o in outcomes} == {Trust.VERIFIED}
    assert stats.messages == 5 and stats.tls == {"TLSv1.3": 5}
    box = mailbox.Maildir(tmp_path / "sink", factory=None, create=False)
    assert sorted(box.keys()) == sorted(o.queue_id for o in outcomes)
    stored = box.get_bytes(outcomes[0].queue_id)
    assert stored.startswith(b"Return-Path: <news@clinic.test>\nDelivered-To: p0@example.test\n")
    assert stored.endswith(b"Subject: hi\n\n.dot\nbody\n")


async def test_sink_without_tls_counts_plaintext():
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve_sink(port=0, stop=stop, on_ready=ready.set_result))
    port = await asyncio.wait_for(ready, 10)
    relay = RelayTransport(TransportSpec(host="127.0.0.1", port=port, timeout=5), TLSMode.FORCED)
    forced = await relay.send(_message(1))
    await relay.aclose()
    relay = RelayTransport(TransportSpec(host="127.0.0.1", port=port, timeout=5), TLSMode.NONE)
    plain = await relay.send(_message(2))
    await relay.aclose()
    stop.set()
    stats = await asyncio.wait_for(task, 10)
    assert forced.status is Status.DEFERRED and forced.tls_failed
    assert plain.status is Status.SENT
    assert stats.messages == 1 and stats.tls == {"plaintext": 1}


async def test_blast_sink_subprocess_prints_its_port_and_stops_cleanly_on_sigterm(tmp_path):
    ca_file = tmp_path / "ca.pem"
    proc = await asyncio.create_subprocess_exec(
        *BLAST,
        "sink",
        "--port",
        "0",
        "--tls",
        "--ca-out",
        str(ca_file),
        "--maildir",
        str(tmp_path / "box"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        port = int(line)
        spec = TransportSpec(host="127.0.0.1", port=port, ca_file=ca_file, timeout=5)
        relay = RelayTransport(spec, TLSMode.EXCLUSIVE)
        outcome = await relay.send(_message(1))
        await relay.aclose()
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert outcome.status is Status.SENT
    assert proc.returncode == 0
    assert b"received 1 messages for 1 recipients (TLSv1.3 1)" in stderr
    assert len(mailbox.Maildir(tmp_path / "box", factory=None, create=False)) == 1


def test_blast_sink_on_a_busy_port_is_a_one_line_usage_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*BLAST, "sink", "--port", str(port)], capture_output=True, timeout=20, text=True
        )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
