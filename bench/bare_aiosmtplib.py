"""The floor a Python sender stands on: aiosmtplib + uvloop, N reused connections, no rendering.

    python bench/bare_aiosmtplib.py --port 2525 --count 200000 --connections 50 [--processes 2]
    python bench/bare_aiosmtplib.py --port 2465 --starttls --ca-file ca.pem --count 50000

Each connection sends one pre-built message after another in lock-step (MAIL, RCPT, DATA each
waiting for its reply, as aiosmtplib does), RSET between messages. ``--processes`` splits the
count across that many processes. Prints one JSON line: ``{"sent", "failed", "seconds"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import ssl
import sys
import time

__all__ = ["run"]


def _message(size: int) -> bytes:
    body = ("x" * 76 + "\r\n") * max(1, size // 78)
    return (
        "From: Bench <bench@sender.example>\r\nTo: <rcpt@example.com>\r\n"
        "Subject: bench\r\nMessage-ID: <bench@sender.example>\r\n\r\n" + body
    ).encode()


async def _connection(
    args: argparse.Namespace, share: list[int], message: bytes, context: ssl.SSLContext | None
) -> tuple[int, int]:
    import aiosmtplib

    smtp = aiosmtplib.SMTP(
        hostname=args.host, port=args.port, start_tls=False, tls_context=context, timeout=60
    )
    await smtp.connect()
    if context is not None:
        await smtp.starttls(tls_context=context)
    sent = failed = 0
    while share[0] > 0:
        share[0] -= 1
        try:
            await smtp.sendmail("bench@sender.example", [f"r{share[0]}@example.com"], message)
            sent += 1
        except aiosmtplib.SMTPException:
            failed += 1
    try:
        await smtp.quit()
    except aiosmtplib.SMTPException:
        pass
    return sent, failed


async def _run_async(args: argparse.Namespace, count: int) -> tuple[int, int]:
    context = None
    if args.starttls:
        context = ssl.create_default_context(cafile=args.ca_file)
    share = [count]  # a shared countdown: connections take messages until none are left
    message = _message(args.size)
    results = await asyncio.gather(
        *(_connection(args, share, message, context) for _ in range(args.connections))
    )
    return sum(r[0] for r in results), sum(r[1] for r in results)


def _worker(args: argparse.Namespace, count: int) -> tuple[int, int]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_run_async(args, count))


def run(args: argparse.Namespace) -> dict[str, float]:
    """Send ``args.count`` messages; return sent, failed and wall seconds."""
    started = time.perf_counter()
    if args.processes <= 1:
        sent, failed = _worker(args, args.count)
    else:
        shares = [args.count // args.processes] * args.processes
        shares[0] += args.count - sum(shares)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.processes) as pool:
            results = pool.starmap(_worker, [(args, n) for n in shares])
        sent, failed = sum(r[0] for r in results), sum(r[1] for r in results)
    return {"sent": sent, "failed": failed, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--size", type=int, default=1000, help="body bytes (default 1000)")
    parser.add_argument("--starttls", action="store_true")
    parser.add_argument("--ca-file", default=None)
    args = parser.parse_args(argv)
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
