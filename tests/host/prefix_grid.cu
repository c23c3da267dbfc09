// Host check of the prefix pass's grid (prefix_sequence, prefix_candidates in
// csrc/sequences.cuh): over random packed batches, with the tables the preparing pass
// would write, every sequence cut into chunks is reached by exactly one candidate.
// Built and run by tests/test_host_mapping.py.
#include <cstdio>
#include <random>
#include <vector>

#include "packed_tables.h"
#include "sequences.cuh"

using namespace lightning_attn2;

int main() {
    std::mt19937_64 rng(1);
    long checked = 0, cut_total = 0;
    for (int trial = 0; trial < 200000; ++trial) {
        const int num_seqs = 1 + rng() % (trial % 3 == 0 ? 2000 : 40);
        std::vector<int> len(num_seqs);
        const int maxlen = 1 + rng() % (trial % 2 ? 300 : 20000);
        for (auto& l : len) l = (rng() % 5 == 0) ? 0 : int(rng() % maxlen);
        LinearAttnParams p{};
        ChunkPlan plan{};
        plan.chunk_blocks = 1 + rng() % 40;
        PackedTables tables;
        tables.attach(len, p, plan);
        std::vector<int> seen(num_seqs, 0);
        const int64_t candidates = prefix_candidates(p, plan);
        for (int64_t c = 0; c < candidates; ++c) {
            const int n = prefix_sequence(p, plan, c);
            if (n < 0) continue;
            if (n >= num_seqs) { printf("FAIL out of range\n"); return 1; }
            if (sequence_chunk(p, plan, n, 0).num_chunks > 1) ++seen[n];
        }
        for (int n = 0; n < num_seqs; ++n) {
            const bool cut = tables.chunk_start[n + 1] - tables.chunk_start[n] > 1;
            cut_total += cut;
            if (seen[n] != (cut ? 1 : 0)) {
                printf("FAIL trial %d seq %d cut %d seen %d (seqs %d, state_chunks %lld)\n", trial, n, cut, seen[n],
                       num_seqs, (long long)plan.state_chunks);
                return 1;
            }
        }
        ++checked;
    }
    if (cut_total == 0) {
        printf("FAIL: no cut sequences checked\n");
        return 1;
    }
    printf("ok: %ld batches, %ld cut sequences each reached once\n", checked, cut_total);
    return 0;
}
