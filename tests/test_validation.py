"""Bad input raises a TypeError/ValueError that names the argument; inputs are never modified."""
import numpy as np
import pytest
import torch

from conftest import random_inputs, requires_cuda
from lightning_attn2_cuda import build_slopes, lightning_attn, lightning_attn_decode
from lightning_attn2_cuda.interface import _last_dim_contiguous


def good_inputs(device="cpu", dtype=torch.float32):
    q, k, v = random_inputs(2, 4, 10, 8, 6, dtype, device)
    return dict(q=q, k=k, v=v, slope=build_slopes(4, device=device), scale=1.0)


def packed(**changes):
    """Arguments of one packed row of 10 tokens."""
    args = good_inputs()
    for name in ("q", "k", "v"):
        args[name] = args[name][:1]
    args.update(changes)
    return args


def replaced(**changes):
    args = good_inputs()
    args.update(changes)
    return args


CASES = [
    # (description, make the arguments, exception, words the message must contain)
    ("q not a tensor", lambda: replaced(q=[[1.0]]), TypeError, ["q", "torch.Tensor", "list"]),
    ("q nested", lambda: replaced(q=torch.nested.as_nested_tensor([torch.randn(4, 10, 8)] * 2, layout=torch.jagged)), TypeError, ["q", "nested", "cu_seqlens"]),
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
    # float32 q computes in float32, where this rate is inf (float64 q takes it: below).
    ("slope past float32", lambda: replaced(slope=torch.tensor([0.1, 1e39, 0.2, 0.3], dtype=torch.float64)), ValueError, ["slope", "finite (in torch.float32)", "1e+39", "head 1"]),
    ("scale nan", lambda: replaced(scale=float("nan")), ValueError, ["scale", "nan"]),
    ("scale string", lambda: replaced(scale="1"), ValueError, ["scale", "'1'"]),
    ("scale past float32", lambda: replaced(scale=1e39), ValueError, ["scale", "float32", "1e+39"]),
    ("scale past float64", lambda: replaced(scale=10**400), ValueError, ["scale", "float32", "1000"]),
    ("layout unknown", lambda: replaced(layout="BHDN"), ValueError, ["layout", "'BHDN'", "BNHD"]),
    ("BNHD shapes", lambda: replaced(layout="BNHD", v=torch.randn(2, 4, 11, 6)), ValueError, ["v", "[B, N, H, E]"]),
    ("final state flag", lambda: replaced(output_final_state=1), TypeError, ["output_final_state", "bool", "int"]),
    ("final state flag numpy", lambda: replaced(output_final_state=np.True_), TypeError, ["output_final_state", "got numpy."]),
    ("state shape", lambda: replaced(initial_state=torch.randn(2, 4, 6, 8)), ValueError, ["initial_state", "(2, 4, 6, 8)", "(2, 4, 8, 6)"]),
    ("state dtype", lambda: replaced(initial_state=torch.randn(2, 4, 8, 6, dtype=torch.float16)), TypeError, ["initial_state", "float16", "float32"]),
    ("state not a tensor", lambda: replaced(initial_state=0.0), TypeError, ["initial_state", "float"]),
    ("cu_seqlens with batch 2", lambda: replaced(cu_seqlens=torch.tensor([0, 10])), ValueError, ["batch size 1", "cu_seqlens", "2"]),
    ("cu_seqlens float", lambda: packed(cu_seqlens=torch.tensor([0.0, 10.0])), TypeError, ["cu_seqlens", "int32 or int64", "float32"]),
    ("cu_seqlens 2-D", lambda: packed(cu_seqlens=torch.tensor([[0, 10]])), ValueError, ["cu_seqlens", "(1, 2)"]),
    ("cu_seqlens one entry", lambda: packed(cu_seqlens=torch.tensor([0])), ValueError, ["cu_seqlens", ">= 2", "1"]),
    ("cu_seqlens start", lambda: packed(cu_seqlens=torch.tensor([1, 4, 10])), ValueError, ["cu_seqlens", "start at 0", "1"]),
    ("cu_seqlens decreasing", lambda: packed(cu_seqlens=torch.tensor([0, 6, 4, 10])), ValueError, ["cu_seqlens", "non-decreasing", "6 then 4"]),
    ("cu_seqlens decreasing, int32 lengths wrap", lambda: packed(cu_seqlens=torch.tensor([0, 2**31 - 1, -(2**31), -1, 10], dtype=torch.int32)), ValueError, ["cu_seqlens", "non-decreasing", "2147483647 then -2147483648"]),
    ("cu_seqlens end", lambda: packed(cu_seqlens=torch.tensor([0, 4, 9])), ValueError, ["cu_seqlens", "total token count 10", "9"]),
    ("max_seqlen without cu_seqlens", lambda: replaced(max_seqlen=10), ValueError, ["max_seqlen", "cu_seqlens", "10"]),
    ("max_seqlen float", lambda: packed(cu_seqlens=torch.tensor([0, 4, 10]), max_seqlen=6.0), TypeError, ["max_seqlen", "int", "float"]),
    ("max_seqlen bool", lambda: packed(cu_seqlens=torch.tensor([0, 4, 10]), max_seqlen=True), TypeError, ["max_seqlen", "bool"]),
    ("max_seqlen negative", lambda: packed(cu_seqlens=torch.tensor([0, 4, 10]), max_seqlen=-1), ValueError, ["max_seqlen", ">= 0", "-1"]),
    ("max_seqlen float, no cu_seqlens", lambda: replaced(max_seqlen=6.0), TypeError, ["max_seqlen", "int", "float"]),
    ("max_seqlen below longest", lambda: packed(cu_seqlens=torch.tensor([0, 4, 10]), max_seqlen=5), ValueError, ["max_seqlen", "longest", "got 5", "6 tokens"]),
    ("state per packed sequence", lambda: packed(cu_seqlens=torch.tensor([0, 4, 10]), initial_state=torch.randn(1, 4, 8, 6)), ValueError, ["initial_state", "(2, 4, 8, 6)"]),
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


def test_slope_past_float32_with_float64_q_on_cpu():
    """float64 q computes in float64, where a rate of 1e39 is finite: lambda = 0."""
    args = good_inputs(dtype=torch.float64)
    args["slope"] = torch.tensor([0.1, 1e39, 0.2, 0.3], dtype=torch.float64)
    assert torch.isfinite(lightning_attn(**args)).all()


def test_one_index_tensor_checked_as_each_argument():
    """The value checks are remembered per argument, not only per tensor and bound
    (here 10 both as cache rows and as tokens): valid state_indices [3, 0, 1, 2] are
    still bad cu_seqlens, and valid cu_seqlens [0, 1, 2, 4, 10] bad state_indices."""
    indices = torch.tensor([3, 0, 1, 2])
    lightning_attn_decode(**decode_inputs(batch=4, rows=10), state_indices=indices)
    with pytest.raises(ValueError, match="cu_seqlens must start at 0, got 3"):
        lightning_attn(**packed(cu_seqlens=indices))
    cu_seqlens = torch.tensor([0, 1, 2, 4, 10])
    lightning_attn(**packed(cu_seqlens=cu_seqlens))
    with pytest.raises(ValueError, match=r"state_indices must be in \[-1, 10\)"):
        lightning_attn_decode(**decode_inputs(batch=5, rows=10), state_indices=cu_seqlens)


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


def test_slope_gradient_is_returned_on_cpu():
    args = good_inputs()
    slope = args["slope"].clone().requires_grad_(True)
    lightning_attn(**{**args, "slope": slope}).sum().backward()
    assert slope.grad is not None and slope.grad.shape == (4,)


def test_cu_seqlens_changed_in_place_is_checked_again():
    args = packed(cu_seqlens=torch.tensor([0, 4, 10]))
    lightning_attn(**args)
    args["cu_seqlens"][1] = 11
    with pytest.raises(ValueError, match="non-decreasing"):
        lightning_attn(**args)


def test_max_seqlen_is_compared_with_the_lengths_of_each_version():
    """The longest length is found with cu_seqlens's value check (once per version) and
    any max_seqlen is compared with it on the host: a looser bound than the token
    count is fine, a tighter one than the longest sequence is not, before and after an
    in-place change."""
    args = packed(cu_seqlens=torch.tensor([0, 4, 10]))
    expected = lightning_attn(**args)
    for bound in (6, 7, 10, 1000):
        assert torch.equal(lightning_attn(**args, max_seqlen=bound), expected)
    with pytest.raises(ValueError, match="got 5 for a sequence of 6 tokens"):
        lightning_attn(**args, max_seqlen=5)
    args["cu_seqlens"][1] = 2
    with pytest.raises(ValueError, match="got 6 for a sequence of 8 tokens"):
        lightning_attn(**args, max_seqlen=6)
    lightning_attn(**args, max_seqlen=8)


def decode_inputs(batch=3, heads=4, rows=5):
    q, k = (torch.randn(batch, heads, 8) for _ in range(2))
    return dict(q=q, k=k, v=torch.randn(batch, heads, 6), state_cache=torch.randn(rows, heads, 8, 6), slope=build_slopes(heads))


DECODE_CASES = [
    ("q rank 4", dict(q=torch.randn(3, 4, 1, 8)), ValueError, ["q", "[B, H, D]", "(3, 4, 1, 8)"]),
    ("v heads", dict(v=torch.randn(3, 5, 6)), ValueError, ["v", "(3, 4)", "(3, 5, 6)"]),
    ("k dtype", dict(k=torch.randn(3, 4, 8, dtype=torch.float64)), TypeError, ["k", "float64"]),
    ("cache dtype", dict(state_cache=torch.randn(5, 4, 8, 6, dtype=torch.float64)), TypeError, ["state_cache", "float32", "float64"]),
    ("cache shape", dict(state_cache=torch.randn(5, 4, 6, 8)), ValueError, ["state_cache", "[S, 4, 8, 6]", "(5, 4, 6, 8)"]),
    ("cache too small", dict(state_cache=torch.randn(2, 4, 8, 6)), ValueError, ["state_cache", "3 rows", "2"]),
    ("indices dtype", dict(state_indices=torch.tensor([0.0, 1.0, 2.0])), TypeError, ["state_indices", "int32 or int64"]),
    ("indices length", dict(state_indices=torch.tensor([0, 1])), ValueError, ["state_indices", "(3,)", "(2,)"]),
    ("index past cache", dict(state_indices=torch.tensor([0, 5, 1])), ValueError, ["state_indices", "[-1, 5)", "5", "position 1"]),
    ("index below -1", dict(state_indices=torch.tensor([0, -2, 1])), ValueError, ["state_indices", "-2"]),
    ("index repeated", dict(state_indices=torch.tensor([2, -1, 2])), ValueError, ["state_indices", "repeat"]),
    ("scale inf", dict(scale=float("inf")), ValueError, ["scale", "inf"]),
    ("requires grad", dict(q=torch.randn(3, 4, 8, requires_grad=True)), ValueError, ["not differentiable", "no_grad"]),
    ("slope requires grad", dict(slope=build_slopes(4).requires_grad_()), ValueError, ["not differentiable", "slope"]),
    ("cache requires grad", dict(state_cache=torch.randn(5, 4, 8, 6, requires_grad=True)), ValueError, ["not differentiable", "state_cache"]),
    ("cache rows expanded", dict(state_cache=torch.randn(1, 4, 8, 6).expand(5, 4, 8, 6)), ValueError, ["state_cache", "own memory", "(5, 4, 8, 6)", "(0, 48, 6, 1)"]),
    ("cache rows overlap", dict(state_cache=torch.randn(288).as_strided((5, 4, 8, 6), (24, 48, 6, 1))), ValueError, ["state_cache", "own memory", "(24, 48, 6, 1)"]),
]


@pytest.mark.parametrize("changes, error, words", [c[1:] for c in DECODE_CASES], ids=[c[0] for c in DECODE_CASES])
def test_bad_decode_input_is_named(changes, error, words):
    args = {**decode_inputs(), **changes}
    before = args["state_cache"].clone()
    with pytest.raises(error) as info:
        lightning_attn_decode(**args)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"
    assert torch.equal(args["state_cache"], before)


def test_decode_cache_made_in_inference_mode():
    """Written in place, as torch allows an inference tensor only inside inference_mode."""
    with torch.inference_mode():
        cache = torch.randn(5, 4, 8, 6)
    args = {**decode_inputs(), "state_cache": cache}
    with torch.no_grad(), pytest.raises(ValueError, match="state_cache was made under torch.inference_mode"):
        lightning_attn_decode(**args)
    with torch.inference_mode():
        lightning_attn_decode(**args)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_final_state_of_no_tokens_is_a_copy(device):
    q, k, v = random_inputs(2, 4, 0, 8, 6, torch.float32, device)
    initial = torch.randn(2, 4, 8, 6, device=device)
    _, final = lightning_attn(q, k, v, build_slopes(4, device=device), initial_state=initial, output_final_state=True)
    assert torch.equal(final, initial) and final.data_ptr() != initial.data_ptr()


# (argument, how it is cut from the cache's buffer): float32 elements, or bf16 ones of
# the same bytes (q, k, v then bf16: the edge falls between bf16 elements), or int32
# indices; "numpy" cuts the cache and q from one numpy array, two storages of one memory.
SHARED_BUFFER_CASES = [("q", torch.float32), ("k", torch.float32), ("v", torch.float32), ("slope", torch.float32),
                       ("q", torch.bfloat16), ("v", torch.bfloat16), ("state_indices", torch.int32), ("q", "numpy")]


@pytest.mark.parametrize(
    "name, kind", SHARED_BUFFER_CASES, ids=[f"{n}-{k}".replace("torch.", "") for n, k in SHARED_BUFFER_CASES]
)
def test_decode_cache_must_lie_apart_from_what_it_reads(name, kind):
    """The cache is written while the other arguments are read: a buffer holding both is
    refused where their spans meet (by one element), and runs where they lie side by
    side."""
    cache_shape = decode_inputs()["state_cache"].shape
    cache_elems = cache_shape.numel()
    buffer = torch.randn(2 * cache_elems).abs()  # a valid slope too

    def cut(first, count):  # elements [first, first + count) of the buffer, as `kind`
        if kind == "numpy":  # a new storage at the slice's address
            return torch.from_numpy(buffer.numpy()[first : first + count])
        return buffer.view(kind)[first : first + count]

    for overlap, refused in ((1, True), (0, False)):
        args = decode_inputs()
        if name in ("q", "k", "v") and kind == torch.bfloat16:
            args = {**args, "q": args["q"].bfloat16(), "k": args["k"].bfloat16(), "v": args["v"].bfloat16()}
        if name == "state_indices":
            args[name] = torch.tensor([2, 0, 4], dtype=torch.int32)
        per_float = 4 // args[name].element_size()  # its elements per float32
        piece = cut(cache_elems * per_float - overlap, args[name].numel())
        piece.copy_(args[name].flatten())
        args[name] = piece.view(args[name].shape)
        args["state_cache"] = buffer[:cache_elems].view(cache_shape)
        if refused:
            before = buffer.clone()
            with pytest.raises(ValueError, match=f"state_cache must lie apart from {name} in memory") as info:
                lightning_attn_decode(**args)
            assert "got state_cache in bytes [0x" in str(info.value)
            assert torch.equal(buffer, before)
        else:
            lightning_attn_decode(**args)
