"""States in and out, packed variable-length batches, the decode step, the BNHD
layout and the slope gradient, against float64 autograd of the reference forms.

Every case runs on the CPU path (float32, what CI checks) and on CUDA in each
dtype, with the relative L2 bounds of conftest.TOLERANCE. Losses include a random
gradient for the final state, so gradients flowing in through it are checked, except
where a case runs every sweep from a zero state (no initial state, no loss on the
final state); the fuzz test mixes the two.

The slope gradient of a head is one sum over all its tokens, and such a sum can
nearly cancel (with D = 1, 30000 times smaller than its terms were seen): no method
gets it to a fixed relative error. Its error is bounded instead relative to the sum
of the absolute contributions of the tokens, as a sum of terms each accurate to the
bound would be (slope_error).
"""
import os
import subprocess
import sys

import pytest
import torch

from conftest import DECAYS, TOLERANCE, float64_reference, relative_l2, requires_cuda
import lightning_attn2_cuda
from lightning_attn2_cuda import lightning_attn, lightning_attn_decode, reference

DEVICES_AND_DTYPES = [("cpu", torch.float32)] + [
    pytest.param("cuda", dtype, marks=requires_cuda) for dtype in (torch.float32, torch.float16, torch.bfloat16)
]
IDS = ["cpu-float32", "cuda-float32", "cuda-float16", "cuda-bfloat16"]
# (batch, heads, sequence lengths or None, seqlen, D, E): equal-length batches and
# packed ones, short enough to run in one CTA per sequence and long enough with few
# heads to be cut into chunks (state, prefix and output passes). The packed lengths end
# in blocks of every count of 16-token slabs (1, 20, 105, 63) and a full one (64).
# "packed-many-chunked" has more sequences (61) than chunks that are not last (1, at
# chunks of 16 blocks), so the prefix pass takes its candidates by state slot
# (prefix_sequence), and its one long sequence is cut.
SHAPES = {
    "batch": (2, 3, None, 300, 64, 32),
    "batch-chunked": (1, 2, None, 5000, 32, 72),
    "packed": (1, 3, [0, 1, 63, 64, 65, 700, 3, 0, 20, 105], None, 64, 32),
    "packed-chunked": (1, 2, [2500, 20, 0, 4100, 1], None, 72, 64),
    "packed-many-chunked": (1, 2, [3] * 40 + [1500] + [5] * 20, None, 64, 32),
}


def make_problem(shape, dtype, device, decay, index_dtype=torch.int32):
    batch, heads, lengths, seqlen, dim_qk, dim_v = shape
    cu_seqlens = None
    if lengths is not None:
        cu_seqlens = torch.tensor([0] + lengths, device=device).cumsum(0).to(index_dtype)
        seqlen = sum(lengths)
    num_seqs = batch if lengths is None else len(lengths)
    q, k = (torch.randn(batch, heads, seqlen, dim_qk, device=device, dtype=dtype) for _ in range(2))
    v = torch.randn(batch, heads, seqlen, dim_v, device=device, dtype=dtype)
    state = torch.randn(num_seqs, heads, dim_qk, dim_v, device=device)
    slope = DECAYS[decay](heads).to(device)
    return q, k, v, slope, state, cu_seqlens


def slope_gradient_scale(q, k, v, slope, state, cu_seqlens, scale, dout, d_final):
    """Per head, the sum over tokens t of |do_t . do_t/dslope| and over sequences of
    |<dF, dF/dslope>| (none when d_final is None), in float64 (forward-mode derivatives
    of the reference)."""
    q, k, v, slope, state = (None if x is None else x.detach().double() for x in (q, k, v, slope, state))
    form = reference.naive if q.shape[2] <= 1024 else reference.blockwise

    def run(rates):
        return reference.packed(form, q, k, v, rates, scale, initial_state=state, cu_seqlens=cu_seqlens)

    _, (do_ds, dfinal_ds) = torch.func.jvp(run, (slope,), (torch.ones_like(slope),))
    per_token = (dout.double() * do_ds).sum(-1).abs().sum(dim=(0, 2))
    if d_final is None:
        return per_token
    per_sequence = (d_final.double() * dfinal_ds).sum(dim=(-1, -2)).abs().sum(dim=0)
    return per_token + per_sequence


