"""Bad input raises a TypeError/ValueError that names the argument; inputs are never modified."""
import pytest
import torch

from conftest import random_inputs, requires_cuda
from lightning_attn2_cuda import build_slopes, lightning_attn
from lightning_attn2_cuda.interface import _last_dim_contiguous


def good_inputs(device="cpu", dtype=torch.float32):
    q, k, v = random_inputs(2, 4, 10, 8, 6, dtype, device)
    return dict(q=q, k=k, v=v, slope=build_slopes(4, device=device), scale=1.0)


def replaced(**changes):
    args = good_inputs()
    args.update(changes)
    return args


CASES = [
    # (description, make the arguments, exception, words the message must contain)
    ("q not a tensor", lambda: replaced(q=[[1.0]]), TypeError, ["q", "torch.Tensor", "list"]),
    ("integer k", lambda: replaced(k=torch.ones(2, 4, 10, 8, dtype=torch.int32)), TypeError, ["k", "int32"]),
    ("q rank 3", lambda: replaced(q=torch.randn(4, 10, 8)), ValueError, ["q", "(4, 10, 8)", "[B, H, N, D]"]),
    ("v rank 5", lambda: replaced(v=torch.randn(2, 4, 10, 6, 1)), ValueError, ["v", "[B, H, N, E]"]),
    ("k dtype", lambda: replaced(k=torch.randn(2, 4, 10, 8, dtype=torch.float64)), TypeError, ["k", "float64", "float32"]),
    ("k shape", lambda: replaced(k=torch.randn(2, 4, 10, 9)), ValueError, ["k", "(2, 4, 10, 9)", "(2, 4, 10, 8)"]),
    ("v length", lambda: replaced(v=torch.randn(2, 4, 11, 6)), ValueError, ["v", "(2, 4, 11, 6)"]),
    ("head dim too big", lambda: dict(q=torch.randn(1, 4, 3, 257), k=torch.randn(1, 4, 3, 257), v=torch.randn(1, 4, 3, 6)), ValueError, ["D", "257", "256"]),
    ("v head dim 0", lambda: replaced(v=torch.randn(2, 4, 10, 0)), ValueError, ["E", "0"]),
    ("slope not a tensor", lambda: replaced(slope=[0.1] * 4), TypeError, ["slope", "list"]),
    ("slope integer", lambda: replaced(slope=torch.ones(4, dtype=torch.int64)), TypeError, ["slope", "int64"]),
    ("slope length", lambda: replaced(slope=torch.ones(3)), ValueError, ["slope", "(3,)", "(4,)"]),
    ("slope negative", lambda: replaced(slope=torch.tensor([0.1, -0.5, 0.2, 0.3])), ValueError, ["slope", ">= 0", "-0.5"]),
    ("slope nan", lambda: replaced(slope=torch.tensor([0.1, float("nan"), 0.2, 0.3])), ValueError, ["slope", "finite"]),
    ("slope inf", lambda: replaced(slope=torch.tensor([0.1, float("inf"), 0.2, 0.3])), ValueError, ["slope", "finite"]),
    ("slope requires grad", lambda: replaced(slope=torch.ones(4, requires_grad=True)), ValueError, ["slope", "requires_grad"]),
    ("scale nan", lambda: replaced(scale=float("nan")), ValueError, ["scale", "nan"]),
    ("scale string", lambda: replaced(scale="1"), ValueError, ["scale", "'1'"]),
    ("scale past float32", lambda: replaced(scale=1e39), ValueError, ["scale", "float32", "1e+39"]),
]


@pytest.mark.parametrize("make_args, error, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named(make_args, error, words):
    with pytest.raises(error) as info:
        lightning_attn(**make_args())
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"


def test_slope_changed_in_place_is_checked_again():
    args = good_inputs()
    lightning_attn(**args)
    lightning_attn(**args)  # the values are read once per version of the tensor
    args["slope"][1] = -1.0
    with pytest.raises(ValueError, match="slope must be finite"):
        lightning_attn(**args)


def test_slope_made_in_inference_mode():
    """Inference tensors have no version counter: their values are read every call."""
    with torch.inference_mode():
        slope = build_slopes(4)
    args = {**good_inputs(), "slope": slope}
    lightning_attn(**args)
    with torch.inference_mode():
        slope[0] = float("nan")
    with pytest.raises(ValueError, match="slope must be finite"):
        lightning_attn(**args)


def test_float16_on_cpu_is_allowed():
    args = good_inputs(dtype=torch.float16)
    assert lightning_attn(**args).dtype == torch.float16


def test_inputs_not_modified_on_cpu():
    args = good_inputs()
    for x in (args["q"], args["k"], args["v"]):
        x.requires_grad_(True)
    before = {name: args[name].detach().clone() for name in ("q", "k", "v", "slope")}
    lightning_attn(**args).sum().backward()
    for name, value in before.items():
        assert torch.equal(args[name].detach(), value), name


@requires_cuda
def test_cuda_rejects_float64():
    args = good_inputs("cuda", torch.float64)
    with pytest.raises(TypeError, match="q must have dtype float16, bfloat16, float32 on cuda, got torch.float64"):
        lightning_attn(**args)


@requires_cuda
def test_cuda_rejects_slope_that_overflows_float32():
    args = good_inputs("cuda")
    slope = torch.tensor([0.1, 1e300, 0.2, 0.3], dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match=r"slope must be finite \(in torch.float32\)"):
        lightning_attn(**{**args, "slope": slope})


@requires_cuda
def test_cuda_rejects_sequences_past_int32():
    """Shape checks only: expanded views take no memory."""
    q = torch.zeros(1, device="cuda").expand(1, 1, 2**31, 1)
    with pytest.raises(ValueError, match="sequence length N must be at most"):
        lightning_attn(q, q, q)


@requires_cuda
def test_cuda_rejects_mixed_devices():
    args = good_inputs("cuda")
    with pytest.raises(ValueError, match="v must be on q's device cuda:0, got cpu"):
        lightning_attn(**{**args, "v": args["v"].cpu()})
    with pytest.raises(ValueError, match="slope must be on q's device cuda:0, got cpu"):
        lightning_attn(**{**args, "slope": args["slope"].cpu()})


def test_strided_views_reach_the_kernels_without_a_copy():
    bnhd = torch.randn(2, 50, 4, 8)
    view = bnhd.transpose(1, 2)  # [B, H, N, D] view, last dim contiguous
    assert _last_dim_contiguous(view) is view


def test_size_one_last_dim_gets_stride_one_without_a_copy():
    x = torch.randn(2, 3, 1, 7).transpose(2, 3)  # [2, 3, 7, 1] with stride(-1) == 7
    y = _last_dim_contiguous(x)
    assert y.stride(-1) == 1 and y.data_ptr() == x.data_ptr() and torch.equal(y, x)
    grad = torch.ones(1, 1, 1, 1).expand(1, 1, 1, 1).as_strided((1, 1, 1, 1), (0, 0, 0, 0))
    assert _last_dim_contiguous(grad).stride(-1) == 1


def test_other_layouts_are_copied():
    x = torch.randn(2, 3, 5, 4).transpose(2, 3)  # last dim strided
    y = _last_dim_contiguous(x)
    assert y.stride(-1) == 1 and torch.equal(y, x)
