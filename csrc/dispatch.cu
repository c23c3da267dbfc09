// Plans each problem's sweep (tile configuration, sequence chunks) and launches it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernel_traits.h"
#include "launch.h"

namespace lightning_attn2 {
namespace {

// Chunks are at least this many blocks long: each chunk but the last costs a
// state pass over its keys and values, worth it only over a long enough stretch.
constexpr int kMinChunkBlocks = 16;
constexpr size_t kWorkspaceAlign = 256;

struct TileConfig {
    int head_dim_qk;  // dim_qk padded up to a compiled size
    int tile_v;       // v columns per CTA
    bool operator==(const TileConfig& other) const {
        return head_dim_qk == other.head_dim_qk && tile_v == other.tile_v;
    }
};

struct SweepPlan {
    TileConfig tiles;
    int num_chunks;
    int chunk_blocks;
    size_t workspace_bytes;  // chunk states, rounded up to kWorkspaceAlign
};

int padded_head_dim(int dim) { return dim <= 32 ? 32 : dim <= 64 ? 64 : dim <= 128 ? 128 : 256; }

SweepPlan plan_with_tiles(const LinearAttnParams& p, TileConfig tiles, int num_problems, int num_sms) {
    const int64_t v_tiles = (p.dim_v + tiles.tile_v - 1) / tiles.tile_v;
    const int64_t ctas = int64_t(num_problems) * p.batch * p.heads * v_tiles;
    const int num_blocks = (p.seqlen + kSweepBlockN - 1) / kSweepBlockN;
    // Cut the sequences when the launch would leave SMs idle, into enough chunks
    // to give every SM two CTAs.
    const int64_t wanted = ctas >= num_sms ? 1 : (2 * int64_t(num_sms) + ctas - 1) / ctas;
    int num_chunks = int(std::max<int64_t>(1, std::min<int64_t>(wanted, num_blocks / kMinChunkBlocks)));
    const int chunk_blocks = std::max(1, (num_blocks + num_chunks - 1) / num_chunks);
    num_chunks = std::max(1, (num_blocks + chunk_blocks - 1) / chunk_blocks);
    const size_t state_bytes = size_t(num_chunks - 1) * p.batch * p.heads * v_tiles * tiles.head_dim_qk *
                               tiles.tile_v * sizeof(float);
    return {tiles, num_chunks, chunk_blocks, (state_bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign};
}

// num_problems: problems of the whole call, which run side by side.
SweepPlan plan_sweep(const LinearAttnParams& p, DType dtype, int num_problems, int num_sms) {
    const int head_dim_qk = padded_head_dim(p.dim_qk);
    // fp32 (SIMT) keeps its state in 32-column slices: the registers hold no more.
    // So does head dim 256: a 256 x 64 fp32 state is 128 registers per thread.
    if (dtype == DType::kFloat32 || head_dim_qk == 256 || p.dim_v <= 32) {
        return plan_with_tiles(p, {head_dim_qk, 32}, num_problems, num_sms);
    }
    // 64 columns halve the recomputation of Q K^T across slices. When even cut into
    // chunks that leaves SMs idle (short sequences, few heads), twice the CTAs at 32
    // columns finish sooner.
    const SweepPlan wide = plan_with_tiles(p, {head_dim_qk, 64}, num_problems, num_sms);
    const int64_t wide_ctas = int64_t(num_problems) * p.batch * p.heads * ((p.dim_v + 63) / 64) * wide.num_chunks;
    if (wide_ctas >= num_sms) return wide;
    return plan_with_tiles(p, {head_dim_qk, 32}, num_problems, num_sms);
}

template <typename T>
cudaError_t launch_tiles(TileConfig tiles, const LinearAttnBatch& batch, cudaStream_t stream) {
    if constexpr (std::is_same_v<T, float>) {
        switch (tiles.head_dim_qk) {
            case 32: return launch_linear_attn_sweep<T, 32, 32>(batch, stream);
            case 64: return launch_linear_attn_sweep<T, 64, 32>(batch, stream);
            case 128: return launch_linear_attn_sweep<T, 128, 32>(batch, stream);
            default: return launch_linear_attn_sweep<T, 256, 32>(batch, stream);
        }
    } else {
        const bool wide = tiles.tile_v == 64;
        switch (tiles.head_dim_qk) {
            case 32: return wide ? launch_linear_attn_sweep<T, 32, 64>(batch, stream)
                                 : launch_linear_attn_sweep<T, 32, 32>(batch, stream);
            case 64: return wide ? launch_linear_attn_sweep<T, 64, 64>(batch, stream)
                                 : launch_linear_attn_sweep<T, 64, 32>(batch, stream);
            case 128: return wide ? launch_linear_attn_sweep<T, 128, 64>(batch, stream)
                                  : launch_linear_attn_sweep<T, 128, 32>(batch, stream);
            default: return launch_linear_attn_sweep<T, 256, 32>(batch, stream);
        }
    }
}

cudaError_t launch_group(DType dtype, TileConfig tiles, const LinearAttnBatch& batch, cudaStream_t stream) {
    switch (dtype) {
        case DType::kFloat16: return launch_tiles<__half>(tiles, batch, stream);
        case DType::kBFloat16: return launch_tiles<__nv_bfloat16>(tiles, batch, stream);
        default: return launch_tiles<float>(tiles, batch, stream);
    }
}

cudaError_t plan_all(const LinearAttnParams* problems, int num_problems, DType dtype, SweepPlan* plans) {
    if (num_problems < 1 || num_problems > kMaxProblems) return cudaErrorInvalidValue;
    int device = 0, num_sms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;
    for (int i = 0; i < num_problems; ++i) plans[i] = plan_sweep(problems[i], dtype, num_problems, num_sms);
    return cudaSuccess;
}

}  // namespace

size_t linear_attn_workspace_bytes(const LinearAttnParams* problems, int num_problems, DType dtype) {
    SweepPlan plans[kMaxProblems];
    if (plan_all(problems, num_problems, dtype, plans) != cudaSuccess) return 0;
    size_t bytes = 0;
    for (int i = 0; i < num_problems; ++i) bytes += plans[i].workspace_bytes;
    return bytes;
}

cudaError_t run_linear_attn(const LinearAttnParams* problems, int num_problems, DType dtype, void* workspace,
                            cudaStream_t stream) {
    SweepPlan plans[kMaxProblems];
    cudaError_t err = plan_all(problems, num_problems, dtype, plans);
    if (err != cudaSuccess) return err;

    ChunkPlan chunks[kMaxProblems];
    char* free_workspace = static_cast<char*>(workspace);
    for (int i = 0; i < num_problems; ++i) {
        chunks[i] = {plans[i].num_chunks, plans[i].chunk_blocks, reinterpret_cast<float*>(free_workspace)};
        free_workspace += plans[i].workspace_bytes;
    }

    // Problems with equal tiles share one launch (blockIdx.y picks the problem).
    bool launched[kMaxProblems] = {};
    for (int i = 0; i < num_problems; ++i) {
        if (launched[i]) continue;
        LinearAttnBatch batch{};
        bool any_chunked = false;
        for (int j = i; j < num_problems; ++j) {
            if (!launched[j] && plans[j].tiles == plans[i].tiles) {
                batch.problems[batch.num_problems] = problems[j];
                batch.chunks[batch.num_problems++] = chunks[j];
                any_chunked |= chunks[j].num_chunks > 1;
                launched[j] = true;
            }
        }
        if (any_chunked) {
            batch.state_pass = true;
            err = launch_group(dtype, plans[i].tiles, batch, stream);
            if (err != cudaSuccess) return err;
        }
        batch.state_pass = false;
        err = launch_group(dtype, plans[i].tiles, batch, stream);
        if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
}

}  // namespace lightning_attn2
