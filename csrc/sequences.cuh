// Which blocks of which sequence a CTA sweeps, for equal-length batches and packed
// (cu_seqlens) batches alike: the one place that maps work to tokens. The state
// pass takes one chunk per CTA; the output pass walks a relay segment (see
// RelayWorkspace in launch.h).
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernel_traits.h"
#include "launch.h"

namespace lightning_attn2 {

// Work of one job: a sequence, or a run of short packed sequences (joins_previous_job)
// swept as one, the recurrence reset where each of them starts.
struct SequenceChunk {
    int seq;           // sequence n (the batch index, or the packed sequence): the job's first
    int chunk;         // chunk c of that job
    int num_chunks;    // chunks of that job
    int batch;         // batch row holding the job (0 when packed)
    int64_t first_token;  // of the job, within its batch row
    int length;        // tokens of the job
    int64_t row_starts;   // the job's first block in ChunkPlan::row_starts; -1: one sequence
};

// A run of consecutive blocks of one chunk, swept by one CTA in one go.
struct SweepPiece {
    int problem;
    int head;
    SequenceChunk work;
    int first_block;  // blocks of the sequence, [first_block, end_block)
    int end_block;
    bool starts_chunk;  // else it continues from the hand-off of the next segment
    int handoff_to;     // segment whose hand-off it leaves, or -1 when it ends its chunk
};

__host__ __device__ __forceinline__ int blocks_of(int64_t tokens) {
    return int((tokens + kSweepBlockN - 1) / kSweepBlockN);
}

// A sequence of `blocks` blocks cut into chunks of chunk_blocks: how many (at least
// one: a sequence of no tokens still has a chunk, which carries its initial state to
// its final state), and the blocks of the longest.
__host__ __device__ __forceinline__ int chunks_of(int blocks, int chunk_blocks) {
    return std::max(1, (blocks + chunk_blocks - 1) / chunk_blocks);
}
__host__ __device__ __forceinline__ int longest_chunk_of(int blocks, int chunk_blocks) {
    return std::min(blocks, chunk_blocks);
}

// Cost on the relay's line (see RelayWorkspace) of a job of `blocks` blocks: one
// per block, and one for a job of none.
__host__ __device__ __forceinline__ int relay_cost(int blocks) { return std::max(1, blocks); }

// Packed sequences without states are swept in jobs of consecutive sequences
// (ChunkPlan::job_blocks): sequence n, starting at `start` and ending at `next_start`,
// joins the job of sequence n - 1 (starting at `prev_start`) when both are no longer
// than half a job and start in the same stretch of half a job's tokens. A job then
// spans fewer than job_blocks blocks and is never cut into chunks. Alone, every
// sequence's partial last block costs about a whole one (512 sequences of 23-232
// tokens: 1289 blocks per head where their tokens fill 1024); a job pays that once.
__host__ __device__ __forceinline__ bool joins_previous_job(int job_blocks, int prev_start, int start, int next_start) {
    if (job_blocks == 0) return false;
    const int64_t half = int64_t(job_blocks) * kSweepBlockN / 2;
    return start - prev_start <= half && next_start - start <= half && prev_start / half == start / half;
}

// The job whose first sequence is n, as chunk c.
__host__ __device__ __forceinline__ SequenceChunk sequence_chunk(const LinearAttnParams& p, const ChunkPlan& plan, int n,
                                                        int c) {
    SequenceChunk out;
    out.seq = n;
    out.chunk = c;
    if (p.cu_seqlens == nullptr) {
        out.num_chunks = plan.chunks_per_seq;
        out.batch = n;
        out.first_token = 0;
        out.length = p.seqlen;
        out.row_starts = -1;
    } else {
        const int end_seq = plan.job_end[n];
        out.num_chunks = int(plan.chunk_start[n + 1] - plan.chunk_start[n]);
        out.batch = 0;
        out.first_token = plan.seq_start[n];
        out.length = plan.seq_start[end_seq] - plan.seq_start[n];
        out.row_starts = end_seq > n + 1 ? plan.relay_start[n] : -1;
    }
    return out;
}

// The last n in [0, count) with start(n) <= x, for a non-decreasing start with start(0) <= x.
template <typename Start>
__host__ __device__ __forceinline__ int last_at_or_before(int count, int64_t x, Start start) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = lo + (hi - lo + 1) / 2;
        if (start(mid) <= x) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// Slot in chunk_states of chunk c (not the last) of sequence n.
__host__ __device__ __forceinline__ int64_t chunk_slot(const LinearAttnParams& p, const ChunkPlan& plan, int n, int c) {
    const int64_t first = p.cu_seqlens == nullptr ? int64_t(n) * (plan.chunks_per_seq - 1) : plan.chunk_start[n] - n;
    return first + c;
}

// State pass: the chunk of slot `index` (see chunk_slot); false past the last.
__host__ __device__ __forceinline__ bool locate_state_chunk(const LinearAttnParams& p, const ChunkPlan& plan, int64_t index,
                                                   SequenceChunk& out) {
    if (p.cu_seqlens == nullptr) {
        const int per_seq = plan.chunks_per_seq - 1;
        if (per_seq <= 0 || index >= int64_t(p.batch) * per_seq) return false;
        out = sequence_chunk(p, plan, int(index / per_seq), int(index % per_seq));
        return true;
    }
    if (p.num_seqs == 0 || index >= plan.chunk_start[p.num_seqs] - p.num_seqs) return false;
    const int n = last_at_or_before(p.num_seqs, index, [&](int m) { return plan.chunk_start[m] - m; });
    out = sequence_chunk(p, plan, n, int(index - (plan.chunk_start[n] - n)));
    return true;
}

// ---- the prefix pass's grid

// Sequence `candidate` of the prefix pass's grid: the candidate-th sequence, or, when a
// packed problem has more sequences than chunks that are not last (state_chunks, a
// bound the host knows), the sequence whose first chunk is state slot `candidate`, so
// that the grid follows the chunks and not the sequences (512 short sequences, none
// cut, are then a few CTAs, not one per sequence). -1: no sequence's first chunk is
// that slot. The caller skips a sequence of one chunk, which needs no prefix.
__host__ __device__ __forceinline__ int prefix_sequence(const LinearAttnParams& p, const ChunkPlan& plan,
                                                       int64_t candidate) {
    if (p.num_seqs <= plan.state_chunks) return candidate < p.num_seqs ? int(candidate) : -1;
    SequenceChunk first;
    if (!locate_state_chunk(p, plan, candidate, first) || first.chunk != 0) return -1;
    return first.seq;
}

// Candidates of a problem for prefix_sequence: no more than its sequences or its
// chunks that are not last.
__host__ __device__ __forceinline__ int64_t prefix_candidates(const LinearAttnParams& p, const ChunkPlan& plan) {
    return plan.chunked ? std::min<int64_t>(p.num_seqs, plan.state_chunks) : 0;
}

// ---- the relay line of the output pass (see RelayWorkspace)

// Relay cost of one head's sequences of the problem.
__host__ __device__ __forceinline__ int64_t relay_cost_per_head(const LinearAttnParams& p, const ChunkPlan& plan) {
    if (p.cu_seqlens == nullptr) return int64_t(p.batch) * relay_cost(blocks_of(p.seqlen));
    return plan.relay_start[p.num_seqs];
}

// Relay cost of all of problem i's heads: its length on the line.
__host__ __device__ __forceinline__ int64_t relay_cost_of_problem(const LinearAttnBatch& batch, int i) {
    return batch.problems[i].heads * relay_cost_per_head(batch.problems[i], batch.chunks[i]);
}

__host__ __device__ __forceinline__ int longest_chunk(const LinearAttnParams& p, const ChunkPlan& plan) {
    if (p.cu_seqlens == nullptr) return relay_cost(longest_chunk_of(blocks_of(p.seqlen), plan.chunk_blocks));
    return *plan.longest_chunk;
}

// One CTA's segment of the line, handed out piece by piece in line order. The
// job under the first piece is found by a search of the line; each later one is
// the job after it (a cursor), so that a piece costs no chain of dependent loads.
struct RelaySegment {
    int64_t position;  // of the next piece
    int64_t end;
    int segment;
    // The job under `position` once located: problem, head, sequence, chunk, and
    // where it starts on the line.
    bool located;
    int problem, head, seq, chunk;
    int64_t job_start;

