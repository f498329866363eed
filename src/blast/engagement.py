"""Behavioural fields from the engagement store, joined onto contacts by contact id.

The store (tracking events aggregated per contact) provides one row per contact with
``contact_id`` and the ``BEHAVIOURAL_FIELDS``. Until the tracking store exists the stats are
injected as a LazyFrame, and ``None`` means "no engagement yet": counts 0, timestamps null.
Join only when a segment reads one of these fields: it costs a hash join per scan.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

__all__ = ["BEHAVIOURAL_FIELDS", "ENGAGEMENT_SCHEMA", "with_engagement"]

_COUNT = pl.Int64()
_WHEN = pl.Datetime("us", "UTC")

ENGAGEMENT_SCHEMA: dict[str, pl.DataType] = {
    "opens_7d": _COUNT,
    "opens_30d": _COUNT,
    "opens_90d": _COUNT,
    "clicks_7d": _COUNT,
    "clicks_30d": _COUNT,
    "clicks_90d": _COUNT,
    "sends_30d": _COUNT,
    "sends_90d": _COUNT,
    "last_open_at": _WHEN,
    "last_click_at": _WHEN,
    "last_sent_at": _WHEN,
}
BEHAVIOURAL_FIELDS: tuple[str, ...] = tuple(ENGAGEMENT_SCHEMA)


def with_engagement(
    contacts: pl.LazyFrame,
    stats: pl.LazyFrame | None = None,
    *,
    id_column: str = "id",
    fields: Iterable[str] | None = None,
) -> pl.LazyFrame:
    """``contacts`` with the behavioural ``fields`` (default: all) added by a left join on id.

    A contact with no stats row gets 0 for the counts and null for the timestamps.
    ``stats`` has ``contact_id`` plus any of the fields; a missing field is treated as absent.
    """
    wanted = [name for name in BEHAVIOURAL_FIELDS if fields is None or name in set(fields)]
    if not wanted:
        return contacts
    if stats is None:
        return contacts.with_columns(
            pl.lit(0 if ENGAGEMENT_SCHEMA[name] == _COUNT else None, ENGAGEMENT_SCHEMA[name]).alias(
                name
            )
            for name in wanted
        )
    available = set(stats.collect_schema().names())
    id_dtype = contacts.collect_schema()[id_column]
    right = stats.select(
        pl.col("contact_id").cast(id_dtype).alias(id_column),
        *(
            (pl.col(name) if name in available else pl.lit(None))
            .cast(ENGAGEMENT_SCHEMA[name])
            .alias(name)
            for name in wanted
        ),
    )
    joined = contacts.join(right, on=id_column, how="left")
    return joined.with_columns(
        pl.col(name).fill_null(0) for name in wanted if ENGAGEMENT_SCHEMA[name] == _COUNT
    )
