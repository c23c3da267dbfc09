#!/usr/bin/env bash
# Runs scripts/sanitize.py under each compute-sanitizer tool (on a GPU machine, after
# scripts/build.sh). Prints one summary line per tool; exits 1 if any reports an error.
set -uo pipefail
cd "$(dirname "$0")/.."
SANITIZER=${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Every tensor its own cudaMalloc, so that memcheck sees a read past a tensor's end
# (the caching allocator's pool would hide it).
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
for tool in memcheck racecheck synccheck initcheck; do
    log=$(mktemp)
    "$SANITIZER" --tool "$tool" --error-exitcode 9 python3 scripts/sanitize.py > "$log" 2>&1
    rc=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -1)
    echo "$tool: rc $rc, ${summary:-no summary line}"
    if ((rc != 0)); then
        status=1
        grep -E "=========" "$log" | head -40
        tail -5 "$log"
    fi
    rm -f "$log"
done
exit $status
