"""Where packed 16's forward loses to equal-length outside the kernels (perf.md Next):
bench.py's own varlen closures (16 and 64 sequences, BNHD, H 16, forward; packed without
and with max_seqlen, equal-length) timed by do_bench (L2 flushed), by do_bench of one
call's CUDA graph replayed, by 20 calls back to back (eager and as one graph; events / 20,
no flush), and the host's microseconds per call; the calls' order turns each round, and
the end prints each call's median over the rounds as a multiple of equal-length's. Run from
the repository root: PYTHONPATH=$PWD python3 dev/graph_timing.py [rounds, default 2]."""
import collections
import statistics
import sys
import time

import torch
from triton.testing import do_bench

sys.path.insert(0, "bench")
import bench  # noqa: E402

BACK_TO_BACK = 20


def captured(fn, calls):
    """A CUDA graph of `calls` calls of fn, after one warm-up call on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def back_to_back_us(run):
    """Median over 10 tries of run() (BACK_TO_BACK calls) by events, per call."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        torch.cuda.synchronize()
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / BACK_TO_BACK)
    return statistics.median(times)


def host_us(fn, calls=200):
    """The host's time per call while the GPU works behind it."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
modes = ("do_bench", "graph", f"eager x{BACK_TO_BACK}", f"graph x{BACK_TO_BACK}")
times = collections.defaultdict(list)  # (seqs, call, mode) -> µs per round
s = bench.alibi_slopes(bench.VARLEN_HEADS)
for seqs in (16, 64):
    lengths = bench.varlen_lengths(seqs)
    cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
    packed = bench.random_qkv(1, bench.VARLEN_HEADS, bench.VARLEN_TOKENS, "BNHD")
    equal = [x.view(seqs, bench.VARLEN_TOKENS // seqs, bench.VARLEN_HEADS, bench.D) for x in packed]
    calls = {"packed": (bench.load_ours(s, layout="BNHD", cu_seqlens=cu), packed),
             "packed_max": (bench.load_ours(s, layout="BNHD", cu_seqlens=cu, max_seqlen=max(lengths)), packed),
             "equal": (bench.load_ours(s, layout="BNHD"), equal)}
    for round_ in range(rounds):
        names = list(calls)
        for name in names[round_ % 3:] + names[:round_ % 3]:
            attn, qkv = calls[name]

            def fn():
                return attn(*qkv)
            one, many = captured(fn, 1), captured(fn, BACK_TO_BACK)
            row = (do_bench(fn, return_mode="median") * 1e3, do_bench(one.replay, return_mode="median") * 1e3,
                   back_to_back_us(lambda: [fn() for _ in range(BACK_TO_BACK)]), back_to_back_us(many.replay))
            for mode, us in zip(modes, row):
                times[seqs, name, mode].append(us)
            print(f"seqs {seqs} round {round_} {name:10s} "
                  + "  ".join(f"{mode} {us:7.1f}" for mode, us in zip(modes, row))
                  + f"  host {host_us(fn):6.1f} us/call", flush=True)
            del one, many

print(f"\nmedian over {rounds} rounds, as a multiple of equal-length's time (> 1: slower)")
for seqs in (16, 64):
    for name in ("packed", "packed_max"):
        print(f"seqs {seqs} {name:10s} " + "  ".join(
            f"{mode} {statistics.median(times[seqs, name, mode]) / statistics.median(times[seqs, 'equal', mode]):.3f}"
            for mode in modes))
