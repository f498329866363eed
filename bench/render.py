"""Render + MIME throughput: one process, click and open tracking on, per-recipient tokens.

    .venv/bin/python bench/render.py [--rows 100000] [--campaign campaigns/flu-shot.yml] [--no-dlp]

Contacts come from ``blast.generate.contacts_frame`` (synthetic, deterministic); only the fields
the templates use are loaded, as a run would. Loading is not timed; rendering is: template
execution, tracking tokens, DLP, body encoding (7bit when a part allows, else quoted-printable),
headers, the whole message bytes. How many parts went 7bit is counted after the timed loop, on
the first 2,000 contacts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from blast.config import load_campaign
from blast.delivery import Message
from blast.errors import BlockedMessage
from blast.generate import AS_OF, contacts_frame
from blast.render import Renderer

ROOT = Path(__file__).parents[1]
_TRANSFER_ENCODING = re.compile(rb"Content-Transfer-Encoding: ([\w-]+)")


def part_encodings(render: Callable[..., Message], rows: list[dict[str, Any]]) -> Counter[bytes]:
    """How many body parts of these rows' messages went out in each transfer encoding."""
    found: Counter[bytes] = Counter()
    for row in rows:
        try:
            data = render(row_id=row["id"], recipient=row["email"], context=row).data
        except BlockedMessage:
            continue
        found.update(_TRANSFER_ENCODING.findall(data))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--campaign", default=str(ROOT / "campaigns" / "flu-shot.yml"))
    parser.add_argument("--no-dlp", action="store_true", help="Drop the campaign's DLP rules.")
    args = parser.parse_args()

    campaign = load_campaign(args.campaign)
    if args.no_dlp:
        campaign = campaign.model_copy(update={"dlp": []})
    renderer = Renderer.from_campaign(
        campaign, run_id="bench-run-2026-12-01", tracking_key=b"\x07" * 32, sensitive=False
    )
    assert campaign.tracking.clicks and campaign.tracking.opens, "bench needs tracking on"
    age = (pl.lit(AS_OF).dt.year() - pl.col("birth_date").dt.year()).alias("age")
    frame = contacts_frame(1, args.rows + 1).with_columns(age).collect()
    columns = ["id", "email", *sorted(renderer.fields)]
    rows = frame.select(columns).to_dicts()

    render = renderer.render
    blocked = 0
    size = 0
    start = time.perf_counter()
    cpu = time.process_time()
    for row in rows:
        try:
            message = render(row_id=row["id"], recipient=row["email"], context=row)
        except BlockedMessage:
            blocked += 1
            continue
        size += len(message.data)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    done = len(rows) - blocked
    encodings = part_encodings(render, rows[:2000])
    print(
        f"{len(rows):,} contacts, {done:,} messages ({blocked} blocked), "
        f"{len(renderer.links)} tracked links + pixel, {len(campaign.dlp)} DLP rules, "
        f"mean {size // max(done, 1):,} bytes: "
        f"{elapsed:.2f} s wall, {len(rows) / elapsed:,.0f} msg/s; {cpu:.2f} s CPU, "
        f"{len(rows) / cpu:,.0f} msg/CPU-s, {cpu / len(rows) * 1e6:.1f} CPU-µs/msg\n"
        f"body parts of the first 2,000: "
        f"{', '.join(f'{n:,} {name.decode()}' for name, n in encodings.most_common())}\n"
        f"Python {sys.version.split()[0]}, {platform.machine()}, {platform.processor() or '?'}, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, {dt.date.today()}"
    )


if __name__ == "__main__":
    main()
