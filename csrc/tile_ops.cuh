// Warp-level tile operations of the sweep kernel: global -> shared copies and
// tile matrix products with fp32 accumulation.
//
// Register tile convention, shared by both arithmetic paths: a warp's 16 x 8
// output tile is 4 floats per lane laid out as the mma.sync m16n8 accumulator.
// With g = lane / 4 and t = lane % 4,
//   c[0] = (row g, col 2t), c[1] = (g, 2t + 1), c[2] = (g + 8, 2t), c[3] = (g + 8, 2t + 1).
// A warp's MT x NT grid of such tiles is `float acc[MT][NT][4]`.
//
// fp16 / bf16 operands go through the tensor cores (ldmatrix + mma.sync m16n8k16);
// fp32 operands take a SIMT path with fp32 FMAs, so fp32 inputs keep fp32 accuracy
// (tensor-core fp32 would be TF32, about 1e-3 relative error).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace lightning_attn2 {

// ---------------------------------------------------------------------------
// Element conversions
// ---------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Two floats as one 32-bit register of 16-bit elements (lo in the low half).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

template <typename T> __device__ __forceinline__ float2 unpack2(uint32_t x);
template <> __device__ __forceinline__ float2 unpack2<__half>(uint32_t x) {
    return __half22float2(*reinterpret_cast<__half2*>(&x));
}
template <> __device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t x) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&x));
}

// ---------------------------------------------------------------------------
// Global -> shared copies
// ---------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes, or writes 16 zero bytes without reading gmem when zero_fill (the
// ignore-src form of cp.async: a predicate, where a byte count costs ptxas an address
// adjustment per copy).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool zero_fill) {
    asm volatile(
        "{\n"
        "  .reg .pred ignore_src;\n"
        "  setp.ne.b32 ignore_src, %2, 0;\n"
        "  cp.async.cg.shared.global [%0], [%1], 16, ignore_src;\n"
        "}\n" ::"r"(smem_address(smem)),
        "l"(gmem), "r"(int(zero_fill)));
}
// Copies 8 bytes (8-byte aligned).
__device__ __forceinline__ void cp_async_8(void* smem, const void* gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_address(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Fills smem[r * ld + c] for r < kRows, c < kCols with row r of a global tile
// (row r at gmem + r * row_stride), zero past valid_rows and valid_cols.
// vectorized: gmem and row_stride are 16-byte aligned and valid_cols is a whole number
// of 16-byte chunks, so every chunk is copied or zeroed whole by cp.async; otherwise
// element by element (odd head dims, unaligned views).
// Each thread takes one column of chunks, every kRowsPerPass-th row: its column and its
// shared-memory offsets are fixed, so a chunk costs a pointer step, a row check and the
// copy (a loop bound that depended on the thread and a byte count per copy had made ~29
// instructions of each, 40% of the state pass's loop: perf.md v13 and Next).
template <int kRows, int kCols, int kThreads, typename T>
__device__ __forceinline__ void load_tile(T* smem, int ld, const T* gmem, int64_t row_stride,
                                          int valid_rows, int valid_cols, bool vectorized) {
    constexpr int kChunk = 16 / sizeof(T);
    constexpr int kChunksPerRow = kCols / kChunk;
    static_assert(kCols % kChunk == 0, "tile width");
    static_assert(kThreads % kChunksPerRow == 0, "a row's chunks must divide the threads");
    constexpr int kRowsPerPass = kThreads / kChunksPerRow;
    static_assert(kRows % kRowsPerPass == 0, "tile height");
    const int row0 = threadIdx.x / kChunksPerRow;
    const int col = (threadIdx.x % kChunksPerRow) * kChunk;
    const T* src = gmem + row0 * row_stride + col;
    const int64_t pass_stride = kRowsPerPass * row_stride;
    T* dst = smem + row0 * ld + col;
    // Valid rows from this thread's first: each pass's row test is then a compare with a
    // constant.
    const int rows_left = valid_rows - row0;
    if (vectorized) {
        const bool col_past = col >= valid_cols;
#pragma unroll
        for (int pass = 0; pass < kRows / kRowsPerPass; ++pass, src += pass_stride) {
            cp_async_16(dst + pass * kRowsPerPass * ld, src, col_past || pass * kRowsPerPass >= rows_left);
        }
    } else {
        const int row_elems = min(max(valid_cols - col, 0), kChunk);  // of this chunk in a valid row
#pragma unroll 1
        for (int pass = 0; pass < kRows / kRowsPerPass; ++pass, src += pass_stride) {
            const int n = pass * kRowsPerPass < rows_left ? row_elems : 0;
#pragma unroll
            for (int e = 0; e < kChunk; ++e) dst[pass * kRowsPerPass * ld + e] = e < n ? src[e] : from_float<T>(0.f);
        }
    }
}

// Stores two adjacent elements with one instruction (dst aligned to two elements).
template <typename T>
__device__ __forceinline__ void store_pair(T* dst, float x0, float x1) {
    if constexpr (std::is_same_v<T, float>) {
        *reinterpret_cast<float2*>(dst) = make_float2(x0, x1);
    } else {
        *reinterpret_cast<uint32_t*>(dst) = pack2<T>(x0, x1);
    }
}

__device__ __forceinline__ bool is_aligned16(const void* p, int64_t row_stride_bytes) {
    return ((reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(row_stride_bytes)) & 15) == 0;
}

// ---------------------------------------------------------------------------
// Tensor-core primitives (fp16 / bf16)
// ---------------------------------------------------------------------------
template <bool kTranspose>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
    if constexpr (kTranspose) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(smem_address(smem)));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(smem_address(smem)));
    }
}

