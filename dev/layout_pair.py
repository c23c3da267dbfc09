"""bench.py's own varlen closures (16 sequences, packed with max_seqlen, and equal-length,
each layout), timed by do_bench in 3 rounds of rotating order, with the profiler's
kernel sums of one fwd+bwd each: is the packed BHND gap in the kernels, outside them,
or in the order of the rows?"""
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, "bench")
import bench  # noqa: E402
sys.argv = ["bench.py"]

lengths = bench.varlen_lengths(16)
cu = torch.tensor([0] + lengths, device="cuda").cumsum(0)
s = bench.alibi_slopes(16)
calls = {
    "packed BNHD": (lambda: bench.load_ours(s, layout="BNHD", cu_seqlens=cu.to(torch.int32), max_seqlen=max(lengths)), (1, 65536), "BNHD"),
    "equal BNHD": (lambda: bench.load_ours(s, layout="BNHD"), (16, 4096), "BNHD"),
    "packed BHND": (lambda: bench.load_ours(s, layout="BHND", cu_seqlens=cu.to(torch.int32), max_seqlen=max(lengths)), (1, 65536), "BHND"),
    "equal BHND": (lambda: bench.load_ours(s, layout="BHND"), (16, 4096), "BHND"),
}


def closure(name):
    load, (b, n), layout = calls[name]
    attn = load()
    torch.manual_seed(0)
    q, k, v = bench.random_qkv(b, 16, n, layout)
    for x in (q, k, v):
        x.requires_grad_(True)
    do = torch.randn_like(q)

    def fwd_bwd():
        attn(q, k, v).backward(do)
    return fwd_bwd, [q, k, v]


def kernel_ms(fn, inputs):
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            for x in inputs:
                x.grad = None
            fn()
        torch.cuda.synchronize()
    total = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages()
                if e.device_type == torch.autograd.DeviceType.CUDA)
    return total / 5 / 1e3


names = list(calls)
for r in range(3):
    order = names[r:] + names[:r]
    for name in order:
        fn, inputs = closure(name)
        ms = do_bench(fn, grad_to_none=inputs, return_mode="median")
        print(f"round {r} {name:12s} fwd+bwd do_bench {ms:.3f} ms, kernels {kernel_ms(fn, inputs):.3f} ms", flush=True)
        del fn, inputs
        torch.cuda.empty_cache()