def slope_error(d_slope, expected, scale):
    """Largest over heads of |error| / (sum of |contributions|), or |error| where
    nothing contributes (the gradient must then be exactly 0); NaN anywhere fails."""
    error = (d_slope.double() - expected).abs()
    return torch.where(scale > 0, error / scale, error).max().item()


def run_with_grads(q, k, v, slope, state, cu_seqlens, scale, dout, d_final, layout="BHND", max_seqlen=None):
    """o, the final state and the gradients of q, k, v, slope and state (None when state
    is None) of the loss <o, dout> + <final state, d_final> (no second term when d_final is None)."""
    inputs = [None if x is None else x.detach().clone().requires_grad_(True) for x in (q, k, v, slope, state)]
    o, final = lightning_attn(
        *inputs[:3], inputs[3], scale, initial_state=inputs[4], output_final_state=True, cu_seqlens=cu_seqlens,
        max_seqlen=max_seqlen, layout=layout,
    )  # fmt: skip
    loss = (o * dout).sum() + (0 if d_final is None else (final * d_final).sum())
    given = [x for x in inputs if x is not None]
    grads = iter(torch.autograd.grad(loss, given))
    return o, final, tuple(None if x is None else next(grads) for x in inputs)


def assert_matches_float64(shape, dtype, device, decay, max_seqlen=None, initial_state=True):
    """o, the final state and every gradient of one call against float64 autograd of the
    reference; initial_state False: every sequence enters from a zero state."""
    q, k, v, slope, state, cu_seqlens = make_problem(shape, dtype, device, decay)
    if not initial_state:
        state = None  # and no loss on the final state: every sweep, backward too, enters from zero
    dout = torch.randn(*q.shape[:3], v.shape[3], device=device, dtype=dtype)
    d_final = None if state is None else torch.randn_like(state)
    o, final, grads = run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final, max_seqlen=max_seqlen)
    o_ref, final_ref, grads_ref = float64_reference(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    names = ("o", "final_state", "dq", "dk", "dv", "dslope", "dinitial_state")
    errors = {
        n: relative_l2(x, r) for n, x, r in zip(names, (o, final, *grads), (o_ref, final_ref, *grads_ref)) if x is not None
    }
    scale = slope_gradient_scale(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    errors["dslope"] = slope_error(grads[3], grads_ref[3], scale)
    bound = TOLERANCE[dtype]
    assert all(err <= bound for err in errors.values()), f"relative L2 errors {errors} above {bound}"


@pytest.mark.parametrize("initial_state", [True, False], ids=["initial-state", "from-zero"])
@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES, ids=IDS)
def test_states_and_packing_match_float64(device, dtype, shape, decay, initial_state, poison_allocations):
    assert_matches_float64(SHAPES[shape], dtype, device, decay, initial_state=initial_state)


# The slope gradient's sweep (the derivative tiles) has a tile per padded head dim and
# dtype, each with its own register layout (at D 256 the state update goes a k-step at
# a time, KernelTraits::kStateUpdateKSteps); SHAPES reach D 32, 64 and 128 only. 200
# tokens end in a partial block, from an initial state and with a loss on the final one;
# 2100 tokens (33 blocks, 8 jobs) are cut into chunks, the derivative's state pass and
# prefix included.
@pytest.mark.parametrize("seqlen", [200, 2100], ids=["one-chunk", "chunked"])
@pytest.mark.parametrize("dim_qk", [32, 64, 128, 256])
@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES[1:], ids=IDS[1:])
def test_slope_gradient_every_head_dim(device, dtype, dim_qk, seqlen, poison_allocations):
    assert_matches_float64((2, 2, None, seqlen, dim_qk, 40), dtype, device, "alibi")


