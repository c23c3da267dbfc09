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
    std::vector<int> seq_start, job_end;
    std::vector<int64_t> chunk_start, relay_start;
    int longest = 1;

    // p and plan as a packed problem of these lengths (plan.chunk_blocks and
    // plan.job_blocks already set), reading the tables here; keep this object in place
    // while they are used.
    void attach(const std::vector<int>& lengths, LinearAttnParams& p, ChunkPlan& plan) {
        const int seqs = int(lengths.size());
        seq_start.assign(1, 0);
        for (int length : lengths) seq_start.push_back(seq_start.back() + length);
        // The jobs: a job's first sequence is one that does not join the one before.
        job_end.assign(seqs + 1, seqs);
        for (int n = seqs - 1, next = seqs; n >= 0; --n) {
            job_end[n] = next;
            if (n == 0 || !joins_previous_job(plan.job_blocks, seq_start[n - 1], seq_start[n], seq_start[n + 1]))
                next = n;
        }
        chunk_start.assign(1, 0);
        relay_start.assign(1, 0);
        longest = 1;
        for (int n = 0; n < seqs; ++n) {  // the preparing pass's scans
            const bool first = n == 0 || job_end[n - 1] == n;
            const int blocks = blocks_of(seq_start[first ? job_end[n] : n + 1] - seq_start[n]);
            chunk_start.push_back(chunk_start.back() + chunks_of(blocks, plan.chunk_blocks));
            relay_start.push_back(relay_start.back() + (first ? relay_cost(blocks) : 0));
            if (first) longest = std::max(longest, relay_cost(longest_chunk_of(blocks, plan.chunk_blocks)));
        }
        p.batch = 1;
        p.cu_seqlens = &p;  // any non-null: packed
        p.num_seqs = seqs;
        p.seqlen = seq_start.back();
        plan.seq_start = seq_start.data();
        plan.job_end = job_end.data();
        plan.chunk_start = chunk_start.data();
        plan.relay_start = relay_start.data();
        plan.longest_chunk = &longest;
        plan.state_chunks = p.seqlen / (int64_t(plan.chunk_blocks) * kSweepBlockN);
        plan.chunked = plan.state_chunks > 0;
    }
};

}  // namespace lightning_attn2
