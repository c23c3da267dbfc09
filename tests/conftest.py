import zlib

import pytest
import torch

from lightning_attn2_cuda import build_slopes, reference

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Relative L2 error bounds, ||x - ref|| / ||ref|| against float64, per input dtype:
# fp32 inputs run in fp32 (SIMT) and must be fp32-accurate; fp16/bf16 run on tensor
# cores with fp32 accumulation and an fp32 state.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}
# Per-head decay rates of H heads: none, ALiBi's, and strong (lambda = e^-10).
DECAYS = {
    "zero": lambda h: torch.zeros(h),
    "alibi": lambda h: build_slopes(h),
    "strong": lambda h: torch.full((h,), 10.0),
}


@pytest.fixture(autouse=True)
def seed(request):
    """A different, reproducible random stream for every test."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def poison_allocations(monkeypatch):
    """Tensors allocated through torch.empty start as NaN (as FLA's conftest does), and
    so does the extension's scratch (chunk states, packed-sequence tables), so an
    element the kernels forget to write before it is used makes the test fail."""
    real_empty = torch.empty

    def empty_nan(*args, **kwargs):
        x = real_empty(*args, **kwargs)
        if x.is_floating_point():
            x.fill_(float("nan"))
        return x

    monkeypatch.setattr(torch, "empty", empty_nan)
    from lightning_attn2_cuda import interface

    if interface._C is not None:
        interface._C._set_poison_workspace(True)
        yield
        interface._C._set_poison_workspace(False)
    else:
        yield


def relative_l2(x, ref):
    """||x - ref|| / ||ref|| in float64 (||x - ref|| for a reference of zeros, e.g. an
    empty tensor); NaN anywhere gives NaN, which fails every bound."""
    x, ref = x.double(), ref.double()
    error, norm = (x - ref).norm(), ref.norm()
    return (error / norm if norm > 0 else error).item()


def random_inputs(batch, heads, seqlen, dim_qk, dim_v, dtype, device, requires_grad=False):
    q, k = (torch.randn(batch, heads, seqlen, dim_qk, dtype=dtype, device=device) for _ in range(2))
    v = torch.randn(batch, heads, seqlen, dim_v, dtype=dtype, device=device)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


def float64_reference(q, k, v, slope, state, cu_seqlens, scale, dout, d_final):
    """o, the final states and the gradients of q, k, v, slope and state, in float64 from
    the same (rounded) inputs, by autograd of the reference (naive form up to 1024
    tokens, blockwise beyond). slope and state may be None (their gradients are then
    None); d_final None puts no loss on the final states."""
    inputs = [None if x is None else x.detach().double().requires_grad_(True) for x in (q, k, v, slope, state)]
    form = reference.naive if q.shape[2] <= 1024 else reference.blockwise
    o, final = reference.packed(form, *inputs[:3], inputs[3], scale, initial_state=inputs[4], cu_seqlens=cu_seqlens)
    loss = (o * dout.double()).sum()
    if d_final is not None:
        loss = loss + (final * d_final.double()).sum()
    given = [x for x in inputs if x is not None]
    grads = iter(torch.autograd.grad(loss, given, allow_unused=True, materialize_grads=True))  # no tokens: q unused
    return o.detach(), final.detach(), tuple(None if x is None else next(grads) for x in inputs)
