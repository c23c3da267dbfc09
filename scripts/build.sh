#!/usr/bin/env bash
# Builds the extension in place (lightning_attn2_cuda/_C*.so), installing what is
# missing first: torch==2.14.1 and the build/test tools on a fresh machine; nothing
# on one that has them (the GPU machine, which has no network).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

missing=()
$PYTHON -c "import torch" 2>/dev/null || missing+=("torch==2.14.1")
for module in ninja pybind11 pytest numpy; do
    $PYTHON -c "import $module" 2>/dev/null || missing+=("$module")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    $PYTHON -m pip install -q "${missing[@]}"
fi

# torch's guess of the toolkit from an nvcc wrapper on PATH can be wrong.
if [[ -z "${CUDA_HOME:-}" && -x /usr/local/cuda/bin/nvcc ]]; then
    export CUDA_HOME=/usr/local/cuda
fi
# Build for the GPU that is here, or, without one, one architecture as a compile check.
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
    TORCH_CUDA_ARCH_LIST=$($PYTHON -c "
import torch
if torch.cuda.is_available():
    major, minor = torch.cuda.get_device_capability()
    print(f'{major}.{minor}' + ('a' if major == 9 else ''))
else:
    print('8.0')")
    export TORCH_CUDA_ARCH_LIST
fi
echo "building for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
# In place, so that ninja rebuilds only what changed and no pip or network is involved.
$PYTHON setup.py -q build_ext --inplace
