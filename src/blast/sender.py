"""The sender pool: claims batches from the ledger, renders, sends, writes outcomes back.

One pool per worker process, on one asyncio loop (uvloop when installed)::

    claimer ──claim(batch)──> queue of chunks ──> senders: render a chunk,
        transport.send_many(chunk) ──> results ──> recorder: record(batch)

A sender hands its whole chunk to the transport at once: no task, future or await per message
in the pool. Under a rate limit or a binding per-domain limit, messages go one by one instead
(``transport.send`` per message, a task each).

Exactly-once intent: the claimer never holds more rows in ``sending`` than the window
(``in_flight``; a row's slot is freed only once its outcome is committed), so after a ``kill -9``
at most that many rows of this process are found ``sending`` and become ``unknown``. Claims and
records are batched, one transaction each, and run in one database thread so the loop never
waits on the disk.

Temporary failures are retried within the campaign's ``retry_hours``: the next attempt time comes
from a tenacity wait strategy (exponential backoff by default) and the window from tenacity's
``stop_before_delay``; when the window closes the row is ``failed``, or, for a message that
could not get TLS in forced mode, handed to the fallback Maildir outbox and marked ``fallback``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from blast.delivery import Message, Outcome, Status
from blast.errors import BlockedMessage
from blast.ledger import Claimed, Ledger, Result, now
from blast.transports.base import Transport

__all__ = [
    "FieldDecoder",
    "PoolSettings",
    "PoolStats",
    "RateLimiter",
    "RetryPolicy",
    "SenderPool",
    "install_uvloop",
]

T = TypeVar("T")

#: Outcome statuses a transport may report that end a row's life.
_FINAL = frozenset(
    {Status.SENT, Status.BOUNCED, Status.DROPPED_NO_TLS, Status.FAILED, Status.FALLBACK}
)


class MessageRenderer(Protocol):
    """What the pool needs from ``blast.render.Renderer``."""

    def render(self, *, row_id: int, recipient: str, context: Mapping[str, Any]) -> Message: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When to try a temporarily failed message again, and when to give up.

    ``wait`` is any tenacity wait strategy (called with the attempt number); the window is
    tenacity's ``stop_before_delay(window)`` counted from the row's first attempt, so no retry is
    scheduled past it.
    """

    window: float  # seconds
    wait: wait_base = field(
        default_factory=lambda: (
            tenacity.wait_exponential(multiplier=60, min=60, max=3600) + tenacity.wait_random(0, 30)
        )
    )

    @classmethod
    def for_hours(cls, hours: float, wait: wait_base | None = None) -> RetryPolicy:
        """The campaign's ``sending.retry_hours`` window with the default or a given wait."""
        if wait is None:
            return cls(window=hours * 3600)
        return cls(window=hours * 3600, wait=wait)

    @property
    def stop(self) -> stop_base:
        return tenacity.stop_before_delay(self.window)

    def next_attempt(
        self, attempts: int, first_attempt_at: dt.datetime, at: dt.datetime
    ) -> dt.datetime | None:
        """The time of the next attempt after ``attempts`` failed ones, or None: give up."""
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempts)
        state.start_time = first_attempt_at.timestamp()
        state.outcome_timestamp = at.timestamp()
        state.upcoming_sleep = float(self.wait(state))
        if self.stop(state):
            return None
        return at + dt.timedelta(seconds=state.upcoming_sleep)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    """How one worker process sends. ``concurrency`` is the transport's connections;
    ``in_flight`` (default: ``concurrency``) bounds the messages on their way and so the rows
    this process holds in ``sending``."""

    concurrency: int = 50
    in_flight: int | None = None
    rate_per_second: float | None = None
    per_domain_connections: int = 5
    batch_size: int = 200
    # Keep running while a deferred row comes due within this many seconds; later ones are left
    # for the next `blast run` of this run.
    linger: float = 60.0
    limit: int | None = None  # send at most this many messages in this process

    @property
    def window(self) -> int:
        return self.in_flight if self.in_flight is not None else self.concurrency


@dataclass(slots=True)
class PoolStats:
    """What a pool did: outcomes per status, messages attempted, time spent."""

    status: Counter[str] = field(default_factory=Counter)
    attempted: int = 0
    claimed: int = 0
    seconds: float = 0.0


