"""lightning_attn: argument checks, autograd, and dispatch to CUDA or CPU."""
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
MAX_CUDA_BATCH_HEADS = 2**31 - 1
# slope tensor -> its version (tensor._version) whose values were found valid
_slopes_checked = torch.utils.weak.WeakIdKeyDictionary()
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CPU_DTYPES = _CUDA_DTYPES + (torch.float64,)


def _dtype_names(dtypes):
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def _check_tensor(name, x, dims):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor ({_dtype_names(_CUDA_DTYPES)}), got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape {dims} (4 dimensions), got {tuple(x.shape)}")


def _check_inputs(q, k, v, slope, scale):
    """Raises TypeError/ValueError naming the bad argument; returns (slope as [H] or None, scale)."""
    _check_tensor("q", q, "[B, H, N, D]")
    _check_tensor("k", k, "[B, H, N, D]")
    _check_tensor("v", v, "[B, H, N, E]")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {x.device}")
    allowed = _CPU_DTYPES if q.device.type == "cpu" else _CUDA_DTYPES
    if q.dtype not in allowed:
        raise TypeError(f"q must have dtype {_dtype_names(allowed)} on {q.device.type}, got {q.dtype}")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"q must be on a CPU or CUDA device, got {q.device}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)} [B, H, N, D], got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, H, N, E] with q's B, H, N {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    for name, dim in (("q and k head dim D", q.shape[3]), ("v head dim E", v.shape[3])):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name} must be in [1, {MAX_HEAD_DIM}], got {dim}")
    if q.is_cuda:
        # The kernels count tokens and batch x heads in 32-bit ints.
        batch, heads, seqlen = q.shape[:3]
        if seqlen > MAX_CUDA_SEQLEN:
            raise ValueError(f"q sequence length N must be at most {MAX_CUDA_SEQLEN} on CUDA, got {seqlen}")
        if batch * heads > MAX_CUDA_BATCH_HEADS:
            raise ValueError(f"q batch x heads must be at most {MAX_CUDA_BATCH_HEADS} on CUDA, got {batch * heads}")

    # The kernels take the scale as float32.
    if (
        isinstance(scale, bool)
        or not isinstance(scale, numbers.Real)
        or not math.isfinite(scale)
        or abs(scale) > torch.finfo(torch.float32).max
    ):
        raise ValueError(f"scale must be a real number, finite in float32, got {scale!r}")
    return _check_slope(slope, q), float(scale)


def _check_slope(slope, q):
    if slope is None:
        return None
    heads = q.shape[1]
    if not isinstance(slope, torch.Tensor):
        raise TypeError(f"slope must be a torch.Tensor of {heads} per-head decay rates or None, got {type(slope).__name__}")
    if not slope.is_floating_point():
        raise TypeError(f"slope must be a floating-point tensor, got {slope.dtype}")
    if tuple(slope.shape) not in ((heads,), (heads, 1, 1)):
        raise ValueError(f"slope must have shape ({heads},) or ({heads}, 1, 1) for H = {heads}, got {tuple(slope.shape)}")
    if slope.device != q.device:
        raise ValueError(f"slope must be on q's device {q.device}, got {slope.device}")
    if slope.requires_grad:
        raise ValueError("slope.requires_grad=True is not supported yet: the decay has no gradient (pass slope.detach())")
    # The CUDA kernels read float32 rates; the CPU path computes in q's precision.
    rates = slope.detach().reshape(heads)
    rates = rates.to(torch.float32).contiguous() if q.is_cuda else rates
    # Reading the values synchronises with the device, so each slope tensor is read
    # once per version (an in-place change bumps it; writes through .data or memory
    # shared with another library do not, and are not seen): a training loop that
    # passes the same slope every step pays the host sync once. Inference tensors
    # have no version and are read every time. A CUDA graph capture cannot sync at
    # all, so the check is skipped there (capture a call that ran once outside it).
    version = None if slope.is_inference() else slope._version
    already_checked = version is not None and _slopes_checked.get(slope) == version
    if not already_checked and not (q.is_cuda and torch.cuda.is_current_stream_capturing()):
        if bool((~torch.isfinite(rates) | (rates < 0)).any()):
            raise ValueError(
                f"slope must be finite (in {rates.dtype}) and >= 0 (lambda = exp(-slope)), "
                f"got {slope.flatten().tolist()}"
            )
        if version is not None:
            _slopes_checked[slope] = version
    return rates


def _last_dim_contiguous(x):
    """x, or a copy, with stride 1 in the last dimension (all the kernels need)."""
    if x.stride(-1) == 1:
        return x
    if x.size(-1) == 1:  # the stride of a size-1 dimension is arbitrary: restate it, no copy
        return x.as_strided(x.size(), (*x.stride()[:-1], 1), x.storage_offset())
    return x.contiguous()


class _LightningAttnCUDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slope, scale):
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        o = torch.empty(*q.shape[:3], v.shape[3], dtype=q.dtype, device=q.device)
        _C.forward(q, k, v, slope, scale, o)
        ctx.save_for_backward(q, k, v, slope)
        ctx.scale = scale
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, slope = ctx.saved_tensors
        dout = _last_dim_contiguous(dout.to(q.dtype))
        dq, dk = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(2))
        dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        _C.backward(q, k, v, dout, slope, ctx.scale, dq, dk, dv)
        return dq, dk, dv, None, None


def lightning_attn(q, k, v, slope=None, scale=1.0):
    """Lightning Attention-2: causal linear attention with per-head exponential decay.

        o_t = scale * sum_{s <= t} lambda_h^(t - s) (q_t . k_s) v_s,   lambda_h = exp(-slope[h])

    Args:
        q, k: [B, H, N, D] float16, bfloat16 or float32 (CPU also float64).
        v: [B, H, N, E], same dtype and device.
        slope: per-head decay rates s_h >= 0, a float tensor of shape [H] or [H, 1, 1]
            (as the official package builds it), or None for no decay.
        scale: multiplies the output (no 1/sqrt(D) is applied unless given here).

    Returns:
        o: [B, H, N, E] in q's dtype. Differentiable in q, k and v.

    On CUDA the kernels compute with fp32 accumulation and an fp32 state; on CPU a
    blockwise PyTorch implementation (lightning_attn2_cuda.reference.blockwise) runs.
    """
    slope, scale = _check_inputs(q, k, v, slope, scale)
    if q.device.type == "cpu":
        return reference.blockwise(q, k, v, slope, scale)
    if _C is None:
        raise RuntimeError(f"lightning_attn2_cuda: the CUDA extension is not built ({_C_IMPORT_ERROR})")
    return _LightningAttnCUDA.apply(q, k, v, slope, scale)
