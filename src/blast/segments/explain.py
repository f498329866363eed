"""``explain``: the rule tree as a funnel, with how many contacts are left after each clause.

Inside ``all`` the numbers are cumulative (left after this clause and the ones above it); the
branches of ``any`` and the inside of ``not`` show how many of the contacts reaching them match
that branch. All counts come from one scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from blast.segments.evaluate import Prepared, _collect
from blast.segments.rules import All, AnyOf, Leaf, Node, Not, SqlLeaf

__all__ = ["Funnel", "FunnelStep", "describe", "explain", "format_funnel"]

_LABELS = {
    "eq": "{f} = {v}",
    "ne": "{f} != {v}",
    "lt": "{f} < {v}",
    "lte": "{f} <= {v}",
    "gt": "{f} > {v}",
    "gte": "{f} >= {v}",
    "between": "{f} between {lo} and {hi}",
    "in": "{f} is one of {v}",
    "not_in": "{f} is none of {v}",
    "contains": "{f} contains {v}",
    "not_contains": "{f} does not contain {v}",
    "contains_any": "{f} contains any of {v}",
    "contains_all": "{f} contains all of {v}",
    "is_null": "{f} is empty",
    "not_null": "{f} is present",
    "within_days": "{f} within the last {v} days",
    "older_than_days": "{f} more than {v} days ago",
    "matches": "{f} matches /{v}/",
}


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe(node: Node) -> str:
    """One line of plain English for a node (values come from the YAML, never from contacts)."""
    if isinstance(node, Leaf):
        lo, hi = node.value if node.op == "between" and isinstance(node.value, tuple) else ("", "")
        return _LABELS[node.op].format(f=node.field, v=_show(node.value), lo=lo, hi=hi)
    if isinstance(node, SqlLeaf):
        return f"sql: {node.sql}"
    if isinstance(node, All):
        return "all of:"
    if isinstance(node, AnyOf):
        return "any of:"
    return "not:"


@dataclass(frozen=True, slots=True)
class FunnelStep:
    """One line of the funnel. ``role``: start, group, left, branch, exclude or result."""

    depth: int
    label: str
    count: int
    role: str
    path: str = ""


@dataclass(frozen=True, slots=True)
class Funnel:
    segment: str
    source: str
    as_of: str
    steps: tuple[FunnelStep, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "source": self.source,
            "as_of": self.as_of,
            "steps": [
                {
                    "depth": s.depth,
                    "label": s.label,
                    "count": s.count,
                    "role": s.role,
                    "path": s.path,
                }
                for s in self.steps
            ],
        }


def _walk(
    prepared: Prepared,
    node: Node,
    reaching: pl.Expr,
    depth: int,
    role: str,
    out: list[tuple[int, str, str, str, pl.Expr]],
) -> pl.Expr:
    """Append (depth, label, role, path, count-expr) lines; return 'reaching and node holds'."""
    holds = reaching & prepared.compile(node).fill_null(False)
    shown_role = "group" if isinstance(node, All) and role == "left" else role
    out.append((depth, describe(node), shown_role, node.path, holds))
    if isinstance(node, All):
        running = reaching
        for child in node.children:
            running = _walk(prepared, child, running, depth + 1, "left", out)
    elif isinstance(node, AnyOf):
        for child in node.children:
            _walk(prepared, child, reaching, depth + 1, "branch", out)
    elif isinstance(node, Not):
        _walk(prepared, node.child, reaching, depth + 1, "branch", out)
    return holds


def explain(prepared: Prepared) -> Funnel:
    """The funnel of ``prepared``'s segment over its contacts, computed in one scan."""
    segment = prepared.segment
    lines: list[tuple[int, str, str, str, pl.Expr]] = [
        (0, "contacts loaded", "start", "", pl.lit(True))
    ]
    matched = _walk(prepared, segment.where, pl.lit(True), 0, "left", lines)
    running = matched
    for i, (other, member) in enumerate(zip(segment.exclude, prepared.excluded, strict=True)):
        running = running & ~member
        label = f"minus segment {other.name} ({other.source})"
        lines.append((0, label, "exclude", f"exclude[{i}]", running))
    lines.append((0, "selected", "result", "", prepared.member))
    query = prepared.frame.select(
        expr.sum().alias(f"c{i}") if i else pl.len().alias("c0")
        for i, (*_, expr) in enumerate(lines)
    )
    counts = _collect(prepared, query).row(0)
    steps = tuple(
        FunnelStep(depth, label, int(n), role, path)
        for (depth, label, role, path, _), n in zip(lines, counts, strict=True)
    )
    return Funnel(segment.name, segment.source, prepared.as_of.isoformat(), steps)


def format_funnel(funnel: Funnel) -> str:
    """The funnel as text a marketer can read: counts on the left, the rules indented."""
    width = max(len(f"{step.count:,}") for step in funnel.steps)
    lines = [f"{funnel.segment}  ({funnel.source}, as of {funnel.as_of})"]
    for step in funnel.steps:
        number = f"{step.count:,}".rjust(width)
        indent = "  " * step.depth
        if step.role == "group":
            lines.append(f"  {' ' * width}  {indent}{step.label}")
        elif step.role == "branch":
            lines.append(f"  {' ' * width}  {indent}{step.label}   [{step.count:,} match]")
        else:
            lines.append(f"  {number}  {indent}{step.label}")
    return "\n".join(lines)
