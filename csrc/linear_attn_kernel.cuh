// The Lightning Attention-2 sweep: Algorithm 1 of Qin et al. (2024). A CTA owns a
// slice of v columns and walks runs of blocks of one (problem, sequence, head) with
// the state KV in fp32 registers: one chunk in the state pass, the pieces of its
// relay segment in the output pass (see ChunkPlan and RelayWorkspace in launch.h).
//
// The backward pass (Algorithm 2) runs this same sweep three times, as problems of
// one launch (see backward in api.cpp):
//   dq = sweep(q := do, k := v, v := k)                     forward in time,
//   dk = sweep(q := v,  k := do, v := q)   backward in time, state dKV^T,
//   dv = sweep(q := k,  k := q,  v := do)  backward in time, state dKV.
// The slope gradient takes a fourth, the dq sweep differentiated in the decay
// (kDecayDerivative: a second state S' = -dS/dslope), in a launch of its own.
#pragma once

#include <algorithm>
#include <type_traits>

#include "kernel_traits.h"
#include "launch.h"
#include "sequences.cuh"
#include "tile_ops.cuh"

namespace lightning_attn2 {

// The mask M of Algorithm 1 by distance d = t - s, with kv_scale folded in:
// masked_decay[d + kBlockN - 1] = kv_scale lambda^d for d >= 0, else 0 (one shared-
// memory table per CTA piece, so that each weight is one load and no select).
// The derivative sweep has a second table for -dM/dslope: kv_scale d lambda^d
// (d in units of 1 / derivative_scale).
template <int kBlockN>
struct MaskedDecay {
    const float* table;  // [2 * kBlockN]
    __device__ __forceinline__ float operator()(int distance) const { return table[distance + kBlockN - 1]; }
};

// Weight of key s in the state update of a block holding `valid` tokens: the masked
// decay from token s to the end of the block (zero past the valid tokens), and zero
// before first_key (a sequence of a job that starts there does not see them).
template <int kBlockN>
struct KeyDecay {
    static constexpr bool kEnabled = true;
    static constexpr bool kDiagonal = false;
    MaskedDecay<kBlockN> mask;
    int valid;
    int first_key;
    __device__ __forceinline__ float operator()(int s) const { return s >= first_key ? mask(valid - 1 - s) : 0.f; }
};

// In a block of a job of several sequences, the row of the last sequence start at or
// before `row` (bit r of `starts`: a sequence starts at row r); -1: none.
__device__ __forceinline__ int last_start_at_or_before(uint64_t starts, int row) {
    const uint64_t up_to_row = starts & (~0ull >> (63 - row));
    return up_to_row != 0 ? 63 - __clzll(static_cast<long long>(up_to_row)) : -1;
}

// A piece of a CTA's work with where its tokens lie: the
// offsets (elements) from q, k, v and o's pointers to its sequence's first token in
// the sweep's direction of time (v and o at the CTA's first column), and the steps
// between tokens in that direction.
struct LocatedPiece {
    SweepPiece piece;
    int64_t offset[4];  // q, k, v, o
    int64_t step[4];
    bool vectorized;     // the q, k and v tiles load by 16-byte cp.async (see load_tile)
    bool paired_stores;  // o takes two elements per store
    bool valid;          // false: no piece
};

template <typename T, int kTileV>
__device__ __forceinline__ void locate_tokens(const LinearAttnBatch& batch, int v_tile, LocatedPiece& x) {
    const LinearAttnParams& p = batch.problems[x.piece.problem];
    const SequenceChunk& work = x.piece.work;
    const int64_t first_in_time = p.reversed ? work.first_token + work.length - 1 : work.first_token;
    const StridedTensor* tensors[4] = {&p.q, &p.k, &p.v, &p.o};
    for (int i = 0; i < 4; ++i) {
        const StridedTensor& tensor = *tensors[i];
        x.offset[i] = work.batch * tensor.batch_stride + x.piece.head * tensor.head_stride +
                      first_in_time * tensor.seq_stride + (i >= 2 ? v_tile * kTileV : 0);
        x.step[i] = p.reversed ? -tensor.seq_stride : tensor.seq_stride;
    }
    auto aligned16 = [&](int i) {
        return is_aligned16(static_cast<const T*>(tensors[i]->ptr) + x.offset[i], x.step[i] * int64_t(sizeof(T)));
    };
    // Whole 16-byte chunks of every row (load_tile), so head dims of whole chunks too.
    constexpr int kChunk = 16 / sizeof(T);
    x.vectorized = aligned16(0) && aligned16(1) && aligned16(2) && p.dim_qk % kChunk == 0 && p.dim_v % kChunk == 0;
    x.paired_stores =
        reinterpret_cast<uintptr_t>(static_cast<const T*>(p.o.ptr) + x.offset[3]) % (2 * sizeof(T)) == 0 &&
        x.step[3] % 2 == 0;
}

// Block `block` of a located piece into shared memory: its q (when with_q), k and v
// tiles, zero past the job's end and past the head dims, and its sequence starts
// (ChunkPlan::row_starts) into *row_starts when given (a job of several sequences);
// one cp.async group.
template <class Traits, typename T = typename Traits::Element>
__device__ __forceinline__ void load_block_tiles(const LinearAttnBatch& batch, const LocatedPiece& piece_in_smem,
                                                 int block, int v_col0, bool with_q, T* sQ, T* sK, T* sV,
                                                 uint64_t* row_starts) {
    constexpr int kBlockN = Traits::kBlockN;
    // A copy in registers: load_tile's element-wise path stores to shared memory, which
    // may alias the piece there, so the compiler read its fields again after each tile
    // (perf.md v23: fewer instructions, bitwise equal; fp32 ~1% faster, bf16 level).
    const LocatedPiece x = piece_in_smem;
    const LinearAttnParams& p = batch.problems[x.piece.problem];
    const int64_t first = int64_t(block) * kBlockN;
    const int valid = min(kBlockN, x.piece.work.length - block * kBlockN);
    auto src = [&](const StridedTensor& tensor, int i) {
        return static_cast<const T*>(tensor.ptr) + x.offset[i] + first * x.step[i];
    };
    if (with_q) {
        load_tile<kBlockN, Traits::kHeadDimQK, Traits::kThreads>(sQ, Traits::kLdQK, src(p.q, 0), x.step[0], valid,
                                                                 p.dim_qk, x.vectorized);
    }
    load_tile<kBlockN, Traits::kHeadDimQK, Traits::kThreads>(sK, Traits::kLdQK, src(p.k, 1), x.step[1], valid, p.dim_qk,
                                                             x.vectorized);
    load_tile<kBlockN, Traits::kTileV, Traits::kThreads>(sV, Traits::kLdV, src(p.v, 2), x.step[2], valid,
                                                         min(Traits::kTileV, p.dim_v - v_col0), x.vectorized);
    if (row_starts != nullptr && threadIdx.x == 0)
        cp_async_8(row_starts, batch.chunks[x.piece.problem].row_starts + x.piece.work.row_starts + block);
    cp_async_commit();
}

// One kernel per pass: the state pass compiles without the output's code and
// registers and keeps more blocks in flight (Traits::kStateStages); the output pass,
// without the state pass's branches, ran 3-6% faster (perf.md v12). The output pass
// has a second kernel for launches with jobs of several sequences (kJobs, see
// ChunkPlan::job_blocks), so that every other launch runs a loop without their code
// (perf.md v19).
template <class Traits, SweepPass kPass, bool kJobs>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinCtasPerSm)
    linear_attn_sweep_kernel(const __grid_constant__ LinearAttnBatch batch, int heads, int v_tiles_per_head) {
    using T = typename Traits::Element;
    constexpr int kBlockN = Traits::kBlockN;
    constexpr int kHeadDimQK = Traits::kHeadDimQK;
    constexpr int kTileV = Traits::kTileV;
    constexpr bool state_pass = kPass == SweepPass::kState;
    // Jobs of several sequences are for the output pass of calls without states.
    static_assert(!(kJobs && (state_pass || Traits::kDecayDerivative)), "jobs are output-pass only");
    // Load stages: blocks in flight, kStages - 1 of them ahead of the one in use.
    constexpr int kStages = state_pass ? Traits::kStateStages : Traits::kStages;
    constexpr int kLdQK = Traits::kLdQK;
    constexpr int kLdV = Traits::kLdV;
    constexpr int kThreads = Traits::kThreads;
    constexpr int kQKSteps = kHeadDimQK / 16;  // k-steps of products over the head dim
    constexpr int kVTiles = kTileV / 8;         // n-tiles of an output row slab
    constexpr int kScoreTiles = kBlockN / 8;    // n-tiles of a score row slab
    constexpr int kStateMT = Traits::kStateRowsPerWarp / 16;
    constexpr int kStateNT = Traits::kStateColsPerWarp / 8;
    constexpr bool kDerivative = Traits::kDecayDerivative;
    // Floats of one state in a workspace slab (chunk states, relay hand-offs), which
    // holds Traits::kStates of them: the state, then (derivative sweep) S'.
    constexpr int kStateSlab = kHeadDimQK * kTileV;

    // ---- the work of this CTA: one chunk (state pass), or a relay segment
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int row0 = 16 * warp;  // this warp's query rows within a block
    const int state_row0 = (warp % Traits::kStateWarpsAlongD) * Traits::kStateRowsPerWarp;
    const int state_col0 = (warp / Traits::kStateWarpsAlongD) * Traits::kStateColsPerWarp;
    // The piece in hand lives in shared memory, written by thread 0 between
    // barriers: no register holds it across the sweep. Pieces of problems with fewer
    // v slices than this CTA's are skipped.
    __shared__ LocatedPiece in_hand;
    __shared__ RelaySegment segment;
    __shared__ int v_tile;
    // The (problem, head) whose decay tables are in shared memory; -1: none yet.
    __shared__ int tables_problem, tables_head;
    // Per load stage, the sequence starts of its block in a job of several sequences
    // (output pass only).
    __shared__ uint64_t block_row_starts[kJobs ? kStages : 1];
    // Thread 0: the segment's next piece into `out` (out.valid false at its end).
    auto take_next_piece = [&](LocatedPiece& out) {
        bool found;
        do found = segment.next(batch, out.piece);
        while (found && v_tile >= batch.v_tiles[out.piece.problem]);
        out.valid = found;
        if (found) locate_tokens<T, kTileV>(batch, v_tile, out);
    };
    if (threadIdx.x == 0) {
        tables_problem = tables_head = -1;
        if constexpr (state_pass) {
            v_tile = blockIdx.x % v_tiles_per_head;
            SweepPiece& piece = in_hand.piece;
            piece.problem = blockIdx.y;
            piece.head = (blockIdx.x / v_tiles_per_head) % heads;
            const LinearAttnParams& p = batch.problems[piece.problem];
            const ChunkPlan& plan = batch.chunks[piece.problem];
            in_hand.valid = v_tile < batch.v_tiles[piece.problem] && piece.head < p.heads &&
                            locate_state_chunk(p, plan, blockIdx.x / v_tiles_per_head / heads, piece.work);
            if (in_hand.valid) {
                piece.first_block = piece.work.chunk * plan.chunk_blocks;
                piece.end_block = piece.first_block + plan.chunk_blocks;
                piece.starts_chunk = true;
                piece.handoff_to = -1;
                locate_tokens<T, kTileV>(batch, v_tile, in_hand);
            }
        } else {
            const int ticket = atomicAdd(batch.relay.next_ticket, 1);
            v_tile = ticket % v_tiles_per_head;
            segment = RelaySegment::of(batch, batch.relay.segments - 1 - ticket / v_tiles_per_head);
            take_next_piece(in_hand);
        }
    }
    __syncthreads();

    extern __shared__ __align__(16) unsigned char smem[];
    // The state pass has no Q tiles and no state copy.
    constexpr int kQStages = state_pass ? 0 : kStages;
    constexpr int kStateCopies = state_pass ? 0 : Traits::kStates;
    T* sQ = reinterpret_cast<T*>(smem);               // [kQStages][kBlockN][kLdQK]
    T* sK = sQ + kQStages * Traits::kQKTileElems;     // [kStages][kBlockN][kLdQK]
    T* sV = sK + kStages * Traits::kQKTileElems;      // [kStages][kBlockN][kLdV]
    T* sStates = sV + kStages * Traits::kVTileElems;  // [kStateCopies][kHeadDimQK][kLdV]
    T* sState = kStateCopies > 0 ? sStates : nullptr;
    T* sStateDerivative = kStateCopies > 1 ? sStates + Traits::kStateElems : nullptr;
    // bf16: the key decay's B fragments (DiagonalKScale), per state a table for whole
    // blocks and, in the output pass, one for the sequence's partial last block.
    constexpr int kKeyDecayTables = state_pass ? 1 : 2;
    constexpr int kKeyDecayFragments = int(Traits::kKeyDecayTableBytes / sizeof(uint4));
    uint4* key_decay_fragments = reinterpret_cast<uint4*>(sStates + kStateCopies * Traits::kStateElems);
    auto key_decay_table = [&](int state, bool partial_block) {
        return key_decay_fragments + (state * kKeyDecayTables + (partial_block ? 1 : 0)) * kKeyDecayFragments;
    };
    float* decay_pow = reinterpret_cast<float*>(key_decay_fragments +
                                                Traits::kStates * kKeyDecayTables * kKeyDecayFragments);  // [kBlockN + 1]
    float* masked_decay = decay_pow + kBlockN + 1;  // [kStates][2 * kBlockN], see MaskedDecay
    const MaskedDecay<kBlockN> mask{masked_decay};
    const MaskedDecay<kBlockN> mask_derivative{masked_decay + 2 * kBlockN};

    while (in_hand.valid) {
        const SweepPiece& piece = in_hand.piece;
        const LinearAttnParams& p = batch.problems[piece.problem];
        const ChunkPlan& plan = batch.chunks[piece.problem];
        const int h = piece.head;
        const int v_col0 = v_tile * kTileV;
        const SequenceChunk& work = piece.work;
        const int chunk = work.chunk;
        const bool last_chunk = chunk == work.num_chunks - 1;
        const int first_block = piece.first_block;
        const int end_block = piece.end_block;
        const int v_cols = min(kTileV, p.dim_v - v_col0);

        const bool job_of_several = kJobs && work.row_starts >= 0;
        // Block `block` of the piece into load stage `stage` (one cp.async group), with
        // its sequence starts when in a job of several sequences (with_starts).
        auto load_block = [&](int block, int stage, bool with_starts) {
            load_block_tiles<Traits>(batch, in_hand, block, v_col0, !state_pass, sQ + stage * Traits::kQKTileElems,
                                     sK + stage * Traits::kQKTileElems, sV + stage * Traits::kVTileElems,
                                     with_starts ? block_row_starts + stage : nullptr);
        };
        // The first blocks load while the decay tables and the state are set up: one for
        // kStages 1, else kStages - 1 (a group each, empty past the piece, so that the
        // loop's waits count alike).
        if constexpr (kStages == 1) {
            if (first_block < end_block) load_block(first_block, 0, job_of_several);
        } else {
#pragma unroll
            for (int ahead = 0; ahead < kStages - 1; ++ahead) {
                if (first_block + ahead < end_block) load_block(first_block + ahead, ahead, job_of_several);
                else cp_async_commit();
            }
        }

        // Lambda, the decay matrix of Algorithm 1, as a table of powers lambda^i.
        // Every decay factor is one of them (never lambda^-i, which overflows).
        const double slope = p.slope != nullptr ? double(p.slope[h]) : 0.0;
        const float derivative_scale = kDerivative ? p.derivative_scale[h] : 1.f;
        // Entry `distance` of state `state`'s MaskedDecay table.
        auto masked_decay_value = [&](int state, int distance) {
            const float decay = distance >= 0 ? p.kv_scale * float(exp(-slope * distance)) : 0.f;
            return state == 0 ? decay : derivative_scale * float(distance) * decay;
        };
        // The key decay (KeyDecay) of a block of `valid` tokens as DiagonalKScale's fragments.
        auto write_key_decay_fragments = [&](bool partial_block, int valid) {
            for (int i = threadIdx.x; i < kKeyDecayFragments; i += kThreads) {
#pragma unroll
                for (int state = 0; state < Traits::kStates; ++state) {
                    key_decay_table(state, partial_block)[i] = diagonal_scale_fragments(
                        i / 32, i % 32, [&](int key) { return masked_decay_value(state, valid - 1 - key); });
                }
            }
        };
        if (tables_problem != piece.problem || tables_head != h) {
            for (int i = threadIdx.x; i <= kBlockN; i += kThreads) decay_pow[i] = float(exp(-slope * i));
            for (int i = threadIdx.x; i < 2 * kBlockN; i += kThreads) {
#pragma unroll
                for (int state = 0; state < Traits::kStates; ++state)
                    masked_decay[state * 2 * kBlockN + i] = masked_decay_value(state, i - (kBlockN - 1));
            }
            if constexpr (Traits::kKeyDecayOnTensorCores) write_key_decay_fragments(false, kBlockN);
        }
        // The last block of the sequence (or job of several sequences), when partial and
        // in this piece (never in the state pass, whose chunks are not last).
        if constexpr (Traits::kKeyDecayOnTensorCores && !state_pass) {
            const int last_block_tokens = work.length - (blocks_of(work.length) - 1) * kBlockN;
            if (end_block == blocks_of(work.length) && last_block_tokens < kBlockN)
                write_key_decay_fragments(true, last_block_tokens);
        }

        // ---- the state KV (kHeadDimQK x kTileV): fp32 registers for the recurrence,
        // and a copy rounded to T in shared memory as the operand of Q_i KV.
        // Element (r, c) of this thread's fragment [mt][nt][i] is state row
        // state_row(mt, i), column state_col(nt, i) of the CTA's slice.
        float state[kStateMT][kStateNT][4] = {};
        // S' = -dS/dslope, for the derivative sweep only (a dummy otherwise).
        float state_derivative[kDerivative ? kStateMT : 1][kDerivative ? kStateNT : 1][4] = {};
        auto state_row = [&](int mt, int i) { return state_row0 + 16 * mt + g + 8 * (i / 2); };
        auto for_each_state_element = [&](auto&& f) {
#pragma unroll
            for (int mt = 0; mt < kStateMT; ++mt)
#pragma unroll
                for (int nt = 0; nt < kStateNT; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i) f(mt, nt, i);
        };
        auto state_col = [&](int nt, int i) { return state_col0 + 8 * nt + 2 * t + i % 2; };
        // A chunk's state slab in the workspace, in register-fragment order so that
        // each thread reads back exactly what it wrote, coalesced: the state, then
        // (derivative sweep) S'.
        auto chunk_state_slab = [&](int c) {
            return plan.chunk_states +
                   ((chunk_slot(p, plan, work.seq, c) * p.heads + h) * batch.v_tiles[piece.problem] + v_tile) *
                       (Traits::kStates * kStateSlab);
        };
        // The relay hand-off of segment `from`: the state, then (derivative sweep) S'.
        auto handoff_slab = [&](int from) {
            return batch.relay.handoff_states +
                   (int64_t(from) * v_tiles_per_head + v_tile) * (Traits::kStates * kStateSlab);
        };
        auto handoff_ready = [&](int from) { return batch.relay.handoff_ready + int64_t(from) * v_tiles_per_head + v_tile; };
        auto slab_index = [&](int mt, int nt, int i) { return ((mt * kStateNT + nt) * 4 + i) * kThreads + threadIdx.x; };
        // A float32 state tensor's element under fragment element [mt][nt][i], or
        // nullptr past dim_qk x dim_v (the zero padding).
        auto state_element = [&](const StateTensor& s, int mt, int nt, int i) -> float* {
            const int r = state_row(mt, i), c = v_col0 + state_col(nt, i);
            if (r >= p.dim_qk || c >= p.dim_v) return nullptr;
            return s.ptr + work.seq * s.seq_stride + h * s.head_stride + r * s.row_stride + c * s.col_stride;
        };
        auto copy_state_to_smem = [&]() {
#pragma unroll
            for (int mt = 0; mt < kStateMT; ++mt)
#pragma unroll
                for (int nt = 0; nt < kStateNT; ++nt)
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const int offset = state_row(mt, 2 * half) * kLdV + state_col(nt, 0);
                        store_pair(sState + offset, state[mt][nt][2 * half], state[mt][nt][2 * half + 1]);
                        if constexpr (kDerivative)
                            store_pair(sStateDerivative + offset, state_derivative[mt][nt][2 * half],
                                       state_derivative[mt][nt][2 * half + 1]);
                    }
        };

        // An initial state undecayed at the first step (see LinearAttnParams) enters one
        // power of lambda later than S_{-1}.
        const int initial_shift = p.initial_state_undecayed ? 1 : 0;
        // A sequence's first chunk with no initial state enters from KV = 0: its first
        // block has no inter-block term, so neither that product nor the state's shared
        // copy is needed before the block's end. First blocks are 40% of the blocks of
        // 512 packed sequences of 23-232 tokens, and the product is about a third of a
        // block's mma.
        const bool enters_from_zero = piece.starts_chunk && chunk == 0 && p.initial_state.ptr == nullptr;
        if (!state_pass && !piece.starts_chunk) {
            // The state left by the chunk's previous piece, at the start of the next segment.
            wait_for_handoff(handoff_ready(segment.segment + 1));
            const float* slab = handoff_slab(segment.segment + 1);
            for_each_state_element([&](int mt, int nt, int i) {
                state[mt][nt][i] = __ldcg(slab + slab_index(mt, nt, i));
                if constexpr (kDerivative) state_derivative[mt][nt][i] = __ldcg(slab + kStateSlab + slab_index(mt, nt, i));
            });
            copy_state_to_smem();
        } else if (!state_pass && !enters_from_zero) {
            // The state entering this chunk: the chunk states of the prefix pass (earlier
            // chunks, from zero) plus the initial state decayed over the chunks before,
            // lambda^(c L - shift) S_{-1} with L tokens per chunk; for the derivative sweep
            // also S', whose initial-state term is that decay's derivative,
            // derivative_scale (c L - shift) lambda^(c L - shift) S_{-1} (0 at chunk 0).
            if (chunk > 0) {
                const float* slab = chunk_state_slab(chunk - 1);
                for_each_state_element([&](int mt, int nt, int i) {
                    state[mt][nt][i] = slab[slab_index(mt, nt, i)];
                    if constexpr (kDerivative) state_derivative[mt][nt][i] = slab[kStateSlab + slab_index(mt, nt, i)];
                });
            }
            if (p.initial_state.ptr != nullptr) {
                const int64_t decay_steps = int64_t(chunk) * plan.chunk_blocks * kBlockN - (chunk > 0 ? initial_shift : 0);
                const double initial_decay = exp(-slope * double(decay_steps));
                const float state_weight = float(initial_decay);
                const float derivative_weight = float(double(derivative_scale) * double(decay_steps) * initial_decay);
                for_each_state_element([&](int mt, int nt, int i) {
                    if (const float* x = state_element(p.initial_state, mt, nt, i)) {
                        state[mt][nt][i] += state_weight * *x;
                        if constexpr (kDerivative) state_derivative[mt][nt][i] += derivative_weight * *x;
                    }
                });
            }
            copy_state_to_smem();
        }

        // ---- Algorithm 1's steps for the block in shared memory
        // O_i = Lambda Q_i KV + kv_scale [(Q_i K_i^T) . M] V_i for this warp's 16 rows,
        // where KV is the state after block i-1, row t of Lambda is lambda^(t+1-shift)
        // (shift 1 only for an undecayed initial state, see LinearAttnParams), and
        // M[t][s] = lambda^(t-s) for s <= t, else 0.
        // The derivative sweep differentiates each factor in -slope (distances in units of
        // 1 / derivative_scale): Lambda Q_i KV becomes lambda^(t+1) ((t+1) Q_i KV + Q_i KV'),
        // and M[t][s] becomes (t-s) lambda^(t-s).
        // In a job of several sequences (starts: the block's sequence starts), a row
        // sees no key before its sequence's start, and rows at or after a start in the
        // block no state (the derivative sweep has no such jobs).
        // The intra-block term first, then the inter-block term added to it, so that a
        // block entering from KV = 0 (state_is_zero: KV and KV' are 0) skips the second.
        // Each product's first mma then takes its zero accumulator as the zero register:
        // no instructions zero acc_o on the full-block path (perf.md v11).
        auto block_output = [&](const T* sQb, const T* sKb, const T* sVb, int shift, bool state_is_zero,
                                uint64_t starts, float (&acc_o)[1][kVTiles][4]) {
            // Keys past this warp's last row are all masked: their tiles are skipped.
            float scores[1][kScoreTiles][4] = {};
            warp_gemm<Major::kRow, Major::kCol, kQKSteps>(scores, sQb, kLdQK, sKb, kLdQK, row0 / 8 + 2, NoScale{});
#pragma unroll
            for (int j = 0; j < kScoreTiles; ++j) {
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int tq = row0 + g + 8 * (r / 2), sk = 8 * j + 2 * t + r % 2;
                    scores[0][j][r] *= kDerivative ? mask_derivative(tq - sk) : mask(tq - sk);
                }
            }
            if (starts != 0) {
                int first_key[2];
#pragma unroll
                for (int half = 0; half < 2; ++half)
                    first_key[half] = last_start_at_or_before(starts, row0 + g + 8 * half);
#pragma unroll
                for (int j = 0; j < kScoreTiles; ++j) {
#pragma unroll
                    for (int r = 0; r < 4; ++r)
                        if (8 * j + 2 * t + r % 2 < first_key[r / 2]) scores[0][j][r] = 0.f;
                }
            }
            warp_gemm_registers_a(acc_o, scores, sVb, kLdV, warp + 1);
            if (state_is_zero) return;
            float acc_inter[1][kVTiles][4] = {};
            warp_gemm<Major::kRow, Major::kRow, kQKSteps>(acc_inter, sQb, kLdQK, sState, kLdV, kVTiles, NoScale{});
            if constexpr (kDerivative) {
                float acc_derivative[1][kVTiles][4] = {};
                warp_gemm<Major::kRow, Major::kRow, kQKSteps>(acc_derivative, sQb, kLdQK, sStateDerivative, kLdV, kVTiles,
                                                              NoScale{});
#pragma unroll
                for (int j = 0; j < kVTiles; ++j) {
#pragma unroll
                    for (int r = 0; r < 4; ++r) {
                        const int tq = row0 + g + 8 * (r / 2);
                        acc_o[0][j][r] += decay_pow[tq + 1] * (derivative_scale * float(tq + 1) * acc_inter[0][j][r] +
                                                               acc_derivative[0][j][r]);
                    }
                }
            } else {
                float row_decay[2];
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int tq = row0 + g + 8 * half;
                    row_decay[half] = last_start_at_or_before(starts, tq) < 0 ? decay_pow[tq + 1 - shift] : 0.f;
                }
#pragma unroll
                for (int j = 0; j < kVTiles; ++j) {
#pragma unroll
                    for (int r = 0; r < 4; ++r) acc_o[0][j][r] += row_decay[r / 2] * acc_inter[0][j][r];
                }
            }
        };

        // o = scale * O for the block's valid rows and this CTA's v columns. Rows of a
        // whole slice with paired stores, the common case, store without a test per
        // column (a test, a branch and their reconvergence were ~9 instructions around
        // each store: perf.md v15).
        const bool whole_paired_rows = in_hand.paired_stores && v_cols == kTileV;
        // In registers, not read from in_hand at each store: the block's shared-memory
        // stores may alias in_hand, so each store read them again (perf.md v23).
        T* const o_piece = static_cast<T*>(p.o.ptr) + in_hand.offset[3];
        const int64_t o_step = in_hand.step[3];
        auto store_output = [&](int block, int valid, const float (&acc_o)[1][kVTiles][4]) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int tq = row0 + g + 8 * half;
                if (tq < valid) {
                    T* orow = o_piece + (int64_t(block) * kBlockN + tq) * o_step;
                    if (whole_paired_rows) {
#pragma unroll
                        for (int j = 0; j < kVTiles; ++j) {
                            store_pair(orow + 8 * j + 2 * t, p.scale * acc_o[0][j][2 * half],
                                       p.scale * acc_o[0][j][2 * half + 1]);
                        }
                        continue;
                    }
#pragma unroll
                    for (int j = 0; j < kVTiles; ++j) {
                        const int c = 8 * j + 2 * t;
                        const float x0 = p.scale * acc_o[0][j][2 * half];
                        const float x1 = p.scale * acc_o[0][j][2 * half + 1];
                        if (in_hand.paired_stores && c + 1 < v_cols) {
                            store_pair(orow + c, x0, x1);
                        } else {
                            if (c < v_cols) orow[c] = from_float<T>(x0);
                            if (c + 1 < v_cols) orow[c + 1] = from_float<T>(x1);
                        }
                    }
                }
            }
        };

        // KV = lambda^(valid-shift) KV + kv_scale (lambda^(valid-1-s) K_i)^T V_i; for the
        // derivative sweep first KV' = lambda^valid (KV' + valid KV)
        //                             + kv_scale ((valid-1-s) lambda^(valid-1-s) K_i)^T V_i.
        // Where a sequence of a job starts in the block (starts), KV restarts from the
        // last start: block decay 0, and the keys before it weigh 0 (first_key).
        // The products take the block's keys Traits::kStateUpdateKSteps k-steps at a time;
        // KV decays just before its first product, once KV' has read it undecayed.
        auto update_state = [&](const T* sKb, const T* sVb, int valid, int shift, uint64_t starts) {
            constexpr int kKSteps = Traits::kStateUpdateKSteps;
            const float block_decay = starts != 0 ? 0.f : decay_pow[valid - shift];
            const int first_key = max(0, last_start_at_or_before(starts, kBlockN - 1));
            // The weights of keys [key0, key0 + 16 kKSteps) of state `state`'s product.
            auto key_decay = [&](int state, int key0) {
                if constexpr (Traits::kKeyDecayOnTensorCores) {
                    return DiagonalKScale{key_decay_table(state, !state_pass && valid < kBlockN) + 32 * (key0 / 16),
                                          first_key - key0};
                } else {
                    return KeyDecay<kBlockN>{state == 0 ? mask : mask_derivative, valid - key0, first_key - key0};
                }
            };
            if constexpr (kDerivative) {
                for_each_state_element([&](int mt, int nt, int i) {
                    state_derivative[mt][nt][i] =
                        block_decay * (state_derivative[mt][nt][i] + derivative_scale * float(valid) * state[mt][nt][i]);
                });
            }
#pragma unroll
            for (int key0 = 0; key0 < kBlockN; key0 += 16 * kKSteps) {
                const T* sKk = sKb + key0 * kLdQK + state_row0;
                const T* sVk = sVb + key0 * kLdV + state_col0;
                // Key s of these k-steps is key key0 + s of the block.
                if constexpr (kDerivative) {
                    warp_gemm<Major::kCol, Major::kRow, kKSteps>(state_derivative, sKk, kLdQK, sVk, kLdV, kStateNT,
                                                                 key_decay(1, key0));
                }
                if (key0 == 0) for_each_state_element([&](int mt, int nt, int i) { state[mt][nt][i] *= block_decay; });
                warp_gemm<Major::kCol, Major::kRow, kKSteps>(state, sKk, kLdQK, sVk, kLdV, kStateNT, key_decay(0, key0));
            }
        };

        // ---- the sweep over this piece's blocks, kStages - 1 blocks loading ahead (none for
        // fp32's output pass, which loads the next block after this one's barrier). The
        // kJobs kernel compiles it twice: for a job of several sequences (with_starts), and
        // for one sequence, where the starts are 0 and their masks, selects and clz fold
        // away (they were ~100 of a warp's ~1,130 instructions per block at bf16 D 128 x 64:
        // perf.md v17).
        auto sweep_blocks = [&](auto job) {
            constexpr bool with_starts = decltype(job)::value;
            for (int block = first_block; block < end_block; ++block) {
                const int stage = (block - first_block) % kStages;
                if constexpr (kStages > 1) {
                    // Into the stage the previous block used, free since its trailing barrier
                    // (at a piece's first block, the last stage, which the prologue left unused).
                    const int ahead = block + kStages - 1;
                    if (ahead < end_block) load_block(ahead, (ahead - first_block) % kStages, with_starts);
                    else cp_async_commit();
                    cp_async_wait<kStages - 1>();
                } else {
                    cp_async_wait<0>();
                }
                __syncthreads();  // the block's tiles and the previous state copy are in shared memory

                const T* sKb = sK + stage * Traits::kQKTileElems;
                const T* sVb = sV + stage * Traits::kVTileElems;
                const int valid = min(kBlockN, work.length - block * kBlockN);
                // The sequence's first block starts from the initial state alone, the only
                // state an undecayed start applies to.
                const int shift = block == 0 ? initial_shift : 0;
                const uint64_t starts = with_starts ? block_row_starts[stage] : 0;
                if constexpr (!state_pass) {
                    float acc_o[1][kVTiles][4] = {};
                    block_output(sQ + stage * Traits::kQKTileElems + row0 * kLdQK, sKb, sVb, shift,
                                 block == 0 && enters_from_zero, starts, acc_o);
                    store_output(block, valid, acc_o);
                }
                update_state(sKb, sVb, valid, shift, starts);

                __syncthreads();  // everyone is done with this stage and the old state copy
                if constexpr (!state_pass) copy_state_to_smem();
                if constexpr (kStages == 1) {
                    if (block + 1 < end_block) load_block(block + 1, 0, with_starts);
                }
            }
        };
        if (job_of_several) sweep_blocks(std::true_type{});
        else sweep_blocks(std::false_type{});

        // ---- what leaves the piece besides o: the chunk's own state (state pass), the
        // state for the chunk's next piece (relay), or the sequence's final state
        if constexpr (state_pass) {
            float* slab = chunk_state_slab(chunk);
            for_each_state_element([&](int mt, int nt, int i) {
                slab[slab_index(mt, nt, i)] = state[mt][nt][i];
                if constexpr (kDerivative) slab[kStateSlab + slab_index(mt, nt, i)] = state_derivative[mt][nt][i];
            });
        } else if (piece.handoff_to >= 0) {
            float* slab = handoff_slab(piece.handoff_to);
            for_each_state_element([&](int mt, int nt, int i) {
                __stcg(slab + slab_index(mt, nt, i), state[mt][nt][i]);
                if constexpr (kDerivative) __stcg(slab + kStateSlab + slab_index(mt, nt, i), state_derivative[mt][nt][i]);
            });
            signal_handoff(handoff_ready(piece.handoff_to));
        } else if (last_chunk && p.final_state.ptr != nullptr) {
            for_each_state_element([&](int mt, int nt, int i) {
                if (float* x = state_element(p.final_state, mt, nt, i)) {
                    if constexpr (kDerivative) *x = state_derivative[mt][nt][i];
                    else *x = state[mt][nt][i];
                }
            });
        }
        __syncthreads();  // every thread is done with this piece
        if (threadIdx.x == 0) {
            tables_problem = piece.problem;
            tables_head = h;
            if constexpr (state_pass) in_hand.valid = false;  // it has one piece
            else take_next_piece(in_hand);
        }
        __syncthreads();
    }
}

