// Compile-time tile shapes of the Lightning Attention-2 sweep kernel.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <type_traits>

namespace lightning_attn2 {

// Tokens per block, the B of Algorithm 1: the intra-block scores are a
// kBlockN x kBlockN tile and the recurrence takes N / kBlockN steps.
constexpr int kSweepBlockN = 64;

template <typename T, int kHeadDimQK_, int kTileV_, bool kDecayDerivative_>
struct KernelTraits {
    using Element = T;
    // The sweep of d/dslope (LinearAttnParams::decay_derivative): a second state.
    static constexpr bool kDecayDerivative = kDecayDerivative_;
    static constexpr int kStates = kDecayDerivative ? 2 : 1;
    // q/k head dim, padded up to this (zeros past dim_qk).
    static constexpr int kHeadDimQK = kHeadDimQK_;
    // Columns of v and o owned by one CTA: the state slice KV[:, tile] it keeps.
    static constexpr int kTileV = kTileV_;
    static constexpr int kBlockN = kSweepBlockN;
    // One warp per 16 query rows of a block (the m16 of mma.sync).
    static constexpr int kWarps = kBlockN / 16;
    static constexpr int kThreads = 32 * kWarps;
    // Load stages of the output pass: double-buffered for 16-bit inputs. fp32 (the SIMT
    // path) has twice the bytes per tile; a second stage would not fit shared memory at
    // kHeadDimQK 256.
    static constexpr int kStages = sizeof(T) == 2 ? 2 : 1;
    // One 16-byte chunk of padding per shared-memory row: rows 8 apart then start
    // in different banks, so ldmatrix and the SIMT reads are conflict-free.
    static constexpr int kPad = 16 / sizeof(T);
    static constexpr int kLdQK = kHeadDimQK + kPad;
    static constexpr int kLdV = kTileV + kPad;

    // The fp32 state KV (kHeadDimQK x kTileV) lives in registers, split over the
    // warps in slabs of whole 16 x 8 mma tiles.
    static constexpr int kStateWarpsAlongD = kHeadDimQK / 16 < kWarps ? kHeadDimQK / 16 : kWarps;
    static constexpr int kStateWarpsAlongV = kWarps / kStateWarpsAlongD;
    static constexpr int kStateRowsPerWarp = kHeadDimQK / kStateWarpsAlongD;
    static constexpr int kStateColsPerWarp = kTileV / kStateWarpsAlongV;

    // bf16 scales the state update's keys by their decay on the tensor cores
    // (DiagonalKScale), from a table of B fragments per state and kind of block: whole,
    // and the partial last block of a sequence or job of several sequences (the output
    // pass only; the state pass has whole blocks only). 16 bytes per k-step and lane.
    static constexpr bool kKeyDecayOnTensorCores = std::is_same_v<T, __nv_bfloat16>;
    static constexpr size_t kKeyDecayTableBytes = kKeyDecayOnTensorCores ? size_t(kBlockN / 16) * 32 * 16 : 0;

    // Shared memory: kStages x (Q, K, V tiles), the state(s) in T for the tensor
    // cores, the key decay tables, the decay powers lambda^0 .. lambda^kBlockN and the
    // mask table(s) by distance (MaskedDecay). The bf16 D 64 x 32 output pass's four
    // CTAs per SM take 233,360 of the SM's 233,472 bytes (each 57,092 + 224 static in the
    // kJobs kernel, 208 in the other, + 1,024 reserved): any more shared memory there
    // drops it to three.
    static constexpr size_t kQKTileElems = size_t(kBlockN) * kLdQK;
    static constexpr size_t kVTileElems = size_t(kBlockN) * kLdV;
    static constexpr size_t kStateElems = size_t(kHeadDimQK) * kLdV;
    static constexpr size_t kTableBytes = (kBlockN + 1 + kStates * 2 * kBlockN) * sizeof(float);
    static constexpr size_t kSmemBytes =
        (kStages * (2 * kQKTileElems + kVTileElems) + kStates * kStateElems) * sizeof(T) +
        kStates * 2 * kKeyDecayTableBytes + kTableBytes;

    // The state pass (SweepPass::kState) holds only K and V tiles and keeps more blocks
    // loading ahead: three instead of one for 16-bit inputs, one instead of none for
    // fp32. That fits the output pass's shared memory at 16-bit D >= 128 and fp32 D >= 64;
    // the smaller tiles' state passes take up to 31% more (fewer CTAs per SM than their
    // output passes at 16-bit D 32 x 64 and D 64 x 32). Measured: its CTAs were not
    // waiting on loads after all; the state pass went ~6% faster (perf.md v12).
    static constexpr int kStateStages = sizeof(T) == 2 ? 4 : 2;
    static constexpr size_t kStatePassSmemBytes =
        kStateStages * (kQKTileElems + kVTileElems) * sizeof(T) + kStates * kKeyDecayTableBytes + kTableBytes;

    // The fewest CTAs per SM the registers must allow (__launch_bounds__), which caps
    // the registers of a thread. Left to itself, ptxas fit several tiles into 128 (or 96)
    // registers with spills, for one CTA per SM more; with 1 here (up to 255 registers, no
    // spill) fp32 D 32 and 64 and 16-bit D 32 with 64 columns ran 15-21% faster (perf.md
    // v12). Pinned at ptxas's own choice of ddf3827: the 16-bit D 64 x 32 tile (128
    // registers, four CTAs; 8% faster than three spill-free ones on a full GPU) and the
    // 16-bit tiles that did not spill then (D 64 x 64, the D 32 and D 64 derivatives).
    static constexpr int kMinCtasPerSm = sizeof(T) != 2          ? 1
                                         : kHeadDimQK == 64      ? (kTileV == 32 && !kDecayDerivative ? 4 : 3)
                                         : kHeadDimQK == 32 && kDecayDerivative ? 4
                                                                                : 1;

    // K-steps (16 keys each) that the state update's products take per pass over a
    // block's keys. The derivative sweep's two products read the same K and V tiles: on
    // the tensor cores ptxas loads their fragments once and, given each product whole,
    // keeps all four k-steps' fragments for the second one. At D 256 (four m-tiles per
    // warp) those are 96 registers beside the two states' 128, and the kernel spilled at
    // 255. There the two products alternate k-step by k-step: one k-step's fragments live.
    static constexpr int kStateUpdateKSteps =
        sizeof(T) == 2 && kDecayDerivative && kStateRowsPerWarp / 16 == 4 ? 1 : kBlockN / 16;

    static_assert(kHeadDimQK % 32 == 0 && kHeadDimQK <= 256, "head dim tile");
    static_assert(kTileV % 32 == 0, "v tile");
    static_assert(kStateRowsPerWarp % 16 == 0 && kStateColsPerWarp % 16 == 0,
                  "state slab must be whole pairs of 16 x 8 tiles");
    static_assert(kSmemBytes <= 227 * 1024 && kStatePassSmemBytes <= 227 * 1024, "shared memory per CTA");
};

}  // namespace lightning_attn2
