"""One ``blast run``: load the campaign, freeze its audience into the ledger (or resume its
unfinished run), send through the sender pool in one or more worker processes, report.

::

    report = run_campaign("campaigns/flu-shot.yml", RunOptions(db="blast.db", workers=2))
    report["status"]["sent"]

A new run: the segment is evaluated as of ``--as-of``, suppressed addresses are marked, and one
row per address is written with just the template fields (``renderer.fields``) frozen as JSON,
in the same transaction as the run row. A resumed run reads nothing but the ledger (and the
templates): rows found ``sending`` become ``unknown`` and follow ``on_unknown``; ``sent`` rows
are never sent again.

``--dry-run`` (:func:`dry_run`) renders everything and touches nothing: the store is opened
read-only for its suppression list, and not created when it does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import faulthandler
import hashlib
import math
import multiprocessing
import os
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from tenacity.wait import wait_base

from blast.config import Campaign, OnUnknown, TLSMode, load_campaign
from blast.delivery import Status
from blast.errors import BlastError, BlockedMessage, ComplianceError, ConfigError, StoreError
from blast.ledger import (
    EnqueueCounts,
    Ledger,
    RunInfo,
    db_url,
    field_types,
    freeze_audience,
)
from blast.report import RunProgress, busy, report_for_run
from blast.sender import FieldDecoder, PoolSettings, RetryPolicy, SenderPool, install_uvloop
from blast.transports.base import Transport

__all__ = ["DryRun", "RunError", "RunOptions", "dry_run", "new_run_id", "run_campaign"]


class RunError(BlastError):
    """The run could not complete (a worker died, the store failed mid-run): exit code 1."""

    exit_code = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """The options of ``blast run``; the last three are for tests and benchmarks."""

    db: str | None = None
    limit: int | None = None
    workers: int | None = None  # None: one per CPU
    new_run: bool = False
    as_of: dt.date | None = None
    quiet: bool = False
    linger: float = 60.0
    retry_wait: wait_base | None = None
    transport_factory: Callable[[Campaign, int], Transport] | None = None


def new_run_id(now: dt.datetime | None = None) -> str:
    """A run id that sorts by start time and is unique: ``20261204T093000-3f9a1c``."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


# -- loading --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    campaign: Campaign
    segment: Any  # blast.segments.Segment
    segment_hash: str
    template_hash: str


def _load(path: str | Path) -> _Loaded:
    from blast.segments import load_segment

    campaign = load_campaign(path)
    segment = load_segment(campaign.segment)
    _check_compliance(campaign, segment)
    return _Loaded(campaign, segment, _segment_hash(segment), _template_hash(campaign))


def _check_compliance(campaign: Campaign, segment: Any) -> None:
    """Refuse to send what ``blast validate`` refuses (unsubscribe, postal address, From,
    TLS for sensitive segments, ...): ``ComplianceError`` naming the findings."""
    from blast.compliance import check_campaign

    derived = {item.name: item.inputs for item in segment.derive}
    findings, _ = check_campaign(campaign, sensitive=segment.sensitive, derived=derived)
    errors = [str(f) for f in findings if f.error]
    if errors:
        more = f" (and {len(errors) - 1} more; see blast validate)" if len(errors) > 1 else ""
        raise ComplianceError(f"refusing to send: {errors[0]}{more}")


def _file_hash(paths: Iterable[Path | str | None], *extra: str) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
        digest.update(b"\0")
    for text in extra:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _segment_hash(segment: Any) -> str:
    sources: list[str] = []

    def walk(seg: Any) -> None:
        sources.append(seg.source)
        for other in seg.exclude:
            walk(other)

    walk(segment)
    return _file_hash(sources)


def _template_hash(campaign: Campaign) -> str:
    folder_files: list[Path] = []
    for template in (campaign.template.html, campaign.template.text):
        if template is not None:
            # Layouts and includes live beside the template: hash the folder's templates.
            folder_files += sorted(Path(template).parent.glob("*.j2"))
    dump = campaign.model_dump_json(include={"subject", "from_", "reply_to", "headers"})
    return _file_hash(dict.fromkeys(folder_files), dump)


