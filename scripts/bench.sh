#!/usr/bin/env bash
# Main job: time lightning_attn2_cuda against its anchors on this machine's GPU.
# Runs offline on a GPU machine that already has torch and triton; the anchors
# (lightning-attn, fla-core) come as wheels in .whl/ when present; a missing
# anchor is skipped with a note. Builds the extension first. Arguments go to bench/bench.py
# (e.g. --quick, --name NAME, --shapes "4,32,2048", --impls ours,fla_chunk).
set -euo pipefail
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/bench_site .whl/*.whl
    export PYTHONPATH="/tmp/bench_site${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! python3 -c 'import torch; exit(0 if torch.cuda.is_available() else 1)'; then
    echo "scripts/bench.sh: no CUDA GPU is visible to torch; the benchmark needs one." >&2
    exit 1
fi

bash scripts/build.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 bench/bench.py "$@"
