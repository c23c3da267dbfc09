// The interface between the PyTorch binding (api.cpp) and the CUDA kernels.
// Plain structs only: no torch header may be included by the .cu files, so that
// they compile quickly and in parallel.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace lightning_attn2 {

enum class DType { kFloat16, kBFloat16, kFloat32 };

// A [batch, heads, seqlen, dim] tensor whose last dimension is contiguous.
// Token i of a sequence lives at ptr + b * batch_stride + h * head_stride +
// i * seq_stride (in elements); any strides, so both the [B, H, N, D] and the
// [B, N, H, D] layouts are read in place.
struct StridedTensor {
    void* ptr;
    int64_t batch_stride;
    int64_t head_stride;
    int64_t seq_stride;
};

// A float32 state per sequence and head, [num_seqs, heads, rows, cols]: element
// (r, c) at ptr + n * seq_stride + h * head_stride + r * row_stride + c * col_stride.
// Both inner strides are free so that the backward reads S^T without a copy.
struct StateTensor {
    float* ptr;  // nullptr: no such state (zero in, nothing out)
    int64_t seq_stride;
    int64_t head_stride;
    int64_t row_stride;
    int64_t col_stride;
};

// One causal decayed linear attention problem (Lightning Attention-2), per
// sequence n and head h, with lambda_h = exp(-slope[h]):
//   S_t = lambda_h S_{t-1} + kv_scale k_t^T v_t,   o_t = scale q_t S_t,
//   S_{-1} = initial_state[n, h] (or 0),           final_state[n, h] = S_{last}.
// With initial_state_undecayed the initial state enters the first step
// undecayed, S_0 = S_{-1} + kv_scale k_0^T v_0: the reverse sweeps of the
// backward pass take dL/dS_final that way (see backward in api.cpp).
//
// With decay_derivative the sweep computes instead the derivative in -slope, times
// derivative_scale[h] (a power of two near 1 / max_d d lambda^d, so that the weights
// stay near 1: neither S' nor the fp16 operands leave fp16's normal range):
//   o_t = scale q_t S'_t,  S'_t = -derivative_scale[h] dS_t/dslope
//       = derivative_scale[h] (sum_{s <= t} (t-s) lambda^(t-s) kv_scale k_s^T v_s + (t+1) lambda^(t+1) S_{-1}),
// and final_state = S'_{last}: the slope gradient without cancellation (see
// backward in api.cpp). It takes no initial_state_undecayed (run_linear_attn refuses it).
struct LinearAttnParams {
    StridedTensor q;  // [batch, heads, seqlen, dim_qk]
    StridedTensor k;  // [batch, heads, seqlen, dim_qk]
    StridedTensor v;  // [batch, heads, seqlen, dim_v]
    StridedTensor o;  // [batch, heads, seqlen, dim_v], written
    const float* slope;  // [heads] decay rates >= 0, float32; nullptr means no decay
    float scale;
    float kv_scale;
    int batch;
    int heads;
    int seqlen;
    int dim_qk;  // 1..256
    int dim_v;   // 1..256
    // Sweep each sequence from its last token to its first (the backward's dk, dv).
    bool reversed;
    // Variable-length sequences packed into batch 1: sequence n is tokens
    // [cu_seqlens[n], cu_seqlens[n + 1]) of the seqlen. nullptr: sequence n is batch n.
    const void* cu_seqlens;  // [num_seqs + 1], int32 or int64, on the device
    bool cu_seqlens_int64;
    int num_seqs;  // batch, or the number of packed sequences
    // Packed sequences: the longest one's token count as the caller knows it, or -1.
    // Only the plan reads it (no sequence is cut when it fits one chunk); a value
    // below the truth costs speed, never correctness.
    int max_seqlen = -1;
    StateTensor initial_state;  // [num_seqs, heads, dim_qk, dim_v]
    bool initial_state_undecayed;
    bool decay_derivative;
    const float* derivative_scale;  // [heads], float32
    StateTensor final_state;  // [num_seqs, heads, dim_qk, dim_v], written when set
};

// Problems solved by one call: the forward pass is one problem, the backward
// pass up to four (dq, dk, dv and the slope derivative). Problems with the same
// tile configuration share a launch, so that small batch x heads still fills the GPU.
constexpr int kMaxProblems = 4;

// Bytes of device scratch that run_linear_attn needs for these problems (sequence
// bounds of packed batches, and the states at the chunk boundaries when sequences
// are cut into chunks).
size_t linear_attn_workspace_bytes(const LinearAttnParams* problems, int num_problems, DType dtype);

// Runs every problem on `stream`; all tensors hold `dtype`. `workspace` holds at
// least linear_attn_workspace_bytes of the same arguments (256-byte aligned).
// Returns the first CUDA error met (cudaSuccess when all launches went out).
// Launches are asynchronous and never read device memory from the host, so the
// call can be captured in a CUDA graph.
cudaError_t run_linear_attn(const LinearAttnParams* problems, int num_problems, DType dtype,
                            void* workspace, cudaStream_t stream);

// Tests: at most this many relay segments in the output pass (0: as many as the GPU
// runs CTAs at once), so that short inputs have their chunks cut between CTAs.
void set_relay_segment_cap(int segments);

// One decode step per sequence b (one new token), for serving:
//   S = lambda S + k^T v,  o = scale q S,  S = state_cache[state_indices[b], h]
// updated in place. state_indices == nullptr means row b; an index of -1 (or any
// index outside [0, cache_rows)) skips sequence b, whose o is then 0.
struct DecodeParams {
    const void* q;  // [batch, heads, dim_qk]
    const void* k;  // [batch, heads, dim_qk]
    const void* v;  // [batch, heads, dim_v]
    void* o;        // [batch, heads, dim_v], written
    int64_t q_strides[2], k_strides[2], v_strides[2], o_strides[2];  // batch, head (elements)
    StateTensor state_cache;  // [cache_rows, heads, dim_qk, dim_v], col_stride 1
    const void* state_indices;  // [batch], int32 or int64; nullptr: row b
    bool state_indices_int64;
    int cache_rows;
    const float* slope;
    float scale;
    int batch;
    int heads;
    int dim_qk;
    int dim_v;
};

cudaError_t run_linear_attn_decode(const DecodeParams& params, DType dtype, cudaStream_t stream);

}  // namespace lightning_attn2
