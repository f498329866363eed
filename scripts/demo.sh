#!/usr/bin/env bash
# `make demo`: example data, the example segments' counts and a funnel, then the flu-shot
# campaign in `exclusive` TLS mode over STARTTLS to a local capture server, and its report.
set -euo pipefail
cd "$(dirname "$0")/.."
BLAST=${BLAST:-.venv/bin/blast}
AS_OF=2026-12-01
DEMO=data/demo
rm -rf "$DEMO" && mkdir -p "$DEMO"

echo "== 1. example data: 10,000 synthetic contacts"
"$BLAST" generate contacts --rows 10000 --seed 7 --out "$DEMO/contacts.parquet"

echo
echo "== 2. the example segments (as of $AS_OF)"
for seg in segments/*.yml; do
  "$BLAST" segment count "$seg" --contacts "$DEMO/contacts.parquet" --as-of "$AS_OF"
done

echo
echo "== 3. why a segment selects whom it does: the funnel"
"$BLAST" segment explain segments/seniors-due-flu-shot.yml --contacts "$DEMO/contacts.parquet" --as-of "$AS_OF"

echo
echo "== 4. a local capture SMTP server with STARTTLS (blast sink)"
"$BLAST" sink --port 0 --tls --ca-out "$DEMO/sink-ca.pem" --maildir "$DEMO/inbox" >"$DEMO/sink.port" 2>"$DEMO/sink.log" &
SINK=$!
trap 'kill $SINK 2>/dev/null || true; wait $SINK 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$DEMO/sink.port" ] && break; sleep 0.1; done
PORT=$(head -n 1 "$DEMO/sink.port")
echo "listening on 127.0.0.1:$PORT, certificate from a CA written to $DEMO/sink-ca.pem"

# The example campaign, pointed at the sink: relay 127.0.0.1, its CA, TLS exclusive.
sed -e "s|^contacts: .*|contacts: contacts.parquet|" \
    -e "s|\.\./segments/|../../segments/|; s|\.\./templates/|../../templates/|g" \
    -e "s|^  host: .*|  host: 127.0.0.1|; s|^  port: .*|  port: $PORT\n  ca_file: sink-ca.pem|" \
    -e "/username_env\|password_env/d" \
    -e "s|^schedule: .*||" \
    campaigns/flu-shot.yml >"$DEMO/flu-shot.yml"

echo
echo "== 5. blast validate, then blast run (exclusive: never plaintext)"
"$BLAST" validate "$DEMO/flu-shot.yml"
"$BLAST" run "$DEMO/flu-shot.yml" --db "$DEMO/blast.db" --as-of "$AS_OF" --workers 1

echo
echo "== 6. the report, from the store"
"$BLAST" report flu-shot-2026 --db "$DEMO/blast.db"
"$BLAST" report flu-shot-2026 --db "$DEMO/blast.db" --json
echo
echo "messages in the sink's Maildir: $(find "$DEMO/inbox/new" -type f | wc -l)"
