#!/usr/bin/env bash
# Measures capture of a ~1e6-object state against a raw read of the same heap, and records the
# table in docs/bench/capture.md with the date, machine and command.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/bench/capture.md
tmp=$(mktemp)
CAPTURE_REPORT="$tmp" cargo bench --bench capture
{
  echo "# Capturing the state graph of a live process"
  echo
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -r), with"
  echo '`scripts/bench-capture.sh` (`cargo bench --bench capture`). "stopped" is the time the'
  echo "process is stopped (seize, read maps, copy its private writable memory); the heap walk"
  echo "and the graph run on the copy after it runs again. The baseline reads the same"
  echo "process's [heap] mapping raw with process_vm_readv in 1 MiB pieces, in the same run."
  echo
  cat "$tmp"
} > "$out"
rm -f "$tmp"
cat "$out"
