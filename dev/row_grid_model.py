"""The row grid for packed sequences (perf.md Next, issue 3), checked in float64.

Today every packed sequence is a job of its own, swept from its first token in blocks
of B, so each sequence's partial last block costs a whole one (512 sequences of 23-232
tokens: 1289 blocks of 64 for 1024 blocks of tokens). On the row grid a job is a run of
consecutive whole sequences swept in the blocks of the packed row (block b holds rows
[bB, bB + B)) from the block holding its first start; sequences that start inside a
block are told apart by masks, computed from the row's starts alone (the same for
every job):
  a_t   = the last start s with bB <= s <= t, or -1 (row t continues a sequence
          from an earlier block);
  score = (q_t . k_s) lambda^(t-s) for max(a_t, bB) <= s <= t, else 0;
  inter = lambda^(t-bB+1) q_t KV only where a_t = -1;
  KV   <- lambda^B KV + sum_s lambda^(bB+B-1-s) k_s^T v_s  when the block has no start,
          else sum_{s >= a_last} lambda^(bB+B-1-s) k_s^T v_s (from zero), a_last the
          block's last start.
A job starts from any state (its first block's rows before its first start belong to
the previous job, are computed and dropped, and every later row's keys begin at a
start); rows past its last token are dropped too. Jobs longer than a chunk of L
blocks take a state pass per chunk from zero (X_c, with the resets) and a prefix
E_{c+1} = X_c if chunk c holds a start, else lambda^(LB) E_c + X_c.

The backward's three sweeps are this forward with other roles: dq = sweep(do, v, k);
dk = sweep(v, do, q) and dv = sweep(k, q, do) on the reversed row, whose starts are
the sequences' ends (T - cu[n + 1]). Calls with states (initial, final, or a gradient
into one) keep today's per-sequence jobs: a sequence ending inside a block would need
its own state there. The slope derivative's sweep is not modelled.

Run: python3 dev/row_grid_model.py [cases]   (checks random packings against the
per-sequence reference and its autograd; prints the largest relative error)."""
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_attn2_cuda import reference  # noqa: E402


