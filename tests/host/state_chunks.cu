// Host check of the state pass's work mapping (locate_state_chunk and chunk_slot in
// csrc/sequences.cuh): over random dense and packed problems, with the tables the
// preparing pass would write, the state pass's grid of state_chunks (the host's bound)
// reaches every chunk that is not the last of its sequence exactly once, and writes it
// to slot chunk_slot = its index, which the prefix and output passes read back.
// Built and run by tests/test_host_mapping.py; prints "ok" and the counts, or the
// first failure.
#include <cstdio>
#include <random>
#include <vector>

#include "packed_tables.h"
#include "sequences.cuh"

using namespace lightning_attn2;

int main() {
    std::mt19937_64 rng(2);
    auto uniform = [&](int lo, int hi) { return lo + int(rng() % uint64_t(hi - lo + 1)); };
    long problems = 0, chunks = 0;
    for (int trial = 0; trial < 100000; ++trial) {
        const bool packed = rng() % 2;
        const int seqs = uniform(packed ? 0 : 1, trial % 10 == 0 ? 500 : 20);
        const int longest = uniform(0, rng() % 4 == 0 ? 50000 : 2000);
        const int chunk_blocks = uniform(1, 40);
        LinearAttnParams p{};
        ChunkPlan plan{};
        plan.chunk_blocks = chunk_blocks;
        PackedTables tables;
        p.num_seqs = seqs;
        if (packed) {
            std::vector<int> lengths(seqs);
            for (int& length : lengths) length = uniform(0, longest);
            tables.attach(lengths, p, plan);
        } else {
            p.batch = seqs;
            p.seqlen = uniform(0, longest);
            plan.chunks_per_seq = chunks_of(blocks_of(p.seqlen), chunk_blocks);
            plan.state_chunks = int64_t(p.batch) * (plan.chunks_per_seq - 1);
        }
        // Every chunk that is not last, by (sequence, chunk): reached how often.
        std::vector<std::vector<int>> reached(seqs);
        int64_t expected = 0;
        for (int n = 0; n < seqs; ++n) {
            reached[n].assign(sequence_chunk(p, plan, n, 0).num_chunks - 1, 0);
            expected += int64_t(reached[n].size());
        }
        if (expected > plan.state_chunks) {
            printf("FAIL trial %d: %lld chunks that are not last, above the bound %lld\n", trial, (long long)expected,
                   (long long)plan.state_chunks);
            return 1;
        }
        for (int64_t index = 0; index < plan.state_chunks; ++index) {
            SequenceChunk work;
            if (!locate_state_chunk(p, plan, index, work)) {
                if (index < expected) {
                    printf("FAIL trial %d: slot %lld not located\n", trial, (long long)index);
                    return 1;
                }
                continue;
            }
            const bool ok = work.seq >= 0 && work.seq < seqs && work.chunk >= 0 &&
                            work.chunk < int(reached[work.seq].size()) &&
                            chunk_slot(p, plan, work.seq, work.chunk) == index &&
                            work.length == (packed ? tables.seq_start[work.seq + 1] - tables.seq_start[work.seq] : p.seqlen);
            if (!ok) {
                printf("FAIL trial %d: slot %lld located as sequence %d chunk %d\n", trial, (long long)index, work.seq,
                       work.chunk);
                return 1;
            }
            ++reached[work.seq][work.chunk];
        }
        for (int n = 0; n < seqs; ++n)
            for (int c = 0; c < int(reached[n].size()); ++c)
                if (reached[n][c] != 1) {
                    printf("FAIL trial %d: sequence %d chunk %d reached %d times\n", trial, n, c, reached[n][c]);
                    return 1;
                }
        chunks += expected;
        ++problems;
    }
    if (chunks == 0) {
        printf("FAIL: no chunks checked\n");
        return 1;
    }
    printf("ok: %ld problems, %ld chunks that are not last, each reached once\n", problems, chunks);
    return 0;
}
