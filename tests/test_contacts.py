"""Contacts loading: every format and SQL, list and date normalisation, each error kind."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from blast.cli import app
from blast.contacts import Contacts, ContactsSpec, check_unique_ids, load_contacts
from blast.errors import DataError
from tests.pg import pg_url  # noqa: F401  (fixture)

SECRET = "Zyxwvut"  # a value that must never appear in an error message


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _same_values(loaded: pl.DataFrame, expected: pl.DataFrame) -> None:
    """Equal rows and dtypes, except that text formats widen Int32 counters to Int64."""
    for name, dtype in expected.schema.items():
        got = loaded.schema[name]
        assert got == dtype or (got.is_integer() and dtype.is_integer()), name
    assert_frame_equal(loaded, expected, check_dtypes=False)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".ndjson"])
def test_generated_files_load_back_identically(make_contacts, suffix):
    expected = pl.read_parquet(make_contacts(500, ".parquet"))
    contacts = load_contacts(make_contacts(500, suffix))
    assert isinstance(contacts.frame, pl.LazyFrame)
    assert contacts.id_column == "id" and contacts.email_column == "email"
    assert contacts.list_columns == {"conditions", "medications", "procedures", "vaccinations"}
    _same_values(contacts.frame.collect(), expected)
    assert check_unique_ids(contacts) == 500


def test_other_extensions_and_a_relative_path_from_base_dir(make_contacts, tmp_path):
    source = make_contacts(50, ".parquet")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c.pq").write_bytes(source.read_bytes())
    (tmp_path / "data" / "c.jsonl").write_bytes(make_contacts(50, ".ndjson").read_bytes())
    for name in ("c.pq", "c.jsonl"):
        contacts = load_contacts(ContactsSpec(path=Path("data") / name), base_dir=tmp_path)
        assert contacts.source == f"data/{name}"
        assert contacts.frame.select(pl.len()).collect().item() == 50


def test_csv_lists_dates_and_codes_are_normalised(tmp_path):
    path = _write(
        tmp_path / "c.csv",
        "pid,mail,zip,conditions,allergies,birth_date,seen_on,created_at\n"
        "1,a@x.example,02108,diabetes; copd,peanut|egg,1950-03-14,03/15/2020,2026-01-02 10:11:12\n"
        '2,b@x.example,10001,"",,03/04/1990,,\n'
        "3,c@x.example,99501,,shellfish,,2021-01-01,2026-02-03T04:05:06\n",
    )
    spec = ContactsSpec(
        path=path,
        id="pid",
        email="mail",
        list_separator=";",
        list_columns=["allergies"],
        date_columns=["seen_on"],
    )
    frame = load_contacts(spec).frame.collect()
    assert frame["zip"].to_list() == ["02108", "10001", "99501"]
    assert frame["conditions"].to_list() == [["diabetes", "copd"], [], None]
    assert frame["allergies"].to_list() == [["peanut|egg"], None, ["shellfish"]]
    assert frame["birth_date"].to_list() == [dt.date(1950, 3, 14), dt.date(1990, 3, 4), None]
    assert frame["seen_on"].to_list() == [dt.date(2020, 3, 15), None, dt.date(2021, 1, 1)]
    assert frame.schema["created_at"] == pl.Datetime("us")
    assert frame["created_at"][0] == dt.datetime(2026, 1, 2, 10, 11, 12)


def test_an_explicit_list_separator_is_used(tmp_path):
    path = _write(tmp_path / "c.csv", "id,email,medications\n1,a@x.example,metformin|insulin\n")
    contacts = load_contacts(ContactsSpec(path=path, list_separator="|"))
    assert contacts.frame.collect()["medications"].to_list() == [["metformin", "insulin"]]


def test_loading_is_lazy_and_cheap(make_contacts):
    contacts = load_contacts(make_contacts(500, ".parquet"))
    plan = contacts.frame.select("id").explain()
    assert "PARQUET" in plan.upper() or "SCAN" in plan.upper()


# --- SQL -------------------------------------------------------------------------------------


def _fill_table(engine: sa.Engine, *, with_arrays: bool) -> None:
    metadata = sa.MetaData()
    list_type: sa.types.TypeEngine = (
        sa.ARRAY(sa.Text) if with_arrays else sa.Text()  # type: ignore[assignment]
    )
    table = sa.Table(
        "patients",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("email", sa.Text),
        sa.Column("birth_date", sa.Date if with_arrays else sa.Text),
        sa.Column("conditions", list_type),
        sa.Column("a1c", sa.Float),
    )
    metadata.create_all(engine)
    rows = [
        {
            "id": 1,
            "email": "a@x.example",
            "birth_date": "1950-03-14",
            "conditions": "diabetes;copd",
        },
        {"id": 2, "email": "b@x.example", "birth_date": None, "conditions": ""},
        {"id": 3, "email": "c@x.example", "birth_date": "1990-01-02", "conditions": None},
    ]
    for row in rows:
        row["a1c"] = 7.5 if row["id"] == 1 else None
        if with_arrays:
            text = row["conditions"]
            row["conditions"] = None if text is None else [c for c in text.split(";") if c]
            if row["birth_date"]:
                row["birth_date"] = dt.date.fromisoformat(row["birth_date"])
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)


def _check_table(contacts: Contacts) -> None:
    frame = contacts.frame.collect()
    assert contacts.source == "patients"
    assert frame["id"].to_list() == [1, 2, 3]
    assert frame["birth_date"].to_list() == [dt.date(1950, 3, 14), None, dt.date(1990, 1, 2)]
    assert frame["conditions"].to_list() == [["diabetes", "copd"], [], None]
    assert frame["a1c"].to_list() == [7.5, None, None]
    assert contacts.list_columns == {"conditions"}


def test_a_sqlite_table_loads(tmp_path):
    url = f"sqlite:///{tmp_path / 'contacts.db'}"
    engine = sa.create_engine(url)
    _fill_table(engine, with_arrays=False)
    engine.dispose()
    _check_table(load_contacts(ContactsSpec(url=url, table="patients")))


@pytest.mark.postgres
def test_a_postgresql_table_loads_with_dates_and_arrays(pg_url):  # noqa: F811
    engine = sa.create_engine(pg_url)
    _fill_table(engine, with_arrays=True)
    engine.dispose()
    _check_table(load_contacts(ContactsSpec(url=pg_url, table="patients")))


def test_a_missing_table_is_named_without_the_password(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(DataError, match=r"^nowhere: database sqlite:///.*: no such table$"):
        load_contacts(ContactsSpec(url=url, table="nowhere"))
    with pytest.raises(DataError) as caught:
        load_contacts(ContactsSpec(url="postgresql://u:hunter2@127.0.0.1:9/db", table="contacts"))
    assert "hunter2" not in str(caught.value)
    assert str(caught.value).startswith("contacts: database postgresql+psycopg://u:***@")


# --- errors ----------------------------------------------------------------------------------


def test_a_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"^nope\.parquet: no such file$"):
        load_contacts("nope.parquet", base_dir=tmp_path)


def test_an_unknown_extension(tmp_path):
    with pytest.raises(DataError, match=r"^c\.xlsx: unknown contacts file extension '\.xlsx'"):
        load_contacts(_write(tmp_path / "c.xlsx", "id,email\n").name, base_dir=tmp_path)


def test_a_missing_id_column_suggests_the_nearest(tmp_path):
    path = _write(tmp_path / "c.csv", f"ids,email\n1,{SECRET}@x.example\n")
    with pytest.raises(DataError) as caught:
        load_contacts(path)
    message = str(caught.value)
    assert message == (
        f"{path}: no id column 'id' (did you mean 'ids'?) (set contacts.id to the column "
        "that holds it)"
    )


def test_a_missing_email_column(tmp_path):
    path = _write(tmp_path / "c.ndjson", '{"id": 1, "e_mail": "a@x.example"}\n')
    with pytest.raises(DataError, match=r"no email column 'email' \(did you mean 'e_mail'\?\)"):
        load_contacts(path)


def test_a_missing_extra_list_or_date_column(tmp_path):
    path = _write(tmp_path / "c.csv", "id,email,seen\n1,a@x.example,2020-01-01\n")
    with pytest.raises(DataError, match=r"column 'seen_on' not found \(did you mean 'seen'\?\)"):
        load_contacts(ContactsSpec(path=path, date_columns=["seen_on"]))


@pytest.mark.parametrize(
    ("suffix", "body"),
    [
        (
            ".csv",
            "id,email,last_visit\n1,a@x.example,2020-01-01\n2,b@x.example,\n"
            f"3,c@x.example,{SECRET}\n4,d@x.example,2020-02-30\n",
        ),
        (
            ".ndjson",
            '{"id":1,"email":"a@x.example","last_visit":"2020-01-01"}\n'
            '{"id":2,"email":"b@x.example","last_visit":null}\n'
            f'{{"id":3,"email":"c@x.example","last_visit":"{SECRET}"}}\n',
        ),
    ],
)
def test_an_unparseable_date_names_file_column_and_row_but_not_the_value(tmp_path, suffix, body):
    path = _write(tmp_path / f"c{suffix}", body)
    with pytest.raises(DataError) as caught:
        load_contacts(path)
    message = str(caught.value)
    assert (
        message
        == f"{path}: column 'last_visit', row 3: not a date (expected YYYY-MM-DD or MM/DD/YYYY)"
    )
    assert SECRET not in message


def test_duplicate_ids_give_a_count_and_the_first(tmp_path):
    path = _write(
        tmp_path / "c.csv",
        "id,email\n5,a@x.example\n7,b@x.example\n5,c@x.example\n7,d@x.example\n5,e@x.example\n",
    )
    contacts = load_contacts(path)  # the check is not part of loading: it needs a scan
    with pytest.raises(DataError) as caught:
        check_unique_ids(contacts)
    assert str(caught.value) == (
        f"{path}: column 'id': 2 ids appear more than once (first: 5); ids must be unique"
    )


def test_a_missing_id_is_reported_with_its_row(tmp_path):
    path = _write(tmp_path / "c.csv", "id,email\n1,a@x.example\n,b@x.example\n3,c@x.example\n")
    with pytest.raises(DataError, match=r"column 'id': 1 row has no id \(first: row 2\)$"):
        check_unique_ids(load_contacts(path))


def test_the_id_check_folds_into_another_query(make_contacts):
    contacts = load_contacts(make_contacts(500, ".parquet"))
    shuffled = contacts.frame.sort(pl.col("email"))  # ids no longer increasing
    folded = dataclasses.replace(contacts, frame=shuffled)
    row = folded.collect(
        folded.frame.select(
            pl.len().alias("total"),
            (pl.col("smoker")).sum().alias("count"),
            *folded.id_check_exprs(),
        )
    ).row(0, named=True)
    assert row["total"] == 500
    folded.raise_for_ids(row)  # unique: passes after the fallback sort
    doubled = dataclasses.replace(contacts, frame=pl.concat([shuffled, shuffled]))
    row = doubled.collect(doubled.frame.select(doubled.id_check_exprs())).row(0, named=True)
    with pytest.raises(DataError, match="500 ids appear more than once"):
        doubled.raise_for_ids(row)


def test_an_empty_or_corrupt_file(tmp_path):
    with pytest.raises(DataError, match=r"c\.csv: the file is empty$"):
        load_contacts(_write(tmp_path / "c.csv", ""))
    with pytest.raises(DataError, match=r"c\.parquet: cannot read"):
        load_contacts(_write(tmp_path / "c.parquet", f"not parquet {SECRET}"))


def test_polars_errors_during_a_query_hide_the_values(tmp_path):
    path = _write(tmp_path / "c.csv", "id,email\n1,a@x.example\n")
    contacts = load_contacts(path)
    with pytest.raises(DataError) as caught:
        contacts.collect(contacts.frame.select(pl.col("email").cast(pl.Int64)))
    assert str(caught.value).startswith(f"{path}: InvalidOperationError")
    assert "a@x.example" not in str(caught.value)


def test_the_cli_reports_a_contacts_error_in_one_line_with_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "c.csv", "id,email,birth_date\n1,a@x.example,not-a-date\n")
    _write(tmp_path / "s.yml", "name: everyone\nwhere: {field: id, gte: 0}\n")
    for args in (
        ["segment", "count", "s.yml", "--contacts", "c.csv"],
        ["segment", "count", "s.yml", "--contacts", "missing.parquet"],
        ["generate", "contacts", "--rows", "5", "--out", "bad.xyz"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("blast: error: "), result.output
        assert "Traceback" not in result.output and "not-a-date" not in result.output