@pytest.mark.parametrize("max_seqlen", [1024, 5648, 2**70])
@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES, ids=IDS)
def test_max_seqlen_matches_float64(device, dtype, max_seqlen, poison_allocations):
    """Without max_seqlen these 5648 tokens are planned as chunks of 16 blocks (1024
    tokens) with state and prefix passes; with the exact bound 1024 no sequence is
    cut and those passes are skipped; with a loose bound (the total, or one past
    int64) the plan is as without it."""
    shape = (1, 2, [1000, 900, 1024, 0, 700, 1000, 1024], None, 64, 32)
    assert_matches_float64(shape, dtype, device, "alibi", max_seqlen=max_seqlen)


@requires_cuda
def test_max_seqlen_too_small_is_still_exact(monkeypatch):
    """The kernels' plan takes max_seqlen on trust: inside a CUDA graph capture the
    value checks are skipped (here: made to skip as they do there), so a bound below
    the longest sequence reaches the forward and the backward. It leaves that
    sequence uncut, which is slower but the same sums: o, the final state and every
    gradient match the call without it to within rounding."""
    from lightning_attn2_cuda import interface

    q, k, v, slope, state, cu_seqlens = make_problem(SHAPES["packed-chunked"], torch.float32, "cuda", "alibi")
    dout = torch.randn(*q.shape[:3], v.shape[3], device="cuda")
    d_final = torch.randn_like(state)
    expected = run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    monkeypatch.setattr(interface, "_check_values_once", lambda x, context, check: None)
    trusted = run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final, max_seqlen=1)
    names = ("o", "final_state", "dq", "dk", "dv", "dslope", "dinitial_state")
    errors = {n: relative_l2(x, y) for n, x, y in zip(names, (trusted[0], trusted[1], *trusted[2]),
                                                       (expected[0], expected[1], *expected[2]))}
    scale = slope_gradient_scale(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    errors["dslope"] = slope_error(trusted[2][3], expected[2][3].double(), scale)
    assert all(err <= TOLERANCE[torch.float32] for err in errors.values()), f"relative L2 errors {errors}"


@requires_cuda
def test_many_short_packed_sequences(poison_allocations):
    """1100 sequences of 0 to 8 tokens: a relay segment then holds many sequences,
    and the preparing pass scans more entries than it has threads."""
    lengths = [(7 * i) % 9 for i in range(1100)]
    q, k, v, slope, state, cu_seqlens = make_problem((1, 2, lengths, None, 32, 16), torch.bfloat16, "cuda", "alibi")
    dout = torch.randn(*q.shape[:3], v.shape[3], device="cuda", dtype=torch.bfloat16)
    d_final = torch.randn_like(state)
    o, final, grads = run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    o_ref, final_ref, grads_ref = float64_reference(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    for x, ref in zip((o, final, *grads[:3], grads[4]), (o_ref, final_ref, *grads_ref[:3], grads_ref[4])):
        assert relative_l2(x, ref) <= TOLERANCE[torch.bfloat16]


# The preparing pass packs up to 31 sequences in one warp, an entry of cu_seqlens per
# lane, and more with the CTA: 31 and 32 sequences, short ones (0 to 210 tokens at 16
# heads, so that without states they share jobs of a few blocks, forward and reversed)
# and long ones (1000 to 1160 at 2 heads: no jobs, and cut into chunks).
@requires_cuda
@pytest.mark.parametrize("initial_state", [True, False], ids=["initial-state", "from-zero"])
@pytest.mark.parametrize("lengths", ["short", "long"])
@pytest.mark.parametrize("seqs", [31, 32])
def test_packing_either_side_of_one_warp(seqs, lengths, initial_state, poison_allocations):
    if lengths == "short":
        shape = (1, 16, [(37 * i) % 211 for i in range(seqs)], None, 64, 64)
    else:
        shape = (1, 2, [1000 + (53 * i) % 161 for i in range(seqs)], None, 64, 32)
    assert_matches_float64(shape, torch.bfloat16, "cuda", "alibi", initial_state=initial_state)


# 112 sequences of 0 to 210 tokens (11,600 in all), 16 heads: with no state in or out,
# the sweeps run runs of consecutive short sequences as one job (joins_previous_job)
# of several blocks on a GPU of 132 SMs (forward ~7 blocks, backward ~22), the
# recurrence restarting wherever a sequence starts inside a block.
SHORT_LENGTHS = [(37 * i) % 211 for i in range(1, 55)] + [0, 1, 0] + [(53 * i) % 199 for i in range(1, 56)]


@pytest.mark.parametrize("layout", ["BHND", "BNHD"])
@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES, ids=IDS)
def test_short_sequences_without_states_match_float64(device, dtype, decay, layout, poison_allocations):
    q, k, v, slope, _, cu_seqlens = make_problem((1, 16, SHORT_LENGTHS, None, 64, 64), dtype, device, decay)
    dout = torch.randn(*q.shape[:3], v.shape[3], device=device, dtype=dtype)
    transpose = (lambda x: x) if layout == "BHND" else (lambda x: x.transpose(1, 2).contiguous())
    inputs = [transpose(x).requires_grad_(True) for x in (q, k, v)]
    o = lightning_attn(*inputs, slope, 0.5, cu_seqlens=cu_seqlens, layout=layout)
    grads = torch.autograd.grad((o * transpose(dout)).sum(), inputs)
    o_ref, _, grads_ref = float64_reference(q, k, v, slope, None, cu_seqlens, 0.5, dout, None)
    back = (lambda x: x) if layout == "BHND" else (lambda x: x.transpose(1, 2))
    errors = {n: relative_l2(back(x), r) for n, x, r in zip(("o", "dq", "dk", "dv"), (o, *grads), (o_ref, *grads_ref))}
    assert all(err <= TOLERANCE[dtype] for err in errors.values()), f"relative L2 errors {errors}"


@requires_cuda
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("initial_state", [True, False], ids=["initial-state", "from-zero"])
def test_relay_cuts_change_no_bit(dtype, shape, initial_state, poison_allocations):
    """Where a relay segment boundary cuts a chunk, the output pass hands its fp32
    state (and the slope derivative's) from one CTA to another. Capped at 1 segment
    (no cut) and at 2, 3 and 5 (the GPU runs hundreds), these inputs are cut at other
    blocks, in every pass of the forward and the backward: o, the final state and every gradient
    must equal the uncapped call's bit for bit (which the float64 tests check)."""
    from lightning_attn2_cuda import interface

    q, k, v, slope, state, cu_seqlens = make_problem(SHAPES[shape], dtype, "cuda", "alibi")
    dout = torch.randn(*q.shape[:3], v.shape[3], device="cuda", dtype=dtype)
    d_final = torch.randn_like(state) if initial_state else None
    state = state if initial_state else None
    o, final, grads = run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    try:
        for cap in (1, 2, 3, 5):
            interface._C._set_relay_segment_cap(cap)
            o_cut, final_cut, grads_cut = run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
            for name, x, y in zip(("o", "final", "dq", "dk", "dv", "dslope", "dstate"), (o, final, *grads),
                                  (o_cut, final_cut, *grads_cut)):
                assert (x is None and y is None) or torch.equal(x, y), f"{name} differs with {cap} relay segments"
    finally:
        interface._C._set_relay_segment_cap(0)


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES, ids=IDS)
def test_packed_equals_separate_calls(device, dtype, poison_allocations):
    """Each packed sequence as its own call, from its own initial state."""
    q, k, v, slope, state, cu_seqlens = make_problem(SHAPES["packed-chunked"], dtype, device, "alibi")
    o, final = lightning_attn(q, k, v, slope, 0.5, initial_state=state, output_final_state=True, cu_seqlens=cu_seqlens)
    bounds = cu_seqlens.tolist()
    for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        piece = (x[:, :, start:end] for x in (q, k, v))
        o_n, final_n = lightning_attn(*piece, slope, 0.5, initial_state=state[n : n + 1], output_final_state=True)
        assert relative_l2(o[:, :, start:end], o_n) <= TOLERANCE[dtype]  # 0 for an empty sequence
        assert relative_l2(final[n : n + 1], final_n) <= TOLERANCE[dtype]


