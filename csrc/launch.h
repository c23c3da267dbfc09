// Launchers, declared for dispatch.cu. Each (element type, tile) instantiation of
// the sweep is compiled in its own file under instantiations/, so that the builds
// run in parallel and dispatch.cu compiles no kernel.
#pragma once

#include <cuda_runtime.h>

#include "lightning_attn.h"

namespace lightning_attn2 {

// How one problem's sequences are cut for parallelism: into chunks of
// chunk_blocks blocks (a sequence's last chunk may be shorter; a sequence of 0
// tokens still has one chunk, which carries its initial state to its final state).
//
// When some sequence has more than one chunk, three launches run:
//   state pass   each chunk but the last of a sequence leaves the state it builds
//                from zero in chunk_states;
//   prefix pass  per sequence, turns those into the states entering chunks 1, 2, ...
//                (without the initial state, which the output pass adds);
//   output pass  every chunk starts from its entering state and writes o.
struct ChunkPlan {
    int chunk_blocks;    // blocks of kBlockN tokens per chunk
    int chunks_per_seq;  // equal-length batches: chunks of every sequence
    int max_chunks;      // grid rows: all chunks (a bound for packed sequences)
    bool chunked;        // some sequence may have more than one chunk
    // Packed sequences (cu_seqlens): filled on the device by the packing pass.
    // Sequences are worked on in rank order, longest first (see pack_sequences_kernel).
    int* seq_start;    // [num_seqs + 1] first token of sequence n, cu_seqlens made safe
    int* seq_order;    // [num_seqs] the sequence of each rank
    int* chunk_start;  // [num_seqs + 1] index of the first chunk of the sequence of each rank
    // [chunks that are not last in their sequence][heads][v tiles][state slab], fp32;
    // the slot of chunk c of the sequence of rank r is chunk_start[r] - r + c
    // (r = n for equal-length batches).
    float* chunk_states;
};

// The problems of one launch; blockIdx.y picks one.
struct LinearAttnBatch {
    LinearAttnParams problems[kMaxProblems];
    ChunkPlan chunks[kMaxProblems];
    int num_problems;
    int v_tiles[kMaxProblems];  // v column slices of each problem's heads
    int state_elems;            // floats in one state slab (padded dim_qk x tile_v)
};

enum class SweepPass { kState, kOutput };

template <typename T, int kHeadDimQK, int kTileV, bool kDecayDerivative>
cudaError_t launch_linear_attn_sweep(const LinearAttnBatch& batch, SweepPass pass, cudaStream_t stream);

// seq_start / chunk_start of every packed problem of the batch.
cudaError_t launch_pack_sequences(const LinearAttnBatch& batch, cudaStream_t stream);
// The prefix pass over chunk_states.
cudaError_t launch_chunk_prefix(const LinearAttnBatch& batch, cudaStream_t stream);

}  // namespace lightning_attn2
