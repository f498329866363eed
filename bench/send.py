"""Sending benchmark: blast against Postfix's smtp-source, a bare aiosmtplib loop and mailmerge.

    .venv/bin/python bench/send.py                      # the full run (1M recipients), ~12 min
    .venv/bin/python bench/send.py --quick              # a smoke run with small counts, ~2 min
    .venv/bin/python bench/send.py --only plain,resume  # some scenarios only

Every contestant runs in this one invocation against the same Postfix ``smtp-sink`` on loopback
(its running counter, read from its stdout, is what counts a message as delivered), one after the
other, and the figures are printed as a Markdown table with ratios and written to
``bench/RESULTS.md`` under ``## send`` (other sections of that file are left alone).

Scenarios (goals from issue 4):

plain   plaintext into smtp-sink: smtp-source (C, the ceiling), a bare aiosmtplib+uvloop loop
        (1 and 2 processes, 50 reused connections each), mailmerge (PyPI; a few thousand) and
        ``blast run`` of a generated campaign, ``--workers 2``, tls ``none``.
        Goal: blast >= 8,000 msg/s, >= 0.32x smtp-source, >= 20x mailmerge, peak RSS <= 600 MB.
tls     STARTTLS to a private Postfix smtpd in front of the sink (bench/smtpd_tls.sh); ceiling:
        the bare aiosmtplib loop with STARTTLS (smtp-source has no TLS). Goal: blast >= 0.75x.
proxy   through bench/delay_proxy.py (10 ms each way). Goal: blast >= 3,000 msg/s for 200k
        recipients, >= 400x mailmerge through the same proxy.
resume  a 1M run SIGKILLed half way, then restarted: time from the restarted process's start
        until the sink sees its next message. Goal: <= 5 s.

Needs root (smtp-sink drops to ``nobody``; Postfix's master for the TLS scenario), the Debian
``postfix`` package, and mailmerge in bench/.venv-mailmerge (see bench/README.md). Everything
listens on 127.0.0.1 only and every process started here is stopped before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "send"
DATA = HERE / "data"
PY = sys.executable
BLAST = str(Path(PY).with_name("blast"))
MAILMERGE_VENV = HERE / ".venv-mailmerge"
RESULTS = HERE / "RESULTS.md"
MB = 1024 * 1024


def find_tool(name: str) -> str:
    """Postfix's test tools live in /usr/sbin or /usr/lib/postfix/sbin depending on the distro."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/lib/postfix/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit(f"bench/send.py: {name} not found: apt-get install postfix (see README)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# The sink: smtp-sink with its running counter parsed from stdout
