"""CPU tests: the reference forms agree, the CPU path and its gradients, the slopes."""
import math

import pytest
import torch

from conftest import random_inputs, relative_l2
from lightning_attn2_cuda import build_slopes, lightning_attn, reference


SLOPES = {
    "zero": lambda h: torch.zeros(h),
    "alibi": lambda h: build_slopes(h),
    "strong": lambda h: torch.full((h,), 10.0),
}


@pytest.mark.parametrize("seqlen", [1, 5, 63, 64, 65, 200])
@pytest.mark.parametrize("decay", list(SLOPES))
def test_reference_forms_agree(seqlen, decay):
    q, k, v = random_inputs(2, 3, seqlen, 7, 5, torch.float64, "cpu")
    slope = SLOPES[decay](3).double()
    expected = reference.recurrent(q, k, v, slope, 0.5)
    assert relative_l2(reference.naive(q, k, v, slope, 0.5), expected) < 1e-12
    for block_size in (1, 16, 64):
        assert relative_l2(reference.blockwise(q, k, v, slope, 0.5, block_size), expected) < 1e-12


def test_recurrent_form_is_the_definition():
    """S_t = lambda S_{t-1} + k_t^T v_t, o_t = scale q_t S_t, written out for one head."""
    q, k, v = random_inputs(1, 1, 5, 3, 2, torch.float64, "cpu")
    lam, state, rows = 0.5, torch.zeros(3, 2, dtype=torch.float64), []
    for t in range(5):
        state = lam * state + torch.outer(k[0, 0, t], v[0, 0, t])
        rows.append(2.0 * q[0, 0, t] @ state)
    slope = torch.tensor([-math.log(lam)], dtype=torch.float64)
    assert relative_l2(reference.recurrent(q, k, v, slope, 2.0)[0, 0], torch.stack(rows)) < 1e-14


@pytest.mark.parametrize("seqlen", [1, 63, 64, 65, 150])
@pytest.mark.parametrize("decay", list(SLOPES))
def test_reference_forms_agree_with_states(seqlen, decay):
    q, k, v = random_inputs(2, 3, seqlen, 6, 4, torch.float64, "cpu")
    slope = SLOPES[decay](3).double()
    initial = torch.randn(2, 3, 6, 4, dtype=torch.float64)
    o, final = reference.recurrent(q, k, v, slope, 0.5, initial_state=initial, output_final_state=True)
    for form in (reference.naive, reference.blockwise):
        o_form, final_form = form(q, k, v, slope, 0.5, initial_state=initial, output_final_state=True)
        assert relative_l2(o_form, o) < 1e-12 and relative_l2(final_form, final) < 1e-12


def test_pieces_continue_from_the_state():
    """Two calls, the second starting from the first's final state, make one call."""
    q, k, v = random_inputs(1, 2, 150, 5, 7, torch.float64, "cpu")
    slope = build_slopes(2).double()
    whole, final = reference.blockwise(q, k, v, slope, output_final_state=True)
    first, state = reference.blockwise(q[:, :, :70], k[:, :, :70], v[:, :, :70], slope, output_final_state=True)
    second, final_pieces = reference.blockwise(
        q[:, :, 70:], k[:, :, 70:], v[:, :, 70:], slope, initial_state=state, output_final_state=True
    )
    assert relative_l2(torch.cat([first, second], dim=2), whole) < 1e-12
    assert relative_l2(final_pieces, final) < 1e-12


