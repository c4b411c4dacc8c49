#!/usr/bin/env bash
# Measures remote allocation, one call per object vs one injected loop per batch, and records
# the table in docs/bench/remote_alloc.md with the date, machine and command.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/bench/remote_alloc.md
tmp=$(mktemp)
REMOTE_ALLOC_REPORT="$tmp" cargo bench -p tracer --bench remote_alloc
{
  echo "# Remote allocation in a tracee: per-object cost"
  echo
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -r), with"
  echo '`scripts/bench-remote-alloc.sh` (`cargo bench -p tracer --bench remote_alloc`).'
  echo "Both ways allocate the same sizes with the tracee's own malloc, in the same run."
  echo
  cat "$tmp"
} > "$out"
rm -f "$tmp"
cat "$out"
