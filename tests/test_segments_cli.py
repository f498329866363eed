"""``blast segment count|sample|explain``: output shapes, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blast.cli import app
from tests.segment_data import make_dataset

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def contacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = make_dataset(tmp_path_factory.mktemp("segments-cli"), rows=3_000)
    return path


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_count_json_is_exactly_the_documented_shape(contacts):
    result = run("segment", "count", ROOT / "segments/seniors-due-flu-shot.yml",
                 "--contacts", contacts, "--as-of", "2026-12-01", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == ["segment", "count", "total"]
    assert data["segment"] == "seniors-due-flu-shot" and data["total"] == 3_000
    assert 0 < data["count"] < 3_000


def test_count_text_and_every_example_segment_runs(contacts):
    for path in sorted((ROOT / "segments").glob("*.yml")):
        result = run("segment", "count", path, "-c", contacts, "--as-of", "2026-12-01")
        assert result.exit_code == 0, (path, result.output)
        assert "of 3,000 contacts" in result.stdout


def test_explain_prints_a_funnel(contacts):
    result = run("segment", "explain", ROOT / "segments/seniors-due-flu-shot.yml",
                 "-c", contacts, "--as-of", "2026-12-01")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "contacts loaded" in lines[1] and "3,000" in lines[1]
    assert any("age >= 65" in line for line in lines)
    assert any("minus segment recently-contacted" in line for line in lines)
    assert lines[-1].split()[-1] == "selected"
    as_json = run("segment", "explain", ROOT / "segments/seniors-due-flu-shot.yml",
                  "-c", contacts, "--as-of", "2026-12-01", "--json")  # fmt: skip
    steps = json.loads(as_json.stdout)["steps"]
    counts = json.loads(run("segment", "count", ROOT / "segments/seniors-due-flu-shot.yml",
                            "-c", contacts, "--as-of", "2026-12-01", "--json").stdout)  # fmt: skip
    assert steps[-1]["count"] == counts["count"]


def test_sample_shows_id_email_and_the_rule_fields(contacts):
    result = run("segment", "sample", ROOT / "segments/overdue-checkup.yml", "-c", contacts,
                 "--as-of", "2026-12-01", "-n", "3", "--seed", "1", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 3
    assert list(rows[0]) == [
        "id",
        "email",
        "age",
        "journey_stage",
        "last_visit",
        "next_appointment",
    ]
    table = run("segment", "sample", ROOT / "segments/overdue-checkup.yml", "-c", contacts,
                "--as-of", "2026-12-01", "-n", "2")  # fmt: skip
    assert table.exit_code == 0 and "email" in table.stdout


BAD_SEGMENTS = {
    "unknown field": (
        "where: {all: [{field: gender, eq: F}, {any: [{field: agee, gte: 65}]}]}\n"
        "derive: {age: {years_since: birth_date}}\n",
        "where.all[1].any[0].field: unknown column 'agee' (did you mean 'age'?)",
    ),
    "wrong operator for the type": (
        "where: {field: gender, gte: F}\n",
        "where.gte: 'gte' does not apply to column 'gender'",
    ),
    "contains on a scalar": (
        "where: {field: zip, contains: '021'}\n",
        "where.contains: 'contains' does not apply to column 'zip'",
    ),
    "bad regex": ("where: {field: zip, matches: '(021'}\n", "where.matches: invalid regular"),
    "bad date": ("where: {field: last_visit, gt: 2026-02-30}\n", "where.gt: expects a date"),
    "derive cycle": (
        "derive: {a: 'b + 1', b: 'a * 2'}\nwhere: {field: a, gt: 1}\n",
        "derive: derived fields form a cycle",
    ),
    "exclude cycle": (
        "where: {all: []}\nexclude: [bad.yml]\n",
        "exclude cycle: bad.yml -> bad.yml",
    ),
    "YAML syntax error": ("where: {field: zip\n  eq: [\n", "YAML syntax error at line"),
    "unknown operator": (
        "where: {field: age, greater_than: 3}\n",
        "where: unknown operator 'greater_than'",
    ),
    "sql leaf that does not parse": ("where: {sql: 'zip LIKE'}\n", "where.sql: not a valid SQL"),
}


@pytest.mark.parametrize("kind", list(BAD_SEGMENTS))
def test_bad_segment_is_one_line_and_exit_2(tmp_path, contacts, kind):
    text, expected = BAD_SEGMENTS[kind]
    segment = tmp_path / "bad.yml"
    segment.write_text(textwrap.dedent(text), encoding="utf-8")
    for command in ("count", "explain", "sample"):
        result = run("segment", command, segment, "--contacts", contacts, "--as-of", "2026-12-01")
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        assert "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"blast: error: {segment}: ")
        assert expected in lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nowhere.yml"], "nowhere.yml: no such segment file"),
        (["--contacts", "missing.parquet"], "missing.parquet"),
        (["--as-of", "2026-02-30"], "--as-of: not a date"),
    ],
    ids=["missing segment file", "missing contacts file", "bad as-of"],
)
def test_missing_files_and_bad_options_exit_2(contacts, args, expected):
    segment = str(ROOT / "segments/overdue-checkup.yml")
    argv = ["segment", "count", segment, "--contacts", str(contacts)]
    if args[0].endswith(".yml"):
        argv[2] = args[0]
    else:
        argv += args
    result = run(*argv)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]


def test_duplicate_ids_are_refused_by_count(tmp_path):
    import polars as pl

    path = tmp_path / "dups.parquet"
    rows = {"id": [1, 2, 2], "email": ["a@x", "b@x", "c@x"], "zip": ["1", "2", "3"]}
    pl.DataFrame(rows).write_parquet(path)
    segment = tmp_path / "s.yml"
    segment.write_text("where: {field: zip, eq: '1'}\n", encoding="utf-8")
    result = run("segment", "count", segment, "--contacts", path, "--as-of", "2026-12-01")
    assert result.exit_code == 2
    assert "more than once" in result.stderr
