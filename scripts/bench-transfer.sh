#!/usr/bin/env bash
# Measures the transfer of a ~1e6-object state against a raw process_vm_readv/writev copy of
# the same bytes in the same run, and records the table in docs/bench/transfer.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/bench/transfer.md
tmp=$(mktemp)
TRANSFER_REPORT="$tmp" cargo bench --bench transfer
{
  echo "# Transferring a state into another live process"
  echo
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -r), with"
  echo '`scripts/bench-transfer.sh` (`cargo bench --bench transfer`). The plan places every'
  echo "object; apply allocates them all with the target's malloc in one injected batch,"
  echo "relocates pointers, writes with process_vm_writev and frees the target's displaced"
  echo "objects. The baseline copies the same number of bytes raw (process_vm_readv from the"
  echo "source's heap, process_vm_writev into the target) in the same run."
  echo
  cat "$tmp"
} > "$out"
rm -f "$tmp"
cat "$out"
