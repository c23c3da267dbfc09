// The sweep launcher, declared for dispatch.cu. Each (element type, tile)
// instantiation is compiled in its own file under instantiations/, so that the
// builds run in parallel and dispatch.cu compiles no kernel.
#pragma once

#include <cuda_runtime.h>

#include "lightning_attn.h"

namespace lightning_attn2 {

// The problems of one launch; blockIdx.y picks one.
struct LinearAttnBatch {
    LinearAttnParams problems[kMaxProblems];
    int num_problems;
};

template <typename T, int kHeadDimQK, int kTileV>
cudaError_t launch_linear_attn_sweep(const LinearAttnBatch& batch, cudaStream_t stream);

}  // namespace lightning_attn2
