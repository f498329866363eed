"""Run a segment over contacts: the audience frame, its count, a sample.

Everything is one lazy query per call, so Polars reads only the columns the rules use
(projection pushdown) and never materialises the contacts for a count. The plan, built by
``prepare``:

1. behavioural fields joined from the engagement stats, only those the rules read;
2. ``as_of`` as a literal column, only when a SQL rule or derived field mentions it;
3. each excluded segment's membership as a boolean column (its own derived fields dropped after);
4. this segment's derived fields, in dependency order;
5. ``member``: the compiled ``where`` with unknown (null) read as "no", and no exclusion.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from blast.engagement import BEHAVIOURAL_FIELDS, with_engagement
from blast.errors import ConfigError
from blast.segments.compile import CompileContext, compile_rule
from blast.segments.derive import AS_OF_COLUMN
from blast.segments.rules import RuleError, did_you_mean
from blast.segments.segment import Segment

if TYPE_CHECKING:
    from blast.contacts import Contacts

__all__ = ["Prepared", "SegmentCount", "audience", "count", "prepare", "sample"]

_EXCLUDED = "__blast_excluded_{}"


@dataclass(frozen=True, slots=True)
class SegmentCount:
    """``count`` contacts match, out of ``total`` loaded (the ``--json`` shape of the CLI)."""

    segment: str
    count: int
    total: int

    def as_dict(self) -> dict[str, str | int]:
        return {"segment": self.segment, "count": self.count, "total": self.total}


@dataclass(frozen=True, slots=True)
class Prepared:
    """A segment ready to run: ``frame`` carries every column ``member`` needs."""

    segment: Segment
    frame: pl.LazyFrame
    member: pl.Expr
    context: CompileContext
    helper_columns: tuple[str, ...]
    as_of: dt.date
    contacts: pl.LazyFrame  # as loaded, before any join or filter
    excluded: tuple[pl.Expr, ...]  # membership of each excluded segment, in order
    loaded: Contacts | None = None
    id_column: str = "id"
    email_column: str = "email"

    def compile(self, node: object) -> pl.Expr:
        """Compile one node of this segment's tree in its context (used by ``explain``)."""
        try:
            return compile_rule(node, self.context)
        except RuleError as exc:
            raise ConfigError(f"{self.segment.source}: {exc}") from None


def _with_derived(frame: pl.LazyFrame, segment: Segment, as_of: dt.date) -> pl.LazyFrame:
    for item in segment.derive:
        schema = frame.collect_schema()
        if item.name in schema:
            raise ConfigError(
                f"{segment.source}: {item.path}: '{item.name}' is already a column; "
                "choose another name"
            )
        for name in item.inputs:
            if name not in schema:
                raise ConfigError(
                    f"{segment.source}: {item.path}: unknown column "
                    f"'{name}'{did_you_mean(name, list(schema))}"
                )
        frame = frame.with_columns(item.expr(as_of))
        try:
            frame.collect_schema()
        except pl.exceptions.PolarsError:
            raise ConfigError(
                f"{segment.source}: {item.path}: cannot be computed from these columns "
                "(check the column types)"
            ) from None
    return frame


def _plan(
    segment: Segment,
    frame: pl.LazyFrame,
    as_of: dt.date,
    names: Iterator[str],
    *,
    keep_derived: bool,
) -> tuple[pl.LazyFrame, pl.Expr, CompileContext, list[str], list[pl.Expr]]:
    """Return (frame, member, context, helper columns, exclusions) for ``segment``.

    Derived fields that are plain functions of a column are compiled inline, so the filter
    only names source columns and Polars pushes it into the scan. An excluded segment is inlined
    the same way unless it has SQL-derived fields; then its membership becomes a helper column
    (its derived columns are dropped again, so names can repeat across segments).
    """
    helpers: list[str] = []
    excluded: list[pl.Expr] = []
    for other in segment.exclude:
        frame, other_member, _, inner, _ = _plan(other, frame, as_of, names, keep_derived=False)
        helpers.extend(inner)
        if all(item.inlinable for item in other.derive):
            excluded.append(other_member)
            continue
        column = next(names)
        frame = frame.with_columns(other_member.alias(column)).drop(list(other.derived_names))
        helpers.append(column)
        excluded.append(pl.col(column))
    derived_frame = _with_derived(frame, segment, as_of)
    inline = {item.name: item.compute(as_of) for item in segment.derive if item.inlinable}
    context = CompileContext(derived_frame.collect_schema(), as_of, inline)
    try:
        member = compile_rule(segment.where, context).fill_null(False)
    except RuleError as exc:
        raise ConfigError(f"{segment.source}: {exc}") from None
    if excluded:
        member = member & ~pl.any_horizontal(excluded)
    if keep_derived or not all(item.inlinable for item in segment.derive):
        frame = derived_frame
    return frame, member, context, helpers, excluded


