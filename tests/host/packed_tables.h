// For the host checks of csrc/sequences.cuh: a packed problem of given sequence
// lengths, with the tables the preparing pass (prepare_relay_kernel) would write, built
// on the host, and the plan's state-chunk bound as plan_with_tiles sets it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "sequences.cuh"

namespace lightning_attn2 {

struct PackedTables {
    std::vector<int> seq_start;
    std::vector<int64_t> chunk_start, relay_start;
    int longest = 1;

    // p and plan as a packed problem of these lengths (plan.chunk_blocks already set),
    // reading the tables here; keep this object in place while they are used.
    void attach(const std::vector<int>& lengths, LinearAttnParams& p, ChunkPlan& plan) {
        seq_start.assign(1, 0);
        chunk_start.assign(1, 0);
        relay_start.assign(1, 0);
        longest = 1;
        for (int length : lengths) {  // the preparing pass's scans
            const int blocks = blocks_of(length);
            seq_start.push_back(seq_start.back() + length);
            chunk_start.push_back(chunk_start.back() + chunks_of(blocks, plan.chunk_blocks));
            relay_start.push_back(relay_start.back() + relay_cost(blocks));
            longest = std::max(longest, relay_cost(longest_chunk_of(blocks, plan.chunk_blocks)));
        }
        p.batch = 1;
        p.cu_seqlens = &p;  // any non-null: packed
        p.num_seqs = int(lengths.size());
        p.seqlen = seq_start.back();
        plan.seq_start = seq_start.data();
        plan.chunk_start = chunk_start.data();
        plan.relay_start = relay_start.data();
        plan.longest_chunk = &longest;
        plan.state_chunks = p.seqlen / (int64_t(plan.chunk_blocks) * kSweepBlockN);
        plan.chunked = plan.state_chunks > 0;
    }
};

}  // namespace lightning_attn2