def _renderer(campaign: Campaign, run_id: str, key: bytes, sensitive: bool) -> Any:
    from blast.render import Renderer

    return Renderer.from_campaign(campaign, run_id=run_id, tracking_key=key, sensitive=sensitive)


def _tracking_key(ledger: Ledger | None) -> bytes:
    from blast.tokens import generate_key, key_from_env

    key = key_from_env()
    if key is not None:
        return key
    return ledger.tracking_key() if ledger is not None else generate_key()


def _audience(
    loaded: _Loaded, fields: Iterable[str], as_of: dt.date | None, suppressed: Iterable[str]
) -> tuple[pl.DataFrame, EnqueueCounts, dict[str, str]]:
    """The frozen audience: the segment's contacts reduced to id, address and the template
    fields, deduplicated and marked suppressed (see ``freeze_audience``), with those fields'
    types and the counts of what was dropped.
    """
    from blast.contacts import load_contacts
    from blast.segments import audience, prepare

    contacts = load_contacts(loaded.campaign.contacts)
    prepared = prepare(loaded.segment, contacts, as_of=as_of)
    frame = audience(prepared)
    schema = frame.collect_schema()
    wanted = sorted(fields)
    missing = [name for name in wanted if name not in schema]
    if missing:
        raise ConfigError(
            f"{loaded.campaign.source}: templates use fields the contacts and segment do not "
            f"have: {', '.join(missing)}"
        )
    keep = list(dict.fromkeys([contacts.id_column, contacts.email_column, *wanted]))
    frozen, counts = freeze_audience(
        frame.select(keep),  # lazy: one query projects, sorts and encodes (no extra copy)
        id_column=contacts.id_column,
        email_column=contacts.email_column,
        fields=wanted,
        suppressed=suppressed,
    )
    return frozen, counts, field_types(dict(schema), wanted)


# -- a real run -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _WorkerSpec:
    """Everything a worker process needs (picklable)."""

    campaign_path: str
    db: str
    run_id: str
    key: bytes
    sensitive: bool
    types: dict[str, str]
    settings: PoolSettings
    retry_window: float
    retry_wait: wait_base | None
    transport_factory: Callable[[Campaign, int], Transport] | None
    parent_pid: int | None = None


def _open_transport(
    campaign: Campaign, concurrency: int, factory: Callable[[Campaign, int], Transport] | None
) -> Transport:
    if factory is not None:
        return factory(campaign, concurrency)
    from blast.transports import open_transport

    return open_transport(campaign.transport, campaign.tls, concurrency=concurrency)


def _fallback(campaign: Campaign) -> Transport | None:
    if campaign.tls is not TLSMode.FORCED or campaign.fallback is None:
        return None
    from blast.transports import OutboxTransport

    return OutboxTransport(campaign.fallback.outbox)


async def _send(
    spec: _WorkerSpec,
    ledger: Ledger,
    campaign: Campaign,
    on_progress: Callable[[Counter[str]], None] | None,
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> bool:
    """Send with one pool; True if a signal stopped it before the run was done."""
    renderer = _renderer(campaign, spec.run_id, spec.key, spec.sensitive)
    transport = _open_transport(campaign, spec.settings.concurrency, spec.transport_factory)
    fallback = _fallback(campaign)
    pool = SenderPool(
        ledger,
        spec.run_id,
        renderer=renderer,
        transport=transport,
        settings=spec.settings,
        retry=RetryPolicy.for_hours(spec.retry_window / 3600, spec.retry_wait),
        decoder=FieldDecoder(spec.types),
        fallback=fallback,
        on_progress=on_progress,
    )
    loop = asyncio.get_running_loop()
    stopped = 0

    def graceful(signum: int) -> None:
        # Stop claiming; messages in flight finish and are recorded. A second Ctrl-C leaves
        # at once (rows in flight are then found `unknown` on resume); SIGTERM only repeats.
        nonlocal stopped
        stopped += 1
        if stopped > 1 and signum == signal.SIGINT:
            os._exit(128 + signum)
        pool.stop()

    for signum in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, graceful, signum)
    if _STOPPED_EARLY:
        graceful(signal.SIGTERM)
    watchdog = None
    if spec.parent_pid is not None:
        watchdog = asyncio.create_task(_orphan_watch(spec.parent_pid))
    try:
        await pool.run()
    finally:
        if watchdog is not None:
            watchdog.cancel()
        for signum in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
        await transport.aclose()
        if fallback is not None:
            await fallback.aclose()
    return stopped > 0