@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES, ids=IDS)
def test_pieces_continue_the_whole(device, dtype, decay, poison_allocations):
    """Chunked prefill: a sequence fed in pieces, each from the last one's final state."""
    q, k, v, slope, _, _ = make_problem((2, 3, None, 2000, 64, 48), dtype, device, decay)
    whole, whole_final = lightning_attn(q, k, v, slope, 0.5, output_final_state=True)
    pieces, state = [], None
    for start, end in ((0, 1), (1, 64), (64, 129), (129, 1500), (1500, 2000)):
        o, state = lightning_attn(
            *(x[:, :, start:end] for x in (q, k, v)), slope, 0.5, initial_state=state, output_final_state=True
        )
        pieces.append(o)
    o_ref, final_ref, _ = float64_reference(
        q, k, v, slope, torch.zeros_like(state), None, 0.5, torch.zeros_like(whole), torch.zeros_like(state)
    )
    for o, final in ((whole, whole_final), (torch.cat(pieces, dim=2), state)):
        assert relative_l2(o, o_ref) <= TOLERANCE[dtype]
        assert relative_l2(final, final_ref) <= TOLERANCE[dtype]


# (dim_qk, dim_v): the decode kernel's column slices of 64 (one; three with a short
# last one, float4 and scalar columns) and two passes over 256 rows.
DECODE_DIMS = [(64, 40), (128, 136), (72, 130), (256, 64)]


