"""Synthetic contacts: schema, determinism, plausible values, file formats, the CLI."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from blast.cli import app
from blast.errors import DataError
from blast.generate import (
    AS_OF,
    CONDITIONS,
    DOMAINS,
    contacts_frame,
    generate_contacts,
    synthetic_contacts,
)

EXPECTED_SCHEMA = {
    "id": pl.Int64,
    "email": pl.String,
    "first_name": pl.String,
    "last_name": pl.String,
    "birth_date": pl.Date,
    "gender": pl.String,
    "zip": pl.String,
    "language": pl.String,
    "insurance": pl.String,
    "conditions": pl.List(pl.String),
    "medications": pl.List(pl.String),
    "procedures": pl.List(pl.String),
    "vaccinations": pl.List(pl.String),
    "a1c": pl.Float64,
    "bmi": pl.Float64,
    "lab_ldl_high": pl.Boolean,
    "smoker": pl.Boolean,
    "first_visit": pl.Date,
    "last_visit": pl.Date,
    "next_appointment": pl.Date,
    "no_shows_12m": pl.Int32,
    "journey_stage": pl.String,
    "portal_logins_90d": pl.Int32,
    "appointments_attended_12m": pl.Int32,
    "last_portal_login": pl.Date,
}
NULLABLE = {
    "insurance",
    "a1c",
    "bmi",
    "lab_ldl_high",
    "last_visit",
    "next_appointment",
    "last_portal_login",
}


@pytest.fixture(scope="module")
def contacts(generated_contacts) -> pl.DataFrame:
    return pl.read_parquet(generated_contacts)


def test_schema_is_the_contract(contacts):
    assert dict(contacts.schema) == EXPECTED_SCHEMA


def test_ids_and_emails_are_unique(contacts):
    assert contacts["id"].to_list() == list(range(1, contacts.height + 1))
    assert contacts["email"].n_unique() == contacts.height
    assert (contacts["email"] == contacts["email"].str.to_lowercase()).all()
    domains = contacts["email"].str.split("@").list.get(1).unique().to_list()
    assert set(domains) == set(DOMAINS)


def test_nullable_columns_have_some_nulls_and_the_others_none(contacts):
    nulls = contacts.null_count().row(0, named=True)
    for column, count in nulls.items():
        if column in NULLABLE:
            assert 0 < count < contacts.height, column
        else:
            assert count == 0, column
    assert 0.33 < contacts["a1c"].null_count() / contacts.height < 0.47
    assert 0.02 < contacts["insurance"].null_count() / contacts.height < 0.09
    assert 0.02 < contacts["last_visit"].null_count() / contacts.height < 0.09


def test_values_are_in_their_domains(contacts):
    age = (AS_OF - contacts["birth_date"]).dt.total_days() / 365.25
    assert age.min() >= 0 and age.max() <= 101
    assert 0.5 < (age >= 18).mean() < 0.95
    assert set(contacts["gender"]) == {"F", "M", "X"}
    assert contacts["zip"].str.contains(r"^\d{5}$").all()
    assert 0.2 < contacts["zip"].str.starts_with("021").mean() < 0.4
    assert set(contacts["language"]) == {"en", "es", "pt", "zh", "vi", "ht"}
    assert contacts["language"].eq("en").mean() > 0.6
    assert set(contacts["insurance"].drop_nulls()) == {
        "medicare",
        "medicaid",
        "commercial",
        "self-pay",
    }
    assert set(contacts["conditions"].explode().drop_nulls()) == set(CONDITIONS)
    assert contacts["conditions"].list.len().max() <= 4
    assert contacts["conditions"].list.len().min() == 0
    assert {"flu-2025", "flu-2026", "covid-2026", "shingles", "pneumococcal", "tdap"} == set(
        contacts["vaccinations"].explode().drop_nulls()
    )
    assert {"metformin", "insulin", "lisinopril", "atorvastatin", "albuterol", "sertraline"} <= set(
        contacts["medications"].explode().drop_nulls()
    )
    assert {"colonoscopy", "mammogram", "a1c_test"} <= set(
        contacts["procedures"].explode().drop_nulls()
    )
    assert contacts["a1c"].min() >= 4.5 and contacts["a1c"].max() <= 13.0
    assert contacts["no_shows_12m"].min() >= 0 and contacts["no_shows_12m"].max() <= 6
    assert contacts["no_shows_12m"].eq(0).mean() > 0.4
    assert set(contacts["journey_stage"]) == {"new", "active", "overdue", "at_risk"}


def test_clinical_fields_correlate_with_age(contacts):
    age = (AS_OF - contacts["birth_date"]).dt.total_days() / 365.25
    n_conditions = contacts["conditions"].list.len()
    assert n_conditions.filter(age >= 65).mean() > 2 * n_conditions.filter(age < 30).mean()
    diabetic = contacts.filter(pl.col("conditions").list.contains("diabetes"))
    assert diabetic["a1c"].drop_nulls().min() >= 6.5
    assert diabetic["medications"].list.contains("metformin").mean() > 0.5


def test_dates_are_consistent_and_the_journey_stage_follows_them(contacts):
    assert (contacts["birth_date"] <= contacts["first_visit"]).all()
    assert (contacts["first_visit"] <= contacts["last_visit"]).drop_nulls().all()
    assert (contacts["last_visit"] <= AS_OF).drop_nulls().all()
    assert (contacts["next_appointment"] > AS_OF).drop_nulls().all()
    assert (contacts["last_portal_login"] <= AS_OF).drop_nulls().all()
    since_first = (pl.lit(AS_OF) - pl.col("first_visit")).dt.total_days()
    since_last = (pl.lit(AS_OF) - pl.col("last_visit")).dt.total_days()
    expected = (
        pl.when(since_first <= 180)
        .then(pl.lit("new"))
        .when(since_last <= 365)
        .then(pl.lit("active"))
        .when(since_last <= 730)
        .then(pl.lit("overdue"))
        .otherwise(pl.lit("at_risk"))
    )
    assert contacts.select((expected == pl.col("journey_stage")).all()).item()


def test_same_seed_same_data_whatever_the_chunk_size(tmp_path):
    one = generate_contacts(1_000, tmp_path / "one.parquet", seed=3, chunk_rows=1_000)
    many = generate_contacts(1_000, tmp_path / "many.parquet", seed=3, chunk_rows=77)
    assert_frame_equal(pl.read_parquet(one), pl.read_parquet(many))
    assert one.read_bytes() != b""


def test_another_seed_gives_other_data():
    a = contacts_frame(1, 200, seed=1).collect()
    b = contacts_frame(1, 200, seed=2).collect()
    assert a["id"].equals(b["id"])
    assert not a["email"].equals(b["email"])
    assert not a["birth_date"].equals(b["birth_date"])


def test_as_of_moves_the_dates():
    base = contacts_frame(1, 100).collect()
    later = contacts_frame(1, 100, as_of=AS_OF + dt.timedelta(days=10)).collect()
    assert ((later["birth_date"] - base["birth_date"]).dt.total_days() == 10).all()


def test_csv_joins_lists_and_ndjson_keeps_them(make_contacts, contacts):
    csv = pl.read_csv(make_contacts(suffix=".csv"), infer_schema=False)
    assert csv.columns == contacts.columns
    assert csv["conditions"].to_list() == contacts["conditions"].list.join(";").to_list()
    assert "" in csv["conditions"].to_list()  # an empty list is an empty string, not null
    with make_contacts(suffix=".ndjson").open() as lines:
        first = json.loads(next(lines))
    assert isinstance(first["conditions"], list)
    ndjson = pl.read_ndjson(make_contacts(suffix=".ndjson"))
    assert ndjson["conditions"].to_list() == contacts["conditions"].to_list()


def test_zero_rows_writes_an_empty_file_with_the_schema(tmp_path):
    out = generate_contacts(0, tmp_path / "empty.parquet")
    frame = pl.read_parquet(out)
    assert frame.height == 0 and dict(frame.schema) == EXPECTED_SCHEMA


def test_unknown_extension_is_a_data_error_and_leaves_no_file(tmp_path):
    with pytest.raises(DataError, match=r"bad\.xyz: unknown contacts file extension '\.xyz'"):
        generate_contacts(10, tmp_path / "bad.xyz")
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_the_file(tmp_path):
    out = tmp_path / "sub" / "contacts.csv"
    result = CliRunner().invoke(
        app, ["generate", "contacts", "--rows", "50", "--out", str(out), "--seed", "4"]
    )
    assert result.exit_code == 0, result.output
    assert pl.read_csv(out).height == 50


@pytest.mark.parametrize(
    "args",
    [
        ["--rows", "10", "--out", "bad.xyz"],
        ["--rows", "10", "--out", "ok.parquet", "--as-of", "someday"],
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_2(tmp_path, args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["generate", "contacts", *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("blast: error: ")


def test_the_streaming_source_honours_projection_filters_and_limits():
    lazy = synthetic_contacts(1_000, chunk_rows=128)
    direct = contacts_frame(1, 1_001).collect()
    assert_frame_equal(lazy.collect(), direct)
    picked = lazy.filter(pl.col("id") > 990).select("id", "email").collect()
    assert_frame_equal(picked, direct.filter(pl.col("id") > 990).select("id", "email"))
    assert lazy.head(5).collect()["id"].to_list() == [1, 2, 3, 4, 5]
    assert lazy.select(pl.len()).collect().item() == 1_000
