"""A small self-contained campaign for run, crash and worker tests: contacts, a segment that
matches everyone, text templates and the campaign YAML, all in one folder."""

from __future__ import annotations

from pathlib import Path

import polars as pl

TEXT = """Dear {{ first_name }},

Your appointment is on {{ visit_date | date("%d %B %Y") }}.

--
Riverside Health, {{ campaign.postal_address }}
Unsubscribe: {{ unsubscribe_url }}
"""


def write_contacts(path: Path, n: int, *, first_name: str = "Ana") -> Path:
    """``n`` contacts with a few columns the templates do not use (never frozen)."""
    pl.DataFrame(
        {
            "id": list(range(1, n + 1)),
            "email": [
                f"patient{i}@{('north', 'south', 'east')[i % 3]}.example" for i in range(1, n + 1)
            ],
            "first_name": [f"{first_name}{i}" for i in range(1, n + 1)],
            "visit_date": ["2026-03-01"] * n,
            "diagnosis": ["confidential"] * n,
        }
    ).write_csv(path)
    return path


def write_campaign(
    folder: Path,
    *,
    n: int = 50,
    name: str = "trial",
    transport: str = "kind: outbox\n  path: outbox",
    tls: str = "none",
    on_unknown: str = "skip",
    concurrency: int = 10,
    in_flight: int | None = None,
    rate: float | None = None,
    batch_size: int = 50,
) -> Path:
    """Write the campaign folder and return the campaign file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_contacts(folder / "contacts.csv", n)
    (folder / "everyone.yml").write_text(
        "name: everyone\ndescription: all contacts\nwhere: {field: id, gte: 0}\n"
    )
    (folder / "note.txt.j2").write_text(TEXT)
    sending = (
        f"concurrency: {concurrency}, per_domain_connections: {concurrency}, "
        f"retry_hours: 1, batch_size: {batch_size}"
    )
    if in_flight:
        sending += f", in_flight: {in_flight}"
    if rate:
        sending += f", rate_per_second: {rate}"
    campaign = folder / "campaign.yml"
    campaign.write_text(
        f"""name: {name}
contacts: contacts.csv
segment: everyone.yml
from: "Riverside Health <news@riverside.example>"
subject: "Hello {{{{ first_name }}}}"
template: {{text: note.txt.j2}}
postal_address: "1 Main St, Springfield, MA 01101"
tls: {tls}
transport:
  {transport}
on_unknown: {on_unknown}
tracking: {{base_url: "https://t.riverside.example"}}
sending: {{{sending}}}
"""
    )
    return campaign
