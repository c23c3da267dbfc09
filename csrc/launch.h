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
// A launch group runs its preparing pass (launch_prepare_relay), then, when some
// sequence of its problems may have more than one chunk (ChunkPlan::chunked):
//   state pass   each chunk but the last of a sequence leaves the state it builds
//                from zero in chunk_states;
//   prefix pass  per sequence, turns those into the states entering chunks 1, 2, ...
//                (without the initial state, which the output pass adds);
// and last the output pass: every chunk starts from its entering state and writes o.
// The output pass runs every problem's chunks as one relay (see RelayWorkspace).
struct ChunkPlan {
    int chunk_blocks;    // blocks of kBlockN tokens per chunk
    int chunks_per_seq;  // equal-length batches: chunks of every sequence
    int64_t state_chunks;  // chunks that are not last in their sequence (a bound for packed sequences)
    bool chunked;        // some sequence may have more than one chunk
    // Packed sequences without states: runs of consecutive short sequences are swept
    // as one job of at most job_blocks blocks (see joins_previous_job); 0: every
    // sequence is its own job.
    int job_blocks;
    // Packed sequences (cu_seqlens): filled on the device by the preparing pass.
    int* seq_start;          // [num_seqs + 1] first token of sequence n, cu_seqlens made safe
    int* job_end;            // [num_seqs + 1] the sequence after the job holding sequence n
    int64_t* chunk_start;    // [num_seqs + 1] index of the first chunk of sequence n
    int64_t* relay_start;    // [num_seqs + 1] relay cost of the jobs before sequence n's (see RelayWorkspace)
    int* longest_chunk;      // [1] the largest relay cost of one chunk
    // With job_blocks: per block of a job of several sequences, at relay_start[first
    // sequence] + block, bit r set where a sequence other than the job's first starts at
    // row r, in the sweep's direction of time (a reversed sweep's sequences start at
    // their last tokens). The output pass resets the recurrence there.
    uint64_t* row_starts;
    // [chunks that are not last in their sequence][heads][v tiles][states][state slab],
    // fp32 (states: the state, then the derivative sweep's S');
    // the slot of chunk c of sequence n is chunk_start[n] - n + c
    // (n * (chunks_per_seq - 1) + c for equal-length batches).
    float* chunk_states;
};

// The output pass is a relay of persistent CTAs. Its jobs, every (problem, head,
// sequence or run of sequences, chunk) of the launch in that order, lie end to end on
// a line where a chunk of b blocks costs max(1, b). The line is cut into `segments` equal
// segments, at least as long as the longest chunk, and each segment is swept by
// one CTA per v slice, front to back: the order of McNaughton's wrap-around rule,
// so every segment ends at about the same time, whatever the sequence lengths.
// A chunk cut by a segment boundary runs its first blocks at the start of the
// later segment and its last blocks at the end of the earlier one (no later than
// it is planned, as no chunk is longer than a segment); the state crosses over in
// handoff_states. CTAs take segments in descending order from a ticket counter,
// so a CTA waits only for one that started before it: no deadlock, however few
// CTAs the GPU runs at once.
struct RelayWorkspace {
    float* handoff_states;  // [segments][v tiles][states x state slab], fp32
    int* handoff_ready;     // [segments][v tiles] flags, zeroed by the preparing pass
    int* next_ticket;       // right after the flags, zeroed with them
    int segments;
};

// The problems of one launch; the state pass picks one by blockIdx.y.
struct LinearAttnBatch {
    LinearAttnParams problems[kMaxProblems];
    ChunkPlan chunks[kMaxProblems];
    int num_problems;
    int v_tiles[kMaxProblems];  // v column slices of each problem's heads
    int state_elems;            // floats in one state slab (padded dim_qk x tile_v)
    RelayWorkspace relay;
};

enum class SweepPass { kState, kOutput };

template <typename T, int kHeadDimQK, int kTileV, bool kDecayDerivative>
cudaError_t launch_linear_attn_sweep(const LinearAttnBatch& batch, SweepPass pass, cudaStream_t stream);

// CTAs of that sweep's output pass that fit on one SM at once (0 on error).
template <typename T, int kHeadDimQK, int kTileV, bool kDecayDerivative>
int linear_attn_sweep_ctas_per_sm();

// The preparing pass, first of every launch group: zeroes the relay's flag_count
// flags and ticket, and fills seq_start, chunk_start, relay_start and longest_chunk
// of every packed problem of the batch.
cudaError_t launch_prepare_relay(const LinearAttnBatch& batch, int flag_count, cudaStream_t stream);
// The prefix pass over chunk_states, spread over a GPU of num_sms SMs.
cudaError_t launch_chunk_prefix(const LinearAttnBatch& batch, int num_sms, cudaStream_t stream);

}  // namespace lightning_attn2
