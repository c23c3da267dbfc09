// Chooses the tile configuration of each problem and launches the sweeps.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "launch.h"

namespace lightning_attn2 {
namespace {

struct TileConfig {
    int head_dim_qk;  // dim_qk padded up to a compiled size
    int tile_v;       // v columns per CTA
    bool operator==(const TileConfig& other) const {
        return head_dim_qk == other.head_dim_qk && tile_v == other.tile_v;
    }
};

int padded_head_dim(int dim) { return dim <= 32 ? 32 : dim <= 64 ? 64 : dim <= 128 ? 128 : 256; }

// ctas_per_v_tile: CTAs the whole call launches for each 64-column v slice.
TileConfig choose_tiles(const LinearAttnParams& p, DType dtype, int ctas_per_v_tile, int num_sms) {
    const int head_dim_qk = padded_head_dim(p.dim_qk);
    // fp32 (SIMT) keeps its state in 32-column slices: the registers hold no more.
    // So does head dim 256: a 256 x 64 fp32 state is 128 registers per thread.
    if (dtype == DType::kFloat32 || head_dim_qk == 256 || p.dim_v <= 32) return {head_dim_qk, 32};
    // 64 columns halve the recomputation of Q K^T across slices, but when that
    // leaves SMs idle, twice the CTAs at 32 columns finish sooner.
    const int ctas_at_64 = ctas_per_v_tile * ((p.dim_v + 63) / 64);
    return {head_dim_qk, ctas_at_64 >= num_sms ? 64 : 32};
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

}  // namespace

cudaError_t run_linear_attn(const LinearAttnParams* problems, int num_problems, DType dtype,
                            cudaStream_t stream) {
    if (num_problems < 1 || num_problems > kMaxProblems) return cudaErrorInvalidValue;
    int device = 0, num_sms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;

    TileConfig tiles[kMaxProblems];
    for (int i = 0; i < num_problems; ++i) {
        const LinearAttnParams& p = problems[i];
        tiles[i] = choose_tiles(p, dtype, num_problems * p.batch * p.heads, num_sms);
    }
    // Problems with equal tiles share one launch (blockIdx.y picks the problem).
    bool launched[kMaxProblems] = {};
    for (int i = 0; i < num_problems; ++i) {
        if (launched[i]) continue;
        LinearAttnBatch batch{};
        for (int j = i; j < num_problems; ++j) {
            if (!launched[j] && tiles[j] == tiles[i]) {
                batch.problems[batch.num_problems++] = problems[j];
                launched[j] = true;
            }
        }
        err = launch_group(dtype, tiles[i], batch, stream);
        if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
}

}  // namespace lightning_attn2
