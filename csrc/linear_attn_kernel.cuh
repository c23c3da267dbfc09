// The Lightning Attention-2 sweep: Algorithm 1 of Qin et al. (2024), one CTA per
// (problem, batch, head, slice of v columns), walking the sequence block by block
// with the state KV in fp32 registers.
//
// The backward pass (Algorithm 2) runs this same sweep three times, as problems of
// one launch (see backward_problems in api.cpp):
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
    linear_attn_sweep_kernel(const __grid_constant__ LinearAttnBatch batch, int v_tiles_per_head) {
    using T = typename Traits::Element;
    constexpr int kBlockN = Traits::kBlockN;
    constexpr int kHeadDimQK = Traits::kHeadDimQK;
    constexpr int kTileV = Traits::kTileV;
    constexpr int kStages = Traits::kStages;
    constexpr int kLdQK = Traits::kLdQK;
    constexpr int kLdV = Traits::kLdV;
    constexpr int kThreads = Traits::kThreads;
    constexpr int kVTiles = kTileV / 8;      // n-tiles of an output row slab
    constexpr int kScoreTiles = kBlockN / 8;  // n-tiles of a score row slab
    constexpr int kStateMT = Traits::kStateRowsPerWarp / 16;
    constexpr int kStateNT = Traits::kStateColsPerWarp / 8;

    const LinearAttnParams& p = batch.problems[blockIdx.y];
    const int head_index = blockIdx.x / v_tiles_per_head;  // b * heads + h
    const int v_col0 = (blockIdx.x % v_tiles_per_head) * kTileV;
    if (head_index >= p.batch * p.heads || v_col0 >= p.dim_v) return;
    const int b = head_index / p.heads, h = head_index % p.heads;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int row0 = 16 * warp;  // this warp's query rows within a block
    const int state_row0 = (warp % Traits::kStateWarpsAlongD) * Traits::kStateRowsPerWarp;
    const int state_col0 = (warp / Traits::kStateWarpsAlongD) * Traits::kStateColsPerWarp;

    extern __shared__ __align__(16) unsigned char smem[];
    T* sQ = reinterpret_cast<T*>(smem);                  // [kStages][kBlockN][kLdQK]
    T* sK = sQ + kStages * Traits::kQKTileElems;         // [kStages][kBlockN][kLdQK]
    T* sV = sK + kStages * Traits::kQKTileElems;         // [kStages][kBlockN][kLdV]
    T* sState = sV + kStages * Traits::kVTileElems;      // [kHeadDimQK][kLdV]
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

    // State KV (kHeadDimQK x kTileV): fp32 registers for the recurrence, a copy
    // rounded to T in shared memory as the operand of Q KV. S_{-1} = 0.
    float state[kStateMT][kStateNT][4] = {};
    for (int i = threadIdx.x; i < int(Traits::kStateElems); i += kThreads) sState[i] = from_float<T>(0.f);

    const int num_blocks = (p.seqlen + kBlockN - 1) / kBlockN;
    const int qk_steps = (p.dim_qk + 15) / 16;  // head-dim slices that are not all padding

    auto load_block = [&](int block, int stage) {
        const int64_t first = int64_t(block) * kBlockN;
        const int valid = min(kBlockN, p.seqlen - block * kBlockN);
        load_tile<kBlockN, kHeadDimQK, kThreads>(sQ + stage * Traits::kQKTileElems, kLdQK,
                                                 q + first * p.q.seq_stride, p.q.seq_stride, valid,
                                                 p.dim_qk, vectorized);
        load_tile<kBlockN, kHeadDimQK, kThreads>(sK + stage * Traits::kQKTileElems, kLdQK,
                                                 k + first * p.k.seq_stride, p.k.seq_stride, valid,
                                                 p.dim_qk, vectorized);
        load_tile<kBlockN, kTileV, kThreads>(sV + stage * Traits::kVTileElems, kLdV,
                                             v + first * p.v.seq_stride, p.v.seq_stride, valid, v_cols,
                                             vectorized);
        cp_async_commit();
    };

    if (num_blocks > 0) load_block(0, 0);
    for (int block = 0; block < num_blocks; ++block) {
        const int stage = block % kStages;
        if constexpr (kStages == 2) {
            if (block + 1 < num_blocks) load_block(block + 1, (block + 1) % 2);
            else cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // block's tiles and the previous state are in shared memory

        const T* sQb = sQ + stage * Traits::kQKTileElems + row0 * kLdQK;
        const T* sKb = sK + stage * Traits::kQKTileElems;
        const T* sVb = sV + stage * Traits::kVTileElems;
        const int valid = min(kBlockN, p.seqlen - block * kBlockN);

        // Inter-block: O = Lambda Q_i KV, row t of the block decayed by lambda^(t+1)
        // from the state at the end of the previous block.
        float acc_o[1][kVTiles][4] = {};
        warp_gemm<Major::kRow, Major::kRow>(acc_o, sQb, kLdQK, sState, kLdV, qk_steps, kVTiles, NoScale{});
#pragma unroll
        for (int j = 0; j < kVTiles; ++j) {
            acc_o[0][j][0] *= decay_pow[row0 + g + 1];
            acc_o[0][j][1] *= decay_pow[row0 + g + 1];
            acc_o[0][j][2] *= decay_pow[row0 + g + 9];
            acc_o[0][j][3] *= decay_pow[row0 + g + 9];
        }

        // Intra-block: O += [(Q_i K_i^T) . M] V_i with M[t][s] = lambda^(t-s) for
        // s <= t, else 0. Keys past this warp's last row are all masked: skipped.
        float scores[1][kScoreTiles][4] = {};
        warp_gemm<Major::kRow, Major::kCol>(scores, sQb, kLdQK, sKb, kLdQK, qk_steps, row0 / 8 + 2,
                                            NoScale{});
#pragma unroll
        for (int j = 0; j < kScoreTiles; ++j) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int tq = row0 + g + (r / 2) * 8, sk = 8 * j + 2 * t + r % 2;
                scores[0][j][r] *= sk <= tq ? decay_pow[tq - sk] : 0.f;
            }
        }
        warp_gemm_registers_a(acc_o, scores, sVb, kLdV, warp + 1);

        // o = scale * O for the block's valid rows and the CTA's v columns.
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

        // State update: KV = lambda^valid KV + (lambda^(valid-1-s) K_i)^T V_i.
        const float block_decay = decay_pow[valid];
#pragma unroll
        for (int mt = 0; mt < kStateMT; ++mt)
#pragma unroll
            for (int nt = 0; nt < kStateNT; ++nt)
#pragma unroll
                for (int r = 0; r < 4; ++r) state[mt][nt][r] *= block_decay;
        warp_gemm<Major::kCol, Major::kRow>(state, sKb + state_row0, kLdQK, sVb + state_col0, kLdV,
                                            (valid + 15) / 16, kStateNT, KeyDecay{decay_pow, valid});

        __syncthreads();  // everyone is done with this stage and the old state copy
#pragma unroll
        for (int mt = 0; mt < kStateMT; ++mt) {
#pragma unroll
            for (int nt = 0; nt < kStateNT; ++nt) {
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int row = state_row0 + 16 * mt + g + 8 * half;
                    store_pair(sState + row * kLdV + state_col0 + 8 * nt + 2 * t, state[mt][nt][2 * half],
                               state[mt][nt][2 * half + 1]);
                }
            }
        }
        if constexpr (kStages == 1) {
            if (block + 1 < num_blocks) load_block(block + 1, 0);
        }
    }
}

template <typename T, int kHeadDimQK, int kTileV>
cudaError_t launch_linear_attn_sweep(const LinearAttnBatch& batch, cudaStream_t stream) {
    using Traits = KernelTraits<T, kHeadDimQK, kTileV>;
    auto kernel = linear_attn_sweep_kernel<Traits>;
    int max_heads = 0, v_tiles_per_head = 0;
    for (int i = 0; i < batch.num_problems; ++i) {
        const LinearAttnParams& p = batch.problems[i];
        max_heads = max(max_heads, p.batch * p.heads);
        v_tiles_per_head = max(v_tiles_per_head, (p.dim_v + kTileV - 1) / kTileV);
    }
    if (max_heads == 0 || v_tiles_per_head == 0) return cudaSuccess;
    cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Traits::kSmemBytes));
    if (err != cudaSuccess) return err;
    const dim3 grid(unsigned(max_heads) * unsigned(v_tiles_per_head), unsigned(batch.num_problems));
    kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(batch, v_tiles_per_head);
    return cudaGetLastError();
}

}  // namespace lightning_attn2
