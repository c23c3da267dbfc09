// The Lightning Attention-2 sweep: Algorithm 1 of Qin et al. (2024), one CTA per
// (problem, batch x head, chunk of the sequence, slice of v columns), walking its
// chunk block by block with the state KV in fp32 registers.
//
// The backward pass (Algorithm 2) runs this same sweep three times, as problems of
// one launch (see backward in api.cpp):
//   dq = sweep(q := do, k := v, v := k)                     forward in time,
//   dk = sweep(q := v,  k := do, v := q)   backward in time, state dKV^T,
//   dv = sweep(q := k,  k := q,  v := do)  backward in time, state dKV.
#pragma once

#include "kernel_traits.h"
#include "launch.h"
#include "tile_ops.cuh"

namespace lightning_attn2 {

// Weight of key s in the state update of a block holding `valid` tokens:
// lambda^(valid - 1 - s), the decay from token s to the end of the block.
struct KeyDecay {
    static constexpr bool kEnabled = true;
    const float* decay_pow;  // lambda^i for i in [0, kBlockN]
    int valid;
    __device__ __forceinline__ float operator()(int s) const {
        return s < valid ? decay_pow[valid - 1 - s] : 0.f;
    }
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads)
    linear_attn_sweep_kernel(const __grid_constant__ LinearAttnBatch batch, int v_tiles_per_head,
                             int chunks_per_head) {
    using T = typename Traits::Element;
    constexpr int kBlockN = Traits::kBlockN;
    constexpr int kHeadDimQK = Traits::kHeadDimQK;
    constexpr int kTileV = Traits::kTileV;
    constexpr int kStages = Traits::kStages;
    constexpr int kLdQK = Traits::kLdQK;
    constexpr int kLdV = Traits::kLdV;
    constexpr int kThreads = Traits::kThreads;
    constexpr int kQKSteps = kHeadDimQK / 16;  // k-steps of products over the head dim
    constexpr int kVTiles = kTileV / 8;         // n-tiles of an output row slab
    constexpr int kScoreTiles = kBlockN / 8;    // n-tiles of a score row slab
    constexpr int kStateMT = Traits::kStateRowsPerWarp / 16;
    constexpr int kStateNT = Traits::kStateColsPerWarp / 8;

    // ---- which problem, head, chunk and v columns this CTA owns
    const LinearAttnParams& p = batch.problems[blockIdx.y];
    const ChunkPlan& plan = batch.chunks[blockIdx.y];
    const int v_tile = blockIdx.x % v_tiles_per_head;
    const int chunk = (blockIdx.x / v_tiles_per_head) % chunks_per_head;
    const int head_index = blockIdx.x / v_tiles_per_head / chunks_per_head;  // b * heads + h
    const int v_col0 = v_tile * kTileV;
    // The state pass has nothing to do for the last chunk: no chunk starts from its state.
    const int chunks_run = plan.num_chunks - (batch.state_pass ? 1 : 0);
    if (head_index >= p.batch * p.heads || v_col0 >= p.dim_v || chunk >= chunks_run) return;
    const int b = head_index / p.heads, h = head_index % p.heads;
    const int num_blocks = (p.seqlen + kBlockN - 1) / kBlockN;
    const int first_block = chunk * plan.chunk_blocks;
    const int end_block = min(first_block + plan.chunk_blocks, num_blocks);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int row0 = 16 * warp;  // this warp's query rows within a block
    const int state_row0 = (warp % Traits::kStateWarpsAlongD) * Traits::kStateRowsPerWarp;
    const int state_col0 = (warp / Traits::kStateWarpsAlongD) * Traits::kStateColsPerWarp;

    extern __shared__ __align__(16) unsigned char smem[];
    T* sQ = reinterpret_cast<T*>(smem);              // [kStages][kBlockN][kLdQK]
    T* sK = sQ + kStages * Traits::kQKTileElems;     // [kStages][kBlockN][kLdQK]
    T* sV = sK + kStages * Traits::kQKTileElems;     // [kStages][kBlockN][kLdV]
    T* sState = sV + kStages * Traits::kVTileElems;  // [kHeadDimQK][kLdV]
    float* decay_pow = reinterpret_cast<float*>(sState + Traits::kStateElems);  // [kBlockN + 1]

    auto head_ptr = [&](const StridedTensor& x) {
        return static_cast<T*>(x.ptr) + b * x.batch_stride + h * x.head_stride;
    };
    const T* q = head_ptr(p.q);
    const T* k = head_ptr(p.k);
    const T* v = head_ptr(p.v) + v_col0;
    T* o = head_ptr(p.o) + v_col0;
    const int v_cols = min(kTileV, p.dim_v - v_col0);
    const bool vectorized = is_aligned16(q, p.q.seq_stride * int64_t(sizeof(T))) &&
                            is_aligned16(k, p.k.seq_stride * int64_t(sizeof(T))) &&
                            is_aligned16(v, p.v.seq_stride * int64_t(sizeof(T)));
    const bool paired_stores = (reinterpret_cast<uintptr_t>(o) % (2 * sizeof(T)) == 0) &&
                               (p.o.seq_stride % 2 == 0);

    // Lambda, the decay matrix of Algorithm 1, as a table of powers lambda^i.
    // Every decay factor is one of them (never lambda^-i, which overflows).
    const double slope = p.slope != nullptr ? double(p.slope[h]) : 0.0;
    for (int i = threadIdx.x; i <= kBlockN; i += kThreads) decay_pow[i] = float(exp(-slope * i));

    // ---- the state KV (kHeadDimQK x kTileV): fp32 registers for the recurrence,
    // and a copy rounded to T in shared memory as the operand of Q_i KV.
    float state[kStateMT][kStateNT][4] = {};
    // A chunk's state slab in the workspace, in register-fragment order so that
    // each thread reads back exactly what it wrote, coalesced.
    auto chunk_state_slab = [&](int c) {
        const int v_tiles = (p.dim_v + kTileV - 1) / kTileV;
        return plan.chunk_states +
               ((size_t(c) * p.batch * p.heads + head_index) * v_tiles + v_tile) * (kHeadDimQK * kTileV);
    };
    auto slab_index = [&](int mt, int nt, int r) { return ((mt * kStateNT + nt) * 4 + r) * kThreads + threadIdx.x; };
    auto copy_state_to_smem = [&]() {
#pragma unroll
        for (int mt = 0; mt < kStateMT; ++mt)
#pragma unroll
            for (int nt = 0; nt < kStateNT; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int row = state_row0 + 16 * mt + g + 8 * half;
                    store_pair(sState + row * kLdV + state_col0 + 8 * nt + 2 * t, state[mt][nt][2 * half],
                               state[mt][nt][2 * half + 1]);
                }
    };
    if (!batch.state_pass) {
        // The state entering this chunk: sum over earlier chunks c of their own
        // states decayed to this chunk's start, lambda^(L (chunk - 1 - c)) with L
        // tokens per chunk (Horner's rule). S_{-1} = 0 for the first chunk.
        const float chunk_decay = float(exp(-slope * double(plan.chunk_blocks) * kBlockN));
        for (int c = 0; c < chunk; ++c) {
            const float* slab = chunk_state_slab(c);
#pragma unroll
            for (int mt = 0; mt < kStateMT; ++mt)
#pragma unroll
                for (int nt = 0; nt < kStateNT; ++nt)
#pragma unroll
                    for (int r = 0; r < 4; ++r)
                        state[mt][nt][r] = state[mt][nt][r] * chunk_decay + slab[slab_index(mt, nt, r)];
        }
        copy_state_to_smem();
    }

    // ---- Algorithm 1's steps for the block in shared memory
    auto load_block = [&](int block, int stage) {
        const int64_t first = int64_t(block) * kBlockN;
        const int valid = min(kBlockN, p.seqlen - block * kBlockN);
        if (!batch.state_pass) {
            load_tile<kBlockN, kHeadDimQK, kThreads>(sQ + stage * Traits::kQKTileElems, kLdQK,
                                                     q + first * p.q.seq_stride, p.q.seq_stride, valid,
                                                     p.dim_qk, vectorized);
        }
        load_tile<kBlockN, kHeadDimQK, kThreads>(sK + stage * Traits::kQKTileElems, kLdQK,
                                                 k + first * p.k.seq_stride, p.k.seq_stride, valid,
                                                 p.dim_qk, vectorized);
        load_tile<kBlockN, kTileV, kThreads>(sV + stage * Traits::kVTileElems, kLdV,
                                             v + first * p.v.seq_stride, p.v.seq_stride, valid, v_cols,
                                             vectorized);
        cp_async_commit();
    };

    // O_i = Lambda Q_i KV + [(Q_i K_i^T) . M] V_i for this warp's 16 rows, where KV
    // is the state after block i-1, row t of Lambda is lambda^(t+1), and
    // M[t][s] = lambda^(t-s) for s <= t, else 0.
    auto block_output = [&](const T* sQb, const T* sKb, const T* sVb, float (&acc_o)[1][kVTiles][4]) {
        warp_gemm<Major::kRow, Major::kRow, kQKSteps>(acc_o, sQb, kLdQK, sState, kLdV, kVTiles, NoScale{});
#pragma unroll
        for (int j = 0; j < kVTiles; ++j) {
#pragma unroll
            for (int r = 0; r < 4; ++r) acc_o[0][j][r] *= decay_pow[row0 + g + 8 * (r / 2) + 1];
        }
        // Keys past this warp's last row are all masked: their tiles are skipped.
        float scores[1][kScoreTiles][4] = {};
        warp_gemm<Major::kRow, Major::kCol, kQKSteps>(scores, sQb, kLdQK, sKb, kLdQK, row0 / 8 + 2, NoScale{});
#pragma unroll
        for (int j = 0; j < kScoreTiles; ++j) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int tq = row0 + g + 8 * (r / 2), sk = 8 * j + 2 * t + r % 2;
                scores[0][j][r] *= sk <= tq ? decay_pow[tq - sk] : 0.f;
            }
        }
        warp_gemm_registers_a(acc_o, scores, sVb, kLdV, warp + 1);
    };

    // o = scale * O for the block's valid rows and this CTA's v columns.
    auto store_output = [&](int block, int valid, const float (&acc_o)[1][kVTiles][4]) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int tq = row0 + g + 8 * half;
            if (tq < valid) {
                T* orow = o + (int64_t(block) * kBlockN + tq) * p.o.seq_stride;
#pragma unroll
                for (int j = 0; j < kVTiles; ++j) {
                    const int c = 8 * j + 2 * t;
                    const float x0 = p.scale * acc_o[0][j][2 * half];
                    const float x1 = p.scale * acc_o[0][j][2 * half + 1];
                    if (paired_stores && c + 1 < v_cols) {
                        store_pair(orow + c, x0, x1);
                    } else {
                        if (c < v_cols) orow[c] = from_float<T>(x0);
                        if (c + 1 < v_cols) orow[c + 1] = from_float<T>(x1);
                    }
                }
            }
        }
    };

    // KV = lambda^valid KV + (lambda^(valid-1-s) K_i)^T V_i.
    auto update_state = [&](const T* sKb, const T* sVb, int valid) {
        const float block_decay = decay_pow[valid];
#pragma unroll
        for (int mt = 0; mt < kStateMT; ++mt)
#pragma unroll
            for (int nt = 0; nt < kStateNT; ++nt)
#pragma unroll
                for (int r = 0; r < 4; ++r) state[mt][nt][r] *= block_decay;
        warp_gemm<Major::kCol, Major::kRow, kBlockN / 16>(state, sKb + state_row0, kLdQK, sVb + state_col0, kLdV,
                                                          kStateNT, KeyDecay{decay_pow, valid});
    };

    // ---- the sweep over this chunk's blocks, loads double-buffered for 16-bit types
    if (first_block < end_block) load_block(first_block, 0);
    for (int block = first_block; block < end_block; ++block) {
        const int stage = (block - first_block) % kStages;
        if constexpr (kStages == 2) {
            if (block + 1 < end_block) load_block(block + 1, 1 - stage);
            else cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // the block's tiles and the previous state copy are in shared memory

        const T* sKb = sK + stage * Traits::kQKTileElems;
        const T* sVb = sV + stage * Traits::kVTileElems;
        const int valid = min(kBlockN, p.seqlen - block * kBlockN);
        if (!batch.state_pass) {
            float acc_o[1][kVTiles][4] = {};
            block_output(sQ + stage * Traits::kQKTileElems + row0 * kLdQK, sKb, sVb, acc_o);
            store_output(block, valid, acc_o);
        }
        update_state(sKb, sVb, valid);

        __syncthreads();  // everyone is done with this stage and the old state copy
        if (!batch.state_pass) copy_state_to_smem();
        if constexpr (kStages == 1) {
            if (block + 1 < end_block) load_block(block + 1, 0);
        }
    }

    if (batch.state_pass) {
        float* slab = chunk_state_slab(chunk);
#pragma unroll
        for (int mt = 0; mt < kStateMT; ++mt)
#pragma unroll
            for (int nt = 0; nt < kStateNT; ++nt)
#pragma unroll
                for (int r = 0; r < 4; ++r) slab[slab_index(mt, nt, r)] = state[mt][nt][r];
    }
}

template <typename T, int kHeadDimQK, int kTileV>
cudaError_t launch_linear_attn_sweep(const LinearAttnBatch& batch, cudaStream_t stream) {
    using Traits = KernelTraits<T, kHeadDimQK, kTileV>;
    auto kernel = linear_attn_sweep_kernel<Traits>;
    int max_heads = 0, v_tiles_per_head = 0, chunks_per_head = 0;
    for (int i = 0; i < batch.num_problems; ++i) {
        const LinearAttnParams& p = batch.problems[i];
        max_heads = max(max_heads, p.batch * p.heads);
        v_tiles_per_head = max(v_tiles_per_head, (p.dim_v + kTileV - 1) / kTileV);
        chunks_per_head = max(chunks_per_head, batch.chunks[i].num_chunks);
    }
    const int64_t ctas = int64_t(max_heads) * v_tiles_per_head * chunks_per_head;
    if (ctas == 0) return cudaSuccess;
    if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
    cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Traits::kSmemBytes));
    if (err != cudaSuccess) return err;
    const dim3 grid(unsigned(ctas), unsigned(batch.num_problems));
    kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(batch, v_tiles_per_head, chunks_per_head);
    return cudaGetLastError();
}

}  // namespace lightning_attn2
