#!/usr/bin/env bash
# A fault-injection campaign on the richest fixture pair (upd_hash: a chained hash table with
# string keys and function-pointer callbacks, a field added in v2): starts v1, fills it, runs
# `transplant faults` against it, checks that it still serves the same data, and writes the
# table, the JSON and the plot into docs/faults/.
#
#   scripts/fault-campaign.sh [RUNS] [SEED]      (default 2000 runs, seed 1)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2000}
seed=${2:-1}
out=docs/faults
mkdir -p "$out"

cargo build --release --quiet -p transplant -p fixtures
fixtures=$(dirname "$(find target/release/build -path '*fixtures-*/out/upd_hash_v1' | head -1)")
[ -x "$fixtures/upd_hash_v1" ] || { echo "fixtures not built" >&2; exit 1; }

ready=$(mktemp); trap 'kill "$pid" 2>/dev/null || true; rm -f "$ready"' EXIT
"$fixtures/upd_hash_v1" 0 >"$ready" &
pid=$!
until grep -q READY "$ready"; do sleep 0.05; done
port=$(sed -n 's/.*port=\([0-9]*\).*/\1/p' "$ready")

ask() { python3 - "$port" "$@" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rw")
for cmd in sys.argv[2:]:
    f.write(cmd + "\n"); f.flush()
    print(f.readline().strip())
PY
}
cmds=()
for i in $(seq 0 59); do
  if (( i % 3 == 0 )); then cmds+=("SET key$i text$i"); else cmds+=("SET key$i $((i * 1000 - 7000))"); fi
done
ask "${cmds[@]}" >/dev/null
before=$(ask SUM)

./target/release/transplant faults --pid "$pid" --to "$fixtures/upd_hash_v2" \
  --runs "$runs" --seed "$seed" --json >"$out/campaign.json" || status=$?
after=$(ask SUM)
python3 - "$out/campaign.json" >"$out/campaign.txt" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
cols = ["runs", "detected_by_error", "detected_by_check", "detected_by_probation", "harmless", "harmful_covered",
        "harmful_uncovered", "not_applicable", "old_survived"]
print(f"{'kind':<28}" + "".join(f"{k.replace('detected_by_', 'det_'):>18}" for k in cols))
for name, t in sorted(c["by_kind"].items()) + [("total", c["totals"])]:
    print(f"{name:<28}" + "".join(f"{t[k]:>18}" for k in cols))
print(f"\n{c['totals']['runs']} runs in {c['seconds']:.0f} s, seed {c['seed']}; "
      f"old process survived every run: {c['old_survived_all']}")
PY
python3 scripts/plot-faults.py "$out/campaign.json" "$out/campaign.svg"
cat "$out/campaign.txt"
echo "old process $pid: SUM before '$before', after '$after'"
[ "$before" = "$after" ] || { echo "the old process's data changed" >&2; exit 1; }
exit "${status:-0}"