_STOPPED_EARLY = False


def _stop_early(signum: int, frame: Any) -> None:
    # SIGTERM while a worker is still starting: remember it, stop as soon as the pool runs.
    global _STOPPED_EARLY
    _STOPPED_EARLY = True


async def _orphan_watch(parent_pid: int) -> None:
    # A worker whose parent was killed stops at once, like the parent did: what it had in
    # flight is found `unknown` on resume, exactly as if it had been killed too.
    while True:
        await asyncio.sleep(0.2)
        if os.getppid() != parent_pid:
            os._exit(1)


class _ProgressSender:
    """A worker's progress for the parent, sent at most every ``interval`` seconds: a put per
    recorded batch (hundreds a second) cost a worker ~6% of its time in pickling and pipe
    writes, for a display that redraws a few times a second."""

    def __init__(self, queue: Any, interval: float = 0.1) -> None:
        self._queue = queue
        self._interval = interval
        self._pending: Counter[str] = Counter()
        self._due = time.monotonic() + interval

    def __call__(self, delta: Counter[str]) -> None:
        self._pending.update(delta)
        if time.monotonic() >= self._due:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._queue.put(dict(self._pending))
            self._pending = Counter()
        self._due = time.monotonic() + self._interval


def _worker_main(spec: _WorkerSpec, progress: Any) -> None:
    """Entry point of a worker process: send, reporting recorded batches on ``progress``."""
    # Ctrl-C reaches the whole process group: the parent turns it into one SIGTERM per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_early)  # until the pool takes over the signal
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: where is it stuck?
    install_uvloop()
    try:
        campaign = load_campaign(spec.campaign_path)
        with (
            Ledger.open(spec.db, migrate_schema=False) as ledger,
            ledger.campaign_lock(campaign.name, shared=True, wait=30),
        ):
            report = _ProgressSender(progress)
            coroutine = _send(spec, ledger, campaign, report, signals=(signal.SIGTERM,))
            try:
                stopped = asyncio.run(coroutine)
            finally:
                report.flush()
            if stopped:
                progress.put({"__stopped__": 1})
    except BlastError as exc:
        progress.put({"__error__": str(exc)})
        sys.exit(1)


def _split(value: int, parts: int) -> int:
    return max(1, math.ceil(value / parts))


