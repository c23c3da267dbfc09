"""lightning_attn and lightning_attn_decode: argument checks, autograd, and dispatch to CUDA or CPU."""
import math
import numbers

import torch
import torch.utils.weak

from . import reference

try:
    from . import _C
except ImportError as error:  # not built: CPU tensors still work
    _C = None
    _C_IMPORT_ERROR = error

MAX_HEAD_DIM = 256
MAX_CUDA_SEQLEN = 2**31 - 64  # so that the block count of a sequence fits an int
MAX_CUDA_COUNT = 2**31 - 1  # batch x heads, sequences, cache rows: ints in the kernels
LAYOUTS = ("BHND", "BNHD")
# tensor -> ((its version, what it was checked against), what the check returned) for
# value checks that read device memory (see _check_values_once)
_values_checked = torch.utils.weak.WeakIdKeyDictionary()
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CPU_DTYPES = _CUDA_DTYPES + (torch.float64,)
_INDEX_DTYPES = (torch.int32, torch.int64)


def _type_name(x):
    """x's type for a message, with its module unless built in (numpy.bool, not bool)."""
    t = type(x)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _dtype_names(dtypes):
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def _check_values_once(x, context, check):
    """Runs check(), which reads x's values (a host sync for a CUDA tensor), once per
    version of x and context (the argument x is checked as, and what against: one
    tensor passed as cu_seqlens and as state_indices is checked as each). A loop that
    passes the same tensor every step pays the sync once, and an in-place change
    (which bumps the version) is seen. Writes through .data or memory shared with
    another library are not seen; inference tensors have no version and are checked
    every time. A CUDA graph capture cannot sync at all, so the check is skipped there
    (capture a call that ran once outside it); the kernels never read or write out of
    bounds whatever the values.
    Returns what check() returned, remembered with the version; None under capture."""
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return None
    key = None if x.is_inference() else (x._version, context)
    remembered = _values_checked.get(x)
    if key is not None and remembered is not None and remembered[0] == key:
        return remembered[1]
    result = check()
    if key is not None:
        _values_checked[x] = (key, result)
    return result


def _check_tensor(name, x, dims):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(x)}")
    if x.is_nested:
        raise TypeError(f"{name} must be a dense tensor, got a nested tensor (pack sequences with cu_seqlens)")
    if not x.is_floating_point():
        allowed = _CPU_DTYPES if x.device.type == "cpu" else _CUDA_DTYPES
        raise TypeError(f"{name} must be a floating-point tensor ({_dtype_names(allowed)}), got {x.dtype}")
    if x.dim() != len(dims.split(",")):
        raise ValueError(f"{name} must have shape {dims} ({len(dims.split(','))} dimensions), got {tuple(x.shape)}")


def _check_index_tensor(name, x, q, length, meaning):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor ({meaning}), got {_type_name(x)}")
    if x.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} must have dtype int32 or int64, got {x.dtype}")
    if x.dim() != 1 or (length is not None and x.shape[0] != length):
        expected = f"({length},)" if length is not None else "1-D"
        raise ValueError(f"{name} must have shape {expected} ({meaning}), got {tuple(x.shape)}")
    _check_on_q_device(name, x, q)


def _check_on_q_device(name, x, q):
    if x.device != q.device:
        raise ValueError(f"{name} must be on q's device {q.device}, got {x.device}")


def _check_same(name, x, q):
    if x.dtype != q.dtype:
        raise TypeError(f"{name} must have q's dtype {q.dtype}, got {x.dtype}")
    _check_on_q_device(name, x, q)


def _check_qkv(q, k, v, qk_dims, v_dims):
    """q, k, v of the given shapes: one dtype and device, k like q, v like q but its last dim."""
    _check_tensor("q", q, qk_dims)
    _check_tensor("k", k, qk_dims)
    _check_tensor("v", v, v_dims)
    _check_same("k", k, q)
    _check_same("v", v, q)
    _check_device_and_dtype(q)
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)} {qk_dims}, got {tuple(k.shape)}")
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"v must be {v_dims} with q's leading dims {tuple(q.shape[:-1])}, got {tuple(v.shape)}")


