// Host check of the output pass's work mapping (RelaySegment in csrc/sequences.cuh):
// over random launches of dense and packed problems, with the tables the preparing pass
// would write, the segments' pieces sweep every block of every (problem, head, job,
// chunk) exactly once (a job: a sequence, or a run of short sequences), each job of no
// blocks once, and every chunk cut by a segment boundary is handed from the head piece
// at the start of segment s + 1 to the tail piece that ends segment s, block to block.
// Built and run by tests/test_host_mapping.py; prints "ok" and the counts, or the
// first failure.
#include <cstdio>
#include <map>
#include <random>
#include <tuple>
#include <vector>

#include "packed_tables.h"
#include "sequences.cuh"

using namespace lightning_attn2;

namespace {

std::mt19937_64 rng(1);
int uniform(int lo, int hi) { return lo + int(rng() % uint64_t(hi - lo + 1)); }

// One problem's sequence lengths and the host copy of its packed tables.
struct Problem {
    std::vector<int> lengths;
    bool packed;
    PackedTables tables;
};

void make_plan(Problem& x, LinearAttnParams& p, ChunkPlan& plan) {
    p = LinearAttnParams{};
    plan = ChunkPlan{};
    p.heads = uniform(1, 5);
    p.num_seqs = int(x.lengths.size());
    plan.chunk_blocks = uniform(1, 12);
    if (!x.packed) {
        p.batch = p.num_seqs;
        p.seqlen = x.lengths[0];
        plan.chunks_per_seq = chunks_of(blocks_of(p.seqlen), plan.chunk_blocks);
        return;
    }
    // Short sequences sharing jobs no longer than a chunk, as plan_with_tiles sets them.
    plan.job_blocks = rng() % 2 ? uniform(1, plan.chunk_blocks) : 0;
    x.tables.attach(x.lengths, p, plan);
}

}  // namespace

int main() {
    long launches = 0, pieces = 0, handoffs = 0, jobs_of_several = 0;
    for (int trial = 0; trial < 20000; ++trial) {
        LinearAttnBatch batch{};
        batch.num_problems = uniform(1, kMaxProblems);
        std::vector<Problem> problems(batch.num_problems);
        for (int i = 0; i < batch.num_problems; ++i) {
            Problem& x = problems[i];
            x.packed = rng() % 2;
            const int seqs = uniform(x.packed ? 0 : 1, 12);
            const int longest = uniform(0, rng() % 4 == 0 ? 3000 : 300);
            const int dense_length = uniform(0, longest);
            for (int n = 0; n < seqs; ++n) x.lengths.push_back(x.packed ? uniform(0, longest) : dense_length);
            make_plan(x, batch.problems[i], batch.chunks[i]);
            batch.v_tiles[i] = 1;
        }
        batch.relay.segments = uniform(1, 300);

        // (problem, head, sequence, chunk) -> blocks swept, block by block; and the
        // pieces of each segment in order.
        std::map<std::tuple<int, int, int, int>, std::vector<int>> swept;
        std::vector<std::vector<SweepPiece>> by_segment(batch.relay.segments);
        for (int s = 0; s < batch.relay.segments; ++s) {
            RelaySegment segment = RelaySegment::of(batch, s);
            SweepPiece piece;
            while (segment.next(batch, piece)) {
                by_segment[s].push_back(piece);
                auto& blocks = swept[{piece.problem, piece.head, piece.work.seq, piece.work.chunk}];
                if (piece.first_block == piece.end_block) blocks.push_back(-1);  // a job of no blocks
                for (int b = piece.first_block; b < piece.end_block; ++b) blocks.push_back(b);
                ++pieces;
            }
        }
        // Every job is swept whole, once.
        for (int i = 0; i < batch.num_problems; ++i) {
            const LinearAttnParams& p = batch.problems[i];
            const ChunkPlan& plan = batch.chunks[i];
            for (int h = 0; h < p.heads; ++h)
                for (int n = 0; n < p.num_seqs; n = p.cu_seqlens == nullptr ? n + 1 : plan.job_end[n]) {
                    const SequenceChunk first = sequence_chunk(p, plan, n, 0);
                    const int blocks = blocks_of(first.length);
                    if (first.row_starts >= 0) {
                        ++jobs_of_several;
                        if (first.num_chunks != 1 || blocks > plan.job_blocks) {
                            printf("FAIL trial %d: a job of several sequences has %d chunks, %d blocks (at most %d)\n",
                                   trial, first.num_chunks, blocks, plan.job_blocks);
                            return 1;
                        }
                    }
                    for (int c = 0; c < first.num_chunks; ++c) {
                        std::vector<int> expected;
                        const int begin = c * plan.chunk_blocks, end = std::min(blocks, begin + plan.chunk_blocks);
                        if (begin >= end) expected.push_back(-1);
                        for (int b = begin; b < end; ++b) expected.push_back(b);
                        auto found = swept.find({i, h, n, c});
                        std::vector<int> got = found == swept.end() ? std::vector<int>{} : found->second;
                        std::sort(got.begin(), got.end());
                        if (got != expected) {
                            printf("FAIL trial %d: problem %d head %d seq %d chunk %d swept %zu blocks of %zu\n", trial,
                                   i, h, n, c, got.size(), expected.size());
                            return 1;
                        }
                        swept.erase(found);
                    }
                }
        }
        if (!swept.empty()) {
            printf("FAIL trial %d: %zu jobs swept that do not exist\n", trial, swept.size());
            return 1;
        }
        // A tail piece (not starting its chunk) ends its segment and continues, block to
        // block, the head piece that starts segment s + 1 and leaves its hand-off.
        for (int s = 0; s < batch.relay.segments; ++s) {
            const auto& mine = by_segment[s];
            for (size_t k = 0; k < mine.size(); ++k) {
                const SweepPiece& tail = mine[k];
                if (tail.starts_chunk) continue;
                const bool ok = k + 1 == mine.size() && s + 1 < batch.relay.segments && !by_segment[s + 1].empty() &&
                                [&] {
                                    const SweepPiece& head = by_segment[s + 1].front();
                                    return head.handoff_to == s + 1 && head.starts_chunk &&
                                           head.problem == tail.problem && head.head == tail.head &&
                                           head.work.seq == tail.work.seq && head.work.chunk == tail.work.chunk &&
                                           head.end_block == tail.first_block;
                                }();
                if (!ok) {
                    printf("FAIL trial %d: segment %d piece %zu waits for a hand-off that does not match\n", trial, s,
                           k);
                    return 1;
                }
                ++handoffs;
            }
            // A head piece leaves a hand-off only first in its segment, to a tail piece
            // waiting at the end of segment s - 1.
            for (size_t k = 0; k < mine.size(); ++k) {
                if (mine[k].handoff_to < 0) continue;
                const bool ok = k == 0 && mine[k].handoff_to == s && s > 0 && !by_segment[s - 1].empty() &&
                                !by_segment[s - 1].back().starts_chunk;
                if (!ok) {
                    printf("FAIL trial %d: segment %d piece %zu leaves a hand-off that no piece takes\n", trial, s, k);
                    return 1;
                }
            }
        }
        ++launches;
    }
    if (pieces == 0 || handoffs == 0 || jobs_of_several == 0) {
        printf("FAIL: no pieces, hand-offs or jobs of several sequences checked\n");
        return 1;
    }
    printf("ok: %ld launches, %ld pieces, %ld hand-offs, %ld jobs of several sequences\n", launches, pieces, handoffs,
           jobs_of_several);
    return 0;
}
