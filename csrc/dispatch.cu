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
    bool decay_derivative;
    bool operator==(const TileConfig& other) const {
        return head_dim_qk == other.head_dim_qk && tile_v == other.tile_v &&
               decay_derivative == other.decay_derivative;
    }
};

struct SweepPlan {
    TileConfig tiles;
    int v_tiles;  // column slices of dim_v
    int chunk_blocks;
    int chunks_per_seq;  // equal-length batches
    int max_chunks;
    bool chunked;
    size_t pack_bytes;   // seq_start and chunk_start of packed sequences
    size_t state_bytes;  // chunk states
};

size_t aligned(size_t bytes) { return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

int padded_head_dim(int dim) { return dim <= 32 ? 32 : dim <= 64 ? 64 : dim <= 128 ? 128 : 256; }

// CTAs of one sweep launch that run at once: two per SM for the tiles that matter
// (registers and shared memory both allow two at head dim 128).
constexpr int kCtasPerSm = 2;

// A state-pass block does one of the output block's three tile products and loads
// two of its three tiles: taken as half the time of an output block.
constexpr double kStatePassCost = 0.5;

// Time of a sweep in block-times when `jobs` CTAs of `blocks` blocks each are cut
// into `chunks` chunks and run `slots` at a time: the output pass in whole waves
// of chunks, plus the state pass over every chunk but the last. A wave is as long
// as its chunks however few of its slots are used, so 288 CTAs on 264 slots take
// two waves: the count that leaves the fewest idle slots wins, not the most CTAs.
double sweep_time(int64_t jobs, int64_t blocks, int64_t chunks, int64_t slots) {
    const int64_t chunk = (blocks + chunks - 1) / chunks;
    auto waves = [&](int64_t ctas) { return double((ctas + slots - 1) / slots); };
    return waves(jobs * chunks) * chunk + kStatePassCost * waves(jobs * (chunks - 1)) * chunk;
}

// The chunk count, at most max_chunks, for the shortest sweep_time. The estimate is
// good to a few percent, and each chunk adds a state slab, a step of the prefix
// pass and a CTA's start-up: of the counts within 2% of the shortest, the fewest.
int64_t fastest_chunk_count(int64_t jobs, int64_t blocks, int64_t max_chunks, int64_t slots) {
    double shortest = sweep_time(jobs, blocks, 1, slots);
    for (int64_t chunks = 2; chunks <= max_chunks; ++chunks)
        shortest = std::min(shortest, sweep_time(jobs, blocks, chunks, slots));
    int64_t chunks = 1;
    while (sweep_time(jobs, blocks, chunks, slots) > 1.02 * shortest) ++chunks;
    return chunks;
}

// Sequences are cut into chunks of at least kMinChunkBlocks blocks; equal-length
// ones when that shortens the sweep (fastest_chunk_count, up to four times as many
// chunk rows as fill the slots). per_chunk_row: CTAs per chunk row (problems x heads
// x v slices; x batch for equal-length sequences).
SweepPlan plan_with_tiles(const LinearAttnParams& p, TileConfig tiles, int num_problems, int num_sms) {
    SweepPlan plan{};
    plan.tiles = tiles;
    plan.v_tiles = (p.dim_v + tiles.tile_v - 1) / tiles.tile_v;
    const int64_t slots = int64_t(kCtasPerSm) * num_sms;
    const int64_t per_chunk_row = int64_t(num_problems) * p.heads * plan.v_tiles;
    int64_t state_chunks = 0;  // chunks that are not last in their sequence
    // The derivative sweep has no chunk passes: one CTA walks each whole sequence.
    const bool may_chunk = !p.decay_derivative;
    if (p.cu_seqlens == nullptr) {
        const int num_blocks = (p.seqlen + kSweepBlockN - 1) / kSweepBlockN;
        const int64_t jobs = std::max<int64_t>(1, per_chunk_row * p.batch);
        const int64_t max_chunks =
            may_chunk ? std::min<int64_t>(num_blocks / kMinChunkBlocks, 4 * ((slots + jobs - 1) / jobs)) : 1;
        const int64_t num_chunks = fastest_chunk_count(jobs, num_blocks, max_chunks, slots);
        plan.chunk_blocks = std::max(1, int((num_blocks + num_chunks - 1) / num_chunks));
        plan.chunks_per_seq = std::max(1, (num_blocks + plan.chunk_blocks - 1) / plan.chunk_blocks);
        plan.max_chunks = p.batch * plan.chunks_per_seq;
        plan.chunked = plan.chunks_per_seq > 1;
        state_chunks = int64_t(p.batch) * (plan.chunks_per_seq - 1);
    } else {
        // The lengths live on the device: size chunks for the whole token count, so
        // that a sequence much longer than the rest is cut rather than left running
        // alone: into chunks of one of the chunk rows that fill the slots in one wave
        // (a long sequence then fills them, and many sequences are not cut at all).
        // Sequence n has max(1, ceil(len_n / L)) chunks, L = chunk_blocks * kBlockN
        // tokens: at most seqlen / L + num_seqs in all, seqlen / L not last.
        const int64_t seq_blocks = (int64_t(p.seqlen) + kSweepBlockN - 1) / kSweepBlockN;
        const int64_t blocks = seq_blocks + p.num_seqs;
        const int64_t rows = std::max<int64_t>(1, slots / std::max<int64_t>(1, per_chunk_row));
        const int64_t chunk_blocks =
            may_chunk ? std::max<int64_t>(kMinChunkBlocks, (blocks + rows - 1) / rows) : blocks;
        // No sequence is longer than seqlen, so seq_blocks + 1 blocks cut none, as does
        // any longer chunk; the cap keeps chunk_blocks * kBlockN within an int however
        // many sequences there are.
        plan.chunk_blocks = int(std::min(chunk_blocks, seq_blocks + 1));
        const int64_t chunk_tokens = int64_t(plan.chunk_blocks) * kSweepBlockN;
        state_chunks = p.seqlen / chunk_tokens;
        plan.chunks_per_seq = 0;
        plan.max_chunks = int(p.num_seqs + state_chunks);
        plan.chunked = state_chunks > 0;
        plan.pack_bytes = aligned(3 * (size_t(p.num_seqs) + 1) * sizeof(int));
    }
    plan.state_bytes =
        aligned(size_t(state_chunks) * p.heads * plan.v_tiles * tiles.head_dim_qk * tiles.tile_v * sizeof(float));
    return plan;
}

// num_problems: problems of the call with this problem's tiles, which run side by side.
SweepPlan plan_sweep(const LinearAttnParams& p, DType dtype, int num_problems, int num_sms) {
    const int head_dim_qk = padded_head_dim(p.dim_qk);
    // fp32 (SIMT) keeps its state in 32-column slices: the registers hold no more.
    // So does head dim 256: a 256 x 64 fp32 state is 128 registers per thread, and
    // the derivative sweep, which keeps two states.
    if (dtype == DType::kFloat32 || head_dim_qk == 256 || p.dim_v <= 32 || p.decay_derivative) {
        return plan_with_tiles(p, {head_dim_qk, 32, p.decay_derivative}, num_problems, num_sms);
    }
    // 64 columns halve the recomputation of Q K^T across slices. When even cut into
    // chunks that leaves SMs idle (short sequences, few heads), twice the CTAs at 32
    // columns finish sooner.
    const SweepPlan wide = plan_with_tiles(p, {head_dim_qk, 64, false}, num_problems, num_sms);
    if (int64_t(num_problems) * p.heads * wide.v_tiles * wide.max_chunks >= num_sms) return wide;
    return plan_with_tiles(p, {head_dim_qk, 32, false}, num_problems, num_sms);
}

template <typename T>
cudaError_t launch_tiles(TileConfig tiles, const LinearAttnBatch& batch, SweepPass pass, cudaStream_t stream) {
    if (tiles.decay_derivative) {
        switch (tiles.head_dim_qk) {
            case 32: return launch_linear_attn_sweep<T, 32, 32, true>(batch, pass, stream);
            case 64: return launch_linear_attn_sweep<T, 64, 32, true>(batch, pass, stream);
            case 128: return launch_linear_attn_sweep<T, 128, 32, true>(batch, pass, stream);
            default: return launch_linear_attn_sweep<T, 256, 32, true>(batch, pass, stream);
        }
    }
    if constexpr (std::is_same_v<T, float>) {
        switch (tiles.head_dim_qk) {
            case 32: return launch_linear_attn_sweep<T, 32, 32, false>(batch, pass, stream);
            case 64: return launch_linear_attn_sweep<T, 64, 32, false>(batch, pass, stream);
            case 128: return launch_linear_attn_sweep<T, 128, 32, false>(batch, pass, stream);
            default: return launch_linear_attn_sweep<T, 256, 32, false>(batch, pass, stream);
        }
    } else {
        const bool wide = tiles.tile_v == 64;
        switch (tiles.head_dim_qk) {
            case 32: return wide ? launch_linear_attn_sweep<T, 32, 64, false>(batch, pass, stream)
                                 : launch_linear_attn_sweep<T, 32, 32, false>(batch, pass, stream);
            case 64: return wide ? launch_linear_attn_sweep<T, 64, 64, false>(batch, pass, stream)
                                 : launch_linear_attn_sweep<T, 64, 32, false>(batch, pass, stream);
            case 128: return wide ? launch_linear_attn_sweep<T, 128, 64, false>(batch, pass, stream)
                                  : launch_linear_attn_sweep<T, 128, 32, false>(batch, pass, stream);
            default: return launch_linear_attn_sweep<T, 256, 32, false>(batch, pass, stream);
        }
    }
}

cudaError_t launch_sweep(DType dtype, TileConfig tiles, const LinearAttnBatch& batch, SweepPass pass,
                         cudaStream_t stream) {
    switch (dtype) {
        case DType::kFloat16: return launch_tiles<__half>(tiles, batch, pass, stream);
        case DType::kBFloat16: return launch_tiles<__nv_bfloat16>(tiles, batch, pass, stream);
        default: return launch_tiles<float>(tiles, batch, pass, stream);
    }
}

cudaError_t plan_all(const LinearAttnParams* problems, int num_problems, DType dtype, SweepPlan* plans) {
    if (num_problems < 1 || num_problems > kMaxProblems) return cudaErrorInvalidValue;
    int device = 0, num_sms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;
    // Plan as if all problems shared a launch, then again with the number that
    // actually share each one's tiles.
    for (int i = 0; i < num_problems; ++i) plans[i] = plan_sweep(problems[i], dtype, num_problems, num_sms);
    int sharing[kMaxProblems] = {};
    for (int i = 0; i < num_problems; ++i)
        for (int j = 0; j < num_problems; ++j) sharing[i] += plans[i].tiles == plans[j].tiles;
    for (int i = 0; i < num_problems; ++i) plans[i] = plan_sweep(problems[i], dtype, sharing[i], num_sms);
    return cudaSuccess;
}

}  // namespace