@pytest.mark.parametrize("dims", DECODE_DIMS, ids=[f"{d}x{e}" for d, e in DECODE_DIMS])
@pytest.mark.parametrize("indices", ["rows", "mapped"])
@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES, ids=IDS)
def test_prefill_then_decode_matches_forward(device, dtype, indices, dims, poison_allocations):
    """Prefill 100 tokens, then decode 40 one at a time; slot -1 sequences stay untouched."""
    (batch, heads, prefill, steps), (dim_qk, dim_v) = (4, 3, 100, 40), dims
    q, k, v, slope, _, _ = make_problem((batch, heads, None, prefill + steps, dim_qk, dim_v), dtype, device, "alibi")
    _, state = lightning_attn(*(x[:, :, :prefill] for x in (q, k, v)), slope, 0.5, output_final_state=True)
    if indices == "rows":
        cache, state_indices, live = state.clone(), None, torch.arange(batch)
    else:  # sequences 0, 2, 3 in cache rows 5, 1, 3 of 6; sequence 1 is padding (-1)
        cache = torch.randn(6, heads, dim_qk, dim_v, device=device)
        state_indices = torch.tensor([5, -1, 1, 3], device=device)
        live = torch.tensor([0, 2, 3])
        cache[state_indices[live]] = state[live]
    untouched = cache.clone()
    outputs = []
    with torch.no_grad():
        for t in range(prefill, prefill + steps):
            outputs.append(lightning_attn_decode(q[:, :, t], k[:, :, t], v[:, :, t], cache, slope, 0.5, state_indices=state_indices))
    decoded = torch.stack(outputs, dim=2)
    zeros = torch.zeros(q.shape[0], heads, dim_qk, dim_v, device=device)
    o_ref, final_ref, _ = float64_reference(q, k, v, slope, zeros, None, 0.5, torch.zeros_like(v), zeros)
    rows = live if state_indices is None else state_indices[live].cpu()
    assert relative_l2(decoded[live], o_ref[live, :, prefill:]) <= TOLERANCE[dtype]
    assert relative_l2(cache[rows], final_ref[live]) <= TOLERANCE[dtype]
    if state_indices is not None:
        assert torch.equal(decoded[1], torch.zeros_like(decoded[1]))
        others = [r for r in range(6) if r not in rows.tolist()]
        assert torch.equal(cache[others], untouched[others])


