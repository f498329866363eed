"""Benchmark: a 6-clause segment, blast (Polars) vs DuckDB, on the same generated Parquet file.

For each size, four contestants, each in its own fresh subprocess (so peak RSS is its own):

- ``blast count``:    load the segment YAML, compile, scan, count (what ``blast segment count``
                      does after start-up)
- ``duckdb count``:   the same rule written by hand in SQL, ``count(*) FILTER (WHERE ...)``
- ``blast collect``:  the matching contacts, every column, as a Polars DataFrame
- ``duckdb collect``: the matching contacts, every column, materialised as a DuckDB temp table

Times are the median of ``--repeat`` runs, measured inside the child from before the YAML is read
(blast) or the connection is opened (DuckDB) to the result in hand; ``process`` is the child's
whole wall time including interpreter start-up and imports. Peak RSS is the child's
``VmHWM``. The counts of both engines must agree or the run fails.

Usage (data is generated once into bench/data/, which git ignores; ``--clean`` deletes it):

    .venv/bin/python bench/segments.py --rows 1000000 10000000 --clean
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
AS_OF = "2026-12-01"

SEGMENT_YAML = """\
name: bench-six-clauses
description: the benchmark's 6-clause rule
derive:
  age: {years_since: birth_date}
where:
  all:
    - {field: age, gte: 50}
    - {field: gender, in: [F, X]}
    - {field: conditions, contains_any: [diabetes, hypertension]}
    - {field: last_visit, within_days: 730}
    - {field: insurance, ne: self-pay}
    - {field: zip, matches: '^02'}
"""

# The same rule, by hand, as a DuckDB user would write it (age >= 50 as a birth-date bound).
DUCKDB_WHERE = f"""
    birth_date <= DATE '{AS_OF}' - INTERVAL 50 YEAR
    AND gender IN ('F', 'X')
    AND list_has_any(conditions, ['diabetes', 'hypertension'])
    AND last_visit BETWEEN DATE '{AS_OF}' - INTERVAL 730 DAY AND DATE '{AS_OF}'
    AND insurance <> 'self-pay'
    AND regexp_matches(zip, '^02')
"""

# Peak RSS of this process only: VmHWM (ru_maxrss would carry the parent's peak across exec).
PEAK_RSS = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

BLAST_CHILD = (
    PEAK_RSS
    + """
import datetime as dt, json, sys, time
started = time.perf_counter()
from blast.segments import audience, count, load_segment, prepare
try:
    from blast.contacts import load_contacts
except ImportError:
    load_contacts = None
import polars as pl
imported = time.perf_counter()
segment_path, contacts_path, mode = sys.argv[1:4]
segment = load_segment(segment_path)
if load_contacts is not None:
    contacts = load_contacts(contacts_path)
    frame, id_column = contacts.frame, contacts.id_column
else:
    frame, id_column = pl.scan_parquet(contacts_path), "id"
prepared = prepare(segment, frame, as_of=dt.date.fromisoformat(sys.argv[4]), id_column=id_column)
if mode == "count":
    result = count(prepared).count
else:
    result = audience(prepared).collect().height
done = time.perf_counter()
print(json.dumps({"seconds": done - imported, "result": result,
                  "rss_mb": peak_rss_mb()}))
"""
)

DUCKDB_CHILD = (
    PEAK_RSS
    + """
import json, sys, time
import duckdb
imported = time.perf_counter()
contacts_path, mode, where = sys.argv[1:4]
con = duckdb.connect()
source = f"read_parquet('{contacts_path}')"
if mode == "count":
    result = con.execute(f"SELECT count(*) FILTER (WHERE {where}) FROM {source}").fetchone()[0]
else:
    # materialised in DuckDB's own columnar memory (pyarrow is not installed for .arrow()/.pl())
    con.execute(f"CREATE TEMP TABLE matching AS SELECT * FROM {source} WHERE {where}")
    result = con.execute("SELECT count(*) FROM matching").fetchone()[0]
done = time.perf_counter()
print(json.dumps({"seconds": done - imported, "result": result,
                  "rss_mb": peak_rss_mb()}))
"""
)


def _run(code: str, *args: str) -> dict[str, float]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    ).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    measured["process"] = time.perf_counter() - started
    return measured


def _contestants(contacts: Path, segment: Path) -> dict[str, tuple[str, ...]]:
    return {
        "blast count": (BLAST_CHILD, str(segment), str(contacts), "count", AS_OF),
        "duckdb count": (DUCKDB_CHILD, str(contacts), "count", DUCKDB_WHERE),
        "blast collect": (BLAST_CHILD, str(segment), str(contacts), "collect", AS_OF),
        "duckdb collect": (DUCKDB_CHILD, str(contacts), "collect", DUCKDB_WHERE),
    }


def _ensure_data(rows: int) -> Path:
    path = DATA / f"contacts-{rows}.parquet"
    if not path.exists():
        started = time.perf_counter()
        # in a subprocess, so this process stays small
        code = (
            "import sys; from pathlib import Path; from blast.generate import generate_contacts; "
        )
        code += "generate_contacts(int(sys.argv[1]), Path(sys.argv[2]), seed=1)"
        subprocess.run([sys.executable, "-c", code, str(rows), str(path)], check=True)
        print(
            f"generated {rows:,} contacts in {time.perf_counter() - started:.1f}s", file=sys.stderr
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clean", action="store_true", help="delete bench/data afterwards")
    args = parser.parse_args()

    DATA.mkdir(parents=True, exist_ok=True)
    segment = DATA / "bench-six-clauses.yml"
    segment.write_text(SEGMENT_YAML, encoding="utf-8")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    import duckdb
    import polars

    print(f"polars {polars.__version__}, duckdb {duckdb.__version__}")
    print()
    print("| rows | contestant | result | median s | min s | process s | peak RSS MB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    try:
        for rows in args.rows:
            contacts = _ensure_data(rows)
            results: dict[str, int] = {}
            for name, (code, *child_args) in _contestants(contacts, segment).items():
                runs = [_run(code, *child_args) for _ in range(args.repeat)]
                seconds = [run["seconds"] for run in runs]
                results[name] = int(runs[0]["result"])
                print(
                    f"| {rows:,} | {name} | {results[name]:,} | {statistics.median(seconds):.3f} "
                    f"| {min(seconds):.3f} | {statistics.median(r['process'] for r in runs):.2f} "
                    f"| {max(run['rss_mb'] for run in runs):.0f} |",
                    flush=True,
                )
            assert len(set(results.values())) == 1, f"engines disagree: {results}"
    finally:
        if args.clean:
            for path in DATA.glob("*"):
                path.unlink()
            DATA.rmdir()


if __name__ == "__main__":
    main()
