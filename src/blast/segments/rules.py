"""The typed rule tree of a segment's ``where:``, parsed from YAML.

A node is small and immutable, and checks itself when it is built: an operator it does not know,
a value of the wrong shape, a regular expression that does not compile or SQL that does not parse
never reaches the compiler. Checks that need the contacts schema (does the column exist, does the
operator fit its type) happen when the tree is compiled (``compile.py``).

Every node carries ``path``, its place in the YAML (``where.all[2].any[0]``), so that any error
names it. Messages name files, paths, columns and operators only, never a contact's values.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, TypeAlias

import polars as pl

from blast.errors import ConfigError

__all__ = [
    "COMBINATORS",
    "OPERATORS",
    "All",
    "AnyOf",
    "Leaf",
    "Node",
    "Not",
    "RuleError",
    "SqlLeaf",
    "did_you_mean",
    "parse_rule",
]

Scalar: TypeAlias = bool | int | float | str | dt.date
Value: TypeAlias = Scalar | tuple[Scalar, ...] | None

# The shape of each operator's value: a scalar, a [low, high] pair, a list, a day count, a regex,
# or the word `true` (is_null / not_null).
OPERATORS: dict[str, str] = {
    "eq": "scalar",
    "ne": "scalar",
    "lt": "scalar",
    "lte": "scalar",
    "gt": "scalar",
    "gte": "scalar",
    "between": "pair",
    "in": "list",
    "not_in": "list",
    "contains": "scalar",
    "not_contains": "scalar",
    "contains_any": "nonempty_list",
    "contains_all": "nonempty_list",
    "is_null": "true",
    "not_null": "true",
    "within_days": "days",
    "older_than_days": "days",
    "matches": "regex",
}
COMBINATORS = ("all", "any", "not")


class RuleError(ConfigError):
    """A rule is invalid. ``path`` is its YAML path; the loader prefixes the file name."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.detail = message


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when a close match exists, else an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_scalar(value: object) -> bool:
    return isinstance(value, bool | int | float | str | dt.date)


def _check_value(op: str, value: object, where: str) -> Value:
    """Check the value's shape for ``op`` and return it frozen (lists become tuples)."""
    shape = OPERATORS[op]
    if shape == "true":
        if value is not True:
            other = {"is_null": "not_null", "not_null": "is_null"}[op]
            raise RuleError(where, f"'{op}' takes the value true (for the opposite use '{other}')")
        return True
    if shape == "days":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RuleError(where, f"'{op}' takes a whole number of days >= 0")
        return value
    if shape == "regex":
        if not isinstance(value, str):
            raise RuleError(where, "'matches' takes a regular expression (a string)")
        try:
            pl.select(pl.lit("", dtype=pl.String).str.contains(value))
        except pl.exceptions.PolarsError:
            raise RuleError(where, "invalid regular expression") from None
        return value
    if shape == "scalar":
        if not _is_scalar(value):
            raise RuleError(where, f"'{op}' takes a single value, not {_kind(value)}")
        return value  # type: ignore[return-value]
    if not isinstance(value, list | tuple) or not all(_is_scalar(item) for item in value):
        raise RuleError(where, f"'{op}' takes a list of values (no nulls), not {_kind(value)}")
    if shape == "pair" and len(value) != 2:
        raise RuleError(where, "'between' takes two values: [low, high]")
    if shape == "nonempty_list" and not value:
        raise RuleError(where, f"'{op}' takes a non-empty list")
    return tuple(value)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "a list containing a null or a nested value" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


