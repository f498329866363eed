"""Segments: YAML rules -> typed rule tree -> one Polars expression -> the matching contacts.

segment = load_segment("segments/seniors-due-flu-shot.yml")
prepared = prepare(segment, contacts.frame, as_of=date(2026, 12, 1), id_column="id")
count(prepared)            # SegmentCount(segment, count, total)
audience(prepared)         # LazyFrame of the matching contacts (+ derived fields)
explain(prepared)          # the funnel; format_funnel() for text
"""

from blast.segments.compile import CompileContext, compile_rule
from blast.segments.derive import Derived
from blast.segments.evaluate import Prepared, SegmentCount, audience, count, prepare, sample
from blast.segments.explain import Funnel, FunnelStep, explain, format_funnel
from blast.segments.rules import All, AnyOf, Leaf, Node, Not, RuleError, SqlLeaf, parse_rule
from blast.segments.segment import Segment, load_segment, parse_segment

__all__ = [
    "All",
    "AnyOf",
    "CompileContext",
    "Derived",
    "Funnel",
    "FunnelStep",
    "Leaf",
    "Node",
    "Not",
    "Prepared",
    "RuleError",
    "Segment",
    "SegmentCount",
    "SqlLeaf",
    "audience",
    "compile_rule",
    "count",
    "explain",
    "format_funnel",
    "load_segment",
    "parse_rule",
    "parse_segment",
    "prepare",
    "sample",
]
