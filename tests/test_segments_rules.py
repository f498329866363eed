"""The rule tree, its validation, the compiler's type checks and semantics on small frames."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import textwrap
from pathlib import Path

import polars as pl
import pytest

from blast.engagement import BEHAVIOURAL_FIELDS, with_engagement
from blast.errors import ConfigError
from blast.segments import (
    All,
    AnyOf,
    CompileContext,
    Leaf,
    Not,
    RuleError,
    SqlLeaf,
    audience,
    compile_rule,
    count,
    explain,
    format_funnel,
    load_segment,
    parse_rule,
    prepare,
    sample,
)

AS_OF = dt.date(2026, 12, 1)


@pytest.fixture
def people() -> pl.LazyFrame:
    """Five hand-made contacts with the generated schema's types, nulls included."""
    return pl.LazyFrame(
        {
            "id": [1, 2, 3, 4, 5],
            "email": [f"p{i}@x.example" for i in range(1, 6)],
            "birth_date": [
                dt.date(1950, 1, 1), dt.date(1990, 12, 2), None, dt.date(2000, 12, 1),
                dt.date(1961, 12, 1),
            ],
            "gender": ["F", "M", None, "F", "X"],
            "zip": ["02139", "10001", "02115", None, "02139"],
            "conditions": [["diabetes"], [], None, ["copd", "chf"], ["diabetes", "chf"]],
            "a1c": [9.5, None, 7.0, 6.0, None],
            "smoker": [True, False, None, True, False],
            "last_visit": [
                dt.date(2026, 11, 30), dt.date(2025, 1, 1), None, dt.date(2026, 9, 2),
                dt.date(2026, 12, 1),
            ],
            "no_shows_12m": pl.Series([0, 2, 1, None, 0], dtype=pl.Int32),
            "journey_stage": ["active", "overdue", "new", "active", "at_risk"],
        }
    )  # fmt: skip


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def ids(directory: Path, people: pl.LazyFrame, text: str, **kwargs) -> list[int]:
    segment = load_segment(write(directory, "s.yml", text))
    prepared = prepare(segment, people, as_of=AS_OF, **kwargs)
    return sorted(audience(prepared).collect().get_column("id").to_list())


def error(directory: Path, people: pl.LazyFrame, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        segment = load_segment(write(directory, "s.yml", text))
        prepare(segment, people, as_of=AS_OF)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- nodes are immutable and check themselves -----------------------------------------------


def test_nodes_are_frozen_and_normalise_lists_to_tuples():
    leaf = Leaf("zip", "in", ["02139"])
    assert leaf.value == ("02139",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        leaf.op = "eq"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("op", "value", "message"),
    [
        ("greater", 1, "unknown operator 'greater'"),
        ("gte", [1], "'gte' takes a single value"),
        ("between", [1], "two values"),
        ("in", "a", "list of values"),
        ("in", ["a", None], "no nulls"),
        ("contains_any", [], "non-empty list"),
        ("is_null", False, "use 'not_null'"),
        ("within_days", -1, "whole number of days"),
        ("within_days", "7", "whole number of days"),
        ("matches", "(unclosed", "invalid regular expression"),
    ],
)
def test_leaf_rejects_bad_values_on_construction(op, value, message):
    with pytest.raises(RuleError, match=re.escape(message)):
        Leaf("x", op, value, "where.all[1]")


def test_sql_leaf_is_parsed_on_construction():
    with pytest.raises(RuleError, match=r"where\.sql: not a valid SQL"):
        SqlLeaf("zip LIKE")
    assert SqlLeaf("zip LIKE '021%'").expr().meta.root_names() == ["zip"]


def test_parse_rule_builds_the_tree_with_yaml_paths():
    tree = parse_rule({"all": [{"field": "a", "eq": 1}, {"any": [{"not": {"sql": "b > 1"}}]}]})
    assert isinstance(tree, All) and isinstance(tree.children[1], AnyOf)
    inner = tree.children[1].children[0]
    assert isinstance(inner, Not) and inner.child.path == "where.all[1].any[0].not"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"al": []}, "unknown key 'al' (did you mean 'all'?)"),
        ({"field": "a"}, "has no operator"),
        ({"field": "a", "eq": 1, "ne": 2}, "one operator per rule"),
        ({"all": {"field": "a", "eq": 1}}, "where.all: expected a list"),
        ([1], "expected a mapping"),
    ],
)
def test_parse_rule_errors(data, message):
    with pytest.raises(RuleError, match=re.escape(message)):
        parse_rule(data)


