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
// i * seq_stride (in elements). A negative seq_stride with ptr at the last token
// walks the sequence backwards in time, which is how the backward pass reuses
// the forward sweep (see backward_problems in api.cpp).
struct StridedTensor {
    void* ptr;
    int64_t batch_stride;
    int64_t head_stride;
    int64_t seq_stride;
};

// One causal decayed linear attention problem (Lightning Attention-2):
//   S_t = lambda_h * S_{t-1} + k_t^T v_t,  S_{-1} = 0,  o_t = scale * q_t S_t,
// i.e. o_t = scale * sum_{s <= t} lambda_h^(t-s) (q_t . k_s) v_s,
// with lambda_h = exp(-slope[h]).
struct LinearAttnParams {
    StridedTensor q;  // [batch, heads, seqlen, dim_qk]
    StridedTensor k;  // [batch, heads, seqlen, dim_qk]
    StridedTensor v;  // [batch, heads, seqlen, dim_v]
    StridedTensor o;  // [batch, heads, seqlen, dim_v], written
    const float* slope;  // [heads] decay rates >= 0, float32; nullptr means no decay
    float scale;
    int batch;
    int heads;
    int seqlen;
    int dim_qk;  // 1..256
    int dim_v;   // 1..256
};

// Problems solved by one call: the forward pass is one problem, the backward
// pass three (dq, dk, dv). Problems with the same tile configuration share a
// launch, so that small batch x heads still fills the GPU.
constexpr int kMaxProblems = 3;

// Bytes of device scratch that run_linear_attn needs for these problems (the
// states at the chunk boundaries when sequences are cut into chunks; 0 when not).
size_t linear_attn_workspace_bytes(const LinearAttnParams* problems, int num_problems, DType dtype);

// Runs every problem on `stream`; all tensors hold `dtype`. `workspace` holds at
// least linear_attn_workspace_bytes of the same arguments (256-byte aligned).
// Returns the first CUDA error met (cudaSuccess when all launches went out).
cudaError_t run_linear_attn(const LinearAttnParams* problems, int num_problems, DType dtype,
                            void* workspace, cudaStream_t stream);

}  // namespace lightning_attn2