@dataclass(frozen=True, slots=True)
class Leaf:
    """``{field: NAME, OP: VALUE}``: one comparison of one column."""

    field: str
    op: str
    value: Value
    path: str = dc_field(default="where", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not self.field:
            raise RuleError(f"{self.path}.field", "must be a column name")
        if self.op not in OPERATORS:
            raise RuleError(
                self.path,
                f"unknown operator '{self.op}'{did_you_mean(self.op, list(OPERATORS))}; "
                f"expected one of {', '.join(OPERATORS)}",
            )
        object.__setattr__(self, "value", _check_value(self.op, self.value, self.at))

    @property
    def at(self) -> str:
        """The YAML path of this leaf's value (``where.all[0].gte``)."""
        return f"{self.path}.{self.op}"


@dataclass(frozen=True, slots=True)
class SqlLeaf:
    """``{sql: "..."}``: a boolean Polars SQL expression, parsed by Polars (never evaluated)."""

    sql: str
    path: str = dc_field(default="where", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.sql, str) or not self.sql.strip():
            raise RuleError(f"{self.path}.sql", "must be a SQL boolean expression (a string)")
        self.expr()

    def expr(self) -> pl.Expr:
        """The parsed expression."""
        try:
            return pl.sql_expr(self.sql)
        except (pl.exceptions.PolarsError, ValueError, TypeError):
            raise RuleError(f"{self.path}.sql", "not a valid SQL expression") from None


@dataclass(frozen=True, slots=True)
class All:
    """``all: [...]``: every child holds (an empty list holds for everyone)."""

    children: tuple[Node, ...]
    path: str = dc_field(default="where", compare=False)


@dataclass(frozen=True, slots=True)
class AnyOf:
    """``any: [...]``: at least one child holds (an empty list holds for no one)."""

    children: tuple[Node, ...]
    path: str = dc_field(default="where", compare=False)


@dataclass(frozen=True, slots=True)
class Not:
    """``not: {...}``: the child is false (a child that is unknown, null, stays unknown)."""

    child: Node
    path: str = dc_field(default="where", compare=False)


Node: TypeAlias = Leaf | SqlLeaf | All | AnyOf | Not


def parse_rule(data: Any, path: str = "where") -> Node:
    """Build the rule tree from parsed YAML; a ``RuleError`` names the offending YAML path."""
    if not isinstance(data, Mapping):
        raise RuleError(path, f"expected a mapping (a rule), not {_kind(data)}")
    keys = list(data)
    if "field" not in data:
        if "sql" in data:
            if len(keys) != 1:
                raise RuleError(path, "a 'sql' rule has no other keys")
            return SqlLeaf(data["sql"], path)
        if len(keys) != 1 or keys[0] not in COMBINATORS:
            expected = "one of 'all', 'any', 'not', or a leaf with 'field' or 'sql'"
            if len(keys) == 1:
                hint = did_you_mean(str(keys[0]), [*COMBINATORS, "field", "sql"])
                raise RuleError(path, f"unknown key '{keys[0]}'{hint}; expected {expected}")
            raise RuleError(path, f"expected {expected}")
        kind = keys[0]
        inner = data[kind]
        here = f"{path}.{kind}"
        if kind == "not":
            return Not(parse_rule(inner, here), path)
        if not isinstance(inner, list):
            raise RuleError(here, f"expected a list of rules, not {_kind(inner)}")
        children = tuple(parse_rule(child, f"{here}[{i}]") for i, child in enumerate(inner))
        return All(children, path) if kind == "all" else AnyOf(children, path)
    ops = [key for key in keys if key != "field"]
    if not ops:
        raise RuleError(
            path, f"'{data['field']}' has no operator; add one of {', '.join(OPERATORS)}"
        )
    if len(ops) > 1:
        raise RuleError(path, f"one operator per rule, found {', '.join(map(str, ops))}")
    return Leaf(data["field"], str(ops[0]), data[ops[0]], path)


def walk(node: Node) -> list[Node]:
    """Every node of the tree, parents before children."""
    found: list[Node] = [node]
    if isinstance(node, All | AnyOf):
        for child in node.children:
            found.extend(walk(child))
    elif isinstance(node, Not):
        found.extend(walk(node.child))
    return found


def referenced_names(node: Node) -> list[str]:
    """The column names the tree reads, in first-use order (``sql:`` leaves included)."""
    names: dict[str, None] = {}
    for item in walk(node):
        if isinstance(item, Leaf):
            names[item.field] = None
        elif isinstance(item, SqlLeaf):
            names.update(dict.fromkeys(item.expr().meta.root_names()))
    return list(names)
