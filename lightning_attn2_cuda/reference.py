"""Reference forms of Lightning Attention-2, in plain PyTorch.

    o_t = scale * sum_{s <= t} lambda^(t - s) (q_t . k_s) v_s,   lambda = exp(-slope[h])

Both forms compute in the dtype they are given (at least float32), so float64
inputs give results exact to float64 rounding; tests use them that way. Both are
differentiable by autograd and run on any device. No form divides by a decay
(lambda^-i overflows under strong decay): every factor is exp(-slope * i), i >= 0.
"""
import torch

# Tokens per block of the blockwise form, as in the CUDA kernels.
BLOCK_SIZE = 64


def _slope_column(slope, num_heads, like):
    """slope ([H] or [H, 1, 1], or None for no decay) as a [H, 1, 1] tensor like `like`."""
    if slope is None:
        return like.new_zeros(num_heads, 1, 1)
    return slope.reshape(num_heads, 1, 1).to(device=like.device, dtype=like.dtype)


def _compute_dtype(q):
    return torch.promote_types(q.dtype, torch.float32)


def naive(q, k, v, slope=None, scale=1.0):
    """O = scale * [(Q K^T) * M] V with M[t, s] = lambda^(t - s) for t >= s, else 0.

    q, k: [B, H, N, D]; v: [B, H, N, E]. Materialises the N x N matrix: short sequences only.
    """
    dtype = _compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    rates = _slope_column(slope, q.shape[1], q)
    pos = torch.arange(q.shape[2], device=q.device, dtype=dtype)
    distance = pos[:, None] - pos[None, :]  # t - s
    mask = torch.where(distance >= 0, torch.exp(-rates * distance.clamp(min=0)), torch.zeros((), dtype=dtype))
    return scale * ((q @ k.transpose(-1, -2)) * mask) @ v


def blockwise(q, k, v, slope=None, scale=1.0, block_size=BLOCK_SIZE):
    """Algorithm 1 of the paper: per block of tokens, the masked intra-block product
    plus the inter-block product Q_i KV with the running state KV (D x E).

    Computes in float32 at least and returns q's dtype. Memory is linear in N.
    """
    out_dtype = q.dtype
    dtype = _compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    batch, heads, seqlen, _ = q.shape
    rates = _slope_column(slope, heads, q)
    state = q.new_zeros(batch, heads, q.shape[-1], v.shape[-1])
    blocks = []
    for start in range(0, seqlen, block_size):
        qi, ki, vi = (x[:, :, start : start + block_size] for x in (q, k, v))
        n = qi.shape[2]
        idx = torch.arange(n, device=q.device, dtype=dtype)
        distance = idx[:, None] - idx[None, :]
        mask = torch.where(distance >= 0, torch.exp(-rates * distance.clamp(min=0)), torch.zeros((), dtype=dtype))
        q_decay = torch.exp(-rates * (idx[:, None] + 1))  # lambda^(t+1): state -> row t
        k_decay = torch.exp(-rates * (n - 1 - idx[:, None]))  # lambda^(n-1-s): key s -> block end
        blocks.append(((qi @ ki.transpose(-1, -2)) * mask) @ vi + q_decay * (qi @ state))
        state = torch.exp(-rates * n) * state + (ki * k_decay).transpose(-1, -2) @ vi
    if not blocks:
        return q.new_empty(batch, heads, 0, v.shape[-1]).to(out_dtype)
    return (scale * torch.cat(blocks, dim=2)).to(out_dtype)
