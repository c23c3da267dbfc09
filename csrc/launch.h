// The sweep launcher, declared for dispatch.cu. Each (element type, tile)
// instantiation is compiled in its own file under instantiations/, so that the
// builds run in parallel and dispatch.cu compiles no kernel.
#pragma once

#include <cuda_runtime.h>

#include "lightning_attn.h"

namespace lightning_attn2 {

// How one problem's sequences are cut for parallelism. Chunk c covers blocks
// [c * chunk_blocks, (c + 1) * chunk_blocks). A state pass first leaves the state
// that each chunk but the last builds from zero in chunk_states; the output pass
// then starts chunk c from the decayed sum of the states of chunks 0 .. c-1.
struct ChunkPlan {
    int num_chunks;           // 1: one CTA walks the whole sequence, no state pass
    int chunk_blocks;         // blocks of kBlockN tokens per chunk
    float* chunk_states;      // [num_chunks - 1][batch * heads][v tiles][state slab], fp32
};

// The problems of one launch; blockIdx.y picks one.
struct LinearAttnBatch {
    LinearAttnParams problems[kMaxProblems];
    ChunkPlan chunks[kMaxProblems];
    int num_problems;
    bool state_pass;  // true: only build chunk states; false: write o
};

template <typename T, int kHeadDimQK, int kTileV>
cudaError_t launch_linear_attn_sweep(const LinearAttnBatch& batch, cudaStream_t stream);

}  // namespace lightning_attn2
