// Host check of the prefix pass's grid (prefix_sequence, prefix_candidates in
// csrc/sequences.cuh): over random packed batches, with the tables the preparing pass
// would write, every sequence cut into chunks is reached by exactly one candidate.
// Built and run by tests/test_host_mapping.py.
#include <cstdio>
#include <random>
#include <vector>
#include "sequences.cuh"
using namespace lightning_attn2;
int main() {
    std::mt19937_64 rng(1);
    long checked = 0, cut_total = 0;
    for (int trial = 0; trial < 200000; ++trial) {
        const int num_seqs = 1 + rng() % (trial % 3 == 0 ? 2000 : 40);
        std::vector<int> len(num_seqs);
        const int maxlen = 1 + rng() % (trial % 2 ? 300 : 20000);
        int64_t total = 0;
        for (auto& l : len) { l = (rng() % 5 == 0) ? 0 : int(rng() % maxlen); total += l; }
        const int chunk_blocks = 1 + rng() % 40;
        std::vector<int> seq_start(num_seqs + 1);
        std::vector<int64_t> chunk_start(num_seqs + 1);
        seq_start[0] = 0; chunk_start[0] = 0;
        for (int n = 0; n < num_seqs; ++n) {
            seq_start[n + 1] = seq_start[n] + len[n];
            chunk_start[n + 1] = chunk_start[n] + chunks_of(blocks_of(len[n]), chunk_blocks);
        }
        LinearAttnParams p{};
        p.cu_seqlens = &p;  // any non-null: packed
        p.num_seqs = num_seqs;
        p.seqlen = int(total);
        ChunkPlan plan{};
        plan.chunk_blocks = chunk_blocks;
        plan.state_chunks = p.seqlen / (int64_t(chunk_blocks) * kSweepBlockN);  // as plan_with_tiles
        plan.chunked = plan.state_chunks > 0;
        plan.seq_start = seq_start.data();
        plan.chunk_start = chunk_start.data();
        std::vector<int> seen(num_seqs, 0);
        const int64_t candidates = prefix_candidates(p, plan);
        for (int64_t c = 0; c < candidates; ++c) {
            const int n = prefix_sequence(p, plan, c);
            if (n < 0) continue;
            if (n >= num_seqs) { printf("FAIL out of range\n"); return 1; }
            if (sequence_chunk(p, plan, n, 0).num_chunks > 1) ++seen[n];
        }
        for (int n = 0; n < num_seqs; ++n) {
            const bool cut = chunk_start[n + 1] - chunk_start[n] > 1;
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
