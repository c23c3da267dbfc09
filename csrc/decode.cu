// The decode step: one new token per sequence against a cache of fp32 states.
//   S = lambda S + k^T v,   o = scale q S   (S updated in place)
// The state (dim_qk x dim_v floats per sequence and head) is read and written once
// and dominates the traffic, so the kernel is a streaming pass over it. A CTA owns a
// slice of at most kSliceCols columns of one (sequence, head): o's columns need only
// their own state columns, and slices halve each CTA's bytes at dim_v = 128, so the
// last wave of CTAs leaves less of the GPU idle. Each thread owns kVec adjacent
// columns of a few rows and keeps kUnroll loads of its rows in flight; the partial
// q S of the rows is summed in shared memory. The first loads are issued before q,
// k and v are staged, so that their latencies overlap, and at most 64 registers per
// thread let 4 CTAs share an SM, so that one's staging and final sum overlap the
// others' streaming (docs/perf.md, v4).
#include <cstdint>

#include "lightning_attn.h"
#include "tile_ops.cuh"

namespace lightning_attn2 {
namespace {

constexpr int kDecodeThreads = 256;
constexpr int kDecodeCtasPerSM = 4;
constexpr int kUnroll = 8;  // loads in flight per thread
constexpr int kSliceCols = 64;
constexpr int kMaxDim = 256;

template <int kVec> struct VecOf;
template <> struct VecOf<1> { using type = float; };
template <> struct VecOf<4> { using type = float4; };
__device__ __forceinline__ float& lane_of(float& x, int) { return x; }
__device__ __forceinline__ float& lane_of(float4& x, int i) { return (&x.x)[i]; }

int column_slices(int dim_v) { return (dim_v + kSliceCols - 1) / kSliceCols; }

// One CTA per (sequence, head, column slice). kVec = 4: rows of the state are
// 16-byte aligned and dim_v % 4 == 0, so columns move as float4.
template <typename T, int kVec>
__global__ void __launch_bounds__(kDecodeThreads, kDecodeCtasPerSM)
    decode_kernel(const __grid_constant__ DecodeParams p, int slices) {
    using Vec = typename VecOf<kVec>::type;
    const int slice = blockIdx.x % slices;
    const int b = blockIdx.x / slices / p.heads, h = blockIdx.x / slices % p.heads;
    const int col_begin = slice * kSliceCols, cols = min(kSliceCols, p.dim_v - col_begin);
    __shared__ float q_s[kMaxDim], k_s[kMaxDim], v_s[kSliceCols];
    __shared__ float partial[kDecodeThreads * kVec];  // [row group][column]

    int64_t row = b;
    if (p.state_indices != nullptr) {
        row = p.state_indices_int64 ? static_cast<const int64_t*>(p.state_indices)[b]
                                    : static_cast<const int32_t*>(p.state_indices)[b];
    }
    T* o = static_cast<T*>(p.o) + b * p.o_strides[0] + h * p.o_strides[1] + col_begin;
    if (row < 0 || row >= p.cache_rows) {  // a skipped slot
        for (int e = threadIdx.x; e < cols; e += kDecodeThreads) o[e] = from_float<T>(0.f);
        return;
    }

    float* state =
        p.state_cache.ptr + row * p.state_cache.seq_stride + h * p.state_cache.head_stride + col_begin;
    const int column_groups = (cols + kVec - 1) / kVec;
    const int row_groups = kDecodeThreads / column_groups;
    const int group = threadIdx.x % column_groups, row_group = threadIdx.x / column_groups;
    const int col0 = group * kVec;
    const bool streams = row_group < row_groups;  // threads past the last row group idle
    Vec s[kUnroll];
    auto load_rows = [&](int d0) {  // rows d0, d0 + row_groups, ... of this thread's columns
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int d = d0 + u * row_groups;
            if (d < p.dim_qk) s[u] = *reinterpret_cast<const Vec*>(state + d * p.state_cache.row_stride + col0);
        }
    };
    if (streams) load_rows(row_group);

    const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
    const T* k = static_cast<const T*>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
    const T* v = static_cast<const T*>(p.v) + b * p.v_strides[0] + h * p.v_strides[1] + col_begin;
    for (int d = threadIdx.x; d < p.dim_qk; d += kDecodeThreads) {
        q_s[d] = to_float(q[d]);
        k_s[d] = to_float(k[d]);
    }
    for (int e = threadIdx.x; e < cols; e += kDecodeThreads) v_s[e] = to_float(v[e]);
    __syncthreads();

    const float decay = p.slope != nullptr ? float(exp(-double(p.slope[h]))) : 1.f;
    float acc[kVec] = {};
    if (streams) {
        for (int d0 = row_group; d0 < p.dim_qk; d0 += kUnroll * row_groups) {
            if (d0 != row_group) load_rows(d0);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const int d = d0 + u * row_groups;
                if (d < p.dim_qk) {
#pragma unroll
                    for (int i = 0; i < kVec; ++i) {
                        float& x = lane_of(s[u], i);
                        x = decay * x + k_s[d] * v_s[col0 + i];
                        acc[i] += q_s[d] * x;
                    }
                    *reinterpret_cast<Vec*>(state + d * p.state_cache.row_stride + col0) = s[u];
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) partial[row_group * column_groups * kVec + col0 + i] = acc[i];
    __syncthreads();
    for (int e = threadIdx.x; e < cols; e += kDecodeThreads) {
        float sum = 0.f;
        for (int r = 0; r < row_groups; ++r) sum += partial[r * column_groups * kVec + e];
        o[e] = from_float<T>(p.scale * sum);
    }
}

template <typename T>
cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream) {
    const int slices = column_slices(p.dim_v);
    const int64_t ctas = int64_t(p.batch) * p.heads * slices;
    if (ctas == 0) return cudaSuccess;
    if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
    const bool vectorized = p.dim_v % 4 == 0 && p.state_cache.row_stride % 4 == 0 &&
                            p.state_cache.seq_stride % 4 == 0 && p.state_cache.head_stride % 4 == 0 &&
                            reinterpret_cast<uintptr_t>(p.state_cache.ptr) % 16 == 0;
    if (vectorized) decode_kernel<T, 4><<<unsigned(ctas), kDecodeThreads, 0, stream>>>(p, slices);
    else decode_kernel<T, 1><<<unsigned(ctas), kDecodeThreads, 0, stream>>>(p, slices);
    return cudaGetLastError();
}

}  // namespace

cudaError_t run_linear_attn_decode(const DecodeParams& params, DType dtype, cudaStream_t stream) {
    if (params.dim_qk > kMaxDim || params.dim_v > kMaxDim) return cudaErrorInvalidValue;
    switch (dtype) {
        case DType::kFloat16: return launch_decode<__half>(params, stream);
        case DType::kBFloat16: return launch_decode<__nv_bfloat16>(params, stream);
        default: return launch_decode<float>(params, stream);
    }
}

}  // namespace lightning_attn2
