"""Reference forms of Lightning Attention-2, in plain PyTorch.

    S_t = lambda S_{t-1} + k_t^T v_t,   o_t = scale * q_t S_t,   lambda = exp(-slope[h])

with S_{-1} = initial_state (zero when None), i.e.

    o_t = scale * (lambda^(t+1) q_t S_{-1} + sum_{s <= t} lambda^(t - s) (q_t . k_s) v_s).

Three forms: `naive` (the N x N masked matrix), `blockwise` (Algorithm 1 of the
paper, what the CUDA kernels do) and `recurrent` (token by token). Each computes in
the dtype it is given (at least float32), so float64 inputs give results exact to
float64 rounding; tests use them that way. All are differentiable by autograd and
run on any device. No form divides by a decay (lambda^-i overflows under strong
decay): every factor is exp(-slope * i), i >= 0.

Shapes: q, k [B, H, N, D]; v [B, H, N, E]; slope [H] or [H, 1, 1] or None (no
decay); initial_state [B, H, D, E]. With output_final_state=True a form returns
(o, final_state), the final state S_{N-1} [B, H, D, E] in the compute dtype.
"""
import torch

# Tokens per block of the blockwise form, as in the CUDA kernels.
BLOCK_SIZE = 64


def _slope_column(slope, num_heads, like):
    """slope ([H] or [H, 1, 1], or None for no decay) as a [H, 1, 1] tensor like `like`."""
    if slope is None:
        return like.new_zeros(num_heads, 1, 1)
    return slope.reshape(num_heads, 1, 1).to(device=like.device, dtype=like.dtype)


def compute_dtype(q):
    """The dtype every form computes in: q's, at least float32."""
    return torch.promote_types(q.dtype, torch.float32)


def _start_state(q, v, initial_state):
    """S_{-1} in q's (compute) dtype: initial_state, or zeros. Always a new tensor: a
    form over no tokens returns it as the final state, which must not share the
    caller's memory."""
    if initial_state is None:
        return q.new_zeros(q.shape[0], q.shape[1], q.shape[3], v.shape[3])
    return initial_state.to(q.dtype, copy=True)


def _decay_mask(rates, n, like):
    """M[h, t, s] = lambda_h^(t - s) for s <= t, else 0: [H, n, n]."""
    idx = torch.arange(n, device=like.device, dtype=like.dtype)
    distance = idx[:, None] - idx[None, :]
    return torch.where(distance >= 0, torch.exp(-rates * distance.clamp(min=0)), torch.zeros((), dtype=like.dtype))


def _carry(rates, n, state, k, v):
    """The state after n more tokens: lambda^n S + sum_s lambda^(n-1-s) k_s^T v_s."""
    idx = torch.arange(n, device=k.device, dtype=k.dtype)
    k_decay = torch.exp(-rates * (n - 1 - idx[:, None]))  # lambda^(n-1-s): key s -> the end
    return torch.exp(-rates * n) * state + (k * k_decay).transpose(-1, -2) @ v


def _inter(rates, q, state):
    """lambda^(t+1) q_t S: the part of o_t that comes from the state before the stretch."""
    idx = torch.arange(q.shape[2], device=q.device, dtype=q.dtype)
    return torch.exp(-rates * (idx[:, None] + 1)) * (q @ state)


def naive(q, k, v, slope=None, scale=1.0, initial_state=None, output_final_state=False):
    """O = scale * ([(Q K^T) * M] V + Lambda Q S_{-1}), M[t, s] = lambda^(t - s) for t >= s, else 0.

    Materialises the N x N matrix: short sequences only.
    """
    out_dtype = q.dtype
    dtype = compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    rates = _slope_column(slope, q.shape[1], q)
    state = _start_state(q, v, initial_state)
    o = ((q @ k.transpose(-1, -2)) * _decay_mask(rates, q.shape[2], q)) @ v + _inter(rates, q, state)
    o = (scale * o).to(out_dtype)
    return (o, _carry(rates, q.shape[2], state, k, v)) if output_final_state else o