    // Segment `index` of the line over all the batch's problems, cut into
    // relay.segments equal parts no shorter than the longest chunk.
    __host__ __device__ __forceinline__ static RelaySegment of(const LinearAttnBatch& batch, int index) {
        int64_t line = 0;
        int longest = 1;
        for (int i = 0; i < batch.num_problems; ++i) {
            line += relay_cost_of_problem(batch, i);
            longest = std::max(longest, longest_chunk(batch.problems[i], batch.chunks[i]));
        }
        const int64_t length = std::max(int64_t(longest), (line + batch.relay.segments - 1) / batch.relay.segments);
        RelaySegment out{};
        out.segment = index;
        out.position = std::min(line, int64_t(index) * length);
        out.end = std::min(line, out.position + length);
        return out;
    }

    // The next piece of the segment; false at its end.
    __host__ __device__ __forceinline__ bool next(const LinearAttnBatch& batch, SweepPiece& piece) {
        if (position >= end) return false;
        if (!located) locate(batch);
        const LinearAttnParams& p = batch.problems[problem];
        const ChunkPlan& plan = batch.chunks[problem];
        piece.problem = problem;
        piece.head = head;
        piece.work = sequence_chunk(p, plan, seq, chunk);
        const int chunk_first_block = chunk * plan.chunk_blocks;
        const int chunk_blocks = std::min(plan.chunk_blocks, blocks_of(piece.work.length) - chunk_first_block);
        const int64_t job_end = job_start + relay_cost(chunk_blocks);
        // The part of the chunk in this segment; what lies past the segment ran
        // first, at the start of the next segment.
        const int64_t piece_end = std::min(job_end, end);
        const int done_before = int(job_end - piece_end);
        piece.first_block = chunk_first_block + done_before;
        piece.end_block = chunk_first_block + std::min(chunk_blocks, done_before + int(piece_end - position));
        piece.starts_chunk = done_before == 0;
        piece.handoff_to = position > job_start ? segment : -1;
        position = piece_end;
        if (position == job_end) advance(batch, piece.work.num_chunks);
        return true;
    }