def _check_device_and_dtype(q):
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"q must be on a CPU or CUDA device, got {q.device}")
    allowed = _CPU_DTYPES if q.device.type == "cpu" else _CUDA_DTYPES
    if q.dtype not in allowed:
        raise TypeError(f"q must have dtype {_dtype_names(allowed)} on {q.device.type}, got {q.dtype}")


def _check_head_dims(dim_qk, dim_v):
    for name, dim in (("q and k head dim D", dim_qk), ("v head dim E", dim_v)):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name} must be in [1, {MAX_HEAD_DIM}], got {dim}")


def _check_scale(scale):
    """The kernels take the scale as float32."""
    value = math.nan  # for anything that is not a real number
    if isinstance(scale, numbers.Real) and not isinstance(scale, bool):
        try:
            value = float(scale)
        except OverflowError:  # an int or Fraction past float64's range
            value = math.inf
    if not abs(value) <= torch.finfo(torch.float32).max:
        raise ValueError(f"scale must be a real number, finite in float32, got {scale!r}")
    return value


def _check_slope(slope, q, heads):
    """The decay rates as [H]: float32 (detached) for CUDA, as given for CPU. They are
    checked in the dtype the sweep computes in (float32, float64 for float64 q on CPU),
    where a rate past its range would be inf."""
    if slope is None:
        return None
    if not isinstance(slope, torch.Tensor):
        raise TypeError(
            f"slope must be a torch.Tensor of {heads} per-head decay rates or None, got {_type_name(slope)}"
        )
    if not slope.is_floating_point():
        raise TypeError(f"slope must be a floating-point tensor, got {slope.dtype}")
    if tuple(slope.shape) not in ((heads,), (heads, 1, 1)):
        raise ValueError(
            f"slope must have shape ({heads},) or ({heads}, 1, 1) for H = {heads}, got {tuple(slope.shape)}"
        )
    _check_on_q_device("slope", slope, q)
    rates = slope.reshape(heads)
    if q.is_cuda:
        rates = rates.detach().to(torch.float32).contiguous()
    computed = rates.detach().to(reference.compute_dtype(q))

    def check():
        bad = ~torch.isfinite(computed) | (computed < 0)
        if bool(bad.any()):
            head = int(torch.nonzero(bad)[0, 0])
            raise ValueError(
                f"slope must be finite (in {computed.dtype}) and >= 0 (lambda = exp(-slope)), "
                f"got {slope.detach().flatten()[head].item()} for head {head}"
            )

    _check_values_once(slope, ("slope", computed.dtype), check)
    return rates


def _check_max_seqlen(max_seqlen):
    """FlashAttention's bound on the packed sequences' lengths (compared with them in
    _check_cu_seqlens)."""
    if max_seqlen is None:
        return
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, numbers.Integral):
        raise TypeError(f"max_seqlen must be an int or None, got {_type_name(max_seqlen)}")
    if max_seqlen < 0:
        raise ValueError(f"max_seqlen must be >= 0, got {max_seqlen}")


