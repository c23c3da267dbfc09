"""Determinism and odd inputs: bitwise-repeatable results (also on a side stream),
expanded and aliased inputs, autocast regions, empty batches, no heads, no tokens,
and tensors on a second GPU. Each case runs on the CPU path and on CUDA."""
import pytest
import torch

from conftest import requires_cuda
from lightning_attn2_cuda import build_slopes, lightning_attn, lightning_attn_decode
from test_features import make_problem, run_with_grads

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


def everything(q, k, v, slope, state, cu_seqlens, dout, d_final):
    """o, the final state and every gradient of one call."""
    o, final, grads = run_with_grads(q, k, v, slope, state, cu_seqlens, 0.5, dout, d_final)
    return [o, final, *grads]


def packed_problem(device, dtype=torch.bfloat16):
    """Packed sequences (int64 cu_seqlens, an empty one among them) with the
    gradients flowing into o and the final state."""
    shape = (1, 2, [700, 0, 3, 2600, 65], None, 64, 48)
    q, k, v, slope, state, cu_seqlens = make_problem(shape, dtype, device, "alibi", index_dtype=torch.int64)
    dout = torch.randn(*q.shape[:3], v.shape[3], device=device, dtype=dtype)
    return q, k, v, slope, state, cu_seqlens, dout, torch.randn_like(state)


@pytest.mark.parametrize("device", DEVICES)
def test_repeated_runs_are_bitwise_equal(device, poison_allocations):
    problem = packed_problem(device, torch.float32 if device == "cpu" else torch.bfloat16)
    for first, second in zip(everything(*problem), everything(*problem)):
        assert torch.equal(first, second)


@requires_cuda
def test_side_stream_is_bitwise_equal(poison_allocations):
    problem = packed_problem("cuda")
    expected = everything(*problem)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = everything(*problem)
    torch.cuda.current_stream().wait_stream(stream)
    for x, ref in zip(got, expected):
        assert torch.equal(x, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_expanded_and_aliased_inputs(device, poison_allocations):
    """q expanded over the batch (stride 0) and passed as k too: the result of copies."""
    base = torch.randn(1, 2, 300, 32, device=device, requires_grad=True)
    v_base = torch.randn(2, 300, 16, device=device, requires_grad=True)
    q = base.expand(3, -1, -1, -1)
    v = v_base.expand(3, -1, -1, -1)
    slope = build_slopes(2).to(device)
    o = lightning_attn(q, q, v, slope)
    copies = [x.detach().clone().requires_grad_(True) for x in (q, q, v)]
    expected = lightning_attn(*copies, slope)
    assert torch.equal(o, expected)
    dout = torch.randn_like(o)
    d_base, d_v = torch.autograd.grad(o, (base, v_base), dout)
    dq, dk, dv = torch.autograd.grad(expected, copies, dout)
    torch.testing.assert_close(d_base, (dq + dk).sum(0, keepdim=True))
    torch.testing.assert_close(d_v, dv.sum(0))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_region(device, poison_allocations):
    """The op runs in its inputs' dtype inside autocast, forward and backward alike."""
    q, k, v, slope, state, cu_seqlens, dout, d_final = packed_problem(device, torch.float32)
    expected = everything(q, k, v, slope, state, cu_seqlens, dout, d_final)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        got = everything(q, k, v, slope, state, cu_seqlens, dout, d_final)
    for x, ref in zip(got, expected):
        assert x.dtype == ref.dtype and torch.equal(x, ref)


@pytest.mark.parametrize("shape", [(0, 2, 10), (2, 0, 10), (2, 2, 0)], ids=["no batch", "no heads", "no tokens"])
@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device, shape, poison_allocations):
    """Empty outputs of the right shape; with no tokens the final state is the
    initial one and the gradient flowing into it flows on unchanged."""
    batch, heads, seqlen = shape
    q, k = (torch.randn(batch, heads, seqlen, 8, device=device, requires_grad=True) for _ in range(2))
    v = torch.randn(batch, heads, seqlen, 4, device=device, requires_grad=True)
    slope = torch.rand(heads, device=device, requires_grad=True)
    state = torch.randn(batch, heads, 8, 4, device=device, requires_grad=True)
    o, final = lightning_attn(q, k, v, slope, initial_state=state, output_final_state=True)
    assert o.shape == (batch, heads, seqlen, 4) and final.shape == state.shape
    d_final = torch.randn_like(final)
    loss = (o * torch.randn_like(o)).sum() + (final * d_final).sum()
    grads = torch.autograd.grad(loss, (q, k, v, slope, state), allow_unused=True, materialize_grads=True)
    for x, like in zip(grads, (q, k, v, slope, state)):
        assert x.shape == like.shape and torch.isfinite(x).all()
    if seqlen == 0:
        assert torch.equal(final, state)
        assert torch.equal(grads[4], d_final)
        assert torch.equal(grads[3], torch.zeros_like(slope))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu_while_first_is_current(poison_allocations):
    problem = packed_problem("cuda:0")
    expected = everything(*problem)
    with torch.cuda.device(0):
        got = everything(*(x.to("cuda:1") for x in problem))
    for x, ref in zip(got, expected):
        assert x.device == torch.device("cuda:1") and torch.equal(x.cpu(), ref.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_decode_in_autocast_region(device, poison_allocations):
    q, k = (torch.randn(3, 2, 16, device=device) for _ in range(2))
    v = torch.randn(3, 2, 8, device=device)
    cache = torch.randn(3, 2, 16, 8, device=device)
    slope = build_slopes(2).to(device)
    expected_cache = cache.clone()
    expected = lightning_attn_decode(q, k, v, expected_cache, slope)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        got = lightning_attn_decode(q, k, v, cache, slope)
    assert got.dtype == torch.float32 and torch.equal(got, expected) and torch.equal(cache, expected_cache)
