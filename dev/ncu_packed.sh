#!/usr/bin/env bash
# On the GPU machine, after a build of this tree: ncu of the sweep kernels of one
# packed forward + backward (16 sequences, 65536 tokens, H 16, D = E = 128, bf16) in
# each layout, and of the equal-length BHND call: why packed BHND was ~20% slower
# than packed BNHD and equal-length BHND (perf.md v14). Logs under $OUT.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
for call in "packed16 BHND" "packed16 BNHD" "equal16 BHND"; do
    tag=${call// /_}
    timeout 150 "$NCU" --kernel-name regex:linear_attn_sweep_kernel --launch-skip 0 --launch-count 4 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section LaunchStats \
        --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,gpu__time_duration.sum \
        --csv --page details python3 dev/probe_calls.py --root "$PWD" --calls "bf16 $call" --save /tmp/ncu_$tag.pt \
        > "$OUT/ncu_$tag.csv" 2> "$OUT/ncu_$tag.err"
    echo "$call: rc $? $(grep -c linear_attn "$OUT/ncu_$tag.csv") rows"
done