@pytest.mark.parametrize("shape", ["batch-chunked", "packed"])
@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES, ids=IDS)
def test_bnhd_layout_is_bitwise_equal(device, dtype, shape, poison_allocations):
    """[B, N, H, D] storage read in place gives the bits of contiguous [B, H, N, D]."""
    q, k, v, slope, state, cu_seqlens = make_problem(SHAPES[shape], dtype, device, "alibi")
    dout = torch.randn(*q.shape[:3], v.shape[3], device=device, dtype=dtype)
    d_final = torch.randn_like(state)
    expected = run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    bnhd = [x.transpose(1, 2).contiguous() for x in (q, k, v, dout)]
    o, final, grads = run_with_grads(*bnhd[:3], slope, state, cu_seqlens, 0.5, bnhd[3], d_final, layout="BNHD")
    assert o.shape == bnhd[2].shape and o.is_contiguous()
    assert torch.equal(o.transpose(1, 2), expected[0]) and torch.equal(final, expected[1])
    dq, dk, dv, d_slope, d_state = grads
    for x, ref in zip((dq, dk, dv), expected[2][:3]):
        assert torch.equal(x.transpose(1, 2), ref)
    assert torch.equal(d_state, expected[2][4])
    # summed over tokens in another memory order: equal to rounding
    assert relative_l2(d_slope, expected[2][3]) <= 1e-6


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES, ids=IDS)
def test_index_tensors_as_strided_views(device, dtype, poison_allocations):
    """cu_seqlens and state_indices given as views with stride 2 give the bits of
    contiguous ones. The kernels read them as arrays, so the CUDA cases test the copy
    that makes them so; the CPU path indexes them as tensors."""
    q, k, v, slope, state, cu_seqlens = make_problem(SHAPES["packed"], dtype, device, "alibi")
    dout = torch.randn(*q.shape[:3], v.shape[3], device=device, dtype=dtype)
    d_final = torch.randn_like(state)
    strided = torch.stack([cu_seqlens, torch.full_like(cu_seqlens, -7)], dim=1)[:, 0]
    assert not strided.is_contiguous()
    expected = run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    o, final, grads = run_with_grads(q, k, v, slope, state, strided, 0.5, dout, d_final)
    assert torch.equal(o, expected[0]) and torch.equal(final, expected[1])
    for x, ref in zip(grads, expected[2]):
        assert torch.equal(x, ref)

    heads, dim_qk, dim_v = q.shape[1], q.shape[3], v.shape[3]
    step = [x[0, :, :4].transpose(0, 1).contiguous() for x in (q, k, v)]  # 4 sequences, [B, H, dim]
    rows = torch.tensor([2, -1, 0, 4], device=device)
    cache = torch.randn(5, heads, dim_qk, dim_v, device=device)
    strided_rows = torch.stack([rows, torch.full_like(rows, 99)], dim=1)[:, 0]
    with torch.no_grad():
        results = []
        for indices in (rows, strided_rows):
            updated = cache.clone()
            results.append((lightning_attn_decode(*step, updated, slope, 0.5, state_indices=indices), updated))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES, ids=IDS)
