"""Where packed 16's forward loses to equal-length outside the kernels (perf.md Next):
bench.py's varlen calls (16 and 64 sequences, BNHD, H 16, forward; packed without and with
max_seqlen, equal-length) timed by do_bench (L2 flushed), by do_bench of one call's CUDA
graph replayed, by 20 calls back to back (eager and as one graph; events / 20, no flush),
and the host's microseconds per call. Run from the repository root with PYTHONPATH=$PWD."""
import sys
import time

import torch
sys.path.insert(0, "bench")
import bench
from triton.testing import do_bench
import lightning_attn2_cuda as la

torch.manual_seed(0)
H, T = 16, 65536
s = bench.alibi_slopes(H)
for seqs in (16, 64):
    lengths = bench.varlen_lengths(seqs)
    cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
    qp = [torch.randn(1, T, H, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    qe = [x.view(seqs, T // seqs, H, 128) for x in qp]
    calls = {"packed": lambda: la.lightning_attn(*qp, s, scale=1.0, layout="BNHD", cu_seqlens=cu),
             "packed_max": lambda: la.lightning_attn(*qp, s, scale=1.0, layout="BNHD", cu_seqlens=cu,
                                                     max_seqlen=max(lengths)),
             "equal": lambda: la.lightning_attn(*qe, s, scale=1.0, layout="BNHD")}
    for rnd in range(2):
        for name, fn in calls.items():
            fn(); torch.cuda.synchronize()
            t_bench = do_bench(fn, warmup=25, rep=100, return_mode="median")
            g1 = torch.cuda.CUDAGraph()
            st = torch.cuda.Stream(); st.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(st):
                fn()
            torch.cuda.current_stream().wait_stream(st)
            with torch.cuda.graph(g1):
                fn()
            t_graph1 = do_bench(g1.replay, warmup=25, rep=100, return_mode="median")
            g20 = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g20):
                for _ in range(20):
                    fn()
            e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
            res = {}
            for label, run in (("eager20", lambda: [fn() for _ in range(20)]), ("graph20", g20.replay)):
                ts = []
                for _ in range(10):
                    torch.cuda.synchronize(); e0.record(); run(); e1.record(); torch.cuda.synchronize()
                    ts.append(e0.elapsed_time(e1) / 20)
                res[label] = sorted(ts)[5]
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            host_us = (time.perf_counter() - t0) / 200 * 1e6
            torch.cuda.synchronize()
            print(f"seqs {seqs} round {rnd} {name:11s} do_bench {t_bench*1e3:7.1f} us  graph1 {t_graph1*1e3:7.1f}"
                  f"  eager20 {res['eager20']*1e3:7.1f}  graph20 {res['graph20']*1e3:7.1f}  host {host_us:6.1f} us/call",
                  flush=True)
            del g1, g20
