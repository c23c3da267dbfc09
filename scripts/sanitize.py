"""The workload compute-sanitizer checks (run by scripts/sanitize.sh): forward and
backward, equal-length and packed batches, states in and out, the slope gradient and
the decode step, at small odd shapes in every dtype; sequences cut into chunks (the
slope derivative's too) and, packed with max_seqlen, not; sequences entering from a zero state and from a given one."""
import torch

from lightning_attn2_cuda import build_slopes, lightning_attn, lightning_attn_decode

HEADS, DIM_QK, DIM_V = 3, 72, 40


def check(o):
    assert torch.isfinite(o).all(), "non-finite output"


def main():
    torch.manual_seed(0)
    slope = build_slopes(HEADS).cuda()
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for seqlen, cu_seqlens in ((1, None), (65, None), (200, None), (200, [0, 0, 1, 65, 200])):
            batch = 2 if cu_seqlens is None else 1
            seqs = batch if cu_seqlens is None else len(cu_seqlens) - 1
            cu = None if cu_seqlens is None else torch.tensor(cu_seqlens, device="cuda", dtype=torch.int32)
            q, k = (torch.randn(batch, HEADS, seqlen, DIM_QK, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
            v = torch.randn(batch, HEADS, seqlen, DIM_V, device="cuda", dtype=dtype, requires_grad=True)
            state = torch.randn(seqs, HEADS, DIM_QK, DIM_V, device="cuda", requires_grad=True)
            rates = slope.clone().requires_grad_(True)
            o, final = lightning_attn(q, k, v, rates, 0.5, initial_state=state, output_final_state=True, cu_seqlens=cu)
            ((o.float() * torch.randn_like(o.float())).sum() + (final * torch.randn_like(final)).sum()).backward()
            for x in (o, final, q.grad, k.grad, v.grad, state.grad, rates.grad):
                check(x)
            # every sweep from a zero state: no initial state, no loss on the final state
            q0, k0, v0, rates0 = (x.detach().requires_grad_(True) for x in (q, k, v, slope))
            o0 = lightning_attn(q0, k0, v0, rates0, 0.5, cu_seqlens=cu)
            (o0.float() * torch.randn_like(o0.float())).sum().backward()
            for x in (o0, q0.grad, k0.grad, v0.grad, rates0.grad):
                check(x)
            # long enough with one head to be cut into chunks (state, prefix, output passes),
            # the slope derivative's sweep too
            ql, kl, vl = (torch.randn(1, 1, 3000, d, device="cuda", dtype=dtype) for d in (DIM_QK, DIM_QK, DIM_V))
            rate = slope[:1].clone().requires_grad_(True)
            ol = lightning_attn(ql, kl, vl, rate, initial_state=torch.randn(1, 1, DIM_QK, DIM_V, device="cuda"))
            (ol.float() * torch.randn_like(ol.float())).sum().backward()
            check(ol)
            check(rate.grad)
            # the same tokens packed: cut into chunks, and (with max_seqlen) uncut; 59 short
            # sequences and a long one, more sequences than chunks (the prefix pass's candidates)
            for bounds, max_seqlen in (
                ([0, 1000, 1000, 2900, 3000], None),
                ([0, 1000, 1000, 2024, 3000], 1024),
                (list(range(0, 600, 10)) + [3000], None),
            ):
                cu_long = torch.tensor(bounds, device="cuda", dtype=torch.int32)
                check(lightning_attn(ql, kl, vl, slope[:1], cu_seqlens=cu_long, max_seqlen=max_seqlen))
        # decode: one column slice; three with a short last one (float4, then scalar columns)
        for dim_v in (DIM_V, 136, 130):
            with torch.no_grad():
                cache = torch.randn(5, HEADS, DIM_QK, dim_v, device="cuda")
                qd, kd = (torch.randn(3, HEADS, DIM_QK, device="cuda", dtype=dtype) for _ in range(2))
                vd = torch.randn(3, HEADS, dim_v, device="cuda", dtype=dtype)
                rows = torch.tensor([4, -1, 0], device="cuda")
                check(lightning_attn_decode(qd, kd, vd, cache, slope, state_indices=rows))
    torch.cuda.synchronize()
    print("sanitize workload done")


if __name__ == "__main__":
    main()
