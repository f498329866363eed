"""Shared test data for the segment tests: generated contacts with extra nulls, and engagement.

The generator gives realistic data but few nulls in some columns, so a deterministic share of
rows gets nulls in list, string, boolean, date and integer columns too: the three-valued logic
must hold for every type. The engagement stats cover two thirds of the contacts, so the join's
"no row -> 0 / null" rule is exercised.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import polars as pl

from blast.generate import generate_contacts

AS_OF = dt.date(2026, 12, 1)
ROWS = 8_000

_NULLS = {
    "conditions": 13,
    "vaccinations": 31,
    "zip": 11,
    "gender": 17,
    "smoker": 19,
    "birth_date": 23,
    "no_shows_12m": 29,
    "language": 37,
}


def make_dataset(directory: Path, rows: int = ROWS, seed: int = 11) -> tuple[Path, Path]:
    """Write ``contacts.parquet`` and ``engagement.parquet`` into ``directory``."""
    raw = generate_contacts(rows, directory / "raw.parquet", seed=seed)
    frame = pl.read_parquet(raw)
    frame = frame.with_columns(
        pl.when(pl.col("id") % every == 0).then(None).otherwise(pl.col(name)).alias(name)
        for name, every in _NULLS.items()
    )
    contacts = directory / "contacts.parquet"
    frame.write_parquet(contacts)
    raw.unlink()

    ids = frame.filter(pl.col("id") % 3 != 0).get_column("id")
    h = (ids * 2654435761) % 1000
    start = dt.datetime(2026, 8, 1, tzinfo=dt.UTC)
    stats = pl.DataFrame(
        {
            "contact_id": ids,
            "opens_7d": h % 3,
            "opens_30d": h % 5,
            "opens_90d": h % 9,
            "clicks_7d": h % 2,
            "clicks_30d": h % 4,
            "clicks_90d": h % 6,
            "sends_30d": h % 4,
            "sends_90d": h % 10,
        }
    ).with_columns(
        (
            pl.when(pl.col("opens_90d") > 0)
            .then(pl.lit(start) + pl.duration(hours=pl.col("contact_id") * 37 % 3000))
            .otherwise(None)
            .alias(name)
        )
        for name in ("last_open_at", "last_click_at", "last_sent_at")
    )
    engagement = directory / "engagement.parquet"
    stats.write_parquet(engagement)
    return contacts, engagement


def duck_people(contacts: Path, engagement: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a ``people`` view: contacts left-joined to engagement by hand."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    counts = [
        "opens_7d",
        "opens_30d",
        "opens_90d",
        "clicks_7d",
        "clicks_30d",
        "clicks_90d",
        "sends_30d",
        "sends_90d",
    ]
    coalesced = ", ".join(f"coalesce(e.{name}, 0) AS {name}" for name in counts)
    con.execute(
        f"""
        CREATE VIEW people AS
        SELECT c.*, {coalesced}, e.last_open_at, e.last_click_at, e.last_sent_at
        FROM read_parquet('{contacts}') c
        LEFT JOIN read_parquet('{engagement}') e ON c.id = e.contact_id
        """
    )
    return con


def duck_ids(con: duckdb.DuckDBPyConnection, where: str) -> list[int]:
    """Ids selected by a DuckDB WHERE clause over ``people``, sorted."""
    return [
        row[0] for row in con.execute(f"SELECT id FROM people WHERE {where} ORDER BY id").fetchall()
    ]