# --- compile-time checks against the schema ---------------------------------------------------


def test_unknown_column_names_file_and_full_yaml_path(tmp_path, people):
    text = """\
        name: seniors
        derive: {age: {years_since: birth_date}}
        where:
          all:
            - {field: gender, eq: F}
            - {field: zip, matches: '^0'}
            - any:
                - {field: agee, gte: 65}
        """
    message = error(tmp_path, people, text)
    assert message == (
        f"{tmp_path / 's.yml'}: where.all[2].any[0].field: unknown column 'agee' "
        "(did you mean 'age'?)"
    )


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{field: gender, gte: F}", "where.gte: 'gte' does not apply to column 'gender' (String)"),
        ("{field: zip, contains: '021'}", "'contains' does not apply to column 'zip'"),
        ("{field: a1c, contains: 9}", "'contains' does not apply to column 'a1c'"),
        ("{field: conditions, eq: diabetes}", "'eq' does not apply to column 'conditions'"),
        ("{field: last_visit, gte: 2026-13-01}", "where.gte: expects a date as YYYY-MM-DD"),
        ("{field: last_visit, between: ['2026-01-01', soon]}", "where.between: expects a date"),
        ("{field: a1c, gt: high}", "where.gt: expects a number"),
        ("{field: zip, eq: 2139}", "expects text (quote it in YAML)"),
        ("{field: smoker, eq: yes please}", "expects true or false"),
        ("{field: gender, within_days: 3}", "'within_days' does not apply"),
        ("{field: conditions, contains: 3}", "where.contains: expects text"),
        ('{sql: "zipp = 1"}', "where.sql: unknown column 'zipp' (did you mean 'zip'?)"),
        ('{sql: "no_shows_12m + 1"}', "where.sql: must be true/false"),
    ],
)
def test_type_checks_against_the_schema(tmp_path, people, rule, message):
    assert message in error(tmp_path, people, f"name: t\nwhere: {rule}\n")


def test_derive_errors(tmp_path, people):
    cycle = "name: t\nderive: {a: 'b + 1', b: 'c + 1', c: 'a + 1'}\nwhere: {field: a, gt: 1}\n"
    assert "derive: derived fields form a cycle: " in error(tmp_path, people, cycle)
    assert "cycle: a -> a" in error(tmp_path, people, "name: t\nderive: {a: 'a + 1'}\n")
    shadow = "name: t\nderive: {zip: {days_since: last_visit}}\n"
    assert "derive.zip.days_since: 'zip' is already a column" in error(tmp_path, people, shadow)
    unknown = "name: t\nderive: {age: {years_since: birth_dat}}\n"
    assert "unknown column 'birth_dat' (did you mean 'birth_date'?)" in error(
        tmp_path, people, unknown
    )
    kind = "name: t\nderive: {age: {year_since: birth_date}}\n"
    assert "unknown kind 'year_since' (did you mean 'years_since'?)" in error(
        tmp_path, people, kind
    )


def test_exclude_cycle_and_missing_exclude(tmp_path, people):
    write(tmp_path, "a.yml", "name: a\nwhere: {all: []}\nexclude: [b.yml]\n")
    write(tmp_path, "b.yml", "name: b\nwhere: {all: []}\nexclude: [a.yml]\n")
    with pytest.raises(ConfigError, match=r"exclude cycle: a\.yml -> b\.yml -> a\.yml"):
        load_segment(tmp_path / "a.yml")
    write(tmp_path, "c.yml", "name: c\nexclude: [nowhere.yml]\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yml: no such segment file"):
        load_segment(tmp_path / "c.yml")


