"""Compile a rule tree to one Polars expression, checking it against the contacts schema.

``compile_rule`` is a single-dispatch function over the node types of ``rules.py``; operators come
from lookup tables. Nulls follow SQL's three-valued logic: a comparison with a null is null, and
``all`` / ``any`` / ``not`` are Kleene operations, so a null stays null through ``not``; only the
caller turns the final null into "not selected" (``fill_null(False)``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from blast.segments.rules import (
    All,
    AnyOf,
    Leaf,
    Not,
    RuleError,
    Scalar,
    SqlLeaf,
    did_you_mean,
)

__all__ = ["ALLOWED_OPERATORS", "CompileContext", "compile_rule", "family"]


@dataclass(frozen=True, slots=True)
class CompileContext:
    """What compiling needs: the columns available (contacts, behavioural, derived) and as-of."""

    schema: pl.Schema
    as_of: dt.date
    # Derived fields compiled in place of their column (see ``Derived.inlinable``).
    inline: Mapping[str, pl.Expr] = dataclasses.field(default_factory=dict)


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}

_ORDERED = {*_COMPARISONS, "between", "in", "not_in", "is_null", "not_null"}
_NULLS = {"is_null", "not_null"}

ALLOWED_OPERATORS: dict[str, frozenset[str]] = {
    "number": frozenset(_ORDERED),
    "string": frozenset({"eq", "ne", "in", "not_in", "matches", *_NULLS}),
    "boolean": frozenset({"eq", "ne", *_NULLS}),
    "date": frozenset({*_ORDERED, "within_days", "older_than_days"}),
    "list": frozenset({"contains", "not_contains", "contains_any", "contains_all", *_NULLS}),
}

_HINTS = {
    ("string", "contains"): "; use 'matches' for text",
    ("string", "not_contains"): "; use not + 'matches' for text",
    ("list", "eq"): "; use 'contains' / 'contains_all'",
    ("list", "in"): "; use 'contains_any'",
}


def family(dtype: pl.DataType) -> str:
    """The operator family of a column type: number, string, boolean, date, list or other."""
    if dtype.is_numeric():
        return "number"
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum):
        return "string"
    if isinstance(dtype, pl.Boolean):
        return "boolean"
    if isinstance(dtype, pl.Date | pl.Datetime):
        return "date"
    if isinstance(dtype, pl.List | pl.Array):
        return "list"
    return "other"


def _element_family(dtype: pl.DataType) -> str:
    inner = dtype.inner if isinstance(dtype, pl.List | pl.Array) else dtype
    return family(inner) if isinstance(inner, pl.DataType) else "other"


def _coerce(value: Scalar, kind: str, where: str) -> Scalar:
    """One YAML value as the Python value to compare with a column of ``kind``."""
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RuleError(where, "expects a number")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise RuleError(where, "expects text (quote it in YAML)")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise RuleError(where, "expects true or false")
        return value
    if kind == "date":
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise RuleError(where, "expects a date as YYYY-MM-DD") from None
        raise RuleError(where, "expects a date as YYYY-MM-DD")
    raise RuleError(where, f"cannot compare a column of this type ({kind})")


def _is_in(column: pl.Expr, values: tuple[Scalar, ...], dtype: pl.DataType) -> pl.Expr:
    if not values:
        return pl.lit(False)
    kind = family(dtype)
    target: pl.DataType
    if kind == "number":
        exact = dtype.is_integer() and all(isinstance(v, int) for v in values)
        target = pl.Int64() if exact else pl.Float64()
    else:
        target = {"string": pl.String(), "date": pl.Date(), "boolean": pl.Boolean()}[kind]
    listed = pl.lit(pl.Series(values, dtype=target)).implode()
    return column.cast(target).is_in(listed)


def _within_days(column: pl.Expr, days: int, as_of: dt.date) -> pl.Expr:
    return column.is_between(pl.lit(as_of - dt.timedelta(days=days)), pl.lit(as_of), closed="both")


def _contains_each(column: pl.Expr, values: tuple[Scalar, ...]) -> list[pl.Expr]:
    return [column.list.contains(pl.lit(value)) for value in values]


def _compare(fn: Callable[[Any, Any], Any], col: pl.Expr, value: Any, *_: Any) -> pl.Expr:
    return fn(col, pl.lit(value))


# Each builder takes (column, value, as_of, column dtype), the value already coerced to the
# column's type; the result is null wherever the column is null (three-valued logic).
_Builder = Callable[[pl.Expr, Any, dt.date, pl.DataType], pl.Expr]
_BUILDERS: dict[str, _Builder] = {
    **{op: functools.partial(_compare, fn) for op, fn in _COMPARISONS.items()},
    "between": lambda col, v, _a, _k: col.is_between(pl.lit(v[0]), pl.lit(v[1]), closed="both"),
    "in": lambda col, v, _a, dtype: _is_in(col, v, dtype),
    "not_in": lambda col, v, _a, dtype: ~_is_in(col, v, dtype) if v else pl.lit(True),
    "contains": lambda col, v, _a, _k: col.list.contains(pl.lit(v)),
    "not_contains": lambda col, v, _a, _k: ~col.list.contains(pl.lit(v)),
    "contains_any": lambda col, v, _a, _k: pl.any_horizontal(_contains_each(col, v)),
    "contains_all": lambda col, v, _a, _k: pl.all_horizontal(_contains_each(col, v)),
    "is_null": lambda col, _v, _a, _k: col.is_null(),
    "not_null": lambda col, _v, _a, _k: col.is_not_null(),
    "within_days": lambda col, days, as_of, _k: _within_days(col, days, as_of),
    "older_than_days": lambda col, days, as_of, _k: col < pl.lit(as_of - dt.timedelta(days=days)),
    "matches": lambda col, pattern, _a, _k: col.str.contains(pattern),
}

# How each operator's value is checked against the column's type before building.
_VALUE_SHAPE = {
    "between": "each",
    "in": "each",
    "not_in": "each",
    "contains_any": "each_element",
    "contains_all": "each_element",
    "contains": "element",
    "not_contains": "element",
    "is_null": "as_is",
    "not_null": "as_is",
    "within_days": "as_is",
    "older_than_days": "as_is",
    "matches": "as_is",
}


def _column(name: str, schema: pl.Schema, where: str) -> pl.DataType:
    if name not in schema:
        raise RuleError(where, f"unknown column '{name}'{did_you_mean(name, list(schema))}")
    return schema[name]


@functools.singledispatch
def compile_rule(node: object, ctx: CompileContext) -> pl.Expr:
    """Compile a rule node to a boolean ``pl.Expr`` (null where SQL would say unknown)."""
    path = getattr(node, "path", "where")
    raise RuleError(path, f"cannot compile a rule of type {type(node).__name__}")


@compile_rule.register
def _leaf(node: Leaf, ctx: CompileContext) -> pl.Expr:
    dtype = _column(node.field, ctx.schema, f"{node.path}.field")
    kind = family(dtype)
    if node.op not in ALLOWED_OPERATORS.get(kind, frozenset()):
        hint = _HINTS.get((kind, node.op), "")
        raise RuleError(
            node.at, f"'{node.op}' does not apply to column '{node.field}' ({dtype}){hint}"
        )
    shape = _VALUE_SHAPE.get(node.op, "one")
    value: Any = node.value
    if shape == "one":
        value = _coerce(value, kind, node.at)
    elif shape == "each":
        value = tuple(_coerce(item, kind, node.at) for item in value)
    elif shape == "element":
        value = _coerce(value, _element_family(dtype), node.at)
    elif shape == "each_element":
        value = tuple(_coerce(item, _element_family(dtype), node.at) for item in value)
    column = ctx.inline.get(node.field, pl.col(node.field))
    if isinstance(dtype, pl.Datetime):
        column = column.dt.date()  # timestamps compare by their calendar date
    elif isinstance(dtype, pl.Categorical | pl.Enum):
        column = column.cast(pl.String)
    return _BUILDERS[node.op](column, value, ctx.as_of, dtype)


@compile_rule.register
def _sql(node: SqlLeaf, ctx: CompileContext) -> pl.Expr:
    expr = node.expr()
    for name in expr.meta.root_names():
        _column(name, ctx.schema, f"{node.path}.sql")
    try:
        dtype = pl.LazyFrame(schema=ctx.schema).select(expr.alias("rule")).collect_schema()["rule"]
    except pl.exceptions.PolarsError:
        raise RuleError(f"{node.path}.sql", "cannot be evaluated on these columns") from None
    if not isinstance(dtype, pl.Boolean):
        raise RuleError(f"{node.path}.sql", f"must be true/false, not {dtype}")
    return expr


@compile_rule.register
def _all(node: All, ctx: CompileContext) -> pl.Expr:
    if not node.children:
        return pl.lit(True)
    return pl.all_horizontal([compile_rule(child, ctx) for child in node.children])


@compile_rule.register
def _any(node: AnyOf, ctx: CompileContext) -> pl.Expr:
    if not node.children:
        return pl.lit(False)
    return pl.any_horizontal([compile_rule(child, ctx) for child in node.children])


@compile_rule.register
def _not(node: Not, ctx: CompileContext) -> pl.Expr:
    return ~compile_rule(node.child, ctx)
