#!/usr/bin/env bash
# On the GPU machine, after a build of this tree: ncu's source view (stall samples and
# instructions per SASS line) of the forward output pass of packed 64 (the kJobs loop)
# and of its equal-length twin (the plain loop), BNHD, H 16, D = E = 128, bf16: where
# the kJobs loop's ~2.9% goes (perf.md v22, v23). Reports and per-line CSVs under $OUT.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
for call in packed64 equal64; do
    timeout 120 "$NCU" --kernel-name regex:linear_attn_sweep_kernel --launch-count 1 \
        --section SourceCounters --section WarpStateStats --section LaunchStats --import-source no \
        -f -o "$OUT/src_$call" python3 dev/probe_calls.py --root "$PWD" --calls "bf16 $call BNHD" \
        --save /tmp/ncu_$call.pt > "$OUT/src_$call.log" 2>&1
    echo "$call: rc $?"
    "$NCU" -i "$OUT/src_$call.ncu-rep" --page source --csv --print-source sass > "$OUT/src_$call.csv" 2>&1
    "$NCU" -i "$OUT/src_$call.ncu-rep" --page details --csv > "$OUT/details_$call.csv" 2>&1
    echo "$call: $(wc -l < "$OUT/src_$call.csv") source lines"
done
