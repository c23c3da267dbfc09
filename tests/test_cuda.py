"""GPU tests: o, dq, dk, dv of the CUDA kernels against float64 references, within
the relative L2 bounds of conftest.TOLERANCE."""
import pytest
import torch

from conftest import DECAYS, TOLERANCE, float64_reference, random_inputs, relative_l2, requires_cuda
from lightning_attn2_cuda import build_slopes, lightning_attn, reference

pytestmark = requires_cuda

DTYPES = list(TOLERANCE)
# Every value of D and of E in {16, 32, 64, 72, 96, 128, 192, 256}, plus odd sizes
# (unaligned rows: element-wise loads and stores).
HEAD_DIMS = [(16, 256), (32, 192), (64, 64), (72, 96), (96, 72), (128, 128), (192, 32), (256, 16), (3, 5), (130, 33)]
# Last blocks of 1, 63, 26, 40 and 1 tokens: one to four 16-token slabs filled.
SEQLENS = [1, 63, 90, 1000, 4097]


def run_and_check(q, k, v, slope, scale, bound):
    o = lightning_attn(q, k, v, slope, scale)
    dout = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), dout)
    o_ref, _, grads_ref = float64_reference(q, k, v, slope, None, None, scale, dout, None)
    expected = (o_ref, *grads_ref[:3])
    errors = {name: relative_l2(x, ref) for name, x, ref in zip(("o", "dq", "dk", "dv"), (o, *grads), expected)}
    assert all(err <= bound for err in errors.values()), f"relative L2 errors {errors} above {bound}"


@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("dims", HEAD_DIMS, ids=[f"D{d}-E{e}" for d, e in HEAD_DIMS])
@pytest.mark.parametrize("seqlen", SEQLENS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_float64_reference(dtype, seqlen, dims, decay, poison_allocations):
    heads = 3
    q, k, v = random_inputs(2, heads, seqlen, *dims, dtype, "cuda", requires_grad=True)
    slope = DECAYS[decay](heads).cuda()
    run_and_check(q, k, v, slope, 0.5, TOLERANCE[dtype])


# The scale is the dk and dv sweeps' weight on every key (with its decay), and bf16
# applies those weights on the tensor cores as a bf16 pair (DiagonalKScale in
# csrc/tile_ops.cuh): far from 1 neither part may leave the format's range. fp16
# outputs overflow past 65504, so its scales stay nearer 1.
SCALES = {torch.float32: (1e-6, 1e4), torch.bfloat16: (1e-6, 1e4), torch.float16: (1e-3, 10.0)}


@pytest.mark.parametrize("decay", ["alibi", "strong"])
@pytest.mark.parametrize("which", [0, 1], ids=["small", "large"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scales_far_from_one(dtype, which, decay, poison_allocations):
    heads = 2
    q, k, v = random_inputs(2, heads, 300, 64, 64, dtype, "cuda", requires_grad=True)
    run_and_check(q, k, v, DECAYS[decay](heads).cuda(), SCALES[dtype][which], TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_slope_and_official_slope_shape(dtype, poison_allocations):
    q, k, v = random_inputs(2, 4, 300, 64, 64, dtype, "cuda")
    assert torch.equal(lightning_attn(q, k, v, None), lightning_attn(q, k, v, torch.zeros(4, device="cuda")))
    slope = build_slopes(4).cuda()
    assert torch.equal(lightning_attn(q, k, v, slope.view(4, 1, 1)), lightning_attn(q, k, v, slope))


@pytest.mark.parametrize("seqlen", [1000, 4097])
def test_one_launch_with_different_widths(seqlen, poison_allocations):
    """fp32 D=80, E=128: the dq/dk sweeps (3 slices of 32 columns) and the dv sweep
    (4 slices) share one launch."""
    q, k, v = random_inputs(2, 3, seqlen, 80, 128, torch.float32, "cuda", requires_grad=True)
    run_and_check(q, k, v, build_slopes(3).cuda(), 0.5, TOLERANCE[torch.float32])


def test_long_sequence(poison_allocations):
    q, k, v = random_inputs(1, 2, 65536, 128, 128, torch.bfloat16, "cuda", requires_grad=True)
    run_and_check(q, k, v, build_slopes(2).cuda(), 1.0, TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_deterministic(dtype, poison_allocations):
    q, k, v = random_inputs(2, 4, 3000, 128, 96, dtype, "cuda", requires_grad=True)
    slope = build_slopes(4).cuda()
    dout = torch.randn(2, 4, 3000, 96, dtype=dtype, device="cuda")

    def run():
        o = lightning_attn(q, k, v, slope)
        return (o, *torch.autograd.grad(o, (q, k, v), dout))

    for first, second in zip(run(), run()):
        assert torch.equal(first, second)


def test_strided_inputs_read_in_place(poison_allocations):
    """[B, N, H, D] storage viewed as [B, H, N, D]: the same result as contiguous copies."""
    q, k, v = (torch.randn(2, 500, 4, 64, dtype=torch.bfloat16, device="cuda").transpose(1, 2) for _ in range(3))
    slope = build_slopes(4).cuda()
    expected = lightning_attn(q.contiguous(), k.contiguous(), v.contiguous(), slope)
    assert torch.equal(lightning_attn(q, k, v, slope), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_padded_rows_with_partial_chunks(dtype, poison_allocations):
    """Head dims that end inside a 16-byte chunk (D 130, E 34), read in place from rows
    padded to whole chunks, so the views are 16-byte aligned: the loads must still stop
    at the head dim (the tiles' zero padding) in the forward and backward sweeps."""
    chunk = 16 // torch.tensor([], dtype=dtype).element_size()

    def padded(dim):
        rows = torch.randn(2, 3, 300, -(-dim // chunk) * chunk, dtype=dtype, device="cuda")
        return rows[..., :dim].requires_grad_(True)

    q, k, v = padded(130), padded(130), padded(34)
    run_and_check(q, k, v, build_slopes(3).cuda(), 0.5, TOLERANCE[dtype])


def test_inputs_not_modified():
    q, k, v = random_inputs(2, 4, 200, 64, 32, torch.float16, "cuda", requires_grad=True)
    slope = build_slopes(4).cuda()
    before = [x.detach().clone() for x in (q, k, v, slope)]
    lightning_attn(q, k, v, slope, 0.25).backward(torch.randn(2, 4, 200, 32, dtype=torch.float16, device="cuda"))
    for x, b in zip((q, k, v, slope), before):
        assert torch.equal(x.detach(), b)


def test_expanded_output_gradient():
    """o.sum() hands backward an all-stride-0 gradient (copied before the kernels)."""
    q, k, v = random_inputs(1, 2, 100, 32, 32, torch.float32, "cuda", requires_grad=True)
    lightning_attn(q, k, v, build_slopes(2).cuda()).sum().backward()
    expected = torch.autograd.grad(reference.naive(*(x.double() for x in (q, k, v)), build_slopes(2).double().cuda()).sum(), q)[0]
    assert relative_l2(q.grad, expected) <= TOLERANCE[torch.float32]
