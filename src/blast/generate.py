"""Synthetic contacts: deterministic, realistic enough for demos, tests and benchmarks.

Every value is a pure function of ``(seed, id, field)``: a SplitMix64 hash of the contact id
computed as Polars expressions, so generation is vectorised, needs no numpy, gives the same
bytes whatever ``chunk_rows`` is, and is stable across Polars versions (unlike ``Expr.hash``).
Rows are produced in chunks of ``chunk_rows`` and streamed to the file, so memory stays bounded
at 10M rows.

The columns (the contract that example segments, templates and tests are written against):

=========================  ===========  =====================================================
column                     dtype        values
=========================  ===========  =====================================================
id                         Int64        1..N, unique
email                      String       ``first.last.<id>@<domain>``, lowercase, unique
first_name, last_name      String
birth_date                 Date         ages 0-100 at the as-of date, skewed adult
gender                     String       F / M / X
zip                        String       5 digits, ~30% in Boston's ``021``
language                   String       en (most), es, pt, zh, vi, ht
insurance                  String?      medicare, medicaid, commercial, self-pay; ~5% null
conditions                 List[String] 0-4 of CONDITIONS, more with age
medications                List[String] follow the conditions
procedures                 List[String] screenings by age, sex and condition
vaccinations               List[String] flu-2025, flu-2026, covid-2026, shingles, ...
a1c                        Float64?     4.5-13.0 (diabetics >= 6.5); ~40% null
bmi                        Float64?     ~10% null
lab_ldl_high               Boolean?     ~35% null (not tested)
smoker                     Boolean
first_visit                Date
last_visit                 Date?        >= first_visit; ~5% null
next_appointment           Date?        after the as-of date; mostly null
no_shows_12m               Int32        0-6, mostly 0
journey_stage              String       new / active / overdue / at_risk (see JOURNEY_STAGES)
portal_logins_90d          Int32
appointments_attended_12m  Int32
last_portal_login          Date?        null when never logged in
=========================  ===========  =====================================================

In CSV the list columns are joined with ``;`` (an empty list is an empty string).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source

from blast.contacts import FileFormat, file_format
from blast.errors import ConfigError

__all__ = [
    "AS_OF",
    "CONDITIONS",
    "DOMAINS",
    "JOURNEY_STAGES",
    "LIST_SEPARATOR",
    "contacts_frame",
    "generate_contacts",
    "synthetic_contacts",
]

AS_OF = dt.date(2026, 12, 1)
"""Default as-of date: ages, visit recency and journey stages are computed relative to it."""

LIST_SEPARATOR = ";"

DOMAINS = (
    "riverside.example",
    "mail.example",
    "inbox.example",
    "post.example",
    "webmail.example",
    "northshore.example",
    "family.example",
    "harbor.example",
)
CONDITIONS = (
    "diabetes",
    "hypertension",
    "copd",
    "chf",
    "asthma",
    "ckd",
    "depression",
    "obesity",
)
JOURNEY_STAGES = {
    "new": "first visit within 180 days of the as-of date",
    "active": "last visit within 365 days",
    "overdue": "last visit 366-730 days ago",
    "at_risk": "last visit over 730 days ago, or never returned after the first visit",
}
FEMALE_NAMES = (
    "Ana", "Carla", "Elena", "Grace", "Iris", "Karen", "Maria", "Olivia", "Rosa", "Uma",
    "Ximena", "Zoe", "Aisha", "Chloe", "Emma", "Fatima", "Hannah", "Julia", "Linh", "Nora",
    "Priya", "Sofia", "Valentina", "Mary", "Patricia", "Linda", "Marie", "Mei", "Lucia", "Thi",
)  # fmt: skip
MALE_NAMES = (
    "Ben", "David", "Frank", "Hector", "James", "Luis", "Nam", "Pedro", "Samuel", "Tran",
    "Victor", "Wei", "Yusuf", "Bruno", "Daniel", "Gabriel", "Ivan", "Kevin", "Mohammed",
    "Oscar", "Rafael", "Thomas", "William", "Joseph", "Robert", "Michael", "Jean", "Li",
    "Minh", "Carlos",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Silva", "Santos", "Pierre",
    "Chen", "Wang", "Tran", "Pham", "Oliveira", "Joseph", "Murphy",
)  # fmt: skip

_U64 = pl.UInt64
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64_int(x: int) -> int:
    """SplitMix64 finaliser on a Python int (used for per-seed and per-field constants)."""
    z = (x + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _splitmix64(x: pl.Expr) -> pl.Expr:
    """SplitMix64 finaliser on a UInt64 expression (multiplication wraps, shifts are divisions)."""
    z = x + pl.lit(_GOLDEN, _U64)
    z = (z ^ (z // (1 << 30))) * pl.lit(0xBF58476D1CE4E5B9, _U64)
    z = (z ^ (z // (1 << 27))) * pl.lit(0x94D049BB133111EB, _U64)
    return z ^ (z // (1 << 31))


class _Random:
    """Independent uniform streams per field, each a pure function of (seed, id, field name)."""

    def __init__(self, seed: int) -> None:
        self._seed_key = _splitmix64_int(seed & _MASK64)

    def uniform(self, field: str) -> pl.Expr:
        """A Float64 in [0, 1) for each row, from column ``_key`` (the hashed id)."""
        field_key = _splitmix64_int(self._seed_key ^ zlib.crc32(field.encode()))
        bits = _splitmix64(pl.col("_key") ^ pl.lit(field_key, _U64))
        return (bits // (1 << 11)).cast(pl.Float64) * (1.0 / (1 << 53))

    def choice(self, field: str, options: tuple[str, ...]) -> pl.Expr:
        """One of ``options`` with equal probability."""
        index = (self.uniform(field) * len(options)).floor().cast(pl.UInt32)
        return pl.lit(pl.Series(options, dtype=pl.String)).gather(index)

    def weighted(self, field: str, weights: dict[str, float]) -> pl.Expr:
        """One key of ``weights``, chosen with the given (normalised) probabilities."""
        u = self.uniform(field)
        total = sum(weights.values())
        thresholds = itertools.accumulate(weight / total for weight in weights.values())
        choices = list(zip(weights, thresholds, strict=True))
        expr: pl.Expr = pl.lit(choices[-1][0])
        for value, threshold in reversed(choices[:-1]):
            expr = pl.when(u < threshold).then(pl.lit(value)).otherwise(expr)
        return expr


def _days(n: pl.Expr) -> pl.Expr:
    return pl.duration(days=n.cast(pl.Int64))


def _tagged_list(tags: dict[str, pl.Expr], limit: int | None = None) -> pl.Expr:
    """A List[String] holding each tag whose boolean expression is true, in the given order.

    The booleans become a bit mask that indexes a table of every possible list: a gather is
    far cheaper than assembling lists row by row (concat_list + drop_nulls).
    """
    names = list(tags)
    table = pl.Series(
        [
            [name for bit, name in enumerate(names) if mask >> bit & 1][:limit]
            for mask in range(1 << len(names))
        ],
        dtype=pl.List(pl.String),
    )
    mask = pl.sum_horizontal(
        cond.cast(pl.UInt32) * (1 << bit) for bit, cond in enumerate(tags.values())
    )
    return pl.lit(table).gather(mask)


def contacts_frame(start: int, stop: int, *, seed: int = 0, as_of: dt.date = AS_OF) -> pl.LazyFrame:
    """Contacts with ids ``start`` .. ``stop - 1`` as a LazyFrame (nothing computed yet)."""
    r = _Random(seed)
    u = r.uniform
    as_of_lit = pl.lit(as_of, pl.Date)

    base = pl.LazyFrame().select(pl.int_range(start, stop, dtype=pl.Int64).alias("id"))
    base = base.with_columns(_key=_splitmix64(pl.col("id").cast(_U64)))

    # Stage 1: the person (age, sex, names) and the hidden drivers of everything else.
    adult_age = 18.0 + 82.0 * (u("age_a") + u("age_b")) / 2.0  # triangular, peak near 59
    age_years = pl.when(u("is_child") < 0.18).then(u("child_age") * 18.0).otherwise(adult_age)
    stage1 = base.with_columns(
        _age=age_years,
        gender=r.weighted("gender", {"F": 0.51, "M": 0.47, "X": 0.02}),
        last_name=r.choice("last_name", LAST_NAMES),
        _tenure=pl.when(u("is_new") < 0.08)
        .then(u("new_tenure") * 180.0)
        .otherwise(180.0 + u("tenure") * (20 * 365 - 180)),
        _recency=1200.0 * u("recency") ** 2,
    ).with_columns(
        _age_factor=((pl.col("_age") - 20.0) / 60.0).clip(0.0, 1.0),
        _adult=pl.col("_age") >= 18.0,
        _senior=pl.col("_age") >= 65.0,
        _age_days=(pl.col("_age") * 365.25).floor(),
        _bmi=pl.when(pl.col("_age") < 18.0)
        .then(14.0 + 10.0 * u("bmi_a"))
        .otherwise(17.5 + 9.5 * (u("bmi_a") + u("bmi_b")) + 10.0 * u("bmi_c") ** 4),
        smoker=(pl.col("_age") >= 14.0) & (u("smoker") < 0.14),
        first_name=pl.when(pl.col("gender") == "F")
        .then(r.choice("first_name", FEMALE_NAMES))
        .when(pl.col("gender") == "M")
        .then(r.choice("first_name", MALE_NAMES))
        .otherwise(r.choice("first_name", FEMALE_NAMES + MALE_NAMES)),
    )

    # Stage 2: demographics, clinical conditions, journey dates.
    f = pl.col("_age_factor")
    senior = pl.col("_senior")
    chance = u  # readability: chance("x") < p is an event of probability p
    conditions = {
        "diabetes": chance("c_diabetes") < 0.03 + 0.22 * f,
        "hypertension": chance("c_hypertension") < 0.04 + 0.45 * f,
        "copd": chance("c_copd") < 0.005 + 0.10 * f + 0.08 * pl.col("smoker").cast(pl.Float64),
        "chf": chance("c_chf") < 0.002 + 0.08 * f,
        "asthma": chance("c_asthma") < 0.08,
        "ckd": chance("c_ckd") < 0.005 + 0.12 * f,
        "depression": chance("c_depression") < pl.when(pl.col("_adult")).then(0.09).otherwise(0.02),
        "obesity": pl.col("_adult") & (pl.col("_bmi") >= 30.0),
    }
    first_visit_days = pl.min_horizontal(pl.col("_tenure"), pl.col("_age_days")).floor()
    stage2 = stage1.with_columns(
        birth_date=as_of_lit - _days(pl.col("_age_days")),
        zip=pl.when(u("zip_boston") < 0.30)
        .then(
            pl.lit("021")
            + (u("zip_tail") * 100).floor().cast(pl.Int64).cast(pl.String).str.zfill(2)
        )
        .otherwise((1001 + u("zip") * 98_999).floor().cast(pl.Int64).cast(pl.String).str.zfill(5)),
        language=r.weighted("language", {"en": 72, "es": 14, "pt": 4, "zh": 4, "vi": 3, "ht": 3}),
        insurance=pl.when(u("insurance_null") < 0.05)
        .then(pl.lit(None, pl.String))
        .when(senior)
        .then(
            r.weighted(
                "insurance_65", {"medicare": 85, "commercial": 7, "medicaid": 5, "self-pay": 3}
            )
        )
        .otherwise(
            r.weighted(
                "insurance", {"commercial": 60, "medicaid": 28, "self-pay": 9, "medicare": 3}
            )
        ),
        **{f"_{name}": cond for name, cond in conditions.items()},
        _first_visit_days=first_visit_days,
        _last_visit_days=pl.when(u("last_visit_null") < 0.05)
        .then(pl.lit(None, pl.Float64))
        .otherwise(pl.min_horizontal(pl.col("_recency"), first_visit_days).floor()),
    )

    # Stage 3: lists, labs and journey, from the conditions and dates above.
    def has(condition: str) -> pl.Expr:
        return pl.col(f"_{condition}")

    age = pl.col("_age")
    female = pl.col("gender") == "F"
    last_visit_days = pl.col("_last_visit_days")
    active = last_visit_days <= 365
    logins = (
        pl.when(u("portal_user") < 0.40)
        .then(0)
        .otherwise(1 + (-(1.0 - u("logins")).log() * 6.0).floor())
        .clip(0, 60)
    )
    stage3 = stage2.with_columns(
        conditions=_tagged_list({name: has(name) for name in CONDITIONS}, limit=4),
        medications=_tagged_list(
            {
                "metformin": has("diabetes") & (chance("m_metformin") < 0.75),
                "insulin": has("diabetes") & (chance("m_insulin") < 0.25),
                "lisinopril": (has("hypertension") & (chance("m_lisinopril") < 0.6))
                | (has("chf") & (chance("m_lisinopril_chf") < 0.5)),
                "amlodipine": has("hypertension") & (chance("m_amlodipine") < 0.3),
                "atorvastatin": (age >= 40)
                & (
                    chance("m_atorvastatin")
                    < 0.15
                    + 0.4 * has("diabetes").cast(pl.Float64)
                    + 0.2 * has("chf").cast(pl.Float64)
                ),
                "albuterol": (has("asthma") | has("copd")) & (chance("m_albuterol") < 0.8),
                "furosemide": has("chf") & (chance("m_furosemide") < 0.7),
                "sertraline": has("depression") & (chance("m_sertraline") < 0.6),
            }
        ),
        procedures=_tagged_list(
            {
                "colonoscopy": (age >= 45) & (chance("p_colonoscopy") < 0.45),
                "mammogram": female & (age >= 40) & (chance("p_mammogram") < 0.6),
                "a1c_test": (has("diabetes") & (chance("p_a1c") < 0.85))
                | (pl.col("_adult") & (chance("p_a1c_screen") < 0.1)),
                "lipid_panel": (age >= 40) & (chance("p_lipid") < 0.5),
                "eye_exam": (has("diabetes") & (chance("p_eye") < 0.5))
                | (chance("p_eye_any") < 0.05),
                "spirometry": (has("copd") | has("asthma")) & (chance("p_spirometry") < 0.4),
                "ecg": ((has("chf") | has("hypertension")) & (chance("p_ecg") < 0.4))
                | ((age >= 50) & (chance("p_ecg_any") < 0.1)),
            }
        ),
        vaccinations=_tagged_list(
            {
                "flu-2025": chance("v_flu_2025") < 0.35 + 0.3 * senior.cast(pl.Float64),
                "flu-2026": chance("v_flu_2026") < 0.25 + 0.3 * senior.cast(pl.Float64),
                "covid-2026": chance("v_covid_2026") < 0.15 + 0.25 * senior.cast(pl.Float64),
                "shingles": (age >= 50) & (chance("v_shingles") < 0.35),
                "pneumococcal": (senior & (chance("v_pneumococcal") < 0.55))
                | (
                    (has("copd") | has("chf") | has("diabetes"))
                    & (chance("v_pneumococcal_risk") < 0.3)
                ),
                "tdap": chance("v_tdap") < 0.4,
            }
        ),
        a1c=pl.when(u("a1c_null") < pl.when(has("diabetes")).then(0.15).otherwise(0.45))
        .then(pl.lit(None, pl.Float64))
        .when(has("diabetes"))
        .then(6.5 + 6.5 * u("a1c") ** 1.5)
        .otherwise(4.5 + 1.9 * u("a1c"))
        .round(1),
        bmi=pl.when(u("bmi_null") < 0.10)
        .then(pl.lit(None, pl.Float64))
        .otherwise(pl.col("_bmi").round(1)),
        lab_ldl_high=pl.when(u("ldl_null") < 0.35)
        .then(pl.lit(None, pl.Boolean))
        .otherwise(u("ldl") < 0.15 + 0.2 * f),
        first_visit=as_of_lit - _days(pl.col("_first_visit_days")),
        last_visit=as_of_lit - _days(last_visit_days),
        next_appointment=pl.when(u("next_appt") < pl.when(active).then(0.5).otherwise(0.25))
        .then(as_of_lit + _days(1 + (u("next_appt_days") * 180).floor()))
        .otherwise(pl.lit(None, pl.Date)),
        no_shows_12m=((1.0 - u("no_shows")).log() / math.log(0.45))  # geometric, P(0) = 0.55
        .floor()
        .clip(0, 6)
        .cast(pl.Int32),
        journey_stage=pl.when(pl.col("_first_visit_days") <= 180)
        .then(pl.lit("new"))
        .when(active)
        .then(pl.lit("active"))
        .when(last_visit_days <= 730)
        .then(pl.lit("overdue"))
        .otherwise(pl.lit("at_risk")),
        portal_logins_90d=logins.cast(pl.Int32),
        appointments_attended_12m=pl.when(active)
        .then(1 + (-(1.0 - u("attended")).log() * 2.5).floor())
        .otherwise(0)
        .clip(0, 24)
        .cast(pl.Int32),
        last_portal_login=pl.when(logins > 0)
        .then(as_of_lit - _days((u("login_days") * 90).floor()))
        .when(u("never_logged_in") < 0.5)
        .then(pl.lit(None, pl.Date))
        .otherwise(as_of_lit - _days(91 + (u("login_days") * 900).floor())),
    )

    email = pl.concat_str(
        pl.col("first_name").str.to_lowercase(),
        pl.lit("."),
        pl.col("last_name").str.to_lowercase(),
        pl.lit("."),
        pl.col("id").cast(pl.String),
        pl.lit("@"),
        r.choice("domain", DOMAINS),
    )
    return stage3.select(
        "id",
        email.alias("email"),
        "first_name",
        "last_name",
        "birth_date",
        "gender",
        "zip",
        "language",
        "insurance",
        "conditions",
        "medications",
        "procedures",
        "vaccinations",
        "a1c",
        "bmi",
        "lab_ldl_high",
        "smoker",
        "first_visit",
        "last_visit",
        "next_appointment",
        "no_shows_12m",
        "journey_stage",
        "portal_logins_90d",
        "appointments_attended_12m",
        "last_portal_login",
    )


def synthetic_contacts(
    rows: int,
    *,
    seed: int = 0,
    chunk_rows: int = 250_000,
    as_of: dt.date = AS_OF,
) -> pl.LazyFrame:
    """All ``rows`` contacts as a streaming LazyFrame, computed ``chunk_rows`` at a time.

    Sinking or counting it never holds more than one chunk (and its temporaries) in memory, so
    benchmarks can feed 10M rows straight into a query without writing a file first.
    """
    if rows < 0:
        raise ConfigError(f"--rows must be 0 or more, not {rows}")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be 1 or more, not {chunk_rows}")

    def batches(
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        _batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        wanted = rows if n_rows is None else min(rows, n_rows)
        produced = 0
        for start in range(1, rows + 1, chunk_rows):
            chunk = contacts_frame(start, min(start + chunk_rows, rows + 1), seed=seed, as_of=as_of)
            if predicate is not None:
                chunk = chunk.filter(predicate)
            if with_columns is not None:
                chunk = chunk.select(with_columns)
            batch = chunk.collect().head(wanted - produced)
            produced += batch.height
            yield batch
            if produced >= wanted:
                return

    schema = contacts_frame(1, 1, seed=seed, as_of=as_of).collect_schema()
    return register_io_source(batches, schema=schema, is_pure=True, explain_name="blast.generate")


def generate_contacts(
    rows: int,
    out: Path,
    *,
    seed: int = 0,
    chunk_rows: int = 250_000,
    as_of: dt.date = AS_OF,
) -> Path:
    """Write ``rows`` synthetic contacts to ``out`` and return ``out``.

    The format follows the extension: ``.parquet``/``.pq``, ``.csv`` (lists joined with ``;``)
    or ``.ndjson``/``.jsonl``. The same ``(rows, seed, as_of)`` always gives the same data,
    whatever ``chunk_rows`` is. Rows are streamed to the file ``chunk_rows`` at a time, so
    memory does not grow with ``rows``; the file appears atomically (written beside it, then
    renamed), so a crash never leaves a truncated file under the final name.

    Example::

        generate_contacts(10_000, Path("data/contacts.parquet"), seed=1)
    """
    out = Path(out)
    fmt = file_format(out)
    frame = synthetic_contacts(rows, seed=seed, chunk_rows=chunk_rows, as_of=as_of)

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        if fmt is FileFormat.PARQUET:
            frame.sink_parquet(partial)
        elif fmt is FileFormat.CSV:
            lists = [name for name, dtype in frame.collect_schema().items() if dtype == pl.List]
            frame.with_columns(pl.col(lists).list.join(LIST_SEPARATOR)).sink_csv(partial)
        else:
            frame.sink_ndjson(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
