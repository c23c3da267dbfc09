// The two small passes around the sweep (see ChunkPlan and RelayWorkspace in
// launch.h): preparing a launch (the relay's flags zeroed, variable-length sequences
// packed into chunks), and the prefix over chunk states.
#include <algorithm>
#include <cstdint>

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

// Exclusive scan over the CTA's threads of `x` under `op` (identity `zero`);
// `total` gets the reduction of all. Every thread calls it. Warp shuffles, then one
// warp over the warps' totals: three barriers (the pass is on every packed call's
// critical path).
template <typename V, typename Op>
__device__ V block_exclusive_scan(V x, V zero, Op op, V* total) {
    static_assert(kPackThreads == 32 * 32, "one warp scans the warps' totals");
    __shared__ V warp_totals[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    auto warp_inclusive_scan = [&](V value) {
        for (int offset = 1; offset < 32; offset *= 2) {
            const V other = shfl_up(value, offset);
            if (lane >= offset) value = op(value, other);
        }
        return value;
    };
    const V inclusive = warp_inclusive_scan(x);
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    if (warp == 0) warp_totals[lane] = warp_inclusive_scan(warp_totals[lane]);
    __syncthreads();
    const V before_lane = shfl_up(inclusive, 1);
    const V exclusive = op(warp > 0 ? warp_totals[warp - 1] : zero, lane > 0 ? before_lane : zero);
    *total = warp_totals[31];
    __syncthreads();  // warp_totals is reused by the next call
    return exclusive;
}

// One CTA per problem (blockIdx.y). The first zeroes the relay's flags and ticket
// (flag_count ints); a packed problem's CTA packs its sequences. seq_start is
// cu_seqlens clamped to [0, seqlen] and made non-decreasing (a no-op for valid
// input, which the Python side checks; invalid input then cannot send the sweep
// out of bounds). chunk_start and relay_start are the exclusive sums of the
// sequences' chunk counts and relay costs; longest_chunk the largest cost of one chunk.
// Each thread packs a run of entries: two scans over the runs, and no value makes a
// round trip through global memory.
__global__ void __launch_bounds__(kPackThreads)
    prepare_relay_kernel(const __grid_constant__ LinearAttnBatch batch, int flag_count) {
    if (blockIdx.y == 0)
        for (int i = threadIdx.x; i < flag_count; i += kPackThreads) batch.relay.handoff_ready[i] = 0;
    const LinearAttnParams& p = batch.problems[blockIdx.y];
    const ChunkPlan& plan = batch.chunks[blockIdx.y];
    if (p.cu_seqlens == nullptr) return;
    const int entries = p.num_seqs + 1;
    const int per_thread = (entries + kPackThreads - 1) / kPackThreads;
    const int begin = min(int(threadIdx.x) * per_thread, entries);
    const int end = min(begin + per_thread, entries);
    auto clamped_cu = [&](int n) {
        const int64_t x = p.cu_seqlens_int64 ? static_cast<const int64_t*>(p.cu_seqlens)[n]
                                             : static_cast<const int32_t*>(p.cu_seqlens)[n];
        return int(x < 0 ? 0 : x > p.seqlen ? p.seqlen : x);
    };

    // seq_start: a running maximum over the entries. The run's last sequence ends at
    // the next run's first start, which this thread computes as well.
    int run_max = 0, unused = 0;
    for (int n = begin; n < end; ++n) run_max = max(run_max, clamped_cu(n));
    const int start_before = block_exclusive_scan(run_max, 0, [](int a, int b) { return max(a, b); }, &unused);
    const int end_start = end < entries ? max(max(start_before, run_max), clamped_cu(end)) : 0;

    // The run's entries in order: f(n, seq_start[n], the counts of sequence n (none
    // for the last entry, which starts no sequence)).
    const PackedCounts none{0, 0, 1};
    auto walk_run = [&](auto&& f) {
        for (int n = begin, start = start_before; n < end; ++n) {
            start = max(start, clamped_cu(n));
            if (n == p.num_seqs) {
                f(n, start, none);
                continue;
            }
            const int next_start = n + 1 < end ? max(start, clamped_cu(n + 1)) : end_start;
            const int blocks = blocks_of(next_start - start);
            f(n, start,
              PackedCounts{chunks_of(blocks, plan.chunk_blocks), relay_cost(blocks),
                           relay_cost(longest_chunk_of(blocks, plan.chunk_blocks))});
        }
    };
    PackedCounts run = none;
    walk_run([&](int, int, PackedCounts counts) { run = combine(run, counts); });
    PackedCounts total{};
    PackedCounts before = block_exclusive_scan(
        run, none, [](PackedCounts a, PackedCounts b) { return combine(a, b); }, &total);
    walk_run([&](int n, int start, PackedCounts counts) {
        plan.seq_start[n] = start;
        plan.chunk_start[n] = before.chunks;
        plan.relay_start[n] = before.cost;
        before = combine(before, counts);
    });
    if (threadIdx.x == 0) *plan.longest_chunk = total.longest;
}

// One CTA per part of a slab, `parts` per (candidate, head, v slice) of each chunked
// problem: turns the chunk states X_c (chunk c's keys and values from a zero state)
// of the candidate's sequence into the states entering chunks 1, 2, ...:
// E_1 = X_0,  E_{c+1} = lambda^L E_c + X_c, in place.
__global__ void __launch_bounds__(kPrefixThreads)
    chunk_prefix_kernel(const __grid_constant__ LinearAttnBatch batch, int heads, int v_tiles_per_head, int parts) {
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
    const float chunk_decay = float(exp(-slope * double(plan.chunk_blocks) * kSweepBlockN));
    const int64_t first_slot = chunk_slot(p, plan, n, 0);
    auto slab = [&](int c) {
        return reinterpret_cast<float4*>(
            plan.chunk_states + (((first_slot + c) * p.heads + h) * batch.v_tiles[blockIdx.y] + v_tile) * batch.state_elems);
    };
    // The chain over chunks is sequential per element: its loads go kLoadsInFlight
    // chunks at a time, all issued before the first is used, so that it waits for
    // memory once per group of chunks rather than once per chunk.
    constexpr int kLoadsInFlight = 8;
    for (int i = part * kPrefixThreads + threadIdx.x; i < batch.state_elems / 4; i += parts * kPrefixThreads) {
        float4 entering = slab(0)[i];
        for (int c0 = 1; c0 < num_chunks - 1; c0 += kLoadsInFlight) {
            float4 x[kLoadsInFlight];
#pragma unroll
            for (int j = 0; j < kLoadsInFlight; ++j)
                if (c0 + j < num_chunks - 1) x[j] = slab(c0 + j)[i];
#pragma unroll
            for (int j = 0; j < kLoadsInFlight; ++j) {
                if (c0 + j < num_chunks - 1) {
                    entering = make_float4(chunk_decay * entering.x + x[j].x, chunk_decay * entering.y + x[j].y,
                                           chunk_decay * entering.z + x[j].z, chunk_decay * entering.w + x[j].w);
                    slab(c0 + j)[i] = entering;
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
    chunk_prefix_kernel<<<dim3(unsigned(ctas), batch.num_problems), kPrefixThreads, 0, stream>>>(
        batch, heads, v_tiles_per_head, parts);
    return cudaGetLastError();
}

}  // namespace lightning_attn2