def _check_cu_seqlens(cu_seqlens, q, total, max_seqlen):
    """cu_seqlens of the packed sequences (FlashAttention's convention), and max_seqlen
    against their lengths; returns their count."""
    _check_index_tensor("cu_seqlens", cu_seqlens, q, None, "sequence boundaries [N + 1]")
    if cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must have N + 1 >= 2 entries (at least one sequence), got {cu_seqlens.shape[0]}")
    if q.is_cuda and cu_seqlens.shape[0] - 1 > MAX_CUDA_COUNT:
        raise ValueError(f"cu_seqlens must describe at most {MAX_CUDA_COUNT} sequences, got {cu_seqlens.shape[0] - 1}")

    def check():
        first, last = cu_seqlens[0], cu_seqlens[-1]
        decreasing = (cu_seqlens[1:] < cu_seqlens[:-1]).any()
        # The lengths are exact once the entries are known to rise from 0 to total.
        longest = (cu_seqlens[1:] - cu_seqlens[:-1]).max()
        bad_first, bad_last, decreasing, longest = torch.stack([first != 0, last != total, decreasing, longest]).tolist()
        if bad_first:
            raise ValueError(f"cu_seqlens must start at 0, got {int(first)}")
        if decreasing:
            at = int(torch.nonzero(cu_seqlens[1:] < cu_seqlens[:-1])[0, 0])
            raise ValueError(
                f"cu_seqlens must be non-decreasing, got {int(cu_seqlens[at])} then {int(cu_seqlens[at + 1])} "
                f"at entries {at}, {at + 1}"
            )
        if bad_last:
            raise ValueError(f"cu_seqlens must end at the total token count {total}, got {int(last)}")
        return longest

    # The longest length is remembered with the check, so max_seqlen is compared on the
    # host; under graph capture (None) neither is read.
    longest = _check_values_once(cu_seqlens, ("cu_seqlens", total), check)
    if max_seqlen is not None and longest is not None and longest > max_seqlen:
        raise ValueError(
            f"max_seqlen must be at least the longest sequence's length, got {max_seqlen} for a sequence of "
            f"{longest} tokens"
        )
    return cu_seqlens.shape[0] - 1


def _check_state(name, state, q, shape):
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape} or None, got {_type_name(state)}")
    allowed = (torch.float32, torch.float64) if q.dtype == torch.float64 else (torch.float32,)
    if state.dtype not in allowed:
        raise TypeError(
            f"{name} must have dtype {_dtype_names(allowed)} (states are kept in float32), got {state.dtype}"
        )
    if tuple(state.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} [N, H, D, E], got {tuple(state.shape)}")
    _check_on_q_device(name, state, q)