def test_only_some_inputs_require_grad(device, dtype, poison_allocations):
    """Backward runs only the sweeps it needs; the gradients it gives are unchanged."""
    q, k, v, slope, state, cu_seqlens = make_problem(SHAPES["packed"], dtype, device, "alibi")
    dout = torch.randn(*q.shape[:3], v.shape[3], device=device, dtype=dtype)
    d_final = torch.randn_like(state)
    _, _, all_grads = run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    for wanted in range(5):
        inputs = [x.detach().clone().requires_grad_(i == wanted) for i, x in enumerate((q, k, v, slope, state))]
        o, final = lightning_attn(
            *inputs[:3], inputs[3], 0.5, initial_state=inputs[4], output_final_state=True, cu_seqlens=cu_seqlens
        )
        (grad,) = torch.autograd.grad((o * dout).sum() + (final * d_final).sum(), inputs[wanted])
        assert torch.equal(grad, all_grads[wanted])


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES, ids=IDS)
def test_final_state_alone_gets_a_gradient(device, dtype, poison_allocations):
    """A loss on the final state only: o receives no gradient at all."""
    q, k, v, slope, state, cu_seqlens = make_problem(SHAPES["batch"], dtype, device, "alibi")
    d_final = torch.randn_like(state)
    inputs = [x.detach().clone().requires_grad_(True) for x in (q, k, v, slope, state)]
    _, final = lightning_attn(*inputs[:3], inputs[3], 0.5, initial_state=inputs[4], output_final_state=True)
    grads = torch.autograd.grad((final * d_final).sum(), inputs, allow_unused=True, materialize_grads=True)
    no_dout = torch.zeros(*q.shape[:3], v.shape[3], device=device)
    _, _, expected = float64_reference(q, k, v, slope, state, None, 0.5, no_dout, d_final)
    scale = slope_gradient_scale(q, k, v, slope, state, None, 0.5, no_dout, d_final)
    assert torch.equal(grads[0], torch.zeros_like(q))  # q reaches only o
    for x, ref in zip(grads[1:3] + grads[4:], expected[1:3] + expected[4:]):
        assert relative_l2(x, ref) <= TOLERANCE[dtype]
    assert slope_error(grads[3], expected[3], scale) <= TOLERANCE[dtype]


def captured(step, static_inputs):
    """step(*static_inputs) captured in a CUDA graph after one eager warm-up call (which
    checks the values and loads torch's own kernels, as torch asks before a capture):
    the graph and the outputs it writes on each replay."""
    step(*static_inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        outputs = step(*static_inputs)
    torch.cuda.current_stream().wait_stream(stream)
    return graph, outputs


def flat(outputs):
    return [x for item in outputs for x in (item if isinstance(item, (tuple, list)) else (item,))]


@requires_cuda
def test_packed_training_step_captures_in_a_cuda_graph():
    """No host sync in forward or backward: a packed call with states, cut into chunks,
    captured with every gradient (q, k, v, slope, initial state; losses on o and the
    final state) replays with new boundaries and inputs copied into its buffers, bit for
    bit as an eager call on them."""
    q, k, v, slope, state, cu_seqlens = make_problem(SHAPES["packed-chunked"], torch.bfloat16, "cuda", "alibi")
    dout = torch.randn(*q.shape[:3], v.shape[3], device="cuda", dtype=q.dtype)
    static = [x.clone() for x in (q, k, v, slope, state, cu_seqlens, dout, torch.randn_like(state))]

    def step(q, k, v, slope, state, cu_seqlens, dout, d_final):
        return run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)

    graph, outputs = captured(step, static)
    new = [torch.randn_like(x) for x in static[:3]] + [2 * slope, torch.randn_like(state)]  # rates stay >= 0
    new += [torch.tensor([0, 7, 7, 3000, 6000, 6621], device="cuda", dtype=torch.int32)]
    new += [torch.randn_like(x) for x in static[6:]]
    for x, y in zip(static, new):
        x.copy_(y)
    graph.replay()
    for x, expected in zip(flat(outputs), flat(step(*new))):
        assert torch.equal(x, expected)


