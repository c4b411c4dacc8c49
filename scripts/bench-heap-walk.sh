#!/usr/bin/env bash
# Times the glibc heap walk of a live process with N extra small chunks (the heap_shapes
# fixture, which also holds a 72 MiB two-heap thread arena), release build, for several N.
# Prints a Markdown table: chunks walked, bytes read, time to locate malloc (libc debug info
# load on the first call of the process, cached after), and three successive walks.
# Usage: scripts/bench-heap-walk.sh [N ...]   (default: 10000 100000 1000000 2000000)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(10000 100000 1000000 2000000)
cargo test --release --test heap --no-run >/dev/null 2>&1
echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -r), $(ldd --version | head -1)"
echo
echo "| extra chunks | chunks walked | bytes read | locate | walks |"
echo "|---:|---:|---:|---:|---|"
for n in "${sizes[@]}"; do
  line=$(HEAP_WALK_CHUNKS="$n" cargo test --release --test heap a_million_chunk_heap_is_walked \
    -- --nocapture 2>&1 | grep '^HEAP-WALK' || true)
  [ -n "$line" ] || { echo "run with N=$n failed" >&2; exit 1; }
  chunks=$(sed -E 's/.*chunks=([0-9]+).*/\1/' <<<"$line")
  bytes=$(sed -E 's/.*bytes_read=([0-9]+).*/\1/' <<<"$line")
  locate=$(sed -E 's/.*locate=([^ ]+).*/\1/' <<<"$line")
  walks=$(sed -E 's/.*walks=(\[[^]]*\]).*/\1/' <<<"$line")
  echo "| $n | $chunks | $bytes | $locate | $walks |"
done