def _overlaps_itself(x):
    """Whether two elements of x may share memory: with its dims ordered by stride,
    some stride does not clear the reach of the dims before it (a stride 0 of an
    expanded tensor, say). Conservative: a layout whose strides interleave without
    meeting is taken as overlapping too."""
    if x.numel() == 0:
        return False
    reach = 0  # the largest offset the dims of smaller stride reach
    for stride, size in sorted((st, sz) for st, sz in zip(x.stride(), x.shape) if sz > 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def _address_span(x):
    """[first, end) addresses of the bytes x's elements lie in (x non-empty). Addresses,
    not offsets into a storage: two storages can hold the same memory (numpy arrays,
    DLPack). Spans that meet are taken as shared memory, conservatively: a tensor
    interleaved with another without a shared element meets it too."""
    first = x.data_ptr()
    reach = sum((size - 1) * stride for size, stride in zip(x.shape, x.stride()))
    return first, first + (reach + 1) * x.element_size()


def _to_bhnd(x, layout):
    """A [B, H, N, dim] view of x given in `layout` (no copy)."""
    return x if layout == "BHND" else x.transpose(1, 2)


def _check_inputs(q, k, v, slope, scale, initial_state, output_final_state, cu_seqlens, max_seqlen, layout):
    """Raises TypeError/ValueError naming the bad argument; returns (rates, scale, number of sequences)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    qk_dims, v_dims = ("[B, H, N, D]", "[B, H, N, E]") if layout == "BHND" else ("[B, N, H, D]", "[B, N, H, E]")
    _check_qkv(q, k, v, qk_dims, v_dims)
    batch, heads, seqlen, dim_qk = _to_bhnd(q, layout).shape
    dim_v = v.shape[3]
    _check_head_dims(dim_qk, dim_v)
    if q.is_cuda:
        if seqlen > MAX_CUDA_SEQLEN:
            raise ValueError(f"q sequence length N must be at most {MAX_CUDA_SEQLEN} on CUDA, got {seqlen}")
        if batch * heads > MAX_CUDA_COUNT:
            raise ValueError(f"q batch x heads must be at most {MAX_CUDA_COUNT} on CUDA, got {batch * heads}")
    scale = _check_scale(scale)
    rates = _check_slope(slope, q, heads)
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be a bool, got {_type_name(output_final_state)}")
    _check_max_seqlen(max_seqlen)
    num_seqs = batch
    if cu_seqlens is not None:
        if batch != 1:
            raise ValueError(
                f"q must have batch size 1 with cu_seqlens (all sequences packed into one row), got {batch}"
            )
        num_seqs = _check_cu_seqlens(cu_seqlens, q, seqlen, max_seqlen)
    elif max_seqlen is not None:
        raise ValueError(f"max_seqlen bounds packed sequences: pass it with cu_seqlens (got max_seqlen={max_seqlen!r})")
    if initial_state is not None:
        _check_state("initial_state", initial_state, q, (num_seqs, heads, dim_qk, dim_v))
    return rates, scale, num_seqs


def _last_dim_contiguous(x):
    """x, or a copy, with stride 1 in the last dimension (all the kernels need)."""
    if x.stride(-1) == 1:
        return x
    if x.size(-1) == 1:  # the stride of a size-1 dimension is arbitrary: restate it, no copy
        return x.as_strided(x.size(), (*x.stride()[:-1], 1), x.storage_offset())
    return x.contiguous()


def _sequence_lengths(cu_seqlens, batch, seqlen, device):
    """Tokens of each sequence, [num_seqs], on the device (no host sync)."""
    if cu_seqlens is None:
        return torch.full((batch,), seqlen, device=device)
    return cu_seqlens[1:] - cu_seqlens[:-1]


def _token_dots(a, b):
    """a_t . b_t in float32 for [B, H, N, dim] tensors: [B, H, N], converted a slice at a time."""
    out = torch.empty(a.shape[:3], dtype=torch.float32, device=a.device)
    step = max(1, (1 << 24) // max(1, a.shape[0] * a.shape[1] * a.shape[3]))
    for start in range(0, a.shape[2], step):
        piece = slice(start, start + step)
        out[:, :, piece] = torch.linalg.vecdot(a[:, :, piece].float(), b[:, :, piece].float())
    return out


def _derivative_scale(rates, heads, seqlen, device):
    """Per head, float32 [H]: a power of two near 1 / max_{1 <= d <= N} d lambda^d, the
    largest weight of the derivative sweep, so that its weights and state stay near 1
    (within fp16's normal range, whatever the decay and length). Computed on the
    device from the rates, no host sync."""
    s = torch.zeros(heads, device=device, dtype=torch.float64) if rates is None else rates.double()
    n = float(max(seqlen, 1))
    peak = 1.0 / s  # d lambda^d is largest at d = 1 / s
    distances = torch.stack([torch.ones_like(s), peak.floor(), peak.ceil(), torch.full_like(s, n)]).clamp(1.0, n)
    log2_peak = ((distances.log() - s * distances) / math.log(2)).amax(dim=0)
    return torch.exp2(-log2_peak.round().clamp(-64, 64)).float()


def _slope_gradient(q, dq_decay, d_final_state, final_decay, derivative_scale):
    """dL/dslope_h = -(sum_t q_t . dq'_t + <dF, W>) / derivative_scale, summed over
    batch and sequences, from the derivative sweep's output dq' and final state W
    (see backward in csrc/api.cpp)."""
    grad = _token_dots(q, dq_decay).sum(dim=(0, 2))
    if d_final_state is not None:
        grad = grad + torch.einsum("nhde,nhde->h", d_final_state, final_decay)
    return -grad / derivative_scale


class _LightningAttnCUDA(torch.autograd.Function):
    """Inputs and outputs in the caller's layout; the kernels see [B, H, N, dim] views."""

    @staticmethod
    def forward(
        ctx, q, k, v, slope, initial_state, cu_seqlens, rates, scale, layout, num_seqs, output_final_state, max_seqlen
    ):
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        o = torch.empty(*q.shape[:3], v.shape[3], dtype=q.dtype, device=q.device)
        qb, kb, vb, ob = (_to_bhnd(x, layout) for x in (q, k, v, o))
        final_state = None
        if output_final_state:
            state_shape = (num_seqs, qb.shape[1], qb.shape[3], vb.shape[3])
            final_state = torch.empty(state_shape, dtype=torch.float32, device=q.device)
        _C.forward(qb, kb, vb, rates, scale, ob, initial_state, final_state, cu_seqlens, max_seqlen)
        ctx.save_for_backward(q, k, v, rates, initial_state, cu_seqlens)
        ctx.scale, ctx.layout, ctx.max_seqlen = scale, layout, max_seqlen
        ctx.slope_like = (slope.shape, slope.dtype) if ctx.needs_input_grad[3] else None
        ctx.set_materialize_grads(False)  # no zero tensors for outputs that get no gradient
        return (o, final_state) if output_final_state else o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, d_final_state=None):
        with torch.autocast("cuda", enabled=False):  # the slope gradient's sums stay in float32
            return _LightningAttnCUDA._backward(ctx, dout, d_final_state)

    @staticmethod
    def _backward(ctx, dout, d_final_state):
        q, k, v, rates, initial_state, cu_seqlens = ctx.saved_tensors
        need_q, need_k, need_v, need_slope, need_initial = ctx.needs_input_grad[:5]
        layout = ctx.layout
        v_shape = (*q.shape[:3], v.shape[3])
        dout = torch.zeros(v_shape, dtype=q.dtype, device=q.device) if dout is None else dout
        dout = _last_dim_contiguous(dout.to(q.dtype))
        if d_final_state is not None:
            d_final_state = d_final_state.to(torch.float32)
        # dL/dS_{-1} comes out of the dv sweep; the slope gradient out of its own sweep.
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device) if need_q else None
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if need_k else None
        dv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if need_v or need_initial else None
        dq_decay = torch.empty(q.shape, dtype=q.dtype, device=q.device) if need_slope else None
        qb, kb, vb, doutb = (_to_bhnd(x, layout) for x in (q, k, v, dout))
        num_seqs = qb.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
        state_shape = (num_seqs, qb.shape[1], qb.shape[3], vb.shape[3])
        g0 = torch.empty(state_shape, dtype=torch.float32, device=q.device) if need_initial else None
        final_decay = derivative_scale = None
        if need_slope:
            derivative_scale = _derivative_scale(rates, qb.shape[1], qb.shape[2], q.device)
        if need_slope and d_final_state is not None:
            final_decay = torch.empty(state_shape, dtype=torch.float32, device=q.device)
        _C.backward(
            qb, kb, vb, doutb, rates, ctx.scale,
            *(None if x is None else _to_bhnd(x, layout) for x in (dq, dk, dv)),
            initial_state, d_final_state, g0,
            None if dq_decay is None else _to_bhnd(dq_decay, layout), final_decay, derivative_scale, cu_seqlens,
            ctx.max_seqlen,
        )  # fmt: skip
        d_initial = None
        if need_initial:
            # dL/dS_{-1} = lambda G_0, or dL/dF itself for a sequence of no tokens.
            lengths = _sequence_lengths(cu_seqlens, qb.shape[0], qb.shape[2], q.device)
            decay = torch.ones(qb.shape[1], device=q.device) if rates is None else torch.exp(-rates)
            d_initial = g0 * torch.where(lengths[:, None] > 0, decay, 1.0)[:, :, None, None]
        d_slope = None
        if need_slope:
            d_slope = _slope_gradient(qb, _to_bhnd(dq_decay, layout), d_final_state, final_decay, derivative_scale)
            d_slope = d_slope.reshape(ctx.slope_like[0]).to(ctx.slope_like[1])
        return dq, dk, dv if need_v else None, d_slope, d_initial, *([None] * 7)


def _cpu_forward(q, k, v, rates, scale, initial_state, cu_seqlens, layout):
    """The blockwise reference in the caller's layout, one packed sequence at a time."""
    qb, kb, vb = (_to_bhnd(x, layout) for x in (q, k, v))
    o, final_state = reference.packed(
        reference.blockwise, qb, kb, vb, rates, scale, initial_state=initial_state, cu_seqlens=cu_seqlens
    )
    return (o if layout == "BHND" else o.transpose(1, 2).contiguous()), final_state


class _LightningAttnCPU(torch.autograd.Function):
    """The CPU path: the reference, differentiated by autograd with autocast off in
    both directions, so that inside an autocast region it computes in its inputs'
    dtype as the CUDA path does (a backward run there would otherwise be autocast)."""

    @staticmethod
    def forward(ctx, q, k, v, rates, initial_state, cu_seqlens, scale, layout):
        inputs = [
            None if x is None else x.detach().requires_grad_(x.requires_grad) for x in (q, k, v, rates, initial_state)
        ]
        with torch.enable_grad(), torch.autocast("cpu", enabled=False):
            ctx.outputs = _cpu_forward(*inputs[:4], scale, inputs[4], cu_seqlens, layout)
        ctx.inputs = inputs
        return tuple(x.detach() for x in ctx.outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_o, d_final_state):
        wanted = [x is not None and x.requires_grad for x in ctx.inputs]
        outputs = [(x, g) for x, g in zip(ctx.outputs, (d_o, d_final_state)) if g is not None and x.requires_grad]
        grads = iter(())
        if outputs and any(wanted):
            with torch.autocast("cpu", enabled=False):
                grads = iter(torch.autograd.grad(
                    [x for x, _ in outputs], [x for x, w in zip(ctx.inputs, wanted) if w], [g for _, g in outputs],
                    allow_unused=True, retain_graph=True,  # gradcheck runs backward more than once
                ))  # fmt: skip
        return (*(next(grads, None) if w else None for w in wanted), None, None, None)


def lightning_attn(
    q,
    k,
    v,
    slope=None,
    scale=1.0,
    *,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    max_seqlen=None,
    layout="BHND",
):
    """Lightning Attention-2: causal linear attention with per-head exponential decay.

        S_t = lambda_h S_{t-1} + k_t^T v_t,   o_t = scale q_t S_t,   lambda_h = exp(-slope[h])

    with S_{-1} = initial_state (zero when None), i.e. without a state
    o_t = scale * sum_{s <= t} lambda_h^(t - s) (q_t . k_s) v_s.

    Args:
        q, k: [B, H, N, D] (layout "BHND") or [B, N, H, D] (layout "BNHD"), float16,
            bfloat16 or float32 (CPU also float64). Any strides; a last dimension
            that is not contiguous is copied.
        v: [B, H, N, E] or [B, N, H, E], same dtype and device.
        slope: per-head decay rates s_h >= 0, a float tensor of shape [H] or [H, 1, 1]
            (as the official package builds it), or None for no decay. When it
            requires grad, its gradient is returned (summed over batch and tokens).
        scale: multiplies the output (no 1/sqrt(D) is applied unless given here).
        initial_state: [N_seq, H, D, E] float32, S_{-1} of each sequence (N_seq = B,
            or the number of packed sequences; float64 too for float64 q). Differentiable.
        output_final_state: also return each sequence's final state, [N_seq, H, D, E]
            float32 (float64 for float64 q; a copy of the initial state for a sequence of
            no tokens). Differentiable.
        cu_seqlens: int32/int64 [N_seq + 1], for variable-length sequences packed
            into batch 1 (FlashAttention's convention): sequence n is tokens
            cu_seqlens[n] .. cu_seqlens[n + 1] - 1, with its own state. On CUDA the
            call never waits for the device, except that new cu_seqlens (and slope)
            values are checked once per tensor version; see README.
        max_seqlen: with cu_seqlens, an int at least the longest sequence's token
            count (FlashAttention's max_seqlen; any larger bound will do); optional.
            On CUDA it lets the plan skip the chunk passes (two launches) when no
            sequence is long enough to be cut into chunks. Compared with cu_seqlens's
            lengths on the host, which their value check finds.
        layout: "BHND" or "BNHD" (FlashAttention/FLA); o comes back in the same layout.

    Returns:
        o in q's dtype and layout, or (o, final_state) with output_final_state=True.

    On CUDA the kernels compute with fp32 accumulation and an fp32 state; on CPU a
    blockwise PyTorch implementation (lightning_attn2_cuda.reference.blockwise) runs.
    """
    rates, scale, num_seqs = _check_inputs(
        q, k, v, slope, scale, initial_state, output_final_state, cu_seqlens, max_seqlen, layout
    )
    if q.device.type == "cpu":
        o, final_state = _LightningAttnCPU.apply(q, k, v, rates, initial_state, cu_seqlens, scale, layout)
        return (o, final_state) if output_final_state else o
    if _C is None:
        raise RuntimeError(f"lightning_attn2_cuda: the CUDA extension is not built ({_C_IMPORT_ERROR})")
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()  # the kernels read it as an array (a view may have any stride)
    return _LightningAttnCUDA.apply(
        q, k, v, slope, initial_state, cu_seqlens, rates, scale, layout, num_seqs, output_final_state,
        -1 if max_seqlen is None else min(int(max_seqlen), MAX_CUDA_SEQLEN),  # any bound >= 0 fits the int64 argument
    )  # fmt: skip


def lightning_attn_decode(q, k, v, state_cache, slope=None, scale=1.0, *, state_indices=None):
    """One decode step for serving: a new token per sequence against a state cache.

        S = lambda_h S + k^T v,   o = scale q S,   S = state_cache[state_indices[b], h]

    Args:
        q, k: [B, H, D]; v: [B, H, E]; float16, bfloat16 or float32 (CPU also float64).
        state_cache: [S, H, D, E] float32 with a contiguous last dimension, updated in
            place (the only argument ever written): its strides must give each element
            its own memory, and its memory span must not meet those of q, k, v, slope
            and state_indices.
        slope, scale: as for lightning_attn.
        state_indices: int32/int64 [B], the cache row of each sequence; -1 skips a
            sequence (its o is 0 and no row is touched), as vLLM's slot mapping does.
            None means row b for sequence b. Values are checked once per tensor version.

    Returns:
        o: [B, H, E] in q's dtype. Not differentiable (inference only).
    """
    _check_qkv(q, k, v, "[B, H, D]", "[B, H, E]")
    batch, heads, dim_qk = q.shape
    dim_v = v.shape[2]
    _check_head_dims(dim_qk, dim_v)
    scale = _check_scale(scale)
    rates = _check_slope(slope, q, heads)
    if not isinstance(state_cache, torch.Tensor):
        raise TypeError(f"state_cache must be a torch.Tensor [S, H, D, E], got {_type_name(state_cache)}")
    if state_cache.dtype != torch.float32:
        raise TypeError(f"state_cache must have dtype float32, got {state_cache.dtype}")
    if state_cache.dim() != 4 or tuple(state_cache.shape[1:]) != (heads, dim_qk, dim_v):
        raise ValueError(
            f"state_cache must have shape [S, {heads}, {dim_qk}, {dim_v}] [S, H, D, E], got {tuple(state_cache.shape)}"
        )
    _check_on_q_device("state_cache", state_cache, q)
    # Not differentiable, and the cache is written in place: a tensor that requires grad
    # would tie every step into one growing graph, or is a leaf autograd won't let change.
    if torch.is_grad_enabled():
        for name, x in (("q", q), ("k", k), ("v", v), ("slope", slope), ("state_cache", state_cache)):
            if x is not None and x.requires_grad:
                raise ValueError(
                    f"lightning_attn_decode is not differentiable: call it under torch.no_grad(), or with {name} "
                    "detached (it requires grad)"
                )
    if state_cache.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(
            "state_cache was made under torch.inference_mode(), so it can be written in place only inside "
            "inference_mode: call lightning_attn_decode there"
        )
    if state_cache.stride(3) != 1 and dim_v > 1:
        raise ValueError(
            "state_cache must have a contiguous last dimension (it is written in place), "
            f"got strides {state_cache.stride()}"
        )
    if _overlaps_itself(state_cache):
        raise ValueError(
            "state_cache must have strides that give each element its own memory, each stride past the reach "
            f"of the smaller ones (it is written in place), got shape {tuple(state_cache.shape)} with strides "
            f"{state_cache.stride()}"
        )
    rows = state_cache.shape[0]
    if q.is_cuda and (batch * heads > MAX_CUDA_COUNT or rows > MAX_CUDA_COUNT):
        raise ValueError(
            f"batch x heads and cache rows must be at most {MAX_CUDA_COUNT} on CUDA, got {batch * heads}, {rows}"
        )
    if state_indices is None:
        if rows < batch:
            raise ValueError(
                f"state_cache must have a row per sequence without state_indices: {batch} rows, got {rows}"
            )
    else:
        _check_index_tensor("state_indices", state_indices, q, batch, "the cache row of each sequence, -1 to skip")

        def check():  # one host sync: a serving loop may pass a new tensor every step
            bad = (state_indices < -1) | (state_indices >= rows)
            ordered = torch.sort(state_indices).values
            repeated = ((ordered[1:] == ordered[:-1]) & (ordered[1:] >= 0)).any()
            any_bad, repeated = torch.stack([bad.any(), repeated]).tolist()
            if any_bad:
                raise ValueError(
                    f"state_indices must be in [-1, {rows}) (rows of state_cache, -1 to skip), "
                    f"got {state_indices[bad][0].item()} "
                    f"at position {int(torch.nonzero(bad)[0, 0])}"
                )
            if repeated:
                raise ValueError("state_indices must not repeat a row: two sequences would update the same state")

        _check_values_once(state_indices, ("state_indices", rows), check)
    cache_first, cache_end = _address_span(state_cache) if state_cache.numel() > 0 else (0, 0)
    for name, x in (("q", q), ("k", k), ("v", v), ("slope", slope), ("state_indices", state_indices)):
        if x is None or x.numel() == 0:
            continue
        first, end = _address_span(x)
        if first < cache_end and cache_first < end:
            raise ValueError(
                f"state_cache must lie apart from {name} in memory (it is written in place while {name} is read), "
                f"got state_cache in bytes [{cache_first:#x}, {cache_end:#x}) and {name} in [{first:#x}, {end:#x})"
            )
    if q.device.type == "cpu":
        with torch.autocast("cpu", enabled=False):  # in the inputs' dtype, as on CUDA
            return reference.decode_step(q, k, v, state_cache, rates, scale, state_indices)
    if _C is None:
        raise RuntimeError(f"lightning_attn2_cuda: the CUDA extension is not built ({_C_IMPORT_ERROR})")
    cache = _last_dim_contiguous(state_cache)
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    o = torch.empty(batch, heads, dim_v, dtype=q.dtype, device=q.device)
    indices = None if state_indices is None else state_indices.contiguous()  # read as an array
    _C.decode(q, k, v, rates, scale, cache, indices, o)
    return o