# --------------------------------------------------------------------------------------------
class Sink:
    """Postfix's smtp-sink on 127.0.0.1; ``count`` is the number of messages it has accepted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.changed = threading.Condition()
        self.first_at: float | None = None  # first message after mark()
        self.last_at: float | None = None
        self._base = 0
        cmd = [
            find_tool("smtp-sink"),
            "-c",
            "-m",
            "4096",
            "-u",
            "nobody",
            f"127.0.0.1:{port}",
            "4096",
        ]
        if os.geteuid() != 0:
            cmd.remove("-u")
            cmd.remove("nobody")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for_port(port)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pattern = re.compile(rb"mesg=(\d+)")
        tail = b""
        while chunk := os.read(fd, 1 << 16):
            tail = (tail + chunk)[-256:]
            found = pattern.findall(tail)
            if not found:
                continue
            count = int(found[-1])
            stamp = time.perf_counter()
            with self.changed:
                if count != self.count:
                    self.count = count
                    if self.first_at is None and count > self._base:
                        self.first_at = stamp
                    self.last_at = stamp
                    self.changed.notify_all()

    def mark(self) -> int:
        """Start watching for the next message; returns the count now."""
        with self.changed:
            self._base = self.count
            self.first_at = None
            return self.count

    def wait_above(self, count: int, timeout: float) -> bool:
        """Block until more than ``count`` messages have arrived (False on timeout)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.count <= count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
            return True

    def settle(self, quiet: float = 0.5, timeout: float = 30.0) -> int:
        """Wait until the count has not moved for ``quiet`` seconds; return it."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            now = self.count
            if now == last:
                return now
            last = now
            time.sleep(quiet)
        return self.count

    def stop(self) -> None:
        stop_process(self.proc)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """TERM, then KILL, one process we started (and its group when it leads one)."""
    if proc.poll() is not None:
        return
    group = _own_group(proc)
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait()


def _own_group(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


# --------------------------------------------------------------------------------------------
# Running a contestant and measuring it
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    scenario: str
    contestant: str
    messages: int  # counted by the sink
    seconds: float  # wall clock, process start to exit
    send_seconds: float | None = None  # first to last message seen by the sink
    peak_rss_mb: float | None = None  # sum over the process tree, sampled
    cpu_seconds: float | None = None  # user+sys of the process tree
    note: str = ""
    extra: dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def send_rate(self) -> float | None:
        if self.send_seconds:
            return self.messages / self.send_seconds
        return None


class TreeSampler:
    """Samples the summed RSS of a process and all its descendants every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            processes = 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in tree:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    total += proc.memory_info().rss
                    processes += 1
            if total > self.peak:
                self.peak, self.peak_processes = total, processes
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / MB


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(
    scenario: str,
    contestant: str,
    cmd: Sequence[str],
    sink: Sink,
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    stdout_path: Path | None = None,
    note: str = "",
) -> tuple[Result, str]:
    """Run ``cmd`` to completion; the sink's count delta is the number of messages sent."""
    log(f"[{scenario}] {contestant}: {shlex.join(cmd)}")
    base = sink.mark()
    cpu_before = children_cpu()
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE  # noqa: SIM115
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        start_new_session=True,
    )
    sampler = TreeSampler(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        stdout, stderr = proc.communicate()
        note = (note + "; " if note else "") + f"TIMED OUT after {timeout:.0f}s"
    seconds = time.perf_counter() - started
    peak = sampler.stop()
    if stdout_path:
        out.close()  # type: ignore[union-attr]
        stdout = stdout_path.read_bytes()[-20000:]
    count = sink.settle(quiet=0.3) - base
    if proc.returncode not in (0, None):
        note = (note + "; " if note else "") + f"exit {proc.returncode}"
        log(f"    stderr: {(stderr or b'').decode(errors='replace')[-2000:]}")
    send_seconds = None
    if sink.first_at is not None and sink.last_at is not None and count > 1:
        send_seconds = max(sink.last_at - sink.first_at, 1e-9)
    result = Result(
        scenario,
        contestant,
        count,
        seconds,
        send_seconds,
        peak,
        children_cpu() - cpu_before,
        note,
    )
    log(
        f"    {count:,} messages in {seconds:.1f}s = {result.rate:,.0f} msg/s"
        f" (peak RSS {peak:.0f} MB, CPU {result.cpu_seconds:.1f}s)"
    )
    return result, (stdout or b"").decode(errors="replace")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Contestants
# --------------------------------------------------------------------------------------------
def smtp_source(scenario: str, sink: Sink, port: int, messages: int, size: int) -> Result:
    cmd = [
        find_tool("smtp-source"),
        "-d",  # reuse each connection, like the Python contestants
        "-s",
        "50",
        "-m",
        str(messages),
        "-l",
        str(size),
        "-f",
        "bench@sender.example",
        "-t",
        "rcpt@example.com",
        f"127.0.0.1:{port}",
    ]
    result, _ = run_measured(scenario, "smtp-source (C, -s 50 -d)", cmd, sink, timeout=600)
    return result


def bare_loop(
    scenario: str,
    sink: Sink,
    port: int,
    messages: int,
    size: int,
    *,
    processes: int = 1,
    connections: int = 50,
    ca_file: Path | None = None,
    timeout: float = 900,
) -> Result:
    cmd = [
        PY,
        str(HERE / "bare_aiosmtplib.py"),
        "--port",
        str(port),
        "--count",
        str(messages),
        "--connections",
        str(connections),
        "--processes",
        str(processes),
        "--size",
        str(size),
    ]
    if ca_file is not None:
        cmd += ["--starttls", "--ca-file", str(ca_file)]
    tls = " STARTTLS" if ca_file else ""
    name = f"bare aiosmtplib+uvloop{tls}, {processes}x{connections} conns"
    result, _ = run_measured(scenario, name, cmd, sink, timeout=timeout)
    return result


def mailmerge(scenario: str, sink: Sink, port: int, messages: int, work: Path) -> Result:
    exe = MAILMERGE_VENV / "bin" / "mailmerge"
    if not exe.exists():
        raise SystemExit(f"bench/send.py: {exe} missing; see bench/README.md")
    work.mkdir(parents=True, exist_ok=True)
    (work / "server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nratelimit = 0\n"
    )
    # The same message blast sends (text + HTML, personalised), from the same contacts; the
    # fields blast's template computes (date format, unsubscribe link) are precomputed here.
    shutil.copy(HERE / "campaign" / "mailmerge_template.txt", work / "template.txt")
    write_mailmerge_csv(contacts_file(max(messages, 5000)), messages, work / "database.csv")
    cmd = [
        str(exe),
        "--no-dry-run",
        "--no-limit",
        "--output-format",
        "raw",
        "--template",
        str(work / "template.txt"),
        "--database",
        str(work / "database.csv"),
        "--config",
        str(work / "server.conf"),
    ]
    result, _ = run_measured(
        scenario,
        f"mailmerge {mailmerge_version()}",
        cmd,
        sink,
        timeout=1800,
        stdout_path=work / "stdout.txt",
    )
    return result


def write_mailmerge_csv(contacts: Path, rows: int, path: Path) -> None:
    import polars as pl

    frame = (
        pl.scan_parquet(contacts)
        .head(rows)
        .select(
            "email",
            "first_name",
            "last_name",
            pl.when(pl.col("last_visit").is_null())
            .then(pl.lit("some time ago"))
            .otherwise(pl.lit("on ") + pl.col("last_visit").dt.strftime("%B %Y"))
            .alias("last_visit"),
            (pl.lit("https://t.riverside.example/u/") + pl.col("id").cast(pl.String)).alias(
                "unsubscribe_url"
            ),
        )
        .collect()
    )
    frame.write_csv(path)


def mailmerge_version() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            [str(MAILMERGE_VENV / "bin" / "mailmerge"), "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.strip().split()[-1]
    return "?"


# --------------------------------------------------------------------------------------------
# blast: generated data and campaign files
# --------------------------------------------------------------------------------------------
def contacts_file(rows: int) -> Path:
    """bench/data/send-contacts-<rows>.parquet from ``blast generate contacts`` (cached)."""
    path = DATA / f"send-contacts-{rows}.parquet"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        log(f"generating {rows:,} contacts -> {path}")
        subprocess.run(
            [BLAST, "generate", "contacts", "--rows", str(rows), "--out", str(path), "--seed", "4"],
            check=True,
            cwd=ROOT,
        )
    return path


def write_campaign(
    name: str,
    contacts: Path,
    port: int,
    *,
    tls: str = "none",
    ca_file: Path | None = None,
    concurrency: int = 100,
) -> Path:
    """bench/out/send/campaigns/<name>.yml from bench/campaign/send.yml, for this run's sink."""
    template = (HERE / "campaign" / "send.yml").read_text()
    text = (
        template.replace("@NAME@", name)
        .replace("@CONTACTS@", str(contacts))
        .replace("@SEGMENT@", str(HERE / "campaign" / "everyone.yml"))
        .replace("@HTML@", str(HERE / "campaign" / "checkup.html.j2"))
        .replace("@TEXT@", str(HERE / "campaign" / "checkup.txt.j2"))
        .replace("@TLS@", tls)
        .replace("@PORT@", str(port))
        .replace("@CONCURRENCY@", str(concurrency))
    )
    if ca_file is not None:
        text = text.replace("# @CA_FILE@", f"ca_file: {ca_file}")
    path = OUT / "campaigns" / f"{name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def blast_cmd(campaign: Path, db: Path, workers: int) -> list[str]:
    return [
        BLAST,
        "run",
        str(campaign),
        "--db",
        f"sqlite:///{db}",
        "--workers",
        str(workers),
        "--quiet",
        "--json",
    ]


def fresh_db(name: str) -> Path:
    db = OUT / f"{name}.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


def blast(
    scenario: str,
    sink: Sink,
    campaign: Path,
    db: Path,
    workers: int,
    timeout: float,
) -> Result:
    cmd = blast_cmd(campaign, db, workers)
    result, stdout = run_measured(
        scenario, f"blast run --workers {workers}", cmd, sink, timeout=timeout
    )
    report = parse_json(stdout)
    if report:
        status = report.get("status", {})
        result.extra["status"] = {k: v for k, v in status.items() if v}
        result.extra["tls"] = report.get("tls")
        sent = status.get("sent")
        if sent is not None and sent != result.messages:
            result.note = (result.note + "; " if result.note else "") + (
                f"ledger says sent={sent}, sink counted {result.messages}"
            )
    return result


def parse_json(stdout: str) -> dict[str, object] | None:
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    with contextlib.suppress(ValueError):
        value = json.loads(stdout)
        if isinstance(value, dict):
            return value
    return None


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Goal:
    scenario: str
    text: str
    value: float | None
    target: float
    higher_is_better: bool = True

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        if self.higher_is_better:
            return self.value >= self.target
        return self.value <= self.target


@dataclasses.dataclass
class Scale:
    recipients: int
    source_messages: int
    bare_messages: int
    mailmerge_messages: int
    tls_recipients: int
    tls_ceiling_messages: int
    proxy_recipients: int
    proxy_mailmerge_messages: int
    proxy_bare_messages: int


def scale_for(args: argparse.Namespace) -> Scale:
    if args.quick:
        return Scale(20_000, 20_000, 10_000, 200, 5_000, 5_000, 5_000, 20, 1_000)
    n = args.recipients
    return Scale(
        recipients=n,
        source_messages=min(n, 200_000),
        bare_messages=min(n, 100_000),
        mailmerge_messages=args.mailmerge_messages,
        tls_recipients=min(n, args.tls_recipients),
        tls_ceiling_messages=min(n, 30_000),
        proxy_recipients=min(n, args.proxy_recipients),
        proxy_mailmerge_messages=100,
        proxy_bare_messages=min(n, 10_000),
    )


def scenario_plain(args: argparse.Namespace, scale: Scale, sink: Sink) -> tuple[list, list]:
    results: list[Result] = []
    source = smtp_source("plain", sink, sink.port, scale.source_messages, args.size)
    results.append(source)
    results.append(bare_loop("plain", sink, sink.port, scale.bare_messages, args.size))
    results.append(bare_loop("plain", sink, sink.port, scale.bare_messages, args.size, processes=2))
    merge = mailmerge("plain", sink, sink.port, scale.mailmerge_messages, OUT / "mailmerge")
    results.append(merge)
    goals: list[Goal] = []
    if not args.skip_blast:
        contacts = contacts_file(scale.recipients)
        campaign = write_campaign("bench-plain", contacts, sink.port, concurrency=args.concurrency)
        run = blast(
            "plain", sink, campaign, fresh_db("plain"), args.workers, timeout=args.blast_timeout
        )
        results.append(run)
        goals += [
            Goal("plain", "blast >= 8,000 msg/s (end to end)", run.rate, 8000),
            Goal("plain", "blast / smtp-source >= 0.32", ratio(run, source), 0.32),
            Goal("plain", "blast / mailmerge >= 20", ratio(run, merge), 20),
            Goal("plain", "peak RSS <= 600 MB", run.peak_rss_mb, 600, higher_is_better=False),
        ]
    return results, goals


def scenario_tls(args: argparse.Namespace, scale: Scale, sink: Sink) -> tuple[list, list]:
    port = free_port()
    postfix_dir = OUT / "postfix-tls"
    env = {**os.environ, "BLAST_BENCH_POSTFIX_DIR": str(postfix_dir)}
    script = str(HERE / "smtpd_tls.sh")
    subprocess.run([script, "setup", str(port), str(sink.port)], check=True, env=env)
    master = subprocess.Popen(
        [script, "run"], env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    ca = postfix_dir / "ca.pem"
    results: list[Result] = []
    goals: list[Goal] = []
    try:
        wait_for_port(port)
        one = bare_loop("tls", sink, port, scale.tls_ceiling_messages, args.size, ca_file=ca)
        two = bare_loop(
            "tls", sink, port, scale.tls_ceiling_messages, args.size, processes=2, ca_file=ca
        )
        results += [one, two]
        ceiling = max(one, two, key=lambda r: r.rate)
        if not args.skip_blast:
            contacts = contacts_file(scale.tls_recipients)
            campaign = write_campaign(
                "bench-tls",
                contacts,
                port,
                tls=args.tls_mode,
                ca_file=ca,
                concurrency=args.concurrency,
            )
            run = blast(
                "tls", sink, campaign, fresh_db("tls"), args.workers, timeout=args.blast_timeout
            )
            results.append(run)
            goals.append(Goal("tls", "blast / STARTTLS ceiling >= 0.75", ratio(run, ceiling), 0.75))
    finally:
        stop_process(master)
    return results, goals


def scenario_proxy(args: argparse.Namespace, scale: Scale, sink: Sink) -> tuple[list, list]:
    proxy = subprocess.Popen(
        [
            PY,
            str(HERE / "delay_proxy.py"),
            "--target",
            f"127.0.0.1:{sink.port}",
            "--delay-ms",
            "10",
            "--max-seconds",
            str(args.blast_timeout + 1200),
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    results: list[Result] = []
    goals: list[Goal] = []
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline().decode()
        port = int(line.rsplit(":", 1)[1])
        merge = mailmerge(
            "proxy", sink, port, scale.proxy_mailmerge_messages, OUT / "mailmerge-proxy"
        )
        results.append(merge)
        results.append(bare_loop("proxy", sink, port, scale.proxy_bare_messages, args.size))
        if not args.skip_blast:
            contacts = contacts_file(scale.proxy_recipients)
            campaign = write_campaign(
                "bench-proxy", contacts, port, concurrency=args.proxy_concurrency
            )
            run = blast(
                "proxy",
                sink,
                campaign,
                fresh_db("proxy"),
                args.workers,
                timeout=args.blast_timeout,
            )
            results.append(run)
            goals += [
                Goal("proxy", "blast >= 3,000 msg/s through 20 ms RTT", run.rate, 3000),
                Goal("proxy", "blast / mailmerge (same proxy) >= 400", ratio(run, merge), 400),
            ]
    finally:
        stop_process(proxy)
    return results, goals


def scenario_resume(args: argparse.Namespace, scale: Scale, sink: Sink) -> tuple[list, list]:
    if args.skip_blast:
        return [], []
    contacts = contacts_file(scale.recipients)
    campaign = write_campaign("bench-resume", contacts, sink.port, concurrency=args.concurrency)
    db = fresh_db("resume")
    cmd = blast_cmd(campaign, db, args.workers)
    half = scale.recipients // 2
    log(f"[resume] first run, SIGKILL after {half:,} messages: {shlex.join(cmd)}")
    base = sink.mark()
    first = subprocess.Popen(
        cmd,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reached = False
    deadline = time.monotonic() + args.blast_timeout
    while first.poll() is None and time.monotonic() < deadline:
        if sink.wait_above(base + half, 0.2):
            reached = True
            break
    if first.poll() is None:
        os.killpg(first.pid, signal.SIGKILL)  # the worker processes too
    first.wait()
    killed_at = sink.settle(quiet=1.0) - base
    note = "" if reached else "the first run ended before the half-way mark"
    log(f"    killed with {killed_at:,} messages at the sink")

    log(f"[resume] restart: {shlex.join(cmd)}")
    mark = sink.mark()
    started = time.perf_counter()
    second = subprocess.Popen(
        cmd,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sampler = TreeSampler(second.pid)
    seen = sink.wait_above(mark, 120)
    first_send = (sink.first_at - started) if seen and sink.first_at else None
    log(f"    first new message {first_send if first_send is None else round(first_send, 2)}s")
    if args.resume_finish:
        try:
            stdout, stderr = second.communicate(timeout=args.blast_timeout)
        except subprocess.TimeoutExpired:
            stop_process(second)
            stdout, stderr = second.communicate()
            note += "; restarted run timed out"
    else:
        stop_process(second)
        stdout, stderr = second.communicate()
    seconds = time.perf_counter() - started
    peak = sampler.stop()
    resumed = sink.settle(quiet=0.5) - mark
    total = killed_at + resumed
    report = parse_json(stdout.decode(errors="replace")) or {}
    status = {k: v for k, v in dict(report.get("status", {})).items() if v}  # type: ignore[call-overload]
    if second.returncode not in (0, None, -15) and not stdout:
        log(f"    stderr: {stderr.decode(errors='replace')[-2000:]}")
    result = Result(
        "resume",
        "blast run, SIGKILLed half way, restarted",
        resumed,
        seconds,
        None,
        peak,
        None,
        note,
        {
            "first_send_s": None if first_send is None else round(first_send, 2),
            "sink_at_kill": killed_at,
            "sink_total": total,
            "recipients": scale.recipients,
            "ledger": status,
        },
    )
    goals = [Goal("resume", "first new send after restart <= 5 s", first_send, 5.0, False)]
    return [result], goals


def ratio(a: Result, b: Result) -> float | None:
    return a.rate / b.rate if b.rate else None


# --------------------------------------------------------------------------------------------
# Machine info and the report
# --------------------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for package in ("aiosmtplib", "aiosmtpd", "uvloop", "sqlalchemy", "jinja2", "polars"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{package} {version(package)}")
    postfix = "?"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        postfix = subprocess.run(
            ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    commit = "?"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    load = os.getloadavg()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        "ram": f"{psutil.virtual_memory().total / 1024**3:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(versions) + f", mailmerge {mailmerge_version()}, Postfix {postfix}",
        "load average at start (1/5/15 min)": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def table(results: list[Result]) -> str:
    rows = [
        "| scenario | contestant | messages | wall s | msg/s | msg/s while sending "
        "| vs best C/bare | peak RSS MB | CPU s | CPU µs/msg | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_scenario: dict[str, list[Result]] = {}
    for r in results:
        by_scenario.setdefault(r.scenario, []).append(r)
    for scenario, group in by_scenario.items():
        reference = next((r for r in group if r.contestant.startswith("smtp-source")), None)
        if reference is None:
            bare = [r for r in group if r.contestant.startswith("bare")]
            reference = max(bare, key=lambda r: r.rate) if bare else None
        for r in group:
            rel = r.rate / reference.rate if reference and reference.rate else None
            per_message = r.cpu_seconds / r.messages * 1e6 if r.cpu_seconds and r.messages else None
            notes = r.note
            if r.extra:
                extras = ", ".join(f"{k}={v}" for k, v in r.extra.items() if v is not None)
                notes = f"{notes}; {extras}" if notes else extras
            rows.append(
                f"| {scenario} | {r.contestant} | {r.messages:,} | {r.seconds:.1f} "
                f"| {fmt(r.rate)} | {fmt(r.send_rate)} | {fmt(rel, 2, 'x')} "
                f"| {fmt(r.peak_rss_mb)} | {fmt(r.cpu_seconds, 1)} | {fmt(per_message)} | {notes} |"
            )
    return "\n".join(rows)


def goals_table(goals: list[Goal]) -> str:
    rows = ["| scenario | goal | measured | met |", "|---|---|---:|---|"]
    for g in goals:
        met = {True: "yes", False: "**no**", None: "not measured"}[g.met]
        rows.append(f"| {g.scenario} | {g.text} | {fmt(g.value, 2)} | {met} |")
    return "\n".join(rows)


def section(
    info: dict[str, str],
    command: str,
    results: list[Result],
    goals: list[Goal],
    notes: str = "",
) -> str:
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items() if k not in ("date", "commit"))
    return (
        "## send\n\n"
        f"Recorded {info['date']} at commit `{info['commit']}` with:\n\n"
        f"```\n{command}\n```\n\n"
        f"Machine (shared with other work while it ran; load average at start is below):\n"
        f"{machine}\n\n"
        f"{table(results)}\n\n"
        f"Goals (issue 4):\n\n{goals_table(goals)}\n\n"
        "Messages are what Postfix's smtp-sink counted for each contestant. `wall s` runs from "
        "process start to exit (for blast: loading contacts, building the ledger and sending); "
        "`msg/s while sending` from the first to the last message the sink saw. `vs best "
        "C/bare` divides by smtp-source (plain) or by the fastest bare aiosmtplib loop (tls, "
        "proxy). Peak RSS is the sum over the process tree, sampled every 0.1 s. CPU is user+sys "
        "of the contestant's process tree (not the sink's).\n"
        + (f"\n{notes.strip()}\n" if notes else "")
    )


def record(text: str) -> None:
    """Replace (or append) the ``## send`` section of bench/RESULTS.md, leaving others alone."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## send\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(updated.rstrip("\n") + "\n")


SCENARIOS = {
    "plain": scenario_plain,
    "tls": scenario_tls,
    "proxy": scenario_proxy,
    "resume": scenario_resume,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=1_000_000, help="plain/resume size")
    parser.add_argument("--tls-recipients", type=int, default=100_000)
    parser.add_argument("--proxy-recipients", type=int, default=200_000)
    parser.add_argument("--mailmerge-messages", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--size", type=int, default=3500, help="body bytes for C/bare senders")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100, help="campaign sending.concurrency")
    parser.add_argument("--proxy-concurrency", type=int, default=400)
    parser.add_argument("--tls-mode", default="forced", help="campaign tls: for the TLS scenario")
    parser.add_argument("--blast-timeout", type=float, default=1200)
    parser.add_argument("--skip-blast", action="store_true", help="only the other contestants")
    parser.add_argument(
        "--no-resume-finish",
        dest="resume_finish",
        action="store_false",
        help="stop the restarted run once it has sent (default: let it finish and count)",
    )
    parser.add_argument("--no-record", action="store_true", help="don't touch bench/RESULTS.md")
    parser.add_argument(
        "--notes", type=Path, default=None, help="Markdown file appended to the recorded section"
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    OUT.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    for key, value in info.items():
        log(f"{key}: {value}")
    scale = scale_for(args)
    sink = Sink(free_port())
    results: list[Result] = []
    goals: list[Goal] = []
    try:
        for name in chosen:
            more, more_goals = SCENARIOS[name](args, scale, sink)
            results += more
            goals += more_goals
    finally:
        sink.stop()
    info["load average at end"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    command = shlex.join(["python", "bench/send.py", *(argv if argv is not None else sys.argv[1:])])
    notes = args.notes.read_text() if args.notes else ""
    text = section(info, command, results, goals, notes)
    print(table(results))
    print()
    print(goals_table(goals))
    if not args.no_record:
        record(text)
        log(f"recorded in {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