def test_state_gradients_agree():
    q, k, v = random_inputs(1, 2, 80, 4, 3, torch.float64, "cpu")
    slope = torch.tensor([0.05, 1.0], dtype=torch.float64)
    grads = []
    for form in (reference.naive, reference.blockwise, reference.recurrent):
        initial = torch.randn(1, 2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        initial.requires_grad_(True)
        o, final = form(q, k, v, slope, 1.0, initial_state=initial, output_final_state=True)
        (o.sum() + (final * final).sum()).backward()
        grads.append(initial.grad)
    for g in grads[1:]:
        assert relative_l2(g, grads[0]) < 1e-12


def test_no_slope_means_no_decay():
    q, k, v = random_inputs(1, 2, 70, 4, 4, torch.float64, "cpu")
    expected = reference.recurrent(q, k, v, torch.zeros(2), 1.0)
    assert relative_l2(reference.blockwise(q, k, v, None), expected) < 1e-12
    assert relative_l2(reference.naive(q, k, v, None), expected) < 1e-12


def test_strong_decay_stays_finite():
    """lambda^-i would overflow here; the forms only ever use lambda^i."""
    q, k, v = random_inputs(1, 2, 300, 8, 8, torch.float64, "cpu")
    slope = torch.tensor([20.0, 50.0], dtype=torch.float64)
    o = reference.blockwise(q, k, v, slope)
    assert torch.isfinite(o).all()
    # With lambda ~ 0 each token sees only itself: o_t = (q_t . k_t) v_t.
    expected = (q * k).sum(-1, keepdim=True) * v
    assert relative_l2(o, expected) < 1e-8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cpu_path_forward(dtype):
    q, k, v = random_inputs(2, 4, 130, 16, 24, dtype, "cpu")
    slope = build_slopes(4)
    o = lightning_attn(q, k, v, slope, scale=0.3)
    assert o.dtype == dtype and o.shape == (2, 4, 130, 24)
    expected = reference.naive(q.double(), k.double(), v.double(), slope.double(), 0.3)
    bound = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 8e-3}[dtype]
    assert relative_l2(o, expected) < bound


def test_cpu_path_gradients():
    q, k, v = random_inputs(1, 2, 70, 5, 3, torch.float64, "cpu", requires_grad=True)
    slope = torch.tensor([0.1, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: lightning_attn(q, k, v, slope, 0.7), (q, k, v))


def test_cpu_path_gradients_match_naive():
    q, k, v = random_inputs(2, 2, 100, 8, 6, torch.float64, "cpu", requires_grad=True)
    slope = build_slopes(2).double()
    dout = torch.randn(2, 2, 100, 6, dtype=torch.float64)
    grads = torch.autograd.grad(lightning_attn(q, k, v, slope), (q, k, v), dout)
    expected = torch.autograd.grad(reference.naive(q, k, v, slope), (q, k, v), dout)
    for g, e in zip(grads, expected):
        assert relative_l2(g, e) < 1e-12


def test_build_slopes_power_of_two():
    slopes = build_slopes(8)
    assert slopes.dtype == torch.float32 and slopes.shape == (8,)
    expected = torch.tensor([2.0 ** (-(i + 1)) for i in range(8)])
    assert torch.equal(slopes, expected)


def test_build_slopes_alibi_interleave():
    # ALiBi for 12 heads: the 8-head slopes, then every other one of the 16-head slopes.
    eight = [2.0 ** (-8 * (i + 1) / 8) for i in range(8)]
    sixteen = [2.0 ** (-8 * (i + 1) / 16) for i in range(16)]
    expected = torch.tensor(eight + sixteen[0::2][:4], dtype=torch.float32)
    assert torch.allclose(build_slopes(12), expected, rtol=0, atol=0)


def test_build_slopes_per_layer():
    base = build_slopes(4)
    assert torch.allclose(build_slopes(4, layer_idx=0, num_layers=5), base * (1 + 1e-5))
    assert torch.allclose(build_slopes(4, layer_idx=2, num_layers=5), base * (0.5 + 1e-5))
    assert torch.allclose(build_slopes(4, layer_idx=4, num_layers=5), base * 1e-5)
    assert torch.allclose(build_slopes(4, layer_idx=0, num_layers=1), base * (1 + 1e-5))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_heads=0),
        dict(num_heads=2.0),
        dict(num_heads=4, layer_idx=1),
        dict(num_heads=4, layer_idx=5, num_layers=5),
        dict(num_heads=4, layer_idx=-1, num_layers=5),
    ],
)
def test_build_slopes_rejects(kwargs):
    with pytest.raises(ValueError):
        build_slopes(**kwargs)


def test_official_slope_shape_accepted():
    q, k, v = random_inputs(1, 4, 20, 8, 8, torch.float64, "cpu")
    flat = build_slopes(4).double()
    assert torch.equal(lightning_attn(q, k, v, flat.view(4, 1, 1)), lightning_attn(q, k, v, flat))
    assert math.isclose(float(flat[0]), 2.0 ** -2)
