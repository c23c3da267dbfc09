// Which sequence and chunk a CTA works on, for equal-length batches and packed
// (cu_seqlens) batches alike: the one place that maps a chunk index to tokens.
#pragma once

#include <cstdint>

#include "launch.h"

namespace lightning_attn2 {

struct SequenceChunk {
    int seq;           // sequence n (the batch index, or the packed sequence)
    int rank;          // its place in the order of work (see ChunkPlan)
    int chunk;         // chunk c of that sequence
    int num_chunks;    // chunks of that sequence
    int batch;         // batch row holding the sequence (0 when packed)
    int64_t first_token;  // of the sequence, within its batch row
    int length;        // tokens of the sequence
};

// Chunk `index` of the problem; false past the last chunk.
__device__ __forceinline__ bool locate_chunk(const LinearAttnParams& p, const ChunkPlan& plan, int index,
                                             SequenceChunk& out) {
    if (p.cu_seqlens == nullptr) {
        out.seq = index / plan.chunks_per_seq;
        if (out.seq >= p.batch) return false;
        out.rank = out.seq;
        out.chunk = index % plan.chunks_per_seq;
        out.num_chunks = plan.chunks_per_seq;
        out.batch = out.seq;
        out.first_token = 0;
        out.length = p.seqlen;
        return true;
    }
    if (index >= plan.chunk_start[p.num_seqs]) return false;
    // The last rank whose first chunk is at or before `index` (chunk_start is
    // strictly increasing: every sequence has a chunk).
    int lo = 0, hi = p.num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (plan.chunk_start[mid] <= index) lo = mid;
        else hi = mid - 1;
    }
    out.rank = lo;
    out.seq = plan.seq_order[lo];
    out.chunk = index - plan.chunk_start[lo];
    out.num_chunks = plan.chunk_start[lo + 1] - plan.chunk_start[lo];
    out.batch = 0;
    out.first_token = plan.seq_start[out.seq];
    out.length = plan.seq_start[out.seq + 1] - plan.seq_start[out.seq];
    return true;
}

// Slot in chunk_states of chunk c (not the last) of the sequence of this rank.
__device__ __forceinline__ int64_t chunk_slot(const LinearAttnParams& p, const ChunkPlan& plan, int rank,
                                              int chunk) {
    const int64_t first = p.cu_seqlens == nullptr ? int64_t(rank) * (plan.chunks_per_seq - 1)
                                                  : int64_t(plan.chunk_start[rank]) - rank;
    return first + chunk;
}

}  // namespace lightning_attn2