@requires_cuda
def test_decode_step_captures_in_a_cuda_graph():
    """A serving loop's decode step, captured once, replays with new tokens, a new slot
    mapping (-1 included) and new cache contents as an eager step does, bit for bit."""
    batch, heads, dim_qk, dim_v, rows = 6, 4, 128, 64, 9
    q, k = (torch.randn(batch, heads, dim_qk, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(batch, heads, dim_v, device="cuda", dtype=torch.bfloat16)
    cache = torch.randn(rows, heads, dim_qk, dim_v, device="cuda")
    slots = torch.tensor([3, -1, 0, 8, 5, 1], device="cuda")
    slope = DECAYS["alibi"](heads).cuda()
    static = [q, k, v, cache, slots]

    def step(q, k, v, cache, slots):
        with torch.no_grad():
            return lightning_attn_decode(q, k, v, cache, slope, 0.5, state_indices=slots)

    graph, o = captured(step, static)
    new = [torch.randn_like(x) for x in static[:4]] + [torch.tensor([-1, 2, 7, 0, 4, 3], device="cuda")]
    for x, y in zip(static, new):
        x.copy_(y)
    graph.replay()
    expected = step(*new)  # updates new[3], a copy of the cache before the replay
    assert torch.equal(o, expected)
    assert torch.equal(cache, new[3])


# A process's first calls of the library, made under a CUDA graph capture with no
# warm-up: the kernels' attributes, occupancy and module loading are set up then.
FIRST_CALLS_CAPTURED = """
import torch
from lightning_attn2_cuda import build_slopes, lightning_attn, lightning_attn_decode

q, k, v = (torch.randn(1, 2, 700, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
cu_seqlens = torch.tensor([0, 300, 300, 700], device="cuda", dtype=torch.int32)
state = torch.randn(3, 2, 64, 64, device="cuda")
slope = build_slopes(2, device="cuda")
dq, dk, dv = (torch.randn(3, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
cache = torch.randn(4, 2, 64, 64, device="cuda")
slots = torch.tensor([2, -1, 0], device="cuda")
eager_cache = cache.clone()
stream = torch.cuda.Stream()
stream.wait_stream(torch.cuda.current_stream())
graph = torch.cuda.CUDAGraph()
with torch.cuda.stream(stream), torch.cuda.graph(graph):
    o, final = lightning_attn(q, k, v, slope, 0.5, initial_state=state, output_final_state=True, cu_seqlens=cu_seqlens)
    o_decode = lightning_attn_decode(dq, dk, dv, cache, slope, 0.5, state_indices=slots)
torch.cuda.current_stream().wait_stream(stream)
graph.replay()
o_eager, final_eager = lightning_attn(q, k, v, slope, 0.5, initial_state=state, output_final_state=True,
                                     cu_seqlens=cu_seqlens)
decode_eager = lightning_attn_decode(dq, dk, dv, eager_cache, slope, 0.5, state_indices=slots)
for name, x, y in (("o", o, o_eager), ("final_state", final, final_eager), ("decode o", o_decode, decode_eager),
                   ("state_cache", cache, eager_cache)):
    assert torch.equal(x, y), name
"""


@requires_cuda
def test_first_calls_of_a_process_capture_in_a_cuda_graph():
    package_root = os.path.dirname(os.path.dirname(lightning_attn2_cuda.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", FIRST_CALLS_CAPTURED], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@requires_cuda
def test_no_host_sync_once_values_are_checked():
    q, k, v, slope, state, cu_seqlens = make_problem(SHAPES["packed"], torch.bfloat16, "cuda", "alibi")
    lightning_attn(q, k, v, slope, initial_state=state, cu_seqlens=cu_seqlens)
    torch.cuda.set_sync_debug_mode("error")
    try:
        lightning_attn(q, k, v, slope, initial_state=state, output_final_state=True, cu_seqlens=cu_seqlens)
    finally:
        torch.cuda.set_sync_debug_mode("default")