template <typename T, int kHeadDimQK, int kTileV, bool kDecayDerivative>
cudaError_t launch_linear_attn_sweep(const LinearAttnBatch& batch, SweepPass pass, cudaStream_t stream) {
    using Traits = KernelTraits<T, kHeadDimQK, kTileV, kDecayDerivative>;
    const bool state_pass = pass == SweepPass::kState;
    auto kernel = linear_attn_sweep_kernel<Traits, SweepPass::kOutput, false>;
    size_t smem_bytes = Traits::kSmemBytes;
    if (state_pass) {
        kernel = linear_attn_sweep_kernel<Traits, SweepPass::kState, false>;
        smem_bytes = Traits::kStatePassSmemBytes;
    } else if constexpr (!kDecayDerivative) {
        if (std::any_of(batch.chunks, batch.chunks + batch.num_problems,
                        [](const ChunkPlan& plan) { return plan.job_blocks > 0; }))
            kernel = linear_attn_sweep_kernel<Traits, SweepPass::kOutput, true>;
    }
    int heads = 0, v_tiles_per_head = 0;
    int64_t state_chunks = 0;
    for (int i = 0; i < batch.num_problems; ++i) {
        heads = max(heads, batch.problems[i].heads);
        v_tiles_per_head = max(v_tiles_per_head, batch.v_tiles[i]);
        state_chunks = std::max(state_chunks, batch.chunks[i].state_chunks);
    }
    // State pass: a CTA per (chunk that is not last, head, v slice) of each problem.
    // Output pass: a CTA per (relay segment, v slice).
    const int64_t ctas = state_pass ? state_chunks * heads * v_tiles_per_head
                                    : int64_t(batch.relay.segments) * v_tiles_per_head;
    if (ctas == 0) return cudaSuccess;
    if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes));
    if (err != cudaSuccess) return err;
    const dim3 grid(unsigned(ctas), state_pass ? unsigned(batch.num_problems) : 1u);
    kernel<<<grid, Traits::kThreads, smem_bytes, stream>>>(batch, heads, v_tiles_per_head);
    return cudaGetLastError();
}

// The output pass's CTAs per SM: the fewer of its two kernels' (the kJobs one may take
// more registers, e.g. fp32 D 32: 134 against 127, three CTAs against four), so that a
// plan holds for either.
template <typename T, int kHeadDimQK, int kTileV, bool kDecayDerivative>
int linear_attn_sweep_ctas_per_sm() {
    using Traits = KernelTraits<T, kHeadDimQK, kTileV, kDecayDerivative>;
    auto ctas_of = [](auto kernel) {
        int ctas = 0;
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Traits::kSmemBytes)) !=
                cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, kernel, Traits::kThreads, Traits::kSmemBytes) !=
                cudaSuccess)
            return 0;
        return ctas;
    };
    const int ctas = ctas_of(linear_attn_sweep_kernel<Traits, SweepPass::kOutput, false>);
    if constexpr (kDecayDerivative) return ctas;
    else return std::min(ctas, ctas_of(linear_attn_sweep_kernel<Traits, SweepPass::kOutput, true>));
}

}  // namespace lightning_attn2