def test_yaml_and_top_level_errors(tmp_path, people):
    assert "YAML syntax error at line 3, column 1" in error(
        tmp_path, people, "name: t\nwhere: {field: [\n"
    )
    assert "wher: unknown key (did you mean 'where'?)" in error(tmp_path, people, "wher: {}\n")
    assert "sensitive: must be true or false" in error(tmp_path, people, "sensitive: maybe\n")


# --- semantics -----------------------------------------------------------------------------


def test_three_valued_logic_on_nulls(tmp_path, people):
    assert ids(tmp_path, people, "where: {field: gender, ne: F}") == [2, 5]
    assert ids(tmp_path, people, "where: {not: {field: gender, eq: F}}") == [2, 5]
    assert ids(tmp_path, people, "where: {field: gender, is_null: true}") == [3]
    # null OR true is true; null AND false is false; NOT (null AND true) stays unknown
    either = "where: {any: [{field: smoker, eq: true}, {field: a1c, gt: 6.5}]}"
    assert ids(tmp_path, people, either) == [1, 3, 4]
    neither = "where: {not: {all: [{field: smoker, eq: false}, {field: a1c, lt: 99}]}}"
    assert ids(tmp_path, people, neither) == [1, 4]
    assert ids(tmp_path, people, "where: {field: conditions, not_contains: chf}") == [1, 2]


def test_empty_in_is_false_and_empty_not_in_is_true(tmp_path, people):
    ctx = CompileContext(people.collect_schema(), AS_OF)
    assert compile_rule(Leaf("zip", "in", []), ctx).meta.eq(pl.lit(False))
    assert ids(tmp_path, people, "where: {field: zip, in: []}") == []
    assert ids(tmp_path, people, "where: {field: zip, not_in: []}") == [1, 2, 3, 4, 5]


def test_relative_dates_count_from_as_of(tmp_path, people):
    assert ids(tmp_path, people, "where: {field: last_visit, within_days: 1}") == [1, 5]
    assert ids(tmp_path, people, "where: {field: last_visit, within_days: 90}") == [1, 4, 5]
    assert ids(tmp_path, people, "where: {field: last_visit, older_than_days: 90}") == [2]
    age = "derive: {age: {years_since: birth_date}}\n"
    # born 1990-12-02: 35 on 2026-12-01, not yet 36; born 2000-12-01: 26 that very day
    assert ids(tmp_path, people, age + "where: {field: age, in: [35, 26]}") == [2, 4]


def test_behavioural_fields_zero_when_no_stats_and_joined_only_when_used(people, tmp_path):
    text = "where: {field: opens_30d, eq: 0}"
    assert ids(tmp_path, people, text) == [1, 2, 3, 4, 5]
    stats = pl.LazyFrame({"contact_id": [2, 4], "opens_30d": [3, 0]})
    assert ids(tmp_path, people, "where: {field: opens_30d, gte: 1}", engagement=stats) == [2]
    assert ids(
        tmp_path, people, "where: {field: last_open_at, is_null: true}", engagement=stats
    ) == [1, 2, 3, 4, 5]
    unused = prepare(
        load_segment(write(tmp_path, "u.yml", "where: {field: zip, eq: '02139'}")),
        people,
        as_of=AS_OF,
        engagement=stats,
    )
    assert "JOIN" not in unused.frame.explain()
    joined = with_engagement(people, stats, id_column="id")
    assert set(BEHAVIOURAL_FIELDS) <= set(joined.collect_schema().names())
    assert joined.collect().height == 5