def _run_workers(spec: _WorkerSpec, workers: int, progress: RunProgress) -> bool:
    """Send with ``workers`` processes; True if a signal stopped them before the end."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    settings = spec.settings
    per_worker = replace(
        settings,
        concurrency=_split(settings.concurrency, workers),
        in_flight=_split(settings.window, workers),
        per_domain_connections=_split(settings.per_domain_connections, workers),
        rate_per_second=(settings.rate_per_second / workers if settings.rate_per_second else None),
        batch_size=settings.batch_size,
        limit=None if settings.limit is None else _split(settings.limit, workers),
    )
    child = replace(spec, settings=per_worker, parent_pid=os.getpid())
    processes = [
        ctx.Process(target=_worker_main, args=(child, queue), name=f"blast-worker-{i}")
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    errors: list[str] = []
    stopped = False

    def forward(signum: int, frame: Any) -> None:
        # Stop gracefully: each worker finishes and records what it has in flight.
        nonlocal stopped
        stopped = True
        for process in processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.is_alive() for p in processes) or not queue.empty():
            try:
                delta = queue.get(timeout=0.2)
            except Exception:  # queue.Empty
                continue
            if "__error__" in delta:
                errors.append(delta["__error__"])
                continue
            if "__stopped__" in delta:
                stopped = True
                continue
            progress.update(delta)
    finally:
        for process in processes:
            process.join(timeout=30)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    # A worker the forwarded SIGTERM reached before it could install its handler just ended.
    failed = [p for p in processes if p.exitcode not in (0, -signal.SIGTERM if stopped else 0)]
    if errors:
        raise RunError(errors[0])
    if failed:
        codes = ", ".join(str(p.exitcode) for p in failed)
        raise RunError(f"{len(failed)} of {workers} worker processes failed (exit {codes})")
    return stopped


def run_campaign(path: str | Path, options: RunOptions | None = None) -> dict[str, Any]:
    """Run (or resume) the campaign at ``path``; returns DESIGN's report for the run.

    Raises ``ConfigError`` for bad input, ``StoreError``/``RunError`` when the run could not
    complete. Deferred rows not due within ``linger`` seconds are left for the next run.
    """
    options = options or RunOptions()
    loaded = _load(path)
    campaign = loaded.campaign
    url = db_url(options.db)
    with Ledger.open(url) as ledger, ledger.campaign_lock(campaign.name) as lock:
        key = _tracking_key(ledger)
        with busy("preparing the run: contacts, segment, ledger", quiet=options.quiet):
            run, notes = _choose_run(ledger, loaded, key, options)
        # From here on other processes may send this run too (our workers): share the lock.
        lock.downgrade()
        spec = _spec(loaded, run, url, key, options)
        workers = options.workers or os.cpu_count() or 1
        counts = ledger.pending_counts(run.run_id)
        todo = counts[Status.QUEUED] + counts[Status.DEFERRED]
        if options.limit is not None:
            todo = min(todo, options.limit)
        with RunProgress(todo, quiet=options.quiet) as progress:
            if workers <= 1:
                install_uvloop()
                try:
                    interrupted = asyncio.run(_send(spec, ledger, campaign, progress.update))
                except StoreError as exc:
                    raise RunError(f"the run could not complete: {exc}") from exc
            else:
                interrupted = _run_workers(spec, workers, progress)
        pending, _ = ledger.next_due(run.run_id)
        if pending == 0:
            ledger.finish_run(run.run_id)
        report = report_for_run(ledger, ledger.get_run(run.run_id) or run)
    report["workers"] = workers
    report["interrupted"] = interrupted
    report["notes"] = notes
    if interrupted:
        notes.append("stopped by a signal; `blast run` again to continue this run")
    if pending:
        report["notes"].append(f"{pending} message(s) left for the next `blast run` of this run")
    return report


def _choose_run(
    ledger: Ledger, loaded: _Loaded, key: bytes, options: RunOptions
) -> tuple[RunInfo, list[str]]:
    """The unfinished run to resume (repaired after a crash), or a new one. Call it holding
    the campaign's exclusive lock."""
    campaign = loaded.campaign
    notes: list[str] = []
    run = None if options.new_run else ledger.unfinished_run(campaign.name)
    if run is None and not options.new_run:
        done = ledger.latest_run(campaign.name)
        if done is not None:
            # Re-running a finished campaign by accident would mail everyone twice.
            raise ConfigError(
                f"campaign {campaign.name!r} already ran (run {done.run_id} finished); "
                "pass --new-run to send it again"
            )
    if run is None:
        return _start(ledger, loaded, key, options), notes
    if run.template_hash != loaded.template_hash:
        notes.append("the templates changed since this run started")
    found = ledger.recover(run.run_id, resend_unknown=campaign.on_unknown is OnUnknown.RESEND)
    if found:
        notes.append(f"{found} message(s) were in flight when the last run stopped")
    return run, notes


def _spec(loaded: _Loaded, run: RunInfo, url: str, key: bytes, options: RunOptions) -> _WorkerSpec:
    campaign = loaded.campaign
    sending = campaign.sending
    return _WorkerSpec(
        campaign_path=str(campaign.source),
        db=url,
        run_id=run.run_id,
        key=key,
        sensitive=bool(run.settings.get("sensitive", loaded.segment.sensitive)),
        types=dict(run.settings.get("field_types", {})),
        settings=PoolSettings(
            concurrency=sending.concurrency,
            in_flight=sending.window,
            rate_per_second=sending.rate_per_second,
            per_domain_connections=sending.per_domain_connections,
            batch_size=sending.batch_size,
            linger=options.linger,
            limit=options.limit,
        ),
        retry_window=sending.retry_hours * 3600,
        retry_wait=options.retry_wait,
        transport_factory=options.transport_factory,
    )


