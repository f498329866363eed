"""Segments select exactly the contacts that hand-written DuckDB SQL selects on the same data.

DuckDB is the independent implementation: each rule below is written twice, once as segment YAML
(compiled by blast to Polars) and once as SQL by hand. The data has nulls in every column type,
and engagement stats for only some contacts.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import polars as pl
import pytest

from blast.segments import audience, load_segment, prepare
from tests.segment_data import AS_OF, duck_ids, duck_people, make_dataset

D = "DATE '2026-12-01'"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_dataset(tmp_path_factory.mktemp("segments-duckdb"))


@pytest.fixture(scope="module")
def con(dataset):
    connection = duck_people(*dataset)
    yield connection
    connection.close()


def blast_ids(directory: Path, dataset: tuple[Path, Path], files: dict[str, str]) -> list[int]:
    """Write the YAML files, load the first as the segment, return the ids it selects."""
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text), encoding="utf-8")
    segment = load_segment(directory / next(iter(files)))
    contacts, engagement = dataset
    prepared = prepare(
        segment, pl.scan_parquet(contacts), as_of=AS_OF, engagement=pl.scan_parquet(engagement)
    )
    return audience(prepared).select("id").collect().get_column("id").sort().to_list()


def where(rule: str) -> str:
    return f"name: t\nwhere: {rule}\n"


CASES: list[tuple[str, str, str]] = [
    ("eq-string", where("{field: gender, eq: F}"), "gender = 'F'"),
    ("ne-string-null", where("{field: gender, ne: F}"), "gender <> 'F'"),
    ("lt-int-null", where("{field: no_shows_12m, lt: 1}"), "no_shows_12m < 1"),
    ("lte-float", where("{field: a1c, lte: 6.5}"), "a1c <= 6.5"),
    ("gt-float", where("{field: bmi, gt: 30}"), "bmi > 30"),
    ("gte-int", where("{field: portal_logins_90d, gte: 5}"), "portal_logins_90d >= 5"),
    ("between-float", where("{field: a1c, between: [7, 9]}"), "a1c BETWEEN 7 AND 9"),
    (
        "between-date",
        where("{field: birth_date, between: [1950-01-01, '1960-12-31']}"),
        "birth_date BETWEEN DATE '1950-01-01' AND DATE '1960-12-31'",
    ),
    ("lt-date", where("{field: first_visit, lt: 2020-06-01}"), "first_visit < DATE '2020-06-01'"),
    (
        "in-string",
        where("{field: insurance, in: [medicare, medicaid]}"),
        "insurance IN ('medicare', 'medicaid')",
    ),
    ("in-int", where("{field: no_shows_12m, in: [1, 2]}"), "no_shows_12m IN (1, 2)"),
    ("in-int-on-float-column", where("{field: bmi, in: [25, 31]}"), "bmi IN (25, 31)"),
    ("in-mixed-number", where("{field: bmi, in: [25, 30.5]}"), "bmi IN (25, 30.5)"),
    ("not-in-null", where("{field: language, not_in: [en, es]}"), "language NOT IN ('en', 'es')"),
    ("in-empty", where("{field: language, in: []}"), "FALSE"),
    ("not-in-empty", where("{field: language, not_in: []}"), "TRUE"),
    (
        "contains",
        where("{field: conditions, contains: diabetes}"),
        "list_contains(conditions, 'diabetes')",
    ),
    (
        "not-contains-null-list",
        where("{field: vaccinations, not_contains: flu-2026}"),
        "NOT list_contains(vaccinations, 'flu-2026')",
    ),
    (
        "contains-any",
        where("{field: conditions, contains_any: [copd, chf]}"),
        "list_has_any(conditions, ['copd', 'chf'])",
    ),
    (
        "contains-all",
        where("{field: conditions, contains_all: [diabetes, hypertension]}"),
        "list_has_all(conditions, ['diabetes', 'hypertension'])",
    ),
    ("is-null", where("{field: insurance, is_null: true}"), "insurance IS NULL"),
    ("is-null-list", where("{field: conditions, is_null: true}"), "conditions IS NULL"),
    ("not-null", where("{field: last_visit, not_null: true}"), "last_visit IS NOT NULL"),
    (
        "within-days",
        where("{field: last_visit, within_days: 90}"),
        f"last_visit BETWEEN {D} - INTERVAL 90 DAY AND {D}",
    ),
    (
        "older-than-days",
        where("{field: last_portal_login, older_than_days: 60}"),
        f"last_portal_login < {D} - INTERVAL 60 DAY",
    ),
    ("matches", where(r"{field: zip, matches: '^021[0-4]'}"), "regexp_matches(zip, '^021[0-4]')"),
    (
        "matches-anywhere",
        where(r"{field: email, matches: 'son\.[0-9]+@'}"),
        r"regexp_matches(email, 'son\.[0-9]+@')",
    ),
    ("eq-bool-null", where("{field: smoker, eq: true}"), "smoker = true"),
    ("ne-bool-null", where("{field: lab_ldl_high, ne: true}"), "lab_ldl_high <> true"),
    ("not-null-propagates", where("{not: {field: gender, eq: F}}"), "NOT (gender = 'F')"),
    (
        "any-kleene",
        where("{any: [{field: gender, eq: M}, {field: smoker, eq: true}]}"),
        "gender = 'M' OR smoker = true",
    ),
    (
        "not-any-kleene",
        where("{not: {any: [{field: gender, eq: M}, {field: smoker, eq: true}]}}"),
        "NOT (gender = 'M' OR smoker = true)",
    ),
    (
        "not-all-kleene",
        where("{not: {all: [{field: gender, eq: F}, {field: zip, matches: '^021'}]}}"),
        "NOT (gender = 'F' AND regexp_matches(zip, '^021'))",
    ),
    ("empty-all", where("{all: []}"), "TRUE"),
    ("empty-any", where("{any: []}"), "FALSE"),
    (
        "nested",
        """\
        name: nested
        where:
          all:
            - {field: journey_stage, in: [active, overdue]}
            - any:
                - {field: conditions, contains_any: [diabetes, ckd]}
                - all:
                    - {field: bmi, gte: 30}
                    - not: {field: smoker, eq: false}
            - not: {field: language, eq: en}
        """,
        "journey_stage IN ('active', 'overdue') AND (list_has_any(conditions, ['diabetes', 'ckd'])"
        " OR (bmi >= 30 AND NOT (smoker = false))) AND NOT (language = 'en')",
    ),
    (
        "derive-years-since",
        "name: t\nderive: {age: {years_since: birth_date}}\nwhere: {field: age, gte: 65}\n",
        f"date_part('year', age({D}, birth_date)) >= 65",
    ),
    (
        "derive-days-since",
        "name: t\nderive: {dsv: {days_since: last_visit}}\n"
        "where: {field: dsv, between: [30, 400]}\n",
        f"({D} - last_visit) BETWEEN 30 AND 400",
    ),
    (
        "derive-sql",
        'name: t\nderive: {risk: "no_shows_12m * 2 + CASE WHEN a1c > 9 THEN 3 ELSE 0 END"}\n'
        "where: {field: risk, gte: 3}\n",
        "no_shows_12m * 2 + CASE WHEN a1c > 9 THEN 3 ELSE 0 END >= 3",
    ),
    (
        "derive-chain-out-of-order",
        'name: t\nderive:\n  senior: "age >= 65 AND bmi > 25"\n  age: {years_since: birth_date}\n'
        "where: {field: senior, eq: true}\n",
        f"date_part('year', age({D}, birth_date)) >= 65 AND bmi > 25",
    ),
    (
        "derive-as-of",
        "name: t\nderive: {recent: \"last_visit >= as_of - INTERVAL '180 days'\"}\n"
        "where: {field: recent, eq: true}\n",
        f"last_visit >= {D} - INTERVAL 180 DAY",
    ),
    (
        "sql-leaf",
        where("{all: [{sql: \"zip LIKE '021%' AND bmi >= 25\"}, {field: gender, ne: X}]}"),
        "zip LIKE '021%' AND bmi >= 25 AND gender <> 'X'",
    ),
    (
        "sql-leaf-as-of",
        where("{sql: \"first_visit > as_of - INTERVAL '1 year'\"}"),
        f"first_visit > {D} - INTERVAL 1 YEAR",
    ),
    ("behavioural-count", where("{field: opens_90d, gte: 1}"), "opens_90d >= 1"),
    ("behavioural-zero-fill", where("{field: clicks_30d, eq: 0}"), "clicks_30d = 0"),
    (
        "behavioural-timestamp-within",
        where("{field: last_open_at, within_days: 30}"),
        f"CAST(last_open_at AS DATE) BETWEEN {D} - 30 AND {D}",
    ),
    (
        "behavioural-timestamp-null",
        where("{field: last_sent_at, is_null: true}"),
        "last_sent_at IS NULL",
    ),
]


@pytest.mark.parametrize(("yaml_text", "sql"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_selects_what_duckdb_selects(tmp_path, dataset, con, yaml_text, sql):
    expected = duck_ids(con, sql)
    got = blast_ids(tmp_path, dataset, {"segment.yml": yaml_text})
    assert got == expected
    assert 0 < len(expected) < 8000 or sql in {"FALSE", "TRUE"}, "rule should split the data"


def test_exclude_removes_members_of_the_other_segment(tmp_path, dataset, con):
    files = {
        "main.yml": "name: main\nwhere: {field: smoker, eq: true}\nexclude: [high-a1c.yml]\n",
        "high-a1c.yml": "name: high-a1c\nwhere: {field: a1c, gt: 9}\n",
    }
    expected = duck_ids(con, "smoker = true AND NOT coalesce(a1c > 9, false)")
    assert blast_ids(tmp_path, dataset, files) == expected


def test_exclude_chain_and_clashing_derived_names(tmp_path, dataset, con):
    files = {
        "a.yml": """\
            name: a
            derive: {x: {years_since: birth_date}}
            where: {field: x, gte: 40}
            exclude: [b.yml]
            """,
        "b.yml": """\
            name: b
            derive: {x: {days_since: last_visit}}
            where: {field: x, gt: 365}
            exclude: [c.yml]
            """,
        "c.yml": "name: c\nwhere: {field: opens_90d, gte: 4}\n",
    }
    b = f"(({D} - last_visit) > 365 AND NOT coalesce(opens_90d >= 4, false))"
    expected = duck_ids(
        con, f"date_part('year', age({D}, birth_date)) >= 40 AND NOT coalesce({b}, false)"
    )
    assert blast_ids(tmp_path, dataset, files) == expected


def test_there_are_at_least_25_hand_written_rules():
    assert len(CASES) >= 25
