#!/usr/bin/env bash
# Branch `next` (v24's warp packer and v25's chunked slope derivative, perf.md) against
# main in one call (carry dev/main.tar from `git archive --format=tar -o dev/main.tar main`):
# run_verify (outputs and times of the varlen and slope-gradient calls, this tree's
# pytest), then kernel_split (v24's preparing pass) on both trees while time is left.
export PYTHONUNBUFFERED=1
CALL_S=${1:-560}
git rev-parse HEAD > $OUT/next.txt; git status --short >> $OUT/next.txt
PROBE_CALLS="bf16 packed16 BNHD;bf16 equal16 BNHD;bf16 packed64 BNHD;bf16 packed512 BNHD;bf16 1,32,32768;\
bf16 slope grad D128 2,16,4097;bf16 slope grad D256 2,8,2049;bf16 slope grad 1,16,65536;bf16 slope grad 4,32,2048;\
bf16 slope grad packed16 BNHD;fp32 2,8,3001" \
  COMPARE_S=${COMPARE_S:-200} PYTEST_S=${PYTEST_S:-180} bash dev/run_verify.sh
echo "verify done at ${SECONDS}s"
for t in "$PWD" /tmp/tree_a; do
  left=$((CALL_S - SECONDS)); ((left > 20)) || break
  (cd $t && PYTHONPATH=$PWD timeout $((left / 2)) python3 dev/kernel_split.py 30) > $OUT/split_$(basename $t).log 2>&1
  echo "split $t rc $? at ${SECONDS}s"
done
