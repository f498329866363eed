"""A TCP proxy on loopback that delays every chunk by a fixed time in each direction.

    python bench/delay_proxy.py --target 127.0.0.1:2525 --delay-ms 10 --max-seconds 600

With ``--delay-ms 10`` a round trip through it costs 20 ms more, like a relay in another city.
Every chunk read on one side is written to the other side ``delay`` later, in order; a close is
delayed the same way. It listens on 127.0.0.1 only, prints ``listening 127.0.0.1:PORT`` once
ready (``--listen-port 0`` picks a free port), and exits after ``--max-seconds``, on SIGTERM or
SIGINT, or when ``--idle-exit`` seconds pass with no connection open: it never outlives a run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import collections.abc
import signal
import sys
import typing

__all__ = ["DelayedPipe", "serve"]

# Reading pauses when the far side has this much unwritten data queued (backpressure).
HIGH_WATER = 1 << 20


class DelayedPipe(asyncio.Protocol):
    """One side of a proxied connection: what it reads goes to ``peer`` after ``delay``."""

    def __init__(self, delay: float, on_close: collections.abc.Callable[[], None]) -> None:
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: DelayedPipe | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.closed = False
        self.on_close = on_close

    # asyncio callbacks for the socket this pipe reads from
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._enqueue(data)

    def eof_received(self) -> bool:
        self._enqueue(None)
        return True  # keep our side open until the delayed close reaches the peer

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self._enqueue(None)
            self.on_close()

    def pause_writing(self) -> None:  # our transport is full: stop reading the peer's socket
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    # the delay line towards the peer
    def _enqueue(self, data: bytes | None) -> None:
        self.queue.append((self.loop.time() + self.delay, data))
        if data is not None:
            self.queued_bytes += len(data)
            if self.queued_bytes > HIGH_WATER and self.transport and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        if self.peer is None:  # the upstream connection is not up yet: hold the data
            self.timer = self.loop.call_later(0.001, self._flush)
            return
        now = self.loop.time()
        chunks: list[bytes] = []
        close = False
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                close = True
                self.queue.clear()
                break
            chunks.append(data)
        peer = self.peer.transport
        if chunks and peer is not None and not peer.is_closing():
            payload = b"".join(chunks)
            self.queued_bytes -= len(payload)
            peer.write(payload)
        if close:
            if peer is not None and not peer.is_closing():
                peer.close()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()
            return
        if self.reading_paused and self.queued_bytes <= HIGH_WATER // 2 and self.transport:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)


async def serve(
    target: tuple[str, int],
    listen_port: int,
    delay: float,
    max_seconds: float,
    idle_exit: float | None,
) -> None:
    """Run the proxy until ``max_seconds``, a signal, or ``idle_exit`` seconds with no client."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    open_connections = 0
    pending: set[asyncio.Task[None]] = set()
    last_activity = loop.time()

    def closed() -> None:
        nonlocal open_connections, last_activity
        open_connections -= 1
        last_activity = loop.time()

    def client_factory() -> DelayedPipe:
        nonlocal open_connections
        open_connections += 1
        # Two pipe ends per connection; only the client side counts towards open_connections.
        client = DelayedPipe(delay, closed)
        task = loop.create_task(connect_upstream(client))
        pending.add(task)
        task.add_done_callback(pending.discard)
        return client

    async def connect_upstream(client: DelayedPipe) -> None:
        upstream = DelayedPipe(delay, lambda: None)
        try:
            await loop.create_connection(lambda: upstream, *target)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        client.peer, upstream.peer = upstream, client
        if client.closed and upstream.transport is not None:
            upstream.transport.close()

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish)
    loop.call_later(max_seconds, finish)

    server = await loop.create_server(client_factory, "127.0.0.1", listen_port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"listening 127.0.0.1:{port}", flush=True)

    async def watch_idle() -> None:
        while idle_exit is not None:
            await asyncio.sleep(min(1.0, idle_exit))
            if open_connections == 0 and loop.time() - last_activity > idle_exit:
                finish()
                return

    watcher = loop.create_task(watch_idle())
    await stop
    watcher.cancel()
    server.close()


def _parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise argparse.ArgumentTypeError("the target must be on loopback (127.0.0.1)")
    return "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=_parse_target, required=True, help="127.0.0.1:PORT")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="each way (default 10)")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--idle-exit", type=float, default=None, help="seconds with no client")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(
        serve(args.target, args.listen_port, args.delay_ms / 1000, args.max_seconds, args.idle_exit)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
