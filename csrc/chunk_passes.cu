// The two small passes around the sweep (see ChunkPlan in launch.h): packing
// variable-length sequences into chunks, and the prefix over chunk states.
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
template <typename Op>
__device__ int block_exclusive_scan(int x, int zero, Op op, int* total) {
    static_assert(kPackThreads == 32 * 32, "one warp scans the warps' totals");
    __shared__ int warp_totals[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    auto warp_inclusive_scan = [&](int value) {
        for (int offset = 1; offset < 32; offset *= 2) {
            const int other = __shfl_up_sync(0xffffffffu, value, offset);
            if (lane >= offset) value = op(value, other);
        }
        return value;
    };
    const int inclusive = warp_inclusive_scan(x);
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    if (warp == 0) warp_totals[lane] = warp_inclusive_scan(warp_totals[lane]);
    __syncthreads();
    const int before_lane = __shfl_up_sync(0xffffffffu, inclusive, 1);
    const int exclusive = op(warp > 0 ? warp_totals[warp - 1] : zero, lane > 0 ? before_lane : zero);
    *total = warp_totals[31];
    __syncthreads();  // warp_totals is reused by the next call
    return exclusive;
}

// One CTA per packed problem (blockIdx.y). seq_start is cu_seqlens clamped to
// [0, seqlen] and made non-decreasing (a no-op for valid input, which the Python
// side checks; invalid input then cannot send the sweep out of bounds).
// seq_order ranks the sequences longest first (up to kPackThreads of them, else in
// their own order): the sweep's CTAs start in rank order, and starting the longest
// first keeps a long sequence from running alone at the end (LPT scheduling).
// chunk_start is the exclusive sum of the chunk counts in rank order.
__global__ void __launch_bounds__(kPackThreads) pack_sequences_kernel(const __grid_constant__ LinearAttnBatch batch) {
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

    // seq_start: a running maximum over the entries.
    int local_max = 0, unused = 0;
    for (int n = begin; n < end; ++n) local_max = max(local_max, clamped_cu(n));
    int running = block_exclusive_scan(local_max, 0, [](int a, int b) { return max(a, b); }, &unused);
    for (int n = begin; n < end; ++n) {
        running = max(running, clamped_cu(n));
        plan.seq_start[n] = running;
    }
    __syncthreads();  // seq_start[n + 1] may be another thread's

    // seq_order: a bitonic sort of (length, -index), descending, one key per thread.
    auto length_of = [&](int n) { return plan.seq_start[n + 1] - plan.seq_start[n]; };
    const int seq_end = min(end, p.num_seqs);
    if (p.num_seqs <= kPackThreads) {
        __shared__ uint64_t keys[kPackThreads];
        const int i = threadIdx.x;
        // Padding (key 0) sorts after every sequence, even one of no tokens.
        keys[i] = i < p.num_seqs ? (uint64_t(length_of(i)) << 32) | (0xffffffffu - uint32_t(i)) : 0;
        __syncthreads();
        int sort_size = 1;  // the network spans the sequences, not all threads
        while (sort_size < p.num_seqs) sort_size *= 2;
        for (int size = 2; size <= sort_size; size *= 2) {
            for (int stride = size / 2; stride > 0; stride /= 2) {
                const int partner = i ^ stride;
                if (partner > i) {
                    const uint64_t a = keys[i], b = keys[partner];
                    if ((a < b) == ((i & size) == 0)) {
                        keys[i] = b;
                        keys[partner] = a;
                    }
                }
                __syncthreads();
            }
        }
        if (i < p.num_seqs) plan.seq_order[i] = int(0xffffffffu - uint32_t(keys[i] & 0xffffffffu));
    } else {
        for (int n = begin; n < seq_end; ++n) plan.seq_order[n] = n;
    }
    __syncthreads();  // seq_order[rank] may be another thread's

    // chunk_start, over ranks: every sequence has at least one chunk.
    const int64_t chunk_tokens = int64_t(plan.chunk_blocks) * kSweepBlockN;
    auto chunks_of_rank = [&](int rank) {
        return int(max(int64_t(1), (length_of(plan.seq_order[rank]) + chunk_tokens - 1) / chunk_tokens));
    };
    int local_sum = 0, total = 0;
    for (int rank = begin; rank < seq_end; ++rank) local_sum += chunks_of_rank(rank);
    int first = block_exclusive_scan(local_sum, 0, [](int a, int b) { return a + b; }, &total);
    for (int rank = begin; rank < seq_end; ++rank) {
        plan.chunk_start[rank] = first;
        first += chunks_of_rank(rank);
    }
    if (threadIdx.x == 0) plan.chunk_start[p.num_seqs] = total;
}

// One CTA per (sequence rank, head, v slice) of each chunked problem: turns the chunk
// states X_c (chunk c's keys and values from a zero state) into the states
// entering chunks 1, 2, ...:  E_1 = X_0,  E_{c+1} = lambda^L E_c + X_c,  in place.
__global__ void __launch_bounds__(kPrefixThreads)
    chunk_prefix_kernel(const __grid_constant__ LinearAttnBatch batch, int heads, int v_tiles_per_head) {
    const LinearAttnParams& p = batch.problems[blockIdx.y];
    const ChunkPlan& plan = batch.chunks[blockIdx.y];
    const int v_tile = blockIdx.x % v_tiles_per_head;
    const int h = (blockIdx.x / v_tiles_per_head) % heads;
    const int rank = blockIdx.x / v_tiles_per_head / heads;
    if (!plan.chunked || rank >= p.num_seqs || h >= p.heads || v_tile >= batch.v_tiles[blockIdx.y]) return;
    const int num_chunks = p.cu_seqlens == nullptr ? plan.chunks_per_seq
                                                   : plan.chunk_start[rank + 1] - plan.chunk_start[rank];
    if (num_chunks <= 1) return;
    const double slope = p.slope != nullptr ? double(p.slope[h]) : 0.0;
    const float chunk_decay = float(exp(-slope * double(plan.chunk_blocks) * kSweepBlockN));
    auto slab = [&](int c) {
        return reinterpret_cast<float4*>(
            plan.chunk_states +
            ((chunk_slot(p, plan, rank, c) * p.heads + h) * batch.v_tiles[blockIdx.y] + v_tile) * batch.state_elems);
    };
    for (int i = threadIdx.x; i < batch.state_elems / 4; i += kPrefixThreads) {
        float4 entering = slab(0)[i];
        for (int c = 1; c < num_chunks - 1; ++c) {
            float4& x = slab(c)[i];
            entering = make_float4(chunk_decay * entering.x + x.x, chunk_decay * entering.y + x.y,
                                   chunk_decay * entering.z + x.z, chunk_decay * entering.w + x.w);
            x = entering;
        }
    }
}

}  // namespace

cudaError_t launch_pack_sequences(const LinearAttnBatch& batch, cudaStream_t stream) {
    pack_sequences_kernel<<<dim3(1, batch.num_problems), kPackThreads, 0, stream>>>(batch);
    return cudaGetLastError();
}

cudaError_t launch_chunk_prefix(const LinearAttnBatch& batch, cudaStream_t stream) {
    int seqs = 0, heads = 0, v_tiles_per_head = 0;
    for (int i = 0; i < batch.num_problems; ++i) {
        seqs = max(seqs, batch.problems[i].num_seqs);
        heads = max(heads, batch.problems[i].heads);
        v_tiles_per_head = max(v_tiles_per_head, batch.v_tiles[i]);
    }
    const int64_t ctas = int64_t(seqs) * heads * v_tiles_per_head;
    if (ctas == 0) return cudaSuccess;
    if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
    chunk_prefix_kernel<<<dim3(unsigned(ctas), batch.num_problems), kPrefixThreads, 0, stream>>>(batch, heads,
                                                                                               v_tiles_per_head);
    return cudaGetLastError();
}

}  // namespace lightning_attn2