size_t linear_attn_workspace_bytes(const LinearAttnParams* problems, int num_problems, DType dtype) {
    SweepPlan plans[kMaxProblems];
    if (plan_all(problems, num_problems, dtype, plans) != cudaSuccess) return 0;
    size_t bytes = 0;
    for (int i = 0; i < num_problems; ++i) bytes += plans[i].pack_bytes + plans[i].state_bytes;
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
        const SweepPlan& plan = plans[i];
        int* pack = reinterpret_cast<int*>(free_workspace);
        const bool packed = problems[i].cu_seqlens != nullptr;
        const int entries = problems[i].num_seqs + 1;
        chunks[i] = {plan.chunk_blocks, plan.chunks_per_seq, plan.max_chunks, plan.chunked,
                     packed ? pack : nullptr, packed ? pack + entries : nullptr, packed ? pack + 2 * entries : nullptr,
                     reinterpret_cast<float*>(free_workspace + plan.pack_bytes)};
        free_workspace += plan.pack_bytes + plan.state_bytes;
    }

    // Problems with equal tiles share each launch (blockIdx.y picks the problem).
    bool launched[kMaxProblems] = {};
    for (int i = 0; i < num_problems; ++i) {
        if (launched[i]) continue;
        LinearAttnBatch batch{};
        batch.state_elems = plans[i].tiles.head_dim_qk * plans[i].tiles.tile_v;
        bool any_packed = false, any_chunked = false;
        for (int j = i; j < num_problems; ++j) {
            if (!launched[j] && plans[j].tiles == plans[i].tiles) {
                batch.problems[batch.num_problems] = problems[j];
                batch.chunks[batch.num_problems] = chunks[j];
                batch.v_tiles[batch.num_problems++] = plans[j].v_tiles;
                any_packed |= problems[j].cu_seqlens != nullptr;
                any_chunked |= chunks[j].chunked;
                launched[j] = true;
            }
        }
        if (any_packed && (err = launch_pack_sequences(batch, stream)) != cudaSuccess) return err;
        if (any_chunked) {
            if ((err = launch_sweep(dtype, plans[i].tiles, batch, SweepPass::kState, stream)) != cudaSuccess) return err;
            if ((err = launch_chunk_prefix(batch, stream)) != cudaSuccess) return err;
        }
        if ((err = launch_sweep(dtype, plans[i].tiles, batch, SweepPass::kOutput, stream)) != cudaSuccess) return err;
    }
    return cudaSuccess;
}

}  // namespace lightning_attn2
