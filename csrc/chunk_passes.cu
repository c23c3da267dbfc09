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
            const V other = __shfl_up_sync(0xffffffffu, value, offset);
            if (lane >= offset) value = op(value, other);
        }
        return value;
    };
    const V inclusive = warp_inclusive_scan(x);
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    if (warp == 0) warp_totals[lane] = warp_inclusive_scan(warp_totals[lane]);
    __syncthreads();
    const V before_lane = __shfl_up_sync(0xffffffffu, inclusive, 1);
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
    auto max_op = [](auto a, auto b) { return max(a, b); };
    auto sum_op = [](auto a, auto b) { return a + b; };

    // seq_start: a running maximum over the entries.
    int local_max = 0, unused = 0;
    for (int n = begin; n < end; ++n) local_max = max(local_max, clamped_cu(n));
    int running = block_exclusive_scan(local_max, 0, max_op, &unused);
    for (int n = begin; n < end; ++n) {
        running = max(running, clamped_cu(n));
        plan.seq_start[n] = running;
    }
    __syncthreads();  // seq_start[n + 1] may be another thread's

    // Per sequence: chunks, relay cost, and the cost of its longest chunk.
    const int seq_end = min(end, p.num_seqs);
    auto blocks_of_seq = [&](int n) { return blocks_of(plan.seq_start[n + 1] - plan.seq_start[n]); };
    int64_t local_chunks = 0, local_cost = 0;
    int local_longest = 1;
    for (int n = begin; n < seq_end; ++n) {
        const int blocks = blocks_of_seq(n);
        local_chunks += chunks_of(blocks, plan.chunk_blocks);
        local_cost += relay_cost(blocks);
        local_longest = max(local_longest, longest_chunk_of(blocks, plan.chunk_blocks));
    }
    int64_t total_chunks = 0, total_cost = 0;
    int64_t chunk_first = block_exclusive_scan(local_chunks, int64_t(0), sum_op, &total_chunks);
    int64_t cost_first = block_exclusive_scan(local_cost, int64_t(0), sum_op, &total_cost);
    int longest = 1;
    block_exclusive_scan(local_longest, 1, max_op, &longest);
    for (int n = begin; n < seq_end; ++n) {
        const int blocks = blocks_of_seq(n);
        plan.chunk_start[n] = chunk_first;
        plan.relay_start[n] = cost_first;
        chunk_first += chunks_of(blocks, plan.chunk_blocks);
        cost_first += relay_cost(blocks);
    }
    if (threadIdx.x == 0) {
        plan.chunk_start[p.num_seqs] = total_chunks;
        plan.relay_start[p.num_seqs] = total_cost;
        *plan.longest_chunk = longest;
    }
}

// One CTA per part of a slab, `parts` per (sequence, head, v slice) of each chunked
// problem: turns the chunk states X_c (chunk c's keys and values from a zero state)
// into the states entering chunks 1, 2, ...:  E_1 = X_0,  E_{c+1} = lambda^L E_c + X_c,
// in place.
__global__ void __launch_bounds__(kPrefixThreads)
    chunk_prefix_kernel(const __grid_constant__ LinearAttnBatch batch, int heads, int v_tiles_per_head, int parts) {
    const LinearAttnParams& p = batch.problems[blockIdx.y];
    const ChunkPlan& plan = batch.chunks[blockIdx.y];
    const int part = blockIdx.x % parts;
    const int slab_index = blockIdx.x / parts;
    const int v_tile = slab_index % v_tiles_per_head;
    const int h = (slab_index / v_tiles_per_head) % heads;
    const int n = slab_index / v_tiles_per_head / heads;
    if (!plan.chunked || n >= p.num_seqs || h >= p.heads || v_tile >= batch.v_tiles[blockIdx.y]) return;
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
    int seqs = 0, heads = 0, v_tiles_per_head = 0;
    for (int i = 0; i < batch.num_problems; ++i) {
        seqs = max(seqs, batch.problems[i].num_seqs);
        heads = max(heads, batch.problems[i].heads);
        v_tiles_per_head = max(v_tiles_per_head, batch.v_tiles[i]);
    }
    const int64_t slabs = int64_t(seqs) * heads * v_tiles_per_head;
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
