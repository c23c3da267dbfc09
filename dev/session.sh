#!/usr/bin/env bash
# One GPU call: build, whole suite, full bench with both anchors, then graph_timing if time is left.
# Usage: bash dev/session.sh [seconds the call may run, default 590]: pass less when the
# session's device time left is below the call's limit, so the bench stops before the call does.
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
OMP_NUM_THREADS=2 PYTHONPATH=$PWD timeout 200 python3 -m pytest tests -n 14 -v -p no:cacheprovider -rs --durations=30 > $OUT/pytest.log 2>&1
echo "pytest rc $? at ${SECONDS}s"; tail -3 $OUT/pytest.log; grep -E '^(FAILED|ERROR)' $OUT/pytest.log | head
# The full bench took 325-347 s on an H100, and once more than 396 s (perf.md, "v23 on an
# H100"); with less time left, fewer repetitions (noted in its results; ~40 s).
BENCH_ARGS="--impls ours,official,fla_chunk"
if ((CALL_S - SECONDS < 450)); then BENCH_ARGS+=" --quick"; fi
echo "bench $BENCH_ARGS"
timeout $((CALL_S - SECONDS)) bash scripts/bench.sh $BENCH_ARGS > $OUT/bench.log 2>&1
echo "bench rc $? at ${SECONDS}s"; tail -4 $OUT/bench.log
find bench/results -newer $OUT/gpu.txt -type f -exec cp {} $OUT/ \;
ls -la bench/results
if ((SECONDS < CALL_S - 70)); then
    PYTHONPATH=$PWD timeout $((CALL_S - SECONDS)) python3 dev/graph_timing.py > $OUT/graph_timing.log 2>&1
    echo "graph_timing rc $? at ${SECONDS}s"
fi
