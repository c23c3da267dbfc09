"""Property test: random problems agree with float64 autograd of the reference.

Random B, H, N (1..5000), D and E (1..256), dtypes, both layouts and odd strides,
slopes 0..10, with and without initial and final states, random packed splits. On
CUDA, FUZZ_EXAMPLES sets the number of examples (default 25; the GPU run uses
hundreds) and FUZZ_CPU_EXAMPLES those of the CPU subset (the CPU path, small shapes;
default 20), which runs in CI.

Random shapes include tiny ones (one token, D = 5, E = 1) whose outputs are single
dot products that can nearly cancel, so errors are measured against the size of the
terms summed: ||x - ref|| / ||ref on |inputs|||, the float64 reference evaluated on
the absolute values of q, k, v, the states and the output gradients (every term then
adds up, and the bound is the per-dtype one). So is the slope gradient: its error
is divided by slope_gradient_scale (test_features) of the absolute values, the sum
of the sizes of all its terms (there every term of d o / d slope and d F / d slope
has one sign). test_features divides by the sizes of the tokens' contributions on
the actual inputs; a token's contribution is itself a D-term dot product
q_t . dq'_t, which can cancel after dq' was rounded to the input dtype (bf16,
N = 2, D = 98, E = 1 was off by 1.4% of its one token's contribution).
"""
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import TOLERANCE, float64_reference, requires_cuda  # noqa: E402
from test_features import slope_error, slope_gradient_scale  # noqa: E402
from lightning_attn2_cuda import lightning_attn  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CPU_EXAMPLES = int(os.environ.get("FUZZ_CPU_EXAMPLES", "20"))
STRIDES = ["contiguous", "padded rows", "every other token", "transposed storage"]


@st.composite
def problems(draw, device):
    small = device == "cpu"
    dtype = torch.float32 if small else draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    heads = draw(st.integers(1, 3))
    dim_qk = draw(st.integers(1, 64 if small else 256))
    dim_v = draw(st.integers(1, 64 if small else 256))
    max_tokens = 300 if small else 5000
    packed = draw(st.booleans())
    if packed:
        lengths = draw(st.lists(st.integers(0, max_tokens // 4), min_size=1, max_size=6))
        batch, seqlen = 1, sum(lengths)
    else:
        lengths = None
        batch, seqlen = draw(st.integers(1, 2)), draw(st.integers(1, max_tokens))
    return dict(
        dtype=dtype, heads=heads, dim_qk=dim_qk, dim_v=dim_v, batch=batch, seqlen=seqlen, lengths=lengths,
        layout=draw(st.sampled_from(["BHND", "BNHD"])), strides=draw(st.sampled_from(STRIDES)),
        slopes=draw(st.lists(st.floats(0.0, 10.0), min_size=heads, max_size=heads)),
        initial_state=draw(st.booleans()), final_state=draw(st.booleans()), slope_grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def strided_tensor(shape, layout, strides, dtype, device):
    """A random [B, H, N, dim] (or [B, N, H, dim]) tensor laid out with odd strides."""
    b, h, n, d = shape
    logical = (b, h, n, d) if layout == "BHND" else (b, n, h, d)
    if strides == "padded rows":
        return torch.randn(*logical[:3], d + 3, dtype=dtype, device=device)[..., :d]
    if strides == "every other token":
        seq_axis = 2 if layout == "BHND" else 1
        big = list(logical)
        big[seq_axis] = 2 * n
        return torch.randn(big, dtype=dtype, device=device).narrow(seq_axis, 0, 2 * n)[
            (slice(None),) * seq_axis + (slice(None, None, 2),)
        ]
    if strides == "transposed storage":  # the other layout's storage, viewed
        other = (b, n, h, d) if layout == "BHND" else (b, h, n, d)
        return torch.randn(other, dtype=dtype, device=device).transpose(1, 2)
    return torch.randn(logical, dtype=dtype, device=device)


def check_problem(case, device):
    torch.manual_seed(case["seed"])
    dtype, layout = case["dtype"], case["layout"]
    b, h, n = case["batch"], case["heads"], case["seqlen"]
    q, k = (strided_tensor((b, h, n, case["dim_qk"]), layout, case["strides"], dtype, device) for _ in range(2))
    v = strided_tensor((b, h, n, case["dim_v"]), layout, case["strides"], dtype, device)
    cu_seqlens = None
    if case["lengths"] is not None:
        cu_seqlens = torch.tensor([0] + case["lengths"], device=device).cumsum(0)
    seqs = b if cu_seqlens is None else len(case["lengths"])
    slope = torch.tensor(case["slopes"], device=device)
    state = torch.randn(seqs, h, case["dim_qk"], case["dim_v"], device=device) if case["initial_state"] else None
    inputs = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    slope_in = slope.clone().requires_grad_(case["slope_grad"])
    state_in = None if state is None else state.clone().requires_grad_(True)
    before = [x.clone() for x in (q, k, v)]

    o, final = lightning_attn(*inputs, slope_in, 0.5, initial_state=state_in, output_final_state=True,
                              cu_seqlens=cu_seqlens, layout=layout)
    dout = torch.randn_like(o)
    d_final = torch.randn_like(final) if case["final_state"] else torch.zeros_like(final)
    wrt = inputs + [x for x in (slope_in, state_in) if x is not None and x.requires_grad]
    loss = (o.float() * dout.float()).sum() + ((final * d_final).sum() if case["final_state"] else 0)
    grads = torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)

    bhnd = (lambda x: x) if layout == "BHND" else (lambda x: x.transpose(1, 2))
    zero_state = torch.zeros(seqs, h, case["dim_qk"], case["dim_v"], device=device)
    reference_args = (
        *(bhnd(x) for x in (q, k, v)), slope, zero_state if state is None else state, cu_seqlens, 0.5, bhnd(dout),
        d_final,
    )  # fmt: skip
    o_ref, final_ref, grads_ref = float64_reference(*reference_args)
    absolute_args = [x.abs() if isinstance(x, torch.Tensor) and x.is_floating_point() and x is not slope else x
                     for x in reference_args]
    o_abs, final_abs, grads_abs = float64_reference(*absolute_args)

    def error(x, ref, magnitude):
        return ((x.double() - ref).norm() / magnitude.norm().clamp(min=1e-300)).item()

    errors = {"o": error(bhnd(o), o_ref, o_abs), "final_state": error(final, final_ref, final_abs)}
    for name, x, ref, magnitude in zip(("dq", "dk", "dv"), grads, grads_ref, grads_abs):
        errors[name] = error(x, bhnd(ref), magnitude)
    rest = list(grads[3:])
    if case["slope_grad"]:
        errors["dslope"] = slope_error(rest.pop(0), grads_ref[3], slope_gradient_scale(*absolute_args))
    if state is not None:
        errors["dinitial_state"] = error(rest.pop(0), grads_ref[4], grads_abs[4])
    bound = TOLERANCE[dtype]
    assert all(err <= bound for err in errors.values()), f"{case}: relative L2 errors {errors} above {bound}"
    for x, x0 in zip((q, k, v), before):
        assert torch.equal(x, x0)


@settings(max_examples=CPU_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=problems("cpu"))
def test_fuzz_cpu(case):
    check_problem(case, "cpu")


@requires_cuda
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=problems("cuda"))
def test_fuzz_cuda(case, poison_allocations):
    check_problem(case, "cuda")