def prepare(
    segment: Segment,
    contacts: Contacts | pl.LazyFrame,
    *,
    as_of: dt.date | None = None,
    engagement: pl.LazyFrame | None = None,
    id_column: str = "id",
) -> Prepared:
    """Check ``segment`` against the contacts' columns and build its lazy plan.

    ``contacts`` is what ``blast.contacts.load_contacts`` returns (its id and email columns
    are used, and ``count`` checks its ids), or a bare LazyFrame with ``id_column``.

    ``engagement`` is the per-contact stats frame (``blast.engagement``); None means no
    engagement recorded yet. ``as_of`` defaults to today. Raises ``ConfigError`` naming the
    segment file and YAML path when a rule does not fit the data.
    """
    as_of = as_of or dt.date.today()
    if isinstance(contacts, pl.LazyFrame):
        loaded, source = None, contacts
    else:
        loaded, source, id_column = contacts, contacts.frame, contacts.id_column
    try:
        columns = source.collect_schema().names()
    except pl.exceptions.PolarsError:
        raise ConfigError(f"{segment.source}: cannot read the contacts' columns") from None
    wanted = segment.input_columns()
    frame = source
    behavioural = [name for name in BEHAVIOURAL_FIELDS if name in wanted and name not in columns]
    if behavioural:
        frame = with_engagement(frame, engagement, id_column=id_column, fields=behavioural)
    helpers: list[str] = []
    if AS_OF_COLUMN in wanted:
        if AS_OF_COLUMN in columns:
            raise ConfigError(
                f"{segment.source}: the contacts have a column named '{AS_OF_COLUMN}', "
                "which segments reserve for the as-of date"
            )
        frame = frame.with_columns(pl.lit(as_of).alias(AS_OF_COLUMN))
        helpers.append(AS_OF_COLUMN)
    names = (_EXCLUDED.format(i) for i in itertools.count())
    frame, member, context, inner, excluded = _plan(segment, frame, as_of, names, keep_derived=True)
    return Prepared(
        segment,
        frame,
        member,
        context,
        (*helpers, *inner),
        as_of,
        source,
        tuple(excluded),
        loaded,
        id_column,
        loaded.email_column if loaded else "email",
    )


def _collect_all(prepared: Prepared, queries: list[pl.LazyFrame]) -> list[pl.DataFrame]:
    if prepared.loaded is not None:
        with prepared.loaded.reading():  # one line naming source and column, never a value
            return pl.collect_all(queries)
    try:
        return pl.collect_all(queries)
    except pl.exceptions.PolarsError as exc:
        # Polars' messages can quote data values; keep only the kind of failure.
        raise ConfigError(
            f"{prepared.segment.source}: cannot evaluate on these contacts ({type(exc).__name__})"
        ) from None


def _collect(prepared: Prepared, query: pl.LazyFrame) -> pl.DataFrame:
    return _collect_all(prepared, [query])[0]


def audience(prepared: Prepared) -> pl.LazyFrame:
    """The matching contacts, lazily: their columns plus derived and behavioural fields."""
    return prepared.frame.filter(prepared.member).drop(list(prepared.helper_columns))


def count(prepared: Prepared, *, check_ids: bool = True) -> SegmentCount:
    """How many contacts match (and are in no excluded segment), out of all loaded.

    The matching rows are counted with a filter, which Polars pushes into the Parquet reader;
    the total (and, for loaded ``Contacts`` with ``check_ids``, the duplicate/missing id
    check: a ``DataError``) come from a second query over the id column alone, run alongside.
    """
    matching = prepared.frame.filter(prepared.member).select(pl.len())
    loaded = prepared.loaded if check_ids else None
    checks = loaded.id_check_exprs() if loaded is not None else []
    totals = prepared.contacts.select(pl.len().alias("total"), *checks)
    found, summary = _collect_all(prepared, [matching, totals])
    row = summary.row(0, named=True)
    if loaded is not None:
        loaded.raise_for_ids(row)
    return SegmentCount(prepared.segment.name, int(found.item()), int(row["total"]))


def sample(prepared: Prepared, n: int = 10, *, seed: int | None = None) -> pl.DataFrame:
    """Up to ``n`` random matching contacts, by id: id, email and the fields the rules use."""
    fields = [name for name in prepared.segment.fields if name != AS_OF_COLUMN]
    shown = list(dict.fromkeys([prepared.id_column, prepared.email_column, *fields]))
    matching = _collect(prepared, audience(prepared).select(shown))
    if matching.height > n:
        matching = matching.sample(n, seed=seed)
    return matching.sort(prepared.id_column)
