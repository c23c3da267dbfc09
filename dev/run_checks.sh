#!/usr/bin/env bash
# On the GPU machine after dev/run_verify.sh (same tree, built): the sanitizer's four
# tools and the 250-example property tests. Logs under $OUT.
set -u
export TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 CUDA_HOME=/usr/local/cuda PYTHONPATH="$PWD"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[[ -d /tmp/tree_a/csrc ]] || { mkdir -p /tmp/tree_a && tar -xf dev/main.tar -C /tmp/tree_a; }
(cd /tmp/tree_a && python3 setup.py -q build_ext --inplace > "$OUT/build_a.log" 2>&1) &
python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
wait
# The outputs' differences only (no timing): compare_builds.py with 0 rounds.
timeout 120 python3 dev/compare_builds.py /tmp/tree_a "$PWD" "$OUT" 0 > "$OUT/diff.log" 2>&1
echo "diff rc $?"; cat "$OUT/diff.log" | head -20
FUZZ_EXAMPLES=250 timeout 150 python3 -m pytest tests/test_fuzz.py -q -p no:cacheprovider > "$OUT/fuzz.log" 2>&1
echo "fuzz rc $?"; tail -2 "$OUT/fuzz.log"
timeout 300 bash scripts/sanitize.sh > "$OUT/sanitize.log" 2>&1
echo "sanitize rc $?"; cat "$OUT/sanitize.log" | head -20
