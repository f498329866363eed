"""Derived fields (``derive:``): computed columns a segment's rules can use like any other.

Three kinds, each a small immutable value checked when built::

    age: {years_since: birth_date}       # whole years completed as of the as-of date
    days_since_visit: {days_since: last_visit}
    risk: "no_shows_12m * 2 + CASE WHEN a1c > 9 THEN 3 ELSE 0 END"   # Polars SQL; may use as_of

A derived field may use another; they are ordered by dependency and a cycle is an error. The
as-of date reaches SQL as a column named ``as_of`` (``AS_OF_COLUMN``) that exists only while
the segment is evaluated.
"""

from __future__ import annotations

import datetime as dt
import graphlib
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import polars as pl

from blast.segments.rules import RuleError, did_you_mean

__all__ = ["AS_OF_COLUMN", "DERIVE_KINDS", "Derived", "parse_derive"]

AS_OF_COLUMN = "as_of"
DERIVE_KINDS = ("years_since", "days_since", "sql")


def _years_since(start: pl.Expr, as_of: dt.date) -> pl.Expr:
    """Whole years completed from ``start`` to ``as_of`` (a 29 February anniversary counts
    from 1 March in other years)."""
    start = start.dt.date()
    not_yet = (start.dt.month().cast(pl.Int32) * 100 + start.dt.day().cast(pl.Int32)) > (
        as_of.month * 100 + as_of.day
    )
    return pl.lit(as_of.year, pl.Int32) - start.dt.year().cast(pl.Int32) - not_yet.cast(pl.Int32)


def _days_since(start: pl.Expr, as_of: dt.date) -> pl.Expr:
    return (pl.lit(as_of) - start.dt.date()).dt.total_days().cast(pl.Int64)


_HELPERS = {"years_since": _years_since, "days_since": _days_since}


@dataclass(frozen=True, slots=True)
class Derived:
    """One derived field: ``name`` computed by ``kind`` from ``source`` (a column or SQL)."""

    name: str
    kind: str
    source: str
    path: str = dc_field(default="derive", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in DERIVE_KINDS:
            raise RuleError(
                self.path, f"unknown kind '{self.kind}'{did_you_mean(self.kind, DERIVE_KINDS)}"
            )
        if not isinstance(self.source, str) or not self.source.strip():
            raise RuleError(
                self.path,
                f"'{self.kind}' takes a "
                + ("SQL expression" if self.kind == "sql" else "column name"),
            )
        if self.kind == "sql":
            self._sql()

    def _sql(self) -> pl.Expr:
        try:
            return pl.sql_expr(self.source)
        except (pl.exceptions.PolarsError, ValueError, TypeError):
            raise RuleError(self.path, "not a valid SQL expression") from None

    @property
    def inputs(self) -> tuple[str, ...]:
        """The columns (or other derived fields, or ``as_of``) this field reads."""
        if self.kind == "sql":
            return tuple(self._sql().meta.root_names())
        return (self.source,)

    @property
    def inlinable(self) -> bool:
        """True when the field is a function of one source column (no SQL): rules can then
        use its expression directly, which keeps their filter pushed down into the scan."""
        return self.kind != "sql"

    def compute(self, as_of: dt.date) -> pl.Expr:
        """The unnamed Polars expression computing this field."""
        if self.kind == "sql":
            return self._sql()
        return _HELPERS[self.kind](pl.col(self.source), as_of)

    def expr(self, as_of: dt.date) -> pl.Expr:
        """The Polars expression computing this field, named after it."""
        return self.compute(as_of).alias(self.name)


def _parse_one(name: Any, spec: Any, path: str) -> Derived:
    here = f"{path}.{name}"
    if not isinstance(name, str) or not name.isidentifier():
        raise RuleError(here, "a derived field's name must be an identifier (letters, digits, _)")
    if name == AS_OF_COLUMN:
        raise RuleError(here, f"'{AS_OF_COLUMN}' is reserved for the as-of date")
    if isinstance(spec, str):
        return Derived(name, "sql", spec, here)
    if isinstance(spec, Mapping) and len(spec) == 1:
        ((kind, source),) = spec.items()
        return Derived(name, str(kind), source, f"{here}.{kind}" if kind in DERIVE_KINDS else here)
    raise RuleError(
        here, "expected {years_since: COLUMN}, {days_since: COLUMN} or a SQL expression"
    )


def parse_derive(data: Any, path: str = "derive") -> tuple[Derived, ...]:
    """Parse ``derive:`` and order the fields so that each comes after those it uses."""
    if data is None:
        return ()
    if not isinstance(data, Mapping):
        raise RuleError(path, "expected a mapping of field name to definition")
    fields = {name: _parse_one(name, spec, path) for name, spec in data.items()}
    graph = {name: [dep for dep in item.inputs if dep in fields] for name, item in fields.items()}
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle = list(reversed(exc.args[1]))
        raise RuleError(path, f"derived fields form a cycle: {' -> '.join(cycle)}") from None
    return tuple(fields[name] for name in order)