def sweep_job(q, k, v, lam, starts, first, last, block, kv=None):
    """Rows [first, last] of o for one job on the row grid (one head: q, k [T, D], v
    [T, E]), from state kv (None: zero), and the state after the job's last block."""
    T, E = v.shape
    out = torch.zeros(last - first + 1, E, dtype=q.dtype)
    kv = torch.zeros(q.shape[1], E, dtype=q.dtype) if kv is None else kv
    starts = sorted(set(starts))
    for b in range(first // block, last // block + 1):
        r0, r1 = b * block, min((b + 1) * block, T)
        rows = torch.arange(r0, r1)
        in_block = [s for s in starts if r0 <= s < r1]
        a = torch.tensor([max([s for s in in_block if s <= t], default=-1) for t in range(r0, r1)])
        lo = torch.where(a >= 0, a, torch.full_like(a, r0))
        dist = rows[:, None] - rows[None, :]
        keep = (dist >= 0) & (rows[None, :] >= lo[:, None])
        decay = torch.where(keep, lam ** dist.clamp(min=0).double(), torch.zeros((), dtype=q.dtype))
        o = ((q[r0:r1] @ k[r0:r1].T) * decay) @ v[r0:r1]
        carried = (a < 0).double() * lam ** (rows - r0 + 1).double()
        o = o + carried[:, None] * (q[r0:r1] @ kv)
        lo_out, hi_out = max(r0, first), min(r1 - 1, last)
        if lo_out <= hi_out:
            out[lo_out - first:hi_out - first + 1] = o[lo_out - r0:hi_out - r0 + 1]
        weights = lam ** (r0 + block - 1 - rows).double()
        if in_block:
            weights = torch.where(rows >= max(in_block), weights, torch.zeros((), dtype=q.dtype))
            kv = (k[r0:r1] * weights[:, None]).T @ v[r0:r1]
        else:
            kv = lam ** block * kv + (k[r0:r1] * weights[:, None]).T @ v[r0:r1]
    return out, kv


def sweep_job_in_chunks(q, k, v, lam, starts, first, last, block, chunk_blocks):
    """The same job cut into chunks of chunk_blocks blocks: the state pass (each chunk
    but the last from zero), the prefix, then each chunk's output from its entering state."""
    b0, b1 = first // block, last // block + 1
    bounds = [(b0 + i, min(b0 + i + chunk_blocks, b1)) for i in range(0, b1 - b0, chunk_blocks)]
    entering = [None]
    for c0, c1 in bounds[:-1]:
        # From zero over the chunk's blocks: its rows from the chunk's first row.
        _, x = sweep_job(q, k, v, lam, starts, c0 * block, c1 * block - 1, block)
        holds_start = any(c0 * block <= s < c1 * block for s in starts)
        before = entering[-1]
        entering.append(x if holds_start or before is None else lam ** ((c1 - c0) * block) * before + x)
    pieces = []
    for (c0, c1), kv in zip(bounds, entering):
        lo, hi = max(first, c0 * block), min(last, c1 * block - 1)
        piece, _ = sweep_job(q, k, v, lam, starts, lo, hi, block, kv)
        pieces.append(piece)
    return torch.cat(pieces)


def sweep_row(q, k, v, lam, cu, jobs, block, chunk_blocks, scale):
    """o of the packed row: jobs is a list of (first sequence, end sequence)."""
    T = q.shape[0]
    starts = [int(x) for x in cu[:-1] if x < T]
    o = torch.zeros(T, v.shape[1], dtype=q.dtype)
    for n0, n1 in jobs:
        first, last = int(cu[n0]), int(cu[n1]) - 1
        if last < first:
            continue
        if chunk_blocks:
            o[first:last + 1] = sweep_job_in_chunks(q, k, v, lam, starts, first, last, block, chunk_blocks)
        else:
            o[first:last + 1] = sweep_job(q, k, v, lam, starts, first, last, block)[0]
    return scale * o


def backward_row(q, k, v, do, lam, cu, jobs, block, chunk_blocks, scale):
    T = q.shape[0]
    dq = sweep_row(do, v, k, lam, cu, jobs, block, chunk_blocks, scale)
    cu_rev = torch.flip(T - cu, [0])  # the reversed row's sequence starts: the ends, reversed
    n = len(cu) - 1
    jobs_rev = [(n - n1, n - n0) for n0, n1 in reversed(jobs)]
    rev = lambda x: torch.flip(x, [0])  # noqa: E731
    dk = rev(sweep_row(rev(v), rev(do), rev(q), lam, cu_rev, jobs_rev, block, chunk_blocks, scale))
    dv = rev(sweep_row(rev(k), rev(q), rev(do), lam, cu_rev, jobs_rev, block, chunk_blocks, scale))
    return dq, dk, dv


def check(rng, case):
    seqs = rng.randint(1, 9)
    lengths = [rng.choice([0, 1, rng.randint(1, 40), rng.randint(1, 90)]) for _ in range(seqs)]
    if sum(lengths) == 0:
        lengths[0] = 1
    cu = torch.tensor([0] + lengths).cumsum(0)
    T, D, E = int(cu[-1]), rng.randint(1, 5), rng.randint(1, 5)
    block = rng.choice([4, 8, 16])
    lam = rng.choice([1.0, 0.9, 0.5, float(torch.exp(torch.tensor(-10.0)))])
    scale = rng.choice([1.0, 0.37])
    cuts = sorted(rng.sample(range(1, seqs), rng.randint(0, seqs - 1))) if seqs > 1 else []
    jobs = list(zip([0] + cuts, cuts + [seqs]))
    chunk_blocks = rng.choice([0, 1, 2, 3])
    q, k, v, do = (torch.randn(T, d, dtype=torch.float64) for d in (D, D, E, E))
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    slope = torch.tensor([-torch.log(torch.tensor(lam, dtype=torch.float64))])
    o_ref, _ = reference.packed(reference.naive, *(x[None, None] for x in leaves), slope, scale,
                                cu_seqlens=cu)
    grads_ref = torch.autograd.grad(o_ref, leaves, do[None, None])
    o = sweep_row(q, k, v, lam, cu, jobs, block, chunk_blocks, scale)
    grads = backward_row(q, k, v, do, lam, cu, jobs, block, chunk_blocks, scale)
    worst = 0.0
    for x, ref in zip((o, *grads), (o_ref[0, 0].detach(), *grads_ref)):
        worst = max(worst, float((x - ref).norm() / ref.norm().clamp_min(1e-300)))
    assert worst < 1e-12, f"case {case}: lengths {lengths}, jobs {jobs}, block {block}, chunks of " \
                          f"{chunk_blocks}, lambda {lam}: relative error {worst}"
    return worst


def blocks_swept(lengths, job_blocks, block=64):
    """Blocks of one head and v slice: one sequence per job, and on the row grid with
    jobs of consecutive sequences spanning up to job_blocks blocks (at least one each)."""
    per_sequence = sum(-(-n // block) for n in lengths)
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    row_grid, n = 0, 0
    while n < len(lengths):
        end = n + 1
        while end < len(lengths) and starts[end + 1] - starts[n] <= job_blocks * block:
            end += 1
        first, last = starts[n], starts[end] - 1
        row_grid += last // block - first // block + 1 if last >= first else 0
        n = end
    return per_sequence, row_grid


def main():
    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rng = random.Random(0)
    worst = max(check(rng, case) for case in range(cases))
    print(f"{cases} packings (lengths 0-90, blocks of 4-16, 1-9 sequences in 1-9 jobs, chunks of 1-3 "
          f"blocks or none): largest relative error {worst:.1e}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench import varlen_lengths
    for seqs in (16, 64, 512):
        per_sequence, row_grid = blocks_swept(varlen_lengths(seqs), job_blocks=62)
        print(f"bench's {seqs} sequences, 65536 tokens: {per_sequence} blocks one sequence per job, "
              f"{row_grid} on the row grid with jobs up to 62 blocks (1024 equal-length)")


if __name__ == "__main__":
    main()
