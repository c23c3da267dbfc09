// The two small passes around the sweep (see ChunkPlan and RelayWorkspace in
// launch.h): preparing a launch (the relay's flags zeroed, variable-length sequences
// packed into chunks), and the prefix over chunk states.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernel_traits.h"
#include "launch.h"
#include "sequences.cuh"

namespace lightning_attn2 {
namespace {

constexpr int kPackThreads = 1024;
constexpr int kPrefixThreads = 256;

// What a run of packed sequences adds up to: chunks, relay cost, and the relay cost
// of its longest chunk (at least 1). Sums (and a maximum) combine runs: one scan
// computes all three.
struct PackedCounts {
    int64_t chunks, cost;
    int longest;
};
__device__ __forceinline__ PackedCounts combine(PackedCounts a, PackedCounts b) {
    return {a.chunks + b.chunks, a.cost + b.cost, max(a.longest, b.longest)};
}
template <typename V>
__device__ __forceinline__ V shfl_up(V x, int offset) {
    return __shfl_up_sync(0xffffffffu, x, offset);
}
__device__ __forceinline__ PackedCounts shfl_up(PackedCounts x, int offset) {
    return {__shfl_up_sync(0xffffffffu, x.chunks, offset), __shfl_up_sync(0xffffffffu, x.cost, offset),
            __shfl_up_sync(0xffffffffu, x.longest, offset)};
}
template <typename V>
__device__ __forceinline__ V shfl_down(V x, int offset) {
    return __shfl_down_sync(0xffffffffu, x, offset);
}

// One warp packs a problem of fewer than kWarpPackEntries sequences, an entry of
// cu_seqlens per lane (pack_few_sequences); more take the CTA (pack_sequences).
constexpr int kWarpPackEntries = 32;

// Entry n of a packed problem's cu_seqlens, clamped to [0, seqlen].
__device__ __forceinline__ int clamped_cu_seqlen(const LinearAttnParams& p, int n) {
    const int64_t x = p.cu_seqlens_int64 ? static_cast<const int64_t*>(p.cu_seqlens)[n]
                                         : static_cast<const int32_t*>(p.cu_seqlens)[n];
    return int(x < 0 ? 0 : x > p.seqlen ? p.seqlen : x);
}

// Chunks, relay cost and longest chunk of a job of `blocks` blocks (at its first
// sequence), and of a later sequence of a job, which adds its chunks alone.
__device__ __forceinline__ PackedCounts job_counts(const ChunkPlan& plan, int blocks) {
    return {chunks_of(blocks, plan.chunk_blocks), relay_cost(blocks),
            relay_cost(longest_chunk_of(blocks, plan.chunk_blocks))};
}
__device__ __forceinline__ PackedCounts later_sequence_counts(const ChunkPlan& plan, int blocks) {
    return {chunks_of(blocks, plan.chunk_blocks), 0, 1};
}
constexpr PackedCounts kNoCounts{0, 0, 1};

// Exclusive scan over the CTA's threads of `x` under `op` (identity `zero`), in
// ascending thread order, or descending with kReverse (what comes after each thread);
// `total` gets the reduction of all. Every thread calls it. Warp shuffles, then one
// warp over the warps' totals: three barriers (the pass is on every packed call's
// critical path).
template <bool kReverse = false, typename V, typename Op>
__device__ V cta_exclusive_scan(V x, V zero, Op op, V* total) {
    constexpr int kWarps = kPackThreads / 32;
    static_assert(kWarps == 32, "one full warp scans the warps' totals");
    __shared__ V warp_totals[kWarps];
    // Positions in the scan's order.
    const int lane = kReverse ? 31 - int(threadIdx.x % 32) : int(threadIdx.x % 32);
    const int warp = kReverse ? kWarps - 1 - int(threadIdx.x / 32) : int(threadIdx.x / 32);
    // The value `offset` positions earlier in the scan's order (for reverse, a higher lane).
    auto earlier = [](V value, int offset, auto reverse) {
        if constexpr (decltype(reverse)::value) return shfl_down(value, offset);
        else return shfl_up(value, offset);
    };
    auto warp_inclusive_scan = [&](V value, int position, auto reverse) {
        for (int offset = 1; offset < 32; offset *= 2) {
            const V other = earlier(value, offset, reverse);
            if (position >= offset) value = op(value, other);
        }
        return value;
    };
    constexpr std::bool_constant<kReverse> kOrder{};
    const V inclusive = warp_inclusive_scan(x, lane, kOrder);
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    if (threadIdx.x < 32)
        warp_totals[threadIdx.x] = warp_inclusive_scan(warp_totals[threadIdx.x], threadIdx.x, std::false_type{});
    __syncthreads();
    const V before_lane = earlier(inclusive, 1, kOrder);
    const V exclusive = op(warp > 0 ? warp_totals[warp - 1] : zero, lane > 0 ? before_lane : zero);
    *total = warp_totals[kWarps - 1];
    __syncthreads();  // warp_totals is reused by the next call
    return exclusive;
}

// Packs a packed problem's sequences (prepare_relay_kernel): seq_start is
// cu_seqlens clamped to [0, seqlen] and made non-decreasing (a no-op for valid
// input, which the Python side checks; invalid input then cannot send the sweep
// out of bounds). job_end groups the sequences into jobs (joins_previous_job).
// chunk_start and relay_start are the exclusive sums of the sequences' chunk counts
// and of the jobs' relay costs (counted at each job's first sequence); longest_chunk
// the largest cost of one chunk; row_starts marks where the sequences of jobs of
// several start.
// Each thread of the CTA packs a run of entries: scans over the runs, and each value
// that crosses runs goes through global memory once, behind a barrier.
__device__ void pack_sequences(const LinearAttnParams& p, const ChunkPlan& plan) {
    const int entries = p.num_seqs + 1;
    const int per_thread = (entries + kPackThreads - 1) / kPackThreads;
    const int begin = min(int(threadIdx.x) * per_thread, entries);
    const int end = min(begin + per_thread, entries);
    auto min_op = [](int a, int b) { return min(a, b); };
    auto max_op = [](int a, int b) { return max(a, b); };
    int unused = 0;

    // seq_start: a running maximum over the entries. The run's last sequence ends at
    // the next run's first start, which this thread computes as well.
    int run_max = 0;
    for (int n = begin; n < end; ++n) run_max = max(run_max, clamped_cu_seqlen(p, n));
    const int start_before = cta_exclusive_scan(run_max, 0, max_op, &unused);
    const int end_start = end < entries ? max(max(start_before, run_max), clamped_cu_seqlen(p, end)) : 0;
    // The run's entries in order: f(n, seq_start[n - 1], seq_start[n], seq_start[n + 1])
    // (for the last entry, which starts no sequence, its own start as the next).
    auto walk_run = [&](auto&& f) {
        for (int n = begin, prev = start_before, start = start_before; n < end; ++n) {
            start = max(start, clamped_cu_seqlen(p, n));
            const int next = n + 1 < end ? max(start, clamped_cu_seqlen(p, n + 1)) : n == p.num_seqs ? start : end_start;
            f(n, prev, start, next);
            prev = start;
        }
    };

    // job_end: each job's first sequence, and the last entry, which ends the last job,
    // marked in the run's pass forwards; then backwards, every entry takes the next mark.
    int first_mark = entries;  // the run's first
    walk_run([&](int n, int prev, int start, int next) {
        plan.seq_start[n] = start;
        const bool mark = n == 0 || n == p.num_seqs || !joins_previous_job(plan.job_blocks, prev, start, next);
        plan.job_end[n] = mark ? n : -1;
        if (mark) first_mark = min(first_mark, n);
    });
    const int mark_after_run = cta_exclusive_scan<true>(first_mark, entries, min_op, &unused);
    for (int n = end - 1, next_mark = mark_after_run; n >= begin; --n) {
        const bool mark = plan.job_end[n] == n;
        if (n < p.num_seqs) plan.job_end[n] = next_mark;
        if (mark) next_mark = n;
    }
    __syncthreads();  // seq_start and job_end, read across runs below
    auto first_of_job = [&](int n) { return n == 0 || plan.job_end[n - 1] == n; };

    // Chunks per sequence; relay cost and longest chunk per job, at its first sequence.
    auto counts_of = [&](int n, int start, int next) {
        if (n == p.num_seqs) return kNoCounts;
        if (!first_of_job(n)) return later_sequence_counts(plan, blocks_of(next - start));
        return job_counts(plan, blocks_of(plan.seq_start[plan.job_end[n]] - start));
    };
    PackedCounts run = kNoCounts;
    walk_run([&](int n, int, int start, int next) { run = combine(run, counts_of(n, start, next)); });
    PackedCounts total{};
    PackedCounts before = cta_exclusive_scan(
        run, kNoCounts, [](PackedCounts a, PackedCounts b) { return combine(a, b); }, &total);
    walk_run([&](int n, int, int start, int next) {
        plan.chunk_start[n] = before.chunks;
        plan.relay_start[n] = before.cost;
        before = combine(before, counts_of(n, start, next));
    });
    if (threadIdx.x == 0) *plan.longest_chunk = total.longest;
    if (plan.job_blocks == 0) return;

    // row_starts: zeroed over the line of one head, then a bit per sequence start
    // inside a job of several, at its row in the sweep's direction of time.
    int last_first = -1;  // of the run's jobs
    for (int n = begin; n < end; ++n)
        if (n < p.num_seqs && first_of_job(n)) last_first = n;
    int first = cta_exclusive_scan(last_first, -1, max_op, &unused);
    for (int64_t i = threadIdx.x; i < total.cost; i += kPackThreads) plan.row_starts[i] = 0;
    __syncthreads();  // relay_start and the zeroed row_starts
    walk_run([&](int n, int, int start, int next) {
        if (n == p.num_seqs) return;
        if (first_of_job(n)) first = n;
        const int end_seq = plan.job_end[first];
        if (end_seq == first + 1) return;
        const int job_first_token = plan.seq_start[first], job_end_token = plan.seq_start[end_seq];
        const int row = p.reversed ? job_end_token - next : start - job_first_token;
        if (row > 0 && row < job_end_token - job_first_token) {
            auto* word = reinterpret_cast<unsigned long long*>(plan.row_starts) + plan.relay_start[first];
            atomicOr(word + row / kSweepBlockN, 1ull << (row % kSweepBlockN));
        }
    });
}

// pack_sequences for fewer than kWarpPackEntries sequences, by the first warp, entry n
// of cu_seqlens in lane n: every value that crosses entries passes by a shuffle or a
// ballot, so that nothing is stored and read back (pack_sequences' runs exchange
// seq_start and job_end through global memory, a chain of dependent accesses that
// was most of a warp's 3.8 us on an H100: perf.md v21).
__device__ void pack_few_sequences(const LinearAttnParams& p, const ChunkPlan& plan) {
    constexpr unsigned kAll = 0xffffffffu;
    const int n = threadIdx.x;
    const bool is_entry = n <= p.num_seqs, is_sequence = n < p.num_seqs;
    // seq_start: a running maximum (lanes past the last entry repeat it).
    int start = is_entry ? clamped_cu_seqlen(p, n) : 0;
    for (int offset = 1; offset < 32; offset *= 2) {
        const int earlier = shfl_up(start, offset);
        if (n >= offset) start = max(start, earlier);
    }
    const int prev = shfl_up(start, 1), next = shfl_down(start, 1);
    // A job's first sequence and the last entry are marked; job_end is the next mark.
    const bool mark = n == 0 || !is_sequence || !joins_previous_job(plan.job_blocks, prev, start, next);
    const unsigned marks = __ballot_sync(kAll, mark);
    const int job_end = is_sequence ? __ffs(marks >> (n + 1)) + n : p.num_seqs;
    const int job_end_start = __shfl_sync(kAll, start, job_end);
    PackedCounts counts = kNoCounts;
    if (is_sequence)
        counts = mark ? job_counts(plan, blocks_of(job_end_start - start))
                      : later_sequence_counts(plan, blocks_of(next - start));
    PackedCounts inclusive = counts;
    for (int offset = 1; offset < 32; offset *= 2) {
        const PackedCounts earlier = shfl_up(inclusive, offset);
        if (n >= offset) inclusive = combine(earlier, inclusive);
    }
    const PackedCounts earlier = shfl_up(inclusive, 1);
    const PackedCounts before = n > 0 ? earlier : kNoCounts;
    const int64_t total_cost = __shfl_sync(kAll, inclusive.cost, 31);
    if (is_entry) {
        plan.seq_start[n] = start;
        plan.job_end[n] = job_end;
        plan.chunk_start[n] = before.chunks;
        plan.relay_start[n] = before.cost;
    }
    if (n == 31) *plan.longest_chunk = inclusive.longest;
    if (plan.job_blocks == 0) return;

    // row_starts, as in pack_sequences: a bit per start of a later sequence of a job.
    for (int64_t i = n; i < total_cost; i += 32) plan.row_starts[i] = 0;
    __syncwarp();  // the zeroed words, before other lanes' atomics
    const int first = 31 - __clz(marks & (kAll >> (31 - n)));  // of the job holding n
    const int first_start = __shfl_sync(kAll, start, first);
    const int first_job_end = __shfl_sync(kAll, job_end, first);
    const int first_job_end_start = __shfl_sync(kAll, job_end_start, first);
    const int64_t first_relay_start = __shfl_sync(kAll, before.cost, first);
    // Every sequence of a job of several, its first too: a reversed sweep meets that
    // one last.
    if (!is_sequence || first_job_end == first + 1) return;
    const int row = p.reversed ? first_job_end_start - next : start - first_start;
    if (row > 0 && row < first_job_end_start - first_start) {
        auto* word = reinterpret_cast<unsigned long long*>(plan.row_starts) + first_relay_start;
        atomicOr(word + row / kSweepBlockN, 1ull << (row % kSweepBlockN));
    }
}

// One CTA per problem (blockIdx.y). The first zeroes the relay's flags and ticket
// (flag_count ints); a packed problem's CTA packs its sequences.
// One CTA per problem and no more on an SM: ptxas, left to aim at two CTAs of 1024
// threads per SM, fitted it in 32 registers and spilled.
__global__ void __launch_bounds__(kPackThreads, 1)
    prepare_relay_kernel(const __grid_constant__ LinearAttnBatch batch, int flag_count) {
    if (blockIdx.y == 0)
        for (int i = threadIdx.x; i < flag_count; i += kPackThreads) batch.relay.handoff_ready[i] = 0;
    const LinearAttnParams& p = batch.problems[blockIdx.y];
    if (p.cu_seqlens == nullptr) return;
    if (p.num_seqs + 1 > kWarpPackEntries) pack_sequences(p, batch.chunks[blockIdx.y]);
    else if (threadIdx.x < 32) pack_few_sequences(p, batch.chunks[blockIdx.y]);
}

// One CTA per part of a slab, `parts` per (candidate, head, v slice) of each chunked
// problem: turns the chunk states X_c (chunk c's keys and values from a zero state)
// of the candidate's sequence into the states entering chunks 1, 2, ...:
// E_1 = X_0,  E_{c+1} = lambda^L E_c + X_c, in place, with L tokens per chunk.
// The derivative sweep's slabs hold S' beside the state (X'_c, also from zero), whose
// entering values follow as a block's do in update_state, over L tokens:
// E'_1 = X'_0,  E'_{c+1} = lambda^L (E'_c + derivative_scale L E_c) + X'_c.
template <bool kDerivative>
__global__ void __launch_bounds__(kPrefixThreads)
    chunk_prefix_kernel(const __grid_constant__ LinearAttnBatch batch, int heads, int v_tiles_per_head, int parts) {
    constexpr int kStates = kDerivative ? 2 : 1;
    const LinearAttnParams& p = batch.problems[blockIdx.y];
    const ChunkPlan& plan = batch.chunks[blockIdx.y];
    const int part = blockIdx.x % parts;
    const int slab_number = blockIdx.x / parts;  // of (candidate, head, v slice)
    const int v_tile = slab_number % v_tiles_per_head;
    const int h = (slab_number / v_tiles_per_head) % heads;
    const int candidate = slab_number / v_tiles_per_head / heads;
    if (candidate >= prefix_candidates(p, plan) || h >= p.heads || v_tile >= batch.v_tiles[blockIdx.y]) return;
    const int n = prefix_sequence(p, plan, candidate);
    if (n < 0) return;
    const int num_chunks = sequence_chunk(p, plan, n, 0).num_chunks;
    if (num_chunks <= 1) return;
    const double slope = p.slope != nullptr ? double(p.slope[h]) : 0.0;
    const double chunk_decay = exp(-slope * double(plan.chunk_blocks) * kSweepBlockN);
    const float decay = float(chunk_decay);
    // lambda^L derivative_scale L: the weight of E_c in E'_{c+1}.
    const float state_in_derivative =
        kDerivative ? float(chunk_decay * double(p.derivative_scale[h]) * (double(plan.chunk_blocks) * kSweepBlockN))
                    : 0.f;
    const int64_t first_slot = chunk_slot(p, plan, n, 0);
    // State `state` (0: the state, 1: S') of chunk c's slab (see chunk_state_slab).
    auto slab = [&](int c, int state) {
        return reinterpret_cast<float4*>(
            plan.chunk_states +
            ((((first_slot + c) * p.heads + h) * batch.v_tiles[blockIdx.y] + v_tile) * kStates + state) *
                batch.state_elems);
    };
    auto axpy = [](float a, float4 x, float4 y) {
        return make_float4(a * x.x + y.x, a * x.y + y.y, a * x.z + y.z, a * x.w + y.w);
    };
    // The chain over chunks is sequential per element: its loads go kLoadsInFlight
    // at a time, all issued before the first is used, so that it waits for memory
    // once per group of chunks rather than once per chunk.
    constexpr int kLoadsInFlight = 8;
    constexpr int kChunksInFlight = kLoadsInFlight / kStates;
    for (int i = part * kPrefixThreads + threadIdx.x; i < batch.state_elems / 4; i += parts * kPrefixThreads) {
        float4 entering[kStates];
#pragma unroll
        for (int state = 0; state < kStates; ++state) entering[state] = slab(0, state)[i];
        for (int c0 = 1; c0 < num_chunks - 1; c0 += kChunksInFlight) {
            float4 x[kChunksInFlight][kStates];
#pragma unroll
            for (int j = 0; j < kChunksInFlight; ++j) {
#pragma unroll
                for (int state = 0; state < kStates; ++state)
                    if (c0 + j < num_chunks - 1) x[j][state] = slab(c0 + j, state)[i];
            }
#pragma unroll
            for (int j = 0; j < kChunksInFlight; ++j) {
                if (c0 + j < num_chunks - 1) {
                    if constexpr (kDerivative)
                        entering[1] = axpy(decay, entering[1], axpy(state_in_derivative, entering[0], x[j][1]));
                    entering[0] = axpy(decay, entering[0], x[j][0]);
#pragma unroll
                    for (int state = 0; state < kStates; ++state) slab(c0 + j, state)[i] = entering[state];
                }
            }
        }
    }
}

}  // namespace

cudaError_t launch_prepare_relay(const LinearAttnBatch& batch, int flag_count, cudaStream_t stream) {
    prepare_relay_kernel<<<dim3(1, batch.num_problems), kPackThreads, 0, stream>>>(batch, flag_count);
    return cudaGetLastError();
}

cudaError_t launch_chunk_prefix(const LinearAttnBatch& batch, int num_sms, cudaStream_t stream) {
    int64_t candidates = 0;
    int heads = 0, v_tiles_per_head = 0;
    for (int i = 0; i < batch.num_problems; ++i) {
        candidates = std::max(candidates, prefix_candidates(batch.problems[i], batch.chunks[i]));
        heads = max(heads, batch.problems[i].heads);
        v_tiles_per_head = max(v_tiles_per_head, batch.v_tiles[i]);
    }
    const int64_t slabs = candidates * heads * v_tiles_per_head;
    if (slabs == 0) return cudaSuccess;
    // The pass is bound by each SM's bandwidth to L2: a slab per CTA left most SMs
    // idle when few sequences are cut (1, 16, 65536 has 32 slabs). Slabs are split
    // into parts of kPrefixThreads float4s until there are about four CTAs per SM.
    const int64_t slab_parts = (batch.state_elems / 4 + kPrefixThreads - 1) / kPrefixThreads;
    const int parts = int(std::max<int64_t>(1, std::min<int64_t>(slab_parts, 4 * int64_t(num_sms) / slabs)));
    const int64_t ctas = slabs * parts;
    if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
    // A launch group's problems share their tiles, so all or none are derivative sweeps.
    auto kernel = batch.problems[0].decay_derivative ? chunk_prefix_kernel<true> : chunk_prefix_kernel<false>;
    kernel<<<dim3(unsigned(ctas), batch.num_problems), kPrefixThreads, 0, stream>>>(batch, heads, v_tiles_per_head,
                                                                                   parts);
    return cudaGetLastError();
}

}  // namespace lightning_attn2
