#!/usr/bin/env bash
# `make demo`: example data, the example segments' counts and a funnel, then (once the sending
# engine exists) a full campaign over STARTTLS to a local capture server and its report.
set -euo pipefail
cd "$(dirname "$0")/.."
BLAST=${BLAST:-.venv/bin/blast}
AS_OF=2026-12-01
mkdir -p data/demo

echo "== 1. example data: 10,000 synthetic contacts"
"$BLAST" generate contacts --rows 10000 --seed 7 --out data/demo/contacts.parquet

echo
echo "== 2. the example segments (as of $AS_OF)"
for seg in segments/*.yml; do
  "$BLAST" segment count "$seg" --contacts data/demo/contacts.parquet --as-of "$AS_OF"
done

echo
echo "== 3. why a segment selects whom it does: the funnel"
"$BLAST" segment explain segments/seniors-due-flu-shot.yml --contacts data/demo/contacts.parquet --as-of "$AS_OF"