def test_count_reads_only_the_columns_the_rules_use(tmp_path):
    path = tmp_path / "wide.parquet"
    wide = {"id": [1, 2], "email": ["a@x", "b@x"], "zip": ["1", "2"], "unused": [1, 2]}
    pl.DataFrame(wide).write_parquet(path)
    segment = load_segment(write(tmp_path, "z.yml", "where: {field: zip, eq: '1'}"))
    prepared = prepare(segment, pl.scan_parquet(path), as_of=AS_OF)
    plan = prepared.frame.select(prepared.member.sum()).explain()
    assert "PROJECT 1/4 COLUMNS" in plan
    assert count(prepared).as_dict() == {"segment": "z", "count": 1, "total": 2}


def test_explain_funnel_counts_each_clause(tmp_path, people):
    write(tmp_path, "smokers.yml", "name: smokers\nwhere: {field: smoker, eq: true}\n")
    text = """\
        name: funnel
        where:
          all:
            - {field: journey_stage, in: [active, at_risk]}
            - any:
                - {field: conditions, contains: diabetes}
                - {field: a1c, gt: 6.5}
            - {field: email, not_null: true}
        exclude: [smokers.yml]
        """
    prepared = prepare(load_segment(write(tmp_path, "f.yml", text)), people, as_of=AS_OF)
    funnel = explain(prepared)
    counts = [(step.label, step.count) for step in funnel.steps]
    assert counts == [
        ("contacts loaded", 5),
        ("all of:", 2),
        ("journey_stage is one of [active, at_risk]", 3),
        ("any of:", 2),
        ("conditions contains diabetes", 2),
        ("a1c > 6.5", 1),
        ("email is present", 2),
        ("minus segment smokers (" + str(tmp_path / "smokers.yml") + ")", 1),
        ("selected", 1),
    ]
    text_funnel = format_funnel(funnel)
    assert "[2 match]" in text_funnel and "selected" in text_funnel
    assert count(prepared).count == 1


def test_sample_shows_id_email_and_rule_fields(tmp_path, people):
    text = """\
        derive: {age: {years_since: birth_date}}
        where: {all: [{field: age, gte: 30}, {sql: "zip LIKE '02%'"}]}
        """
    prepared = prepare(load_segment(write(tmp_path, "s.yml", text)), people, as_of=AS_OF)
    shown = sample(prepared, 10)
    assert shown.columns == ["id", "email", "age", "zip"]
    assert shown.get_column("id").to_list() == [1, 5]
    assert sample(prepared, 1, seed=3).height == 1


def test_data_errors_do_not_quote_contact_values(tmp_path):
    frame = pl.LazyFrame({"id": [1], "email": ["secret-value@x"], "code": ["SECRET-XYZ"]})
    text = 'where: {sql: "CAST(code AS INTEGER) > 1"}'
    prepared = prepare(load_segment(write(tmp_path, "e.yml", text)), frame, as_of=AS_OF)
    with pytest.raises(ConfigError) as caught:
        count(prepared)
    assert "SECRET" not in str(caught.value) and "secret" not in str(caught.value)


def test_example_segments_load_and_cover_the_four_families():
    root = Path(__file__).parents[1] / "segments"
    segments = [load_segment(path) for path in sorted(root.glob("*.yml"))]
    assert len(segments) >= 8
    assert any(s.sensitive for s in segments)
    assert any(s.derive for s in segments) and any(s.exclude for s in segments)
    assert any(isinstance(n, SqlLeaf) for s in segments for n in _nodes(s.where))
    used = {name for s in segments for name in s.input_columns()}
    assert {"birth_date", "gender", "language", "insurance", "zip"} & used  # demographic
    assert {"conditions", "vaccinations", "a1c"} <= used  # clinical
    assert {"journey_stage", "last_visit"} <= used  # journey
    assert {"opens_90d", "sends_30d", "portal_logins_90d"} <= used  # behavioural


def _nodes(node):
    from blast.segments.rules import walk

    return walk(node)
