"""Where packed's time over equal-length's goes, kernel by kernel (perf.md, v20's gap):
bench.py's varlen closures (16 and 64 sequences, BNHD, H 16; packed with max_seqlen and
equal-length), forward and forward+backward, each call after an L2 flush as in do_bench.
The profiler's CUDA events give each kernel's duration and each call's span (first kernel's
start to last kernel's end, the gaps between kernels included); medians over the calls.
Run from the repository root: PYTHONPATH=$PWD python3 dev/kernel_split.py [calls, default 30]."""
import collections
import statistics
import sys

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "bench")
import bench  # noqa: E402

calls_per_case = int(sys.argv[1]) if len(sys.argv) > 1 else 30
# do_bench's L2 flush; its kernel (bitwise_not, which no call here runs) marks each call's start.
flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")


def short(name):
    """A kernel's name without its namespaces and parameters (template arguments kept:
    they tell the sweep's passes apart), at most 90 characters."""
    for noise in ("void ", "(anonymous namespace)::", "lightning_attn2::", "at::native::"):
        name = name.replace(noise, "")
    return (name.rsplit("(", 1)[0] if name.endswith(")") else name)[:90]


def split(fn):
    """Medians over the calls: µs per kernel name (summed within a call) and the call's span."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls_per_case):
            flush.bitwise_not_()
            fn()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA and "Memcpy" not in e.name
                      and "Memset" not in e.name), key=lambda e: e.time_range.start)
    calls, current = [], None
    for e in kernels:
        if "bitwise_not" in e.name:
            current = []  # the flush starts the next call
            calls.append(current)
        elif current is not None:
            current.append(e)
    per_kernel = collections.defaultdict(list)
    spans = []
    for events in calls:
        sums = collections.Counter()
        for e in events:
            sums[short(e.name)] += e.time_range.elapsed_us()
        for name, us in sums.items():
            per_kernel[name].append(us)
        spans.append(events[-1].time_range.end - events[0].time_range.start)
    return {name: statistics.median(v) for name, v in per_kernel.items()}, statistics.median(spans), len(calls)


s = bench.alibi_slopes(bench.VARLEN_HEADS)
for seqs in (16, 64):
    lengths = bench.varlen_lengths(seqs)
    cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
    packed = bench.random_qkv(1, bench.VARLEN_HEADS, bench.VARLEN_TOKENS, "BNHD")
    equal = [x.view(seqs, bench.VARLEN_TOKENS // seqs, bench.VARLEN_HEADS, bench.D) for x in packed]
    do = torch.randn_like(packed[0])
    cases = {"packed_max": (bench.load_ours(s, layout="BNHD", cu_seqlens=cu, max_seqlen=max(lengths)), packed),
             "equal": (bench.load_ours(s, layout="BNHD"), equal)}
    results = {}
    for direction in ("fwd", "fwd+bwd"):
        for name, (attn, qkv) in cases.items():
            if direction == "fwd":
                def fn():
                    return attn(*qkv)
            else:
                leaves = [x.detach().requires_grad_(True) for x in qkv]

                def fn():
                    for x in leaves:
                        x.grad = None
                    attn(*leaves).backward(do.view_as(leaves[0]))
            per_kernel, span, n = split(fn)
            results[direction, name] = (per_kernel, span)
            print(f"seqs {seqs} {direction:7s} {name:10s} span {span:7.1f} us over {n} calls; kernels "
                  + ", ".join(f"{k} {us:.1f}" for k, us in sorted(per_kernel.items())), flush=True)
        (pk, ps), (ek, es) = results[direction, "packed_max"], results[direction, "equal"]
        print(f"seqs {seqs} {direction:7s} packed_max / equal: span {ps / es:.4f}, "
              + ", ".join(f"{k} {pk.get(k, 0):.1f}-{ek.get(k, 0):.1f}={pk.get(k, 0) - ek.get(k, 0):+.1f} us"
                          for k in sorted(set(pk) | set(ek))), flush=True)