  private:
    // The job under `position`, by a search of the line.
    __host__ __device__ __forceinline__ void locate(const LinearAttnBatch& batch) {
        int64_t x = position;
        problem = 0;
        int64_t per_head = relay_cost_per_head(batch.problems[0], batch.chunks[0]);
        while (x >= batch.problems[problem].heads * per_head) {
            x -= batch.problems[problem].heads * per_head;
            ++problem;
            per_head = relay_cost_per_head(batch.problems[problem], batch.chunks[problem]);
        }
        const LinearAttnParams& p = batch.problems[problem];
        const ChunkPlan& plan = batch.chunks[problem];
        head = int(x / per_head);
        const int64_t y = x % per_head;
        int64_t into_seq;  // cost units into sequence seq
        if (p.cu_seqlens == nullptr) {
            const int seq_cost = relay_cost(blocks_of(p.seqlen));
            seq = int(y / seq_cost);
            into_seq = y % seq_cost;
        } else {
            // A job's later sequences cost nothing on the line: their relay_start is the
            // next job's, so the search lands on a job's first sequence.
            seq = last_at_or_before(p.num_seqs, y, [&](int m) { return plan.relay_start[m]; });
            into_seq = y - plan.relay_start[seq];
        }
        chunk = int(into_seq / plan.chunk_blocks);
        job_start = position - (into_seq - int64_t(chunk) * plan.chunk_blocks);
        located = true;
    }

    // On to the job after the one ending at `position`: the next chunk of the
    // job (which has num_chunks), job, head, or problem (one with jobs).
    __host__ __device__ __forceinline__ void advance(const LinearAttnBatch& batch, int num_chunks) {
        job_start = position;
        if (++chunk < num_chunks) return;
        chunk = 0;
        const LinearAttnParams& p = batch.problems[problem];
        seq = p.cu_seqlens == nullptr ? seq + 1 : batch.chunks[problem].job_end[seq];
        if (seq < p.num_seqs) return;
        seq = 0;
        if (++head < batch.problems[problem].heads) return;
        head = 0;
        do ++problem;
        while (problem < batch.num_problems && relay_cost_of_problem(batch, problem) == 0);
    }
};

// The relay hand-off protocol: the CTA that leaves a state writes it (every
// thread, through L2), then raises the flag once all writes are visible on the GPU;
// the CTA that takes it waits for the flag before any thread reads (through L2).
__device__ __forceinline__ void signal_handoff(int* ready) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(ready), "r"(1) : "memory");
}

__device__ __forceinline__ void wait_for_handoff(const int* ready) {
    if (threadIdx.x == 0) {
        int flag = 0;
        while (true) {
            asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(flag) : "l"(ready) : "memory");
            if (flag != 0) break;
            __nanosleep(256);
        }
    }
    __syncthreads();
}

}  // namespace lightning_attn2
