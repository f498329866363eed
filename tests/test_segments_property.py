"""Random rule trees select the same contacts in blast (Polars) and in DuckDB.

Hypothesis builds a segment as the plain dict a user would write in YAML; ``to_duckdb`` below
translates that dict to DuckDB SQL independently (it never calls blast's compiler). Both run over
the same generated Parquet data with nulls in every column type.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blast.segments import audience, parse_segment, prepare
from tests.segment_data import AS_OF, duck_ids, duck_people, make_dataset

NUMBERS = {
    "a1c": [5.0, 6.5, 7.25, 9, 12],
    "bmi": [18.5, 25, 30, 35.5],
    "no_shows_12m": [0, 1, 2, 3],
    "portal_logins_90d": [0, 1, 5, 10],
    "opens_90d": [0, 1, 3, 8],
    "age": [18, 40, 65, 80],
    "days_since_visit": [30, 365, 730],
}
STRINGS = {
    "gender": ["F", "M", "X"],
    "language": ["en", "es", "pt", "zh"],
    "insurance": ["medicare", "medicaid", "commercial", "self-pay"],
    "journey_stage": ["new", "active", "overdue", "at_risk"],
    "zip": ["02139", "02115", "10001"],
}
PATTERNS = ["^021", "1$", "[3-5]{2}", "^(M|X)$", "a"]
BOOLEANS = ["smoker", "lab_ldl_high"]
DATES = ["last_visit", "first_visit", "birth_date", "next_appointment", "last_portal_login"]
TIMESTAMPS = ["last_open_at", "last_sent_at"]
LISTS = {
    "conditions": ["diabetes", "hypertension", "copd", "chf", "asthma"],
    "vaccinations": ["flu-2025", "flu-2026", "covid-2026", "shingles"],
}
SQL_LEAVES = [
    "zip LIKE '021%'",
    "bmi > 30 AND smoker",
    "a1c IS NULL OR a1c < 7",
    "no_shows_12m + portal_logins_90d > 4",
]
DERIVE = {
    "age": {"years_since": "birth_date"},
    "days_since_visit": {"days_since": "last_visit"},
}
DATE_VALUES = [dt.date(1950, 1, 1), dt.date(1990, 6, 15), dt.date(2024, 1, 1), dt.date(2026, 6, 1)]


def _number_leaf(field: str) -> st.SearchStrategy[dict[str, Any]]:
    values = st.sampled_from(NUMBERS[field])
    return st.one_of(
        st.builds(
            lambda op, v: {"field": field, op: v},
            st.sampled_from(["eq", "ne", "lt", "lte", "gt", "gte"]),
            values,
        ),
        st.builds(lambda a, b: {"field": field, "between": sorted([a, b])}, values, values),
        st.builds(
            lambda op, vs: {"field": field, op: vs},
            st.sampled_from(["in", "not_in"]),
            st.lists(values, max_size=3, unique=True),
        ),
        st.builds(lambda op: {"field": field, op: True}, st.sampled_from(["is_null", "not_null"])),
    )


def _string_leaf(field: str) -> st.SearchStrategy[dict[str, Any]]:
    values = st.sampled_from(STRINGS[field])
    return st.one_of(
        st.builds(lambda op, v: {"field": field, op: v}, st.sampled_from(["eq", "ne"]), values),
        st.builds(
            lambda op, vs: {"field": field, op: vs},
            st.sampled_from(["in", "not_in"]),
            st.lists(values, max_size=3, unique=True),
        ),
        st.builds(lambda p: {"field": field, "matches": p}, st.sampled_from(PATTERNS)),
        st.builds(lambda op: {"field": field, op: True}, st.sampled_from(["is_null", "not_null"])),
    )


def _bool_leaf(field: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(
            lambda op, v: {"field": field, op: v}, st.sampled_from(["eq", "ne"]), st.booleans()
        ),
        st.builds(lambda op: {"field": field, op: True}, st.sampled_from(["is_null", "not_null"])),
    )


def _date_leaf(field: str) -> st.SearchStrategy[dict[str, Any]]:
    values = st.sampled_from(DATE_VALUES)
    return st.one_of(
        st.builds(
            lambda op, v: {"field": field, op: v},
            st.sampled_from(["eq", "lt", "lte", "gt", "gte"]),
            values,
        ),
        st.builds(lambda a, b: {"field": field, "between": sorted([a, b])}, values, values),
        st.builds(
            lambda op, n: {"field": field, op: n},
            st.sampled_from(["within_days", "older_than_days"]),
            st.sampled_from([0, 7, 30, 90, 365, 3650]),
        ),
        st.builds(lambda op: {"field": field, op: True}, st.sampled_from(["is_null", "not_null"])),
    )


def _list_leaf(field: str) -> st.SearchStrategy[dict[str, Any]]:
    values = st.sampled_from(LISTS[field])
    return st.one_of(
        st.builds(
            lambda op, v: {"field": field, op: v},
            st.sampled_from(["contains", "not_contains"]),
            values,
        ),
        st.builds(
            lambda op, vs: {"field": field, op: vs},
            st.sampled_from(["contains_any", "contains_all"]),
            st.lists(values, min_size=1, max_size=3, unique=True),
        ),
        st.builds(lambda op: {"field": field, op: True}, st.sampled_from(["is_null", "not_null"])),
    )


LEAVES = st.one_of(
    *[_number_leaf(f) for f in NUMBERS],
    *[_string_leaf(f) for f in STRINGS],
    *[_bool_leaf(f) for f in BOOLEANS],
    *[_date_leaf(f) for f in [*DATES, *TIMESTAMPS]],
    *[_list_leaf(f) for f in LISTS],
    st.builds(lambda sql: {"sql": sql}, st.sampled_from(SQL_LEAVES)),
)

TREES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(children, max_size=4)),
        st.builds(lambda xs: {"any": xs}, st.lists(children, max_size=4)),
        st.builds(lambda x: {"not": x}, children),
    ),
    max_leaves=10,
)


# --- the independent translator: segment dict -> DuckDB SQL ------------------------------------

AS_OF_SQL = f"DATE '{AS_OF.isoformat()}'"
COLUMN_SQL = {
    "age": f"date_part('year', age({AS_OF_SQL}, birth_date))",
    "days_since_visit": f"({AS_OF_SQL} - last_visit)",
    **{name: f"CAST({name} AS DATE)" for name in TIMESTAMPS},
}
COMPARE_SQL = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def to_duckdb(node: dict[str, Any]) -> str:
    if "sql" in node:
        return f"({node['sql']})"
    if "all" in node:
        return "(" + " AND ".join(map(to_duckdb, node["all"])) + ")" if node["all"] else "TRUE"
    if "any" in node:
        return "(" + " OR ".join(map(to_duckdb, node["any"])) + ")" if node["any"] else "FALSE"
    if "not" in node:
        return f"(NOT {to_duckdb(node['not'])})"
    field = node["field"]
    ((op, value),) = ((k, v) for k, v in node.items() if k != "field")
    col = COLUMN_SQL.get(field, field)
    if op in COMPARE_SQL:
        return f"({col} {COMPARE_SQL[op]} {literal(value)})"
    if op == "between":
        return f"({col} BETWEEN {literal(value[0])} AND {literal(value[1])})"
    if op in ("in", "not_in"):
        if not value:
            return "FALSE" if op == "in" else "TRUE"
        listed = ", ".join(map(literal, value))
        return f"({col} {'IN' if op == 'in' else 'NOT IN'} ({listed}))"
    if op == "is_null":
        return f"({col} IS NULL)"
    if op == "not_null":
        return f"({col} IS NOT NULL)"
    if op == "within_days":
        return f"({col} BETWEEN {AS_OF_SQL} - {value} AND {AS_OF_SQL})"
    if op == "older_than_days":
        return f"({col} < {AS_OF_SQL} - {value})"
    if op == "matches":
        return f"regexp_matches({col}, {literal(value)})"
    if op == "contains":
        return f"list_contains({col}, {literal(value)})"
    if op == "not_contains":
        return f"(NOT list_contains({col}, {literal(value)}))"
    joiner = " OR " if op == "contains_any" else " AND "
    return "(" + joiner.join(f"list_contains({col}, {literal(v)})" for v in value) + ")"


# --- the property ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_dataset(tmp_path_factory.mktemp("segments-property"), rows=5_000)


@pytest.fixture(scope="module")
def con(dataset):
    connection = duck_people(*dataset)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def frames(dataset):
    contacts, engagement = dataset
    return pl.scan_parquet(contacts), pl.scan_parquet(engagement)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(tree=TREES)
def test_random_rule_trees_match_duckdb(tree, con, frames):
    document = yaml.safe_load(yaml.safe_dump({"name": "random", "derive": DERIVE, "where": tree}))
    segment = parse_segment(document, "random.yml")
    contacts, engagement = frames
    prepared = prepare(segment, contacts, as_of=AS_OF, engagement=engagement)
    got = audience(prepared).select("id").collect().get_column("id").sort().to_list()
    assert got == duck_ids(con, to_duckdb(tree)), to_duckdb(tree)
