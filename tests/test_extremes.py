"""Extreme sizes on CUDA: 1,048,576 tokens, and tensors of more than 2^31 elements.

These need about 40 GB of GPU memory and run only with LA2_EXTREME=1 (the H200
run does; see README). Outputs and gradients must be finite everywhere, and rows
sampled along the sequence must match float64 computed from the recurrence: the
state before a row is summed in float64 chunk by chunk, then the row is one step
of S_t = lambda S_{t-1} + k_t^T v_t.
"""
import os

import pytest
import torch

from conftest import TOLERANCE, relative_l2, requires_cuda
from lightning_attn2_cuda import build_slopes, lightning_attn

pytestmark = [
    requires_cuda,
    pytest.mark.skipif(os.environ.get("LA2_EXTREME") != "1", reason="set LA2_EXTREME=1 (about 40 GB of GPU memory)"),
]

CHUNK = 1 << 16


def states_at(k, v, slope, positions):
    """S_t (after token t, from S_{-1} = 0) in float64 for each t of the sorted
    positions: [len, H, D, E], batch row 0."""
    decay = torch.exp(-slope.double())  # [H]

    def summed(start, end):  # sum_{start <= s < end} lambda^(end-1-s) k_s^T v_s
        kc, vc = (x[0, :, start:end].double() for x in (k, v))
        steps = torch.arange(end - start - 1, -1, -1, device=k.device, dtype=torch.float64)
        return (kc * (decay[:, None] ** steps)[..., None]).transpose(-1, -2) @ vc

    state = torch.zeros(k.shape[1], k.shape[3], v.shape[3], device=k.device, dtype=torch.float64)
    states, start = [], 0
    for t in positions:
        while start + CHUNK <= t + 1:  # whole chunks before t
            state = decay[:, None, None] ** CHUNK * state + summed(start, start + CHUNK)
            start += CHUNK
        states.append(decay[:, None, None] ** (t + 1 - start) * state + summed(start, t + 1))
    return torch.stack(states)


def check_rows(q, k, v, slope, scale, o, dq, dk, dv, dout, bound):
    """Sampled rows of o, dq (forward states) and dk, dv (reverse states) against float64."""
    seqlen = q.shape[2]
    rows = sorted({0, 1, 63, 64, 65, 4097, seqlen // 2 + 7, seqlen - 65, seqlen - 2, seqlen - 1})
    forward = states_at(k, v, slope, rows)  # S_t: [R, H, D, E]
    q_rows, do_rows = q[0, :, rows].double().transpose(0, 1), dout[0, :, rows].double().transpose(0, 1)  # [R, H, dim]
    o_ref = scale * (q_rows[:, :, None, :] @ forward)[:, :, 0]
    dq_ref = scale * (do_rows[:, :, None, :] @ forward.transpose(-1, -2))[:, :, 0]
    # G_s = scale sum_{t >= s} lambda^(t-s) q_t^T do_t: the same sum over the reversed sequence.
    reverse = states_at(q.flip(2), dout.flip(2), slope, [seqlen - 1 - r for r in reversed(rows)]).flip(0) * scale
    k_rows, v_rows = k[0, :, rows].double().transpose(0, 1), v[0, :, rows].double().transpose(0, 1)
    dk_ref = (reverse @ v_rows[..., None])[..., 0]
    dv_ref = (k_rows[:, :, None, :] @ reverse)[:, :, 0]
    for name, x, ref in (("o", o, o_ref), ("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)):
        got = x[0, :, rows].transpose(0, 1)
        assert torch.isfinite(x).all(), f"{name} has non-finite values"
        err = relative_l2(got, ref)
        assert err <= bound, f"{name}: sampled rows off by relative L2 {err} > {bound}"


def run_long(heads, seqlen, slope, dtype=torch.bfloat16, scale=0.5):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, seqlen, 128, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    o = lightning_attn(q, k, v, slope, scale)
    dout = torch.randn_like(o)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), dout)
    check_rows(q.detach(), k.detach(), v.detach(), slope, scale, o, dq, dk, dv, dout, TOLERANCE[dtype])


@pytest.mark.parametrize("decay", ["alibi", "zero", "slope 20"])
def test_million_tokens(decay):
    heads = 8
    slope = {"alibi": build_slopes(heads), "zero": torch.zeros(heads), "slope 20": torch.full((heads,), 20.0)}[decay]
    run_long(heads, 1 << 20, slope.cuda())


def test_more_than_2_31_elements():
    """8 heads x (2^21 + 1) tokens x 128: 2^31 + 1024 elements per tensor (int64 offsets)."""
    heads, seqlen = 8, (1 << 21) + 1
    assert heads * seqlen * 128 > 2**31
    run_long(heads, seqlen, build_slopes(heads).cuda())