template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                            uint32_t b1) {
    if constexpr (std::is_same_v<T, __half>) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        static_assert(std::is_same_v<T, __nv_bfloat16>, "tensor-core path is fp16/bf16");
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// d = a b + c with m16n8k8 (bf16): a the A fragment's registers {rows g, rows g + 8}
// of columns 2t, 2t + 1; b holds B rows 2t, 2t + 1 of column g.
__device__ __forceinline__ void mma_16x8x8_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t b,
                                                const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
        "{%7, %8, %9, %10};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a0), "r"(a1), "r"(b), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// ---------------------------------------------------------------------------
// Tile products
// ---------------------------------------------------------------------------
// How an operand is stored in shared memory, as a matrix of the product:
// A (m x k) row-major is a[m * lda + k], column-major a[k * lda + m];
// B (k x n) row-major is b[k * ldb + n], column-major b[n * ldb + k].
enum class Major { kRow, kCol };

// Column scales of A, i.e. weights on the reduction index k: none, a function of k
// (the scaled column's elements multiplied one by one), or DiagonalKScale.
struct NoScale {
    static constexpr bool kEnabled = false;
    static constexpr bool kDiagonal = false;
    __device__ __forceinline__ float operator()(int) const { return 1.f; }
};

// Column scales w of a bf16 A applied on the tensor cores, as the product A diag(w):
// per k-step and m-tile four m16n8k8 products, columns 0-7 and 8-15 each times diag(hi)
// and diag(lo), hi = bf16(w) and lo = bf16(w - hi). The products are exact in fp32, so
// the sum rounds to bf16(a w) but for the 2^-16 of w that hi + lo misses (within one
// ulp of bf16(a w) in a host emulation of the fragments), except that lo loses bits
// below w ~ 2^-117 (subnormal) and w < 2^-134 counts as 0 (keys that far decayed weigh
// nothing beside a block's others). An Inf in A spreads as NaN over its 8 columns
// (Inf * 0 in the product), where the old path kept an Inf. Scaling each fragment's
// elements instead costs an unpack, two multiplies and a pack per register, four
// times the instructions. Not for fp16, whose lo is subnormal for w < 2^-11 and whose
// w overflows past 65504.
struct DiagonalKScale {
    static constexpr bool kEnabled = true;
    static constexpr bool kDiagonal = true;
    // Per k-step and lane, the four products' B fragments {hi of columns 0-7, lo of
    // 0-7, hi of 8-15, lo of 8-15}: see diagonal_scale_fragments.
    const uint4* fragments;
    // Columns before it weigh 0, whatever the table says.
    int first_column;
    // Lane `lane`'s fragments of k-step k_step. The lane holds column 16 k_step + g of
    // the eight in its first pair and that + 8 in its second (or zeros: lanes with
    // g / 2 != t), so zeroing the columns before first_column takes two selects per pair.
    __device__ __forceinline__ uint4 operator()(int k_step, int lane) const {
        uint4 w = fragments[32 * k_step + lane];
        const int column = 16 * k_step + lane / 4;
        if (column < first_column) w.x = w.y = 0;
        if (column + 8 < first_column) w.z = w.w = 0;
        return w;
    }
};

// Lane `lane`'s entry of DiagonalKScale::fragments for k-step k_step, with w the weight
// of column k. m16n8k8's B fragment holds B[2t][g] in its low half and B[2t + 1][g] in
// its high half, so of diag(w) only lanes with g / 2 == t hold a nonzero: w of column
// g (of the eight) in half g % 2.
template <typename Weight>
__device__ __forceinline__ uint4 diagonal_scale_fragments(int k_step, int lane, Weight w) {
    const int g = lane / 4, t = lane % 4;
    uint32_t parts[4] = {};
    if (g / 2 == t) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const float weight = w(16 * k_step + 8 * half + g);
            const __nv_bfloat16 hi = __float2bfloat16_rn(weight);
            const __nv_bfloat16 lo = __float2bfloat16_rn(weight - __bfloat162float(hi));
            parts[2 * half] = uint32_t(__bfloat16_as_ushort(hi)) << (16 * (g % 2));
            parts[2 * half + 1] = uint32_t(__bfloat16_as_ushort(lo)) << (16 * (g % 2));
        }
    }
    return make_uint4(parts[0], parts[1], parts[2], parts[3]);
}