def blockwise(q, k, v, slope=None, scale=1.0, block_size=BLOCK_SIZE, initial_state=None, output_final_state=False):
    """Algorithm 1 of the paper: per block of tokens, the masked intra-block product
    plus the inter-block product Q_i KV with the running state KV (D x E).

    Memory is linear in N.
    """
    out_dtype = q.dtype
    dtype = compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    rates = _slope_column(slope, q.shape[1], q)
    state = _start_state(q, v, initial_state)
    blocks = []
    for start in range(0, q.shape[2], block_size):
        qi, ki, vi = (x[:, :, start : start + block_size] for x in (q, k, v))
        n = qi.shape[2]
        blocks.append(((qi @ ki.transpose(-1, -2)) * _decay_mask(rates, n, q)) @ vi + _inter(rates, qi, state))
        state = _carry(rates, n, state, ki, vi)
    o = torch.cat(blocks, dim=2) if blocks else q.new_empty(*q.shape[:3], v.shape[3])
    o = (scale * o).to(out_dtype)
    return (o, state) if output_final_state else o


def recurrent(q, k, v, slope=None, scale=1.0, initial_state=None, output_final_state=False):
    """Token by token: S_t = lambda S_{t-1} + k_t^T v_t, o_t = scale q_t S_t.

    O(N) sequential steps: for checking sampled rows of long sequences and decoding.
    """
    out_dtype = q.dtype
    dtype = compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    lam = torch.exp(-_slope_column(slope, q.shape[1], q))  # [H, 1, 1]
    state = _start_state(q, v, initial_state)
    rows = []
    for t in range(q.shape[2]):
        state = lam * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        rows.append((q[:, :, t, None, :] @ state)[:, :, 0])
    o = torch.stack(rows, dim=2) if rows else q.new_empty(*q.shape[:3], v.shape[3])
    o = (scale * o).to(out_dtype)
    return (o, state) if output_final_state else o


def packed(form, q, k, v, slope=None, scale=1.0, initial_state=None, cu_seqlens=None):
    """`form` over each sequence of a batch: rows of q, k, v [B, H, N, dim] or, with
    cu_seqlens [S + 1], the packed sequences of batch 1 (sequence n is tokens
    cu_seqlens[n] .. cu_seqlens[n + 1] - 1). Returns (o, final states [S, H, D, E])."""
    if cu_seqlens is None:
        return form(q, k, v, slope, scale, initial_state=initial_state, output_final_state=True)
    outputs, finals = [], []
    bounds = cu_seqlens.tolist()
    for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        state = None if initial_state is None else initial_state[n : n + 1]
        piece = (x[:, :, start:end] for x in (q, k, v))
        o, final = form(*piece, slope, scale, initial_state=state, output_final_state=True)
        outputs.append(o)
        finals.append(final)
    return torch.cat(outputs, dim=2), torch.cat(finals, dim=0)


def decode_step(q, k, v, state_cache, slope=None, scale=1.0, state_indices=None):
    """One token per sequence: S = lambda S + k^T v, o = scale q S, with q, k [B, H, D],
    v [B, H, E] and S = state_cache[state_indices[b]] (row b when None; -1 skips
    sequence b, whose o is 0). Updates state_cache in place; returns o [B, H, E]."""
    batch = q.shape[0]
    rows = torch.arange(batch, device=q.device) if state_indices is None else state_indices.long()
    live = rows >= 0
    o = q.new_zeros(batch, q.shape[1], v.shape[2])
    if bool(live.any()):
        states = state_cache[rows[live]]
        o_live, final = recurrent(
            *(x[live, :, None] for x in (q, k, v)), slope, scale, initial_state=states, output_final_state=True
        )
        o[live] = o_live[:, :, 0].to(o.dtype)
        state_cache[rows[live]] = final.to(state_cache.dtype)
    return o