class RateLimiter:
    """A global pace of at most ``rate`` starts per second (spaced evenly, no bursts)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        current = loop.time()
        start = max(self._next, current)
        self._next = start + self.interval
        if start > current:
            await asyncio.sleep(start - current)


class FieldDecoder:
    """Turns a row's frozen JSON fields back into template values (dates revived)."""

    def __init__(self, types: Mapping[str, str] | None = None) -> None:
        self._revive = [
            (name, dt.date.fromisoformat if kind == "date" else dt.datetime.fromisoformat)
            for name, kind in (types or {}).items()
        ]

    def __call__(self, text: str) -> dict[str, Any]:
        values: dict[str, Any] = json.loads(text)
        for name, parse in self._revive:
            value = values.get(name)
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    values[name] = parse(value)
        return values


class SenderPool:
    """Sends one run's due rows from ``ledger`` through ``transport`` until none are left.

    ``fallback`` is the forced mode's secure outbox (None: no fallback, such rows ``failed``).
    ``on_progress(delta)`` is called after each recorded batch with the statuses it wrote.
    """

    def __init__(
        self,
        ledger: Ledger,
        run_id: str,
        *,
        renderer: MessageRenderer,
        transport: Transport,
        settings: PoolSettings,
        retry: RetryPolicy,
        decoder: FieldDecoder | None = None,
        fallback: Transport | None = None,
        on_progress: Callable[[Counter[str]], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.renderer = renderer
        self.transport = transport
        self.settings = settings
        self.retry = retry
        self.decode = decoder or FieldDecoder()
        self.fallback = fallback
        self.on_progress = on_progress
        self.stats = PoolStats()
        self._limiter = RateLimiter(settings.rate_per_second)
        self._domains: dict[str, asyncio.Semaphore] = {}
        # Compared with the connections: a limit at or above them cannot bind. A domain may have
        # as many messages in flight as its connections' share of the window.
        self._domain_bound = settings.per_domain_connections < settings.concurrency
        depth = max(1, settings.window // settings.concurrency)
        self._per_domain = settings.per_domain_connections * depth
        self._queue: asyncio.Queue[list[Claimed] | None] = asyncio.Queue()
        # A sender takes a chunk of claimed rows and hands them to the transport in one
        # ``send_many`` (no task or await per message); the rate limit and the per-domain limit
        # need one message at a time, so with either in force a chunk goes message by message.
        self._chunk = max(1, min(settings.batch_size, settings.window // 4 or 1))
        self._one_by_one = self._domain_bound or self._limiter.interval > 0
        self._results: list[Result] = []
        self._results_ready = asyncio.Event()
        self._slots_freed = asyncio.Event()
        self._outstanding = 0  # rows claimed by this pool and not yet recorded
        self._after_id = 0  # the highest row id this pool has claimed
        self._claiming_done = False
        self._senders_done = False
        self._stopping = False
        self._db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="blast-ledger")

    def stop(self) -> None:
        """Stop claiming; messages already claimed are still sent and recorded."""
        self._stopping = True
        self._slots_freed.set()

    async def _in_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def run(self) -> PoolStats:
        """Send until nothing is due (or ``limit``/``stop``); returns what was done.

        If the ledger cannot be written, claiming stops, messages claimed but not yet handed to
        the transport are not sent, and the ``StoreError`` is raised once in-flight sends end.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Each sender holds one chunk at a time, and at most a window's worth is claimed.
        count = -(-self.settings.window // self._chunk)
        senders = [
            asyncio.create_task(self._sender(), name=f"blast-sender-{i}") for i in range(count)
        ]
        recorder = asyncio.create_task(self._recorder(), name="blast-recorder")
        try:
            await self._claimer()
        finally:
            self._claiming_done = True
            for _ in senders:
                self._queue.put_nowait(None)
            try:
                await asyncio.gather(*senders)
            finally:
                self._senders_done = True
                self._results_ready.set()
                try:
                    await recorder
                finally:
                    self._db.shutdown(wait=True)
                    self.stats.seconds = loop.time() - started
        return self.stats

    async def _claimer(self) -> None:
        settings = self.settings
        # Claim in chunks big enough to amortise a transaction, small enough to keep senders fed.
        window = settings.window
        chunk = max(1, min(settings.batch_size, window // 2 or 1))
        while not self._stopping:
            free = window - self._outstanding
            if settings.limit is not None:
                free = min(free, settings.limit - self.stats.claimed)
                if free <= 0 and self.stats.claimed >= settings.limit:
                    return
            if free < chunk and self._outstanding > 0:
                await self._wait_for_slots()
                continue
            rows = await self._in_db(self._claim, min(free, settings.batch_size))
            if rows:
                self._outstanding += len(rows)
                self.stats.claimed += len(rows)
                step = self._chunk
                for start in range(0, len(rows), step):
                    self._queue.put_nowait(rows[start : start + step])
                continue
            if self._outstanding > 0:
                # Outcomes still coming may defer rows that come due soon: wait for them.
                await self._wait_for_slots()
                continue
            pending, earliest = await self._in_db(self.ledger.next_due, self.run_id)
            if pending == 0 or earliest is None:
                return  # done, or only rows another worker holds in flight
            delay = (earliest - now()).total_seconds()
            if delay > settings.linger:
                return
            await self._sleep_or_stop(max(delay, 0.01))

    def _claim(self, limit: int) -> list[Claimed]:
        # Claim past the highest id this pool has claimed (cheap on PostgreSQL, see
        # Ledger.claim); when that finds nothing, look once more from the start.
        rows = self.ledger.claim(self.run_id, limit, after_id=self._after_id)
        if not rows and self._after_id:
            self._after_id = 0
            rows = self.ledger.claim(self.run_id, limit)
        if rows:
            self._after_id = max(self._after_id, max(row.id for row in rows))
        return rows

    async def _wait_for_slots(self) -> None:
        self._slots_freed.clear()
        await self._slots_freed.wait()

    async def _sleep_or_stop(self, seconds: float) -> None:
        self._slots_freed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._slots_freed.wait(), seconds)

    async def _sender(self) -> None:
        queue = self._queue
        while True:
            rows = await queue.get()
            if rows is None:
                return
            if self._one_by_one:
                results = await asyncio.gather(*(self._deliver_one(row) for row in rows))
            else:
                results = await self._deliver_chunk(rows)
            self._results.extend(results)  # the recorder swaps the list: don't cache it
            self._results_ready.set()

    async def _deliver_one(self, row: Claimed) -> Result:
        try:
            return await self._deliver(row)
        except Exception as exc:  # never leave a row without an outcome
            return self._internal_error(row, exc)

    def _internal_error(self, row: Claimed, exc: Exception) -> Result:
        reply = f"internal error: {type(exc).__name__}"
        retry_at = self.retry.next_attempt(row.attempts, row.first_attempt_at, now())
        if retry_at is None:
            return Result(row.id, Status.FAILED, reply=reply)
        return Result(row.id, Status.DEFERRED, reply=reply, next_attempt_at=retry_at)

    async def _deliver_chunk(self, rows: list[Claimed]) -> list[Result]:
        """Render a chunk, send what rendered in one ``send_many``, resolve each outcome."""
        self.stats.attempted += len(rows)
        results: list[Result | None] = [None] * len(rows)
        to_send: list[int] = []
        messages: list[Message] = []
        for i, row in enumerate(rows):
            try:
                message_or_result = self._render(row)
            except Exception as exc:
                results[i] = self._internal_error(row, exc)
                continue
            if isinstance(message_or_result, Result):
                results[i] = message_or_result
            else:
                to_send.append(i)
                messages.append(message_or_result)
        if messages:
            try:
                outcomes = await self.transport.send_many(messages)
            except Exception as exc:  # a transport should not raise; treat it as temporary
                failed = Outcome(
                    status=Status.DEFERRED, reply=f"transport error: {type(exc).__name__}"
                )
                outcomes = [failed] * len(messages)
            for i, message, outcome in zip(to_send, messages, outcomes, strict=True):
                row = rows[i]
                status = outcome.status
                try:
                    if status in _FINAL or status is Status.BLOCKED:
                        results[i] = _result(row.id, status, outcome)
                    else:
                        results[i] = await self._resolve(row, message, outcome)
                except Exception as exc:
                    results[i] = self._internal_error(row, exc)
        return results  # type: ignore[return-value]  # every slot is filled above

    def _render(self, row: Claimed) -> Message | Result:
        """The row's message, or its ``blocked`` result when the renderer refuses it."""
        try:
            return self.renderer.render(
                row_id=row.id, recipient=row.address, context=self.decode(row.fields)
            )
        except BlockedMessage as exc:
            return Result(row.id, Status.BLOCKED, blocked_reason=exc.reason)
        except Exception as exc:
            # Whatever a template did, the reason names only the kind of failure.
            return Result(
                row.id, Status.BLOCKED, blocked_reason=f"render error: {type(exc).__name__}"
            )

    async def _deliver(self, row: Claimed) -> Result:
        self.stats.attempted += 1
        message = self._render(row)
        if isinstance(message, Result):
            return message
        if self._domain_bound:
            domain = row.address.rpartition("@")[2].lower()
            gate = self._domains.get(domain)
            if gate is None:
                gate = self._domains[domain] = asyncio.Semaphore(self._per_domain)
            async with gate:
                outcome = await self._send(message)
        else:  # the limit cannot bind: skip the semaphore on the hot path
            outcome = await self._send(message)
        return await self._resolve(row, message, outcome)

    async def _send(self, message: Message) -> Outcome:
        if self._limiter.interval:
            await self._limiter.wait()
        try:
            return await self.transport.send(message)
        except Exception as exc:  # a transport should not raise; treat it as temporary
            return Outcome(status=Status.DEFERRED, reply=f"transport error: {type(exc).__name__}")

    async def _resolve(self, row: Claimed, message: Message, outcome: Outcome) -> Result:
        status = outcome.status
        if status in _FINAL or status is Status.BLOCKED:
            return _result(row.id, status, outcome)
        # Deferred, or anything a transport should not have answered: try again later.
        at = now()
        retry_at = self.retry.next_attempt(row.attempts, row.first_attempt_at, at)
        if retry_at is not None:
            return _result(row.id, Status.DEFERRED, outcome, next_attempt_at=retry_at)
        if outcome.tls_failed and self.fallback is not None:
            handed = await self.fallback.send(message)
            if handed.status is Status.SENT:
                return Result(
                    row.id,
                    Status.FALLBACK,
                    code=outcome.code,
                    reply=outcome.reply,
                    queue_id=handed.queue_id,
                    tls=outcome.tls,
                )
        return _result(row.id, Status.FAILED, outcome)

    async def _recorder(self) -> None:
        coalesce = max(1, min(self.settings.batch_size, self.settings.window // 4 or 1))
        try:
            while True:
                # Look before waiting: the last outcomes and the end may both have been
                # signalled while the previous batch was being written.
                if not self._results:
                    if self._senders_done:
                        return
                    self._results_ready.clear()
                    await self._results_ready.wait()
                    continue
                if len(self._results) < coalesce and not self._claiming_done:
                    await asyncio.sleep(0.002)  # let a few more outcomes join this transaction
                batch = self._results
                self._results = []
                await self._in_db(self.ledger.record, batch)
                self._outstanding -= len(batch)
                delta = Counter(r.status.value for r in batch)
                self.stats.status.update(delta)
                self._slots_freed.set()
                if self.on_progress is not None:
                    self.on_progress(delta)
        except BaseException:
            # Without a ledger nothing more may go out: stop claiming and drop what is queued
            # (those rows stay `sending` and are found `unknown` on resume).
            self.stop()
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    self._queue.put_nowait(None)
                    break
            raise


def _result(
    row_id: int, status: Status, outcome: Outcome, *, next_attempt_at: dt.datetime | None = None
) -> Result:
    return Result(
        row_id,
        status,
        code=outcome.code,
        reply=outcome.reply,
        queue_id=outcome.queue_id,
        tls=outcome.tls,
        next_attempt_at=next_attempt_at,
    )


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when it is installed; returns whether it is."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional (not on Windows)
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