// a, an m16k16 A fragment (bf16), times diag(w) given as DiagonalKScale's fragments of
// its k-step. The m16n8 accumulators of each 8 columns are those columns' m16k8 A
// registers once rounded.
__device__ __forceinline__ void scale_columns_on_tensor_cores(uint32_t (&a)[4], uint4 w) {
    constexpr float kZero[4] = {};
    float low[4], high[4];
    mma_16x8x8_bf16(low, a[0], a[1], w.x, kZero);
    mma_16x8x8_bf16(low, a[0], a[1], w.y, low);
    mma_16x8x8_bf16(high, a[2], a[3], w.z, kZero);
    mma_16x8x8_bf16(high, a[2], a[3], w.w, high);
    a[0] = pack2<__nv_bfloat16>(low[0], low[1]);
    a[1] = pack2<__nv_bfloat16>(low[2], low[3]);
    a[2] = pack2<__nv_bfloat16>(high[0], high[1]);
    a[3] = pack2<__nv_bfloat16>(high[2], high[3]);
}

// acc[MT][NT] += A * B over k in [0, 16 * kKSteps), where a and b point at the
// warp's first row of A and first column of B. Column pairs np with 2 * np >=
// nt_active are skipped (the all-zero causal part of a score tile); column k of A
// is multiplied by k_scale(k).
template <Major kA, Major kB, int kKSteps, int MT, int NT, typename T, typename KScale>
__device__ __forceinline__ void warp_gemm(float (&acc)[MT][NT][4], const T* a, int lda, const T* b,
                                          int ldb, int nt_active, KScale k_scale) {
    static_assert(NT % 2 == 0, "B tiles are loaded in pairs");
    const int lane = threadIdx.x % 32;
    if constexpr (std::is_same_v<T, float>) {
        const int g = lane / 4, t = lane % 4;
        auto A = [&](int m, int k) { return kA == Major::kRow ? a[m * lda + k] : a[k * lda + m]; };
        auto B = [&](int k, int n) { return kB == Major::kRow ? b[k * ldb + n] : b[n * ldb + k]; };
#pragma unroll 2
        for (int k = 0; k < 16 * kKSteps; ++k) {
            const float scale = k_scale(k);
            float a_lo[MT], a_hi[MT];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                a_lo[mt] = A(16 * mt + g, k) * scale;
                a_hi[mt] = A(16 * mt + g + 8, k) * scale;
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                if (nt < nt_active) {
                    const float b0 = B(k, 8 * nt + 2 * t), b1 = B(k, 8 * nt + 2 * t + 1);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        acc[mt][nt][0] = fmaf(a_lo[mt], b0, acc[mt][nt][0]);
                        acc[mt][nt][1] = fmaf(a_lo[mt], b1, acc[mt][nt][1]);
                        acc[mt][nt][2] = fmaf(a_hi[mt], b0, acc[mt][nt][2]);
                        acc[mt][nt][3] = fmaf(a_hi[mt], b1, acc[mt][nt][3]);
                    }
                }
            }
        }
    } else {
        const int t = lane % 4;
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) {
            const int k0 = 16 * ks;
            uint32_t af[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                if constexpr (kA == Major::kRow) {
                    ldmatrix_x4<false>(af[mt], a + (16 * mt + lane % 16) * lda + k0 + (lane / 16) * 8);
                } else {
                    ldmatrix_x4<true>(af[mt], a + (k0 + lane % 8 + (lane / 16) * 8) * lda + 16 * mt +
                                                  ((lane / 8) % 2) * 8);
                }
            }
            if constexpr (KScale::kDiagonal) {
                const uint4 w = k_scale(ks, lane);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) scale_columns_on_tensor_cores(af[mt], w);
            } else if constexpr (KScale::kEnabled) {
                // af[..][0], [1] hold columns k0 + 2t, 2t + 1; af[..][2], [3] those + 8.
                const float s0 = k_scale(k0 + 2 * t), s1 = k_scale(k0 + 2 * t + 1);
                const float s8 = k_scale(k0 + 2 * t + 8), s9 = k_scale(k0 + 2 * t + 9);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                    for (int r = 0; r < 4; ++r) {
                        const float2 x = unpack2<T>(af[mt][r]);
                        af[mt][r] = r < 2 ? pack2<T>(x.x * s0, x.y * s1) : pack2<T>(x.x * s8, x.y * s9);
                    }
                }
            }
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                if (2 * np < nt_active) {
                    uint32_t bf[4];
                    if constexpr (kB == Major::kCol) {
                        ldmatrix_x4<false>(bf, b + (16 * np + lane % 8 + (lane / 16) * 8) * ldb + k0 +
                                                   ((lane / 8) % 2) * 8);
                    } else {
                        ldmatrix_x4<true>(bf, b + (k0 + lane % 16) * ldb + 16 * np + (lane / 16) * 8);
                    }
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16x8x16<T>(acc[mt][2 * np], af[mt], bf[0], bf[1]);
                        mma_16x8x16<T>(acc[mt][2 * np + 1], af[mt], bf[2], bf[3]);
                    }
                }
            }
        }
    }
}