def _start(ledger: Ledger, loaded: _Loaded, key: bytes, options: RunOptions) -> RunInfo:
    campaign = loaded.campaign
    run_id = new_run_id()
    renderer = _renderer(campaign, run_id, key, loaded.segment.sensitive)
    frozen, _counts, types = _audience(
        loaded, renderer.fields, options.as_of, ledger.suppressed_addresses()
    )
    settings = {
        "campaign_file": str(campaign.source),
        "as_of": (options.as_of or dt.date.today()).isoformat(),
        "tls": campaign.tls.value,
        "transport": campaign.transport.model_dump(
            mode="json", exclude={"username_env", "password_env"}
        ),
        "sending": campaign.sending.model_dump(mode="json"),
        "on_unknown": campaign.on_unknown.value,
        "sensitive": loaded.segment.sensitive,
        "fields": sorted(renderer.fields),
        "field_types": types,
    }
    return ledger.start_run(
        run_id=run_id,
        campaign=campaign.name,
        segment_hash=loaded.segment_hash,
        template_hash=loaded.template_hash,
        settings=settings,
        audience=frozen,
    )


# -- dry run --------------------------------------------------------------------------------


@dataclass(slots=True)
class DryRun:
    """What a run would do: statuses, recipients per domain, one sample message."""

    campaign: str
    recipients: int
    status: Counter[str] = field(default_factory=Counter)
    domains: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    invalid: int = 0
    rendered: int = 0
    sample: bytes | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "dry_run": True,
            "recipients": self.recipients,
            "status": dict(self.status),
            "domains": dict(self.domains.most_common()),
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "rendered": self.rendered,
        }


def _read_only_suppressions(url: str) -> set[str]:
    """The store's suppression list without creating, migrating or writing anything."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or not Path(database).exists():
            return set()
        # Read-only; and when no WAL is pending, immutable, so not even the -wal/-shm side
        # files are created.
        wal = Path(f"{database}-wal")
        pending = wal.exists() and wal.stat().st_size > 0
        ro = f"file:{Path(database).resolve()}?mode=ro" + ("" if pending else "&immutable=1")
        engine = sa.create_engine(
            "sqlite://", creator=lambda: __import__("sqlite3").connect(ro, uri=True)
        )
    else:
        from blast.ledger import create_engine

        engine = create_engine(url)  # a server database: reading creates nothing
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT address FROM suppressions").scalars()
            return set(rows)
    except sa.exc.SQLAlchemyError:
        return set()  # no store yet, or not migrated: nothing suppressed
    finally:
        engine.dispose()


def dry_run(path: str | Path, options: RunOptions | None = None) -> DryRun:
    """Render every message the run would send (up to ``limit``), send nothing, write nothing."""
    options = options or RunOptions()
    loaded = _load(path)
    campaign = loaded.campaign
    key = _tracking_key(None)
    renderer = _renderer(campaign, "dry-run", key, loaded.segment.sensitive)
    frozen, counts, types = _audience(
        loaded, renderer.fields, options.as_of, _read_only_suppressions(db_url(options.db))
    )
    result = DryRun(
        campaign.name, frozen.height, duplicates=counts.duplicates, invalid=counts.invalid
    )
    result.status[Status.SUPPRESSED.value] = counts.suppressed
    decode = FieldDecoder(types)
    queued = frozen.filter(pl.col("status") == Status.QUEUED.value)
    if options.limit is not None:
        queued = queued.head(options.limit)
    for row_id, (address, fields) in enumerate(queued.select("address", "fields").iter_rows(), 1):
        try:
            message = renderer.render(row_id=row_id, recipient=address, context=decode(fields))
        except BlockedMessage:
            result.status[Status.BLOCKED.value] += 1
            continue
        result.rendered += 1
        result.status["would_send"] += 1
        result.domains[address.rpartition("@")[2].lower()] += 1
        if result.sample is None:
            result.sample = message.data
    return result
