#!/usr/bin/env bash
# One GPU call: build, full bench with both anchors, then the whole suite and graph_timing
# while time is left. The bench goes first because it needs the longest stretch (325-400 s
# on an H100); after the suite it ran out of time even with --quick (perf.md, Next).
# Usage: bash dev/session.sh [seconds the call may run, default 590]: pass less when the
# session's device time left is below the call's limit, so each step stops before the call does.
set -o pipefail
# scripts/build.sh picks CUDA_HOME and the GPU's architecture (9.0a on Hopper).
export PYTHONUNBUFFERED=1 MAX_JOBS=16
CALL_S=${1:-590}
# The copy's git metadata can be older than its files (72c4433 was printed for 584c411's
# tree): what git status lists beside HEAD is what differs from it.
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; git rev-parse HEAD; git status --short; } > $OUT/gpu.txt
cat $OUT/gpu.txt
(time bash scripts/build.sh) > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built at ${SECONDS}s"
timeout $((CALL_S - SECONDS)) bash scripts/bench.sh --impls ours,official,fla_chunk > $OUT/bench.log 2>&1
echo "bench rc $? at ${SECONDS}s"; tail -4 $OUT/bench.log
find bench/results -newer $OUT/gpu.txt -type f -exec cp {} $OUT/ \;
ls -la bench/results
# The suite took 120-160 s with 14 workers on an H100.
if ((SECONDS < CALL_S - 170)); then
    OMP_NUM_THREADS=2 PYTHONPATH=$PWD timeout $((CALL_S - SECONDS)) python3 -m pytest tests -n 14 -v \
        -p no:cacheprovider -rs --durations=30 > $OUT/pytest.log 2>&1
    echo "pytest rc $? at ${SECONDS}s"; tail -3 $OUT/pytest.log; grep -E '^(FAILED|ERROR)' $OUT/pytest.log | head
fi
if ((SECONDS < CALL_S - 70)); then
    PYTHONPATH=$PWD timeout $((CALL_S - SECONDS)) python3 dev/graph_timing.py > $OUT/graph_timing.log 2>&1
    echo "graph_timing rc $? at ${SECONDS}s"
fi
