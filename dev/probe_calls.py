"""One build's side of dev/compare_builds.py: imports lightning_attn2_cuda from --root,
runs a fixed list of seeded calls, saves their outputs and gradients (--save) and
prints do_bench medians and per-kernel profiler times as JSON (--time)."""
import argparse
import json
import sys
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench import VARLEN_TOKENS, varlen_lengths  # noqa: E402

CALLS = {
    # name: (dtype, B, H, N, D, E, packed lengths or None, layout, slope grad)
    "bf16 1,32,32768": (torch.bfloat16, 1, 32, 32768, 128, 128, None, "BHND", False),
    "bf16 4,32,2048": (torch.bfloat16, 4, 32, 2048, 128, 128, None, "BHND", False),
    "bf16 8,16,4096": (torch.bfloat16, 8, 16, 4096, 128, 128, None, "BHND", False),
    "bf16 packed16 BNHD": (torch.bfloat16, 1, 16, 65536, 128, 128, 16, "BNHD", False),
    "bf16 equal16 BNHD": (torch.bfloat16, 16, 16, 4096, 128, 128, None, "BNHD", False),
    "bf16 packed16 BHND": (torch.bfloat16, 1, 16, 65536, 128, 128, 16, "BHND", False),
    "bf16 equal16 BHND": (torch.bfloat16, 16, 16, 4096, 128, 128, None, "BHND", False),
    "bf16 packed64 BNHD": (torch.bfloat16, 1, 16, 65536, 128, 128, 64, "BNHD", False),
    "bf16 equal64 BNHD": (torch.bfloat16, 64, 16, 1024, 128, 128, None, "BNHD", False),
    "bf16 packed512 BNHD": (torch.bfloat16, 1, 16, 65536, 128, 128, 512, "BNHD", False),
    "bf16 equal512 BNHD": (torch.bfloat16, 512, 16, 128, 128, 128, None, "BNHD", False),
    "bf16 D64xE32 8,32,2048": (torch.bfloat16, 8, 32, 2048, 64, 32, None, "BHND", False),
    "bf16 D32xE64 8,32,2048": (torch.bfloat16, 8, 32, 2048, 32, 64, None, "BHND", False),
    "bf16 slope grad D128 2,16,4097": (torch.bfloat16, 2, 16, 4097, 128, 128, None, "BHND", True),
    "bf16 slope grad D256 2,8,2049": (torch.bfloat16, 2, 8, 2049, 256, 64, None, "BHND", True),
    "bf16 slope grad 1,16,65536": (torch.bfloat16, 1, 16, 65536, 128, 128, None, "BHND", True),
    "bf16 slope grad 4,32,2048": (torch.bfloat16, 4, 32, 2048, 128, 128, None, "BHND", True),
    "bf16 slope grad packed16 BNHD": (torch.bfloat16, 1, 16, 65536, 128, 128, 16, "BNHD", True),
    "fp16 1,32,32768": (torch.float16, 1, 32, 32768, 128, 128, None, "BHND", False),
    "fp16 slope grad D256 2,8,2049": (torch.float16, 2, 8, 2049, 256, 64, None, "BHND", True),
    "fp32 2,8,3001": (torch.float32, 2, 8, 3001, 128, 96, None, "BHND", True),
}


def setup_call(la, name):
    dtype, b, h, n, d, e, seqs, layout, slope_grad = CALLS[name]
    torch.manual_seed(zlib.crc32(name.encode()))  # not hash(): salted per process
    shape = (lambda dim: (b, h, n, dim)) if layout == "BHND" else (lambda dim: (b, n, h, dim))
    q, k = (torch.randn(shape(d), device="cuda", dtype=dtype) for _ in range(2))
    v = torch.randn(shape(e), device="cuda", dtype=dtype)
    do = torch.randn(shape(e), device="cuda", dtype=dtype)
    slope = la.build_slopes(h).cuda()
    options = {"layout": layout}
    if seqs is not None:
        assert n == VARLEN_TOKENS
        lengths = varlen_lengths(seqs)  # bench/bench.py's varlen rows
        options["cu_seqlens"] = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
        options["max_seqlen"] = max(lengths)
    inputs = [x.requires_grad_(True) for x in (q, k, v)]
    if slope_grad:
        slope.requires_grad_(True)
        inputs.append(slope)

    def fwd():
        with torch.no_grad():
            return la.lightning_attn(q, k, v, slope, 0.5, **options)

    def fwd_bwd():
        o = la.lightning_attn(q, k, v, slope, 0.5, **options)
        return (o, *torch.autograd.grad(o, inputs, do))

    return fwd, fwd_bwd, inputs


def kernel_times_us(fn):
    """Per-kernel CUDA time of one call (mean of 5), by kernel name, in µs."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        t = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
        out[short_kernel_name(ev.key)] = round(t / 5, 1)
    return out


def short_kernel_name(key):
    """'state pass <bf16, 128, 64, false>' for a sweep kernel, else the name's start."""
    if "linear_attn_sweep_kernel" not in key:
        return key[:60]
    state = any(tag in key for tag in ("SweepPass)0", "SweepPassE0", "SweepPass::kState", "SweepPass)(0)"))
    traits = key.split("KernelTraits<", 1)[-1].split(">", 1)[0] if "KernelTraits<" in key else key[-60:]
    return ("state pass " if state else "output pass ") + traits


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--save")
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--calls", default="")
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    import lightning_attn2_cuda as la
    assert la.interface._C is not None and la.__file__.startswith(args.root), la.__file__
    from triton.testing import do_bench
    names = [c for c in CALLS if not args.calls or c in args.calls.split(";")]
    saved, times = {}, {}
    for name in names:
        fwd, fwd_bwd, _ = setup_call(la, name)
        if args.save:
            saved[name] = [x.detach().cpu() for x in fwd_bwd()]
        if args.time:
            times[name] = {"fwd_ms": do_bench(fwd, return_mode="median"),
                           "fwdbwd_ms": do_bench(fwd_bwd, return_mode="median"),
                           "fwd_kernels_us": kernel_times_us(fwd),
                           "fwdbwd_kernels_us": kernel_times_us(fwd_bwd)}
        torch.cuda.empty_cache()
    if args.save:
        torch.save(saved, args.save)
    print(json.dumps(times))


if __name__ == "__main__":
    main()
