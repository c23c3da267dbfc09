// Plans each problem's sweep (tile configuration, sequence chunks) and launches it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "kernel_traits.h"
#include "launch.h"
#include "sequences.cuh"

namespace lightning_attn2 {
namespace {

// Chunks are at least this many blocks long: each chunk but the last costs a
// state pass over its keys and values, worth it only over a long enough stretch.
constexpr int kMinChunkBlocks = 16;
constexpr size_t kWorkspaceAlign = 256;

std::atomic<int> relay_segment_cap{0};  // set_relay_segment_cap (tests)

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
    int64_t state_chunks;
    bool chunked;
    int job_blocks;      // packed sequences (ChunkPlan::job_blocks)
    size_t pack_bytes;   // seq_start, job_end, chunk_start, relay_start, longest_chunk and row_starts
    size_t state_bytes;  // chunk states
};

size_t aligned(size_t bytes) { return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

int padded_head_dim(int dim) { return dim <= 32 ? 32 : dim <= 64 ? 64 : dim <= 128 ? 128 : 256; }

// A compiled sweep, as a type: SweepTiles<T, 128, 64, false>.
template <typename T, int kHeadDimQK, int kTileV, bool kDecayDerivative>
struct SweepTiles {};

// Calls f(SweepTiles<...>{}) for the instantiation of (dtype, tiles); the one place
// that maps a tile configuration to a compiled kernel.
template <typename T, typename F>
cudaError_t visit_tiles(TileConfig tiles, F&& f) {
    if (tiles.decay_derivative) {
        switch (tiles.head_dim_qk) {
            case 32: return f(SweepTiles<T, 32, 32, true>{});
            case 64: return f(SweepTiles<T, 64, 32, true>{});
            case 128: return f(SweepTiles<T, 128, 32, true>{});
            default: return f(SweepTiles<T, 256, 32, true>{});
        }
    }
    if constexpr (std::is_same_v<T, float>) {
        switch (tiles.head_dim_qk) {
            case 32: return f(SweepTiles<T, 32, 32, false>{});
            case 64: return f(SweepTiles<T, 64, 32, false>{});
            case 128: return f(SweepTiles<T, 128, 32, false>{});
            default: return f(SweepTiles<T, 256, 32, false>{});
        }
    } else {
        const bool wide = tiles.tile_v == 64;
        switch (tiles.head_dim_qk) {
            case 32: return wide ? f(SweepTiles<T, 32, 64, false>{}) : f(SweepTiles<T, 32, 32, false>{});
            case 64: return wide ? f(SweepTiles<T, 64, 64, false>{}) : f(SweepTiles<T, 64, 32, false>{});
            case 128: return wide ? f(SweepTiles<T, 128, 64, false>{}) : f(SweepTiles<T, 128, 32, false>{});
            default: return f(SweepTiles<T, 256, 32, false>{});
        }
    }
}

template <typename F>
cudaError_t visit_sweep(DType dtype, TileConfig tiles, F&& f) {
    switch (dtype) {
        case DType::kFloat16: return visit_tiles<__half>(tiles, f);
        case DType::kBFloat16: return visit_tiles<__nv_bfloat16>(tiles, f);
        default: return visit_tiles<float>(tiles, f);
    }
}

template <typename T, int kHeadDimQK, int kTileV, bool kDecayDerivative>
cudaError_t launch(SweepTiles<T, kHeadDimQK, kTileV, kDecayDerivative>, const LinearAttnBatch& batch, SweepPass pass,
                   cudaStream_t stream) {
    return launch_linear_attn_sweep<T, kHeadDimQK, kTileV, kDecayDerivative>(batch, pass, stream);
}

// Asked once per process and instantiation: every GPU of a process is taken to
// have the first one's occupancy (only the speed depends on it, never the result).
template <typename T, int kHeadDimQK, int kTileV, bool kDecayDerivative>
int ctas_per_sm(SweepTiles<T, kHeadDimQK, kTileV, kDecayDerivative>) {
    static const int ctas = std::max(1, linear_attn_sweep_ctas_per_sm<T, kHeadDimQK, kTileV, kDecayDerivative>());
    return ctas;
}

// CTAs of the sweep with these tiles that the GPU runs at once.
int sweep_slots(DType dtype, TileConfig tiles, int num_sms) {
    int per_sm = 1;
    visit_sweep(dtype, tiles, [&](auto kernel) {
        per_sm = ctas_per_sm(kernel);
        return cudaSuccess;
    });
    return per_sm * num_sms;
}

// Block-times of the sweep per slot when each of `jobs` jobs (the sequences of one
// chunk row, per v slice) of `blocks` blocks is cut into `chunks` chunks: the relay's output pass (its work
// spread over the slots, but no shorter than one chunk) plus, when cut, the state
// pass over all chunks but the last, at kStatePassCost of an output block each.
double sweep_estimate(int64_t jobs, int64_t blocks, int64_t chunks, int64_t slots) {
    // A state-pass block does one of the output block's three tile products (the
    // derivative sweep's: two of six) and loads two of its three tiles; measured on the
    // H200 it takes about half the time (the derivative's state pass is not measured).
    constexpr double kStatePassCost = 0.5;
    const double chunk = double((blocks + chunks - 1) / chunks);
    const double output = std::max(double(jobs) * double(blocks) / double(slots), chunk);
    if (chunks == 1) return output;
    const double state = std::max(double(jobs) * double(chunks - 1) * chunk / double(slots), chunk);
    return output + kStatePassCost * state;
}

// Jobs of several sequences save blocks only where a sequence's partial last block
// shares a job with the next sequence's first: about half a block per joined sequence,
// at most num_seqs of seq_blocks + num_seqs. But a launch with any job runs every
// piece in the kJobs kernel, 1-2% slower than the other (v19). With bench.py's lengths
// jobs save 0.8% of the blocks where sequences average 64 blocks (16 sequences: 1.2%
// faster forward and 3.1% forward+backward without them, v20 on an H100), 2.6% at 16
// (64 sequences, v18: level) and 20% at 2 (512 sequences, v16-v19: 18% faster). So
// jobs only where the lengths average at most 16 blocks; the lengths live on the
// device, their mean is known here.
constexpr int kJobsMaxMeanBlocks = 16;
bool jobs_pay_off(int64_t seq_blocks, int64_t num_seqs) { return seq_blocks <= kJobsMaxMeanBlocks * num_seqs; }

// Sequences are cut into chunks only where the output pass alone would leave slots
// idle: fewer jobs than slots. per_chunk_row: jobs per chunk row (problems x heads
// x v slices; x batch for equal-length sequences).
SweepPlan plan_with_tiles(const LinearAttnParams& p, DType dtype, TileConfig tiles, int num_problems, int num_sms) {
    SweepPlan plan{};
    plan.tiles = tiles;
    plan.v_tiles = (p.dim_v + tiles.tile_v - 1) / tiles.tile_v;
    const int64_t slots = sweep_slots(dtype, tiles, num_sms);
    const int64_t per_chunk_row = int64_t(num_problems) * p.heads * plan.v_tiles;
    const int64_t wanted_rows = (slots + per_chunk_row - 1) / per_chunk_row;
    if (p.cu_seqlens == nullptr) {
        // Up to wanted_rows chunk rows, which fill every slot; as many as the
        // estimate finds fastest.
        const int num_blocks = blocks_of(p.seqlen);
        const int64_t jobs = per_chunk_row * p.batch;
        const int64_t most =
            std::min<int64_t>((wanted_rows + p.batch - 1) / p.batch, std::max(1, num_blocks / kMinChunkBlocks));
        int64_t num_chunks = 1;
        for (int64_t c = 2; c <= most; ++c)
            if (sweep_estimate(jobs, num_blocks, c, slots) < sweep_estimate(jobs, num_blocks, num_chunks, slots))
                num_chunks = c;
        plan.chunk_blocks = std::max(1, int((num_blocks + num_chunks - 1) / num_chunks));
        plan.chunks_per_seq = chunks_of(num_blocks, plan.chunk_blocks);
        plan.state_chunks = int64_t(p.batch) * (plan.chunks_per_seq - 1);
    } else {
        // The lengths live on the device: size chunks for the whole token count, so
        // that a sequence much longer than the rest is cut rather than left running
        // alone. Sequence n has max(1, ceil(len_n / L)) chunks, L = chunk_blocks *
        // kBlockN tokens: at most seqlen / L of them not last.
        const int64_t seq_blocks = blocks_of(p.seqlen);
        const int64_t blocks = seq_blocks + p.num_seqs;
        const int64_t chunk_blocks = std::max<int64_t>(kMinChunkBlocks, (blocks + wanted_rows - 1) / wanted_rows);
        // No sequence is longer than seqlen, so seq_blocks + 1 blocks cut none, as does
        // any longer chunk; the cap keeps chunk_blocks * kBlockN within an int however
        // many sequences there are.
        plan.chunk_blocks = int(std::min(chunk_blocks, seq_blocks + 1));
        // Short sequences share jobs (joins_previous_job) unless a state enters or leaves
        // them, and only where sequences are short on average (jobs_pay_off). A job is
        // no longer than a relay segment would be were every job whole blocks (about its
        // length: a longer one would stretch every segment).
        const bool stateless = p.initial_state.ptr == nullptr && p.final_state.ptr == nullptr && !p.decay_derivative;
        const int64_t segment_blocks = std::max<int64_t>(1, seq_blocks * per_chunk_row / slots);
        plan.job_blocks = stateless && jobs_pay_off(seq_blocks, p.num_seqs)
                              ? int(std::min<int64_t>(plan.chunk_blocks, segment_blocks))
                              : 0;
        // A known longest sequence that fits one chunk: cut none (seq_blocks + 1 blocks),
        // so this problem needs no state or prefix pass (they are not launched unless
        // another problem of its launch group is cut).
        if (p.max_seqlen >= 0 && blocks_of(p.max_seqlen) <= plan.chunk_blocks)
            plan.chunk_blocks = int(seq_blocks + 1);
        plan.chunks_per_seq = 0;
        plan.state_chunks = p.seqlen / (int64_t(plan.chunk_blocks) * kSweepBlockN);
        const size_t entries = size_t(p.num_seqs) + 1;
        // row_starts: a job of b blocks costs b on a head's relay line, which is then at
        // most seq_blocks + num_seqs long.
        plan.pack_bytes = 2 * aligned(entries * sizeof(int)) + 2 * aligned(entries * sizeof(int64_t)) +
                          aligned(sizeof(int)) +
                          (plan.job_blocks > 0 ? aligned(size_t(seq_blocks + p.num_seqs) * sizeof(uint64_t)) : 0);
    }
    plan.chunked = plan.state_chunks > 0;
    // A chunk's state, and the derivative sweep's S' beside it.
    const size_t states = tiles.decay_derivative ? 2 : 1;
    plan.state_bytes = aligned(size_t(plan.state_chunks) * p.heads * plan.v_tiles * states * tiles.head_dim_qk *
                               tiles.tile_v * sizeof(float));
    return plan;
}

// num_problems: problems of the call with this problem's tiles, which run side by side.
SweepPlan plan_sweep(const LinearAttnParams& p, DType dtype, int num_problems, int num_sms) {
    const int head_dim_qk = padded_head_dim(p.dim_qk);
    // fp32 (SIMT) keeps its state in 32-column slices: the registers hold no more.
    // So does head dim 256: a 256 x 64 fp32 state is 128 registers per thread, and
    // the derivative sweep, which keeps two states.
    if (dtype == DType::kFloat32 || head_dim_qk == 256 || p.dim_v <= 32 || p.decay_derivative) {
        return plan_with_tiles(p, dtype, {head_dim_qk, 32, p.decay_derivative}, num_problems, num_sms);
    }
    // 64 columns halve the recomputation of Q K^T across slices. When even cut into
    // chunks that leaves SMs idle (short sequences, few heads), twice the CTAs at 32
    // columns finish sooner.
    const SweepPlan wide = plan_with_tiles(p, dtype, {head_dim_qk, 64, false}, num_problems, num_sms);
    const int64_t chunk_rows = p.cu_seqlens == nullptr ? int64_t(p.batch) * wide.chunks_per_seq
                                                       : wide.state_chunks + p.num_seqs;
    if (int64_t(num_problems) * p.heads * wide.v_tiles * chunk_rows >= num_sms) return wide;
    return plan_with_tiles(p, dtype, {head_dim_qk, 32, false}, num_problems, num_sms);
}

// Problems with equal tiles share each launch (the state pass's blockIdx.y picks
// the problem; the relay runs them on one line).
struct LaunchGroup {
    TileConfig tiles;
    int members[kMaxProblems];
    int num_members;
    int v_tiles_per_head;
    int relay_segments;
    size_t relay_state_bytes;  // handoff_states
    size_t relay_flag_bytes;   // handoff_ready and next_ticket, zeroed by the preparing pass
};

struct CallPlan {
    SweepPlan sweeps[kMaxProblems];
    LaunchGroup groups[kMaxProblems];
    int num_groups;
    size_t relay_bytes;  // one relay workspace, reused by the launches in turn
    size_t workspace_bytes;
    int num_sms;
};

cudaError_t plan_call(const LinearAttnParams* problems, int num_problems, DType dtype, CallPlan& call) {
    if (num_problems < 1 || num_problems > kMaxProblems) return cudaErrorInvalidValue;
    // The derivative sweep differentiates a start from S_{-1} decayed at the first step
    // (update_state's and block_output's weights take no shift): the backward's dq_decay
    // problem never has an undecayed one.
    for (int i = 0; i < num_problems; ++i)
        if (problems[i].decay_derivative && problems[i].initial_state_undecayed) return cudaErrorInvalidValue;
    int device = 0, num_sms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;
    call.num_sms = num_sms;
    // Plan as if all problems shared a launch, then again with the number that
    // actually share each one's tiles.
    SweepPlan* plans = call.sweeps;
    for (int i = 0; i < num_problems; ++i) plans[i] = plan_sweep(problems[i], dtype, num_problems, num_sms);
    int sharing[kMaxProblems] = {};
    for (int i = 0; i < num_problems; ++i)
        for (int j = 0; j < num_problems; ++j) sharing[i] += plans[i].tiles == plans[j].tiles;
    for (int i = 0; i < num_problems; ++i) plans[i] = plan_sweep(problems[i], dtype, sharing[i], num_sms);

    call.num_groups = 0;
    call.relay_bytes = 0;
    call.workspace_bytes = 0;
    bool grouped[kMaxProblems] = {};
    for (int i = 0; i < num_problems; ++i) {
        call.workspace_bytes += plans[i].pack_bytes + plans[i].state_bytes;
        if (grouped[i]) continue;
        LaunchGroup& group = call.groups[call.num_groups++];
        group = LaunchGroup{};
        group.tiles = plans[i].tiles;
        for (int j = i; j < num_problems; ++j) {
            if (!grouped[j] && plans[j].tiles == group.tiles) {
                group.members[group.num_members++] = j;
                group.v_tiles_per_head = std::max(group.v_tiles_per_head, plans[j].v_tiles);
                grouped[j] = true;
            }
        }
        // One segment per slot group of v slices, all swept side by side.
        const int slots = sweep_slots(dtype, group.tiles, num_sms);
        group.relay_segments = std::max(1, slots / std::max(1, group.v_tiles_per_head));
        const int cap = relay_segment_cap.load();
        if (cap > 0) group.relay_segments = std::min(group.relay_segments, cap);
        const size_t handoffs = size_t(group.relay_segments) * group.v_tiles_per_head;
        const size_t states = group.tiles.decay_derivative ? 2 : 1;
        group.relay_state_bytes =
            aligned(handoffs * states * group.tiles.head_dim_qk * group.tiles.tile_v * sizeof(float));
        group.relay_flag_bytes = (handoffs + 1) * sizeof(int);
        call.relay_bytes = std::max(call.relay_bytes, group.relay_state_bytes + aligned(group.relay_flag_bytes));
    }
    call.workspace_bytes += call.relay_bytes;
    return cudaSuccess;
}

}  // namespace

void set_relay_segment_cap(int segments) { relay_segment_cap = segments; }

size_t linear_attn_workspace_bytes(const LinearAttnParams* problems, int num_problems, DType dtype) {
    CallPlan call;
    if (plan_call(problems, num_problems, dtype, call) != cudaSuccess) return 0;
    return call.workspace_bytes;
}

cudaError_t run_linear_attn(const LinearAttnParams* problems, int num_problems, DType dtype, void* workspace,
                            cudaStream_t stream) {
    CallPlan call;
    cudaError_t err = plan_call(problems, num_problems, dtype, call);
    if (err != cudaSuccess) return err;

    ChunkPlan chunks[kMaxProblems];
    char* free_workspace = static_cast<char*>(workspace);
    for (int i = 0; i < num_problems; ++i) {
        const SweepPlan& plan = call.sweeps[i];
        const bool packed = problems[i].cu_seqlens != nullptr;
        const size_t entries = size_t(problems[i].num_seqs) + 1;
        char* seq_start = free_workspace;
        char* job_end = seq_start + aligned(entries * sizeof(int));
        char* chunk_start = job_end + aligned(entries * sizeof(int));
        char* relay_start = chunk_start + aligned(entries * sizeof(int64_t));
        char* longest = relay_start + aligned(entries * sizeof(int64_t));
        char* row_starts = longest + aligned(sizeof(int));
        chunks[i] = {plan.chunk_blocks,
                     plan.chunks_per_seq,
                     plan.state_chunks,
                     plan.chunked,
                     plan.job_blocks,
                     packed ? reinterpret_cast<int*>(seq_start) : nullptr,
                     packed ? reinterpret_cast<int*>(job_end) : nullptr,
                     packed ? reinterpret_cast<int64_t*>(chunk_start) : nullptr,
                     packed ? reinterpret_cast<int64_t*>(relay_start) : nullptr,
                     packed ? reinterpret_cast<int*>(longest) : nullptr,
                     plan.job_blocks > 0 ? reinterpret_cast<uint64_t*>(row_starts) : nullptr,
                     reinterpret_cast<float*>(free_workspace + plan.pack_bytes)};
        free_workspace += plan.pack_bytes + plan.state_bytes;
    }
    char* relay = free_workspace;

    for (int g = 0; g < call.num_groups; ++g) {
        const LaunchGroup& group = call.groups[g];
        LinearAttnBatch batch{};
        batch.state_elems = group.tiles.head_dim_qk * group.tiles.tile_v;
        bool any_chunked = false;
        for (int m = 0; m < group.num_members; ++m) {
            const int j = group.members[m];
            batch.problems[batch.num_problems] = problems[j];
            batch.chunks[batch.num_problems] = chunks[j];
            batch.v_tiles[batch.num_problems++] = call.sweeps[j].v_tiles;
            any_chunked |= chunks[j].chunked;
        }
        int* flags = reinterpret_cast<int*>(relay + group.relay_state_bytes);
        batch.relay = {reinterpret_cast<float*>(relay), flags, flags + group.relay_segments * group.v_tiles_per_head,
                       group.relay_segments};
        if ((err = launch_prepare_relay(batch, int(group.relay_flag_bytes / sizeof(int)), stream)) != cudaSuccess)
            return err;
        if (any_chunked) {
            if ((err = visit_sweep(dtype, group.tiles, [&](auto kernel) {
                     return launch(kernel, batch, SweepPass::kState, stream);
                 })) != cudaSuccess)
                return err;
            if ((err = launch_chunk_prefix(batch, call.num_sms, stream)) != cudaSuccess) return err;
        }
        if ((err = visit_sweep(dtype, group.tiles, [&](auto kernel) {
                 return launch(kernel, batch, SweepPass::kOutput, stream);
             })) != cudaSuccess)
            return err;
    }
    return cudaSuccess;
}

}  // namespace lightning_attn2
