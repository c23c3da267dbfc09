#!/usr/bin/env bash
# On the GPU machine (run's command: `bash dev/run_verify.sh`, carry ["dev/main.tar"]): builds
# this tree (B) and dev/main.tar (A: `git archive --format=tar -o dev/main.tar main`)
# side by side, compares their outputs and times (dev/compare_builds.py), then runs
# B's pytest and, with SANITIZE=1, its sanitizer. Every log goes under $OUT.
set -u
export TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 CUDA_HOME=/usr/local/cuda
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
start=$(date +%s)
step() { echo "$1 rc $2 at $(($(date +%s) - start)) s" | tee -a "$OUT/steps.log"; }
rm -rf /tmp/tree_a && mkdir -p /tmp/tree_a && tar -xf dev/main.tar -C /tmp/tree_a
# DiagonalKScale against the per-element scaling, bit for bit, on 100k random tiles.
("$CUDA_HOME/bin/nvcc" -std=c++17 -O3 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Icsrc \
    dev/diag_tiles.cu -o /tmp/diag_tiles > "$OUT/diag_tiles.log" 2>&1 &&
    /tmp/diag_tiles 2>&1 | tail -30 >> "$OUT/diag_tiles.log"; step diag_tiles $?) &
(cd /tmp/tree_a && python3 setup.py -q build_ext --inplace > "$OUT/build_a.log" 2>&1; step "build A" $?) &
python3 setup.py -q build_ext --inplace > "$OUT/build_b.log" 2>&1
step "build B" $?
wait
timeout "${COMPARE_S:-240}" python3 dev/compare_builds.py /tmp/tree_a "$PWD" "$OUT" 2 > "$OUT/compare.log" 2>&1
step compare $?
export PYTHONPATH="$PWD"
OMP_NUM_THREADS=2 timeout "${PYTEST_S:-200}" python3 -m pytest tests -q -n 14 -p no:cacheprovider -rs > "$OUT/pytest.log" 2>&1
step pytest $?
if [[ -n "${SANITIZE:-}" ]]; then
    timeout 200 bash scripts/sanitize.sh > "$OUT/sanitize.log" 2>&1
    step sanitize $?
fi
tail -3 "$OUT/pytest.log"
cat "$OUT/diag_tiles.log"
cat "$OUT/compare.log"