// acc += P * B, where P (16 x 16 * k_steps) is a warp's register tile `p` (the
// masked scores, never leaving registers) and B is row-major in shared memory.
template <int NT, int NP, typename T>
__device__ __forceinline__ void warp_gemm_registers_a(float (&acc)[1][NT][4], const float (&p)[1][NP][4],
                                                      const T* b, int ldb, int k_steps) {
    static_assert(NT % 2 == 0 && NP % 2 == 0, "tiles come in pairs");
    const int lane = threadIdx.x % 32;
    if constexpr (std::is_same_v<T, float>) {
        // Row g of P is spread over the 4 lanes of a quad: fetch it by shuffles.
        const int t = lane % 4;
#pragma unroll
        for (int j = 0; j < NP; ++j) {
            if (j < 2 * k_steps) {
#pragma unroll
                for (int src = 0; src < 4; ++src) {
                    const int peer = (lane & ~3) | src;
                    const float p00 = __shfl_sync(0xffffffffu, p[0][j][0], peer);  // (g, k)
                    const float p01 = __shfl_sync(0xffffffffu, p[0][j][1], peer);  // (g, k + 1)
                    const float p10 = __shfl_sync(0xffffffffu, p[0][j][2], peer);  // (g + 8, k)
                    const float p11 = __shfl_sync(0xffffffffu, p[0][j][3], peer);  // (g + 8, k + 1)
                    const int k = 8 * j + 2 * src;
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        const float2 b0 = *reinterpret_cast<const float2*>(b + k * ldb + 8 * nt + 2 * t);
                        const float2 b1 =
                            *reinterpret_cast<const float2*>(b + (k + 1) * ldb + 8 * nt + 2 * t);
                        acc[0][nt][0] += p00 * b0.x + p01 * b1.x;
                        acc[0][nt][1] += p00 * b0.y + p01 * b1.y;
                        acc[0][nt][2] += p10 * b0.x + p11 * b1.x;
                        acc[0][nt][3] += p10 * b0.y + p11 * b1.y;
                    }
                }
            }
        }
    } else {
#pragma unroll
        for (int ks = 0; ks < NP / 2; ++ks) {
            if (ks < k_steps) {
                // The m16n8 accumulators of columns [16 ks, 16 ks + 16) are exactly the
                // m16k16 A operand of mma.sync once rounded to T.
                const uint32_t af[4] = {pack2<T>(p[0][2 * ks][0], p[0][2 * ks][1]),
                                        pack2<T>(p[0][2 * ks][2], p[0][2 * ks][3]),
                                        pack2<T>(p[0][2 * ks + 1][0], p[0][2 * ks + 1][1]),
                                        pack2<T>(p[0][2 * ks + 1][2], p[0][2 * ks + 1][3])};
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    uint32_t bf[4];
                    ldmatrix_x4<true>(bf, b + (16 * ks + lane % 16) * ldb + 16 * np + (lane / 16) * 8);
                    mma_16x8x16<T>(acc[0][2 * np], af, bf[0], bf[1]);
                    mma_16x8x16<T>(acc[0][2 * np + 1], af, bf[2], bf[3]);
                }
            }
        }
    }
}

}  // namespace lightning_attn2
