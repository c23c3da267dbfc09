"""Time lightning_attn2_cuda against its anchors on one GPU, in one run.

Usage:
    python3 bench/bench.py                      # all shapes, all impls -> bench/results/h200.{json,md}
    python3 bench/bench.py --name h200-try --quick
    python3 bench/bench.py --shapes "4,32,2048;1,16,65536" --impls ours,fla_chunk

Every case measures, per implementation and (B, H, N): forward and forward+backward
milliseconds (median of triton.testing.do_bench), bf16, D = E = 128, ALiBi slopes
s_i = 2^(-8(i+1)/H), and the peak extra memory of one forward+backward. A device-to-device
copy timed in the same run gives the bandwidth for the memory floor (4 tensors forward,
11 forward+backward). An anchor that is not installed or raises gets null times and a "note";
the script exits 1 only when "ours" fails (after writing the results) or no CUDA GPU is
visible. To add rows (varlen, decode), write a function that returns rows and append it to
CASES.
"""
import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

D = E = 128
DTYPE = torch.bfloat16
DEFAULT_SHAPES = [(4, 32, 2048), (4, 32, 8192), (1, 32, 32768),
                  (1, 16, 65536), (1, 16, 131072), (8, 16, 4096)]
FWD_TENSORS, FWDBWD_TENSORS = 4, 11  # q,k,v,o; then + do read and dq,dk,dv written
COPY_BYTES = 2 << 30
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- implementations
# Each loader imports its package and returns attn(q, k, v) -> o for the given
# per-head slopes s (float32 [H], decay exp(-s)); the import happens here so that a
# missing anchor only costs its own rows. LAYOUT says how the loader wants q, k, v.

def load_ours(s):
    import lightning_attn2_cuda
    return lambda q, k, v: lightning_attn2_cuda.lightning_attn(q, k, v, s, scale=1.0)


def load_official(s):
    from lightning_attn.ops.triton import lightning_attn2
    s_h11 = s.reshape(-1, 1, 1).contiguous()  # the shape lightning_attn.utils._build_slope_tensor builds
    return lambda q, k, v: lightning_attn2(q, k, v, s_h11)


def load_fla(op_name):
    def load(s):
        import fla.ops.simple_gla as simple_gla
        op, g_gamma = getattr(simple_gla, op_name), -s  # g_gamma is the log decay
        return lambda q, k, v: op(q, k, v, g_gamma=g_gamma, scale=1.0)[0]
    return load


def load_sdpa(backend_name):
    # Pinned, because torch's default order picks cuDNN attention on an H200.
    def load(s):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backend, sdpa = getattr(SDPBackend, backend_name), torch.nn.functional.scaled_dot_product_attention

        def attn(q, k, v):
            with sdpa_kernel(backend):
                return sdpa(q, k, v, is_causal=True)
        return attn
    return load


LOADERS = {
    "ours": load_ours,
    "official": load_official,
    "fla_chunk": load_fla("chunk_simple_gla"),
    "fla_fused_chunk": load_fla("fused_chunk_simple_gla"),
    "sdpa_flash": load_sdpa("FLASH_ATTENTION"),
}
LAYOUT = {name: "BHND" for name in LOADERS} | {"fla_chunk": "BTHD", "fla_fused_chunk": "BTHD"}
ANCHORS_VS_OURS = ["official", "fla_chunk", "fla_fused_chunk"]


def alibi_slopes(h):
    """Per-head slopes, float32 [H] on the GPU: the project's own builder when it imports."""
    try:
        from lightning_attn2_cuda import build_slopes
        slopes = build_slopes(h)
    except ImportError:
        slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)])
    return slopes.reshape(h).float().cuda()


# ---------------------------------------------------------------- measuring

def time_ms(fn, quick, grad_to_none=None):
    from triton.testing import do_bench
    kw = dict(warmup=5, rep=20) if quick else dict(warmup=25, rep=100)
    if "return_mode" in inspect.signature(do_bench).parameters:
        return do_bench(fn, grad_to_none=grad_to_none, return_mode="median", **kw)
    return do_bench(fn, grad_to_none=grad_to_none, quantiles=[0.5], **kw)[0]


def measure_copy_tbps(quick):
    """Device-to-device copy bandwidth, (bytes read + bytes written) / time, in TB/s."""
    src = torch.randn(COPY_BYTES // 2, device="cuda", dtype=DTYPE)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), quick)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e12


def random_qkv(b, h, n, layout):
    shape = (b, h, n, D) if layout == "BHND" else (b, n, h, D)
    return [torch.randn(shape, device="cuda", dtype=DTYPE) for _ in range(3)]


def peak_extra_mib(fn, inputs):
    """Memory one call of fn allocates beyond what exists now (grads already None)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    for x in inputs:
        x.grad = None
    return peak / 2**20


def measure_impl(row, attn, layout, quick):
    """Fill row's fwd_ms, fwdbwd_ms and peak_mib; a failure leaves the later ones null."""
    q, k, v = random_qkv(row["B"], row["H"], row["N"], layout)
    row["fwd_ms"] = time_ms(lambda: attn(q, k, v), quick)
    for x in (q, k, v):
        x.requires_grad_(True)
    do = torch.randn_like(q)  # D == E, so o has q's shape

    def fwd_bwd():
        attn(q, k, v).backward(do)
    row["fwdbwd_ms"] = time_ms(fwd_bwd, quick, grad_to_none=[q, k, v])
    for x in (q, k, v):
        x.grad = None
    # After do_bench, so that Triton compilation, autotuning and do_bench's own
    # L2-flush buffer are not counted.
    row["peak_mib"] = peak_extra_mib(fwd_bwd, [q, k, v])


def describe(exc):
    """One line for the row's note: the exception's type and its message's first line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def dense_causal_rows(args, ctx):
    """The main table: one row per (impl, shape) of full causal attention."""
    rows = []
    for b, h, n in args.shapes:
        s = alibi_slopes(h)
        tensor_bytes = b * h * n * D * 2
        for name in args.impls:
            row = {"case": "dense", "impl": name, "B": b, "H": h, "N": n, "D": D, "E": E,
                   "dtype": "bf16", "fwd_ms": None, "fwdbwd_ms": None, "peak_mib": None,
                   "floor_fwd_ms": FWD_TENSORS * tensor_bytes / (ctx["copy_tbps"] * 1e9),
                   "floor_fwdbwd_ms": FWDBWD_TENSORS * tensor_bytes / (ctx["copy_tbps"] * 1e9),
                   "gpu": ctx["gpu"], "copy_tbps": ctx["copy_tbps"]}
            torch.manual_seed(0)
            try:
                measure_impl(row, LOADERS[name](s), LAYOUT[name], args.quick)
            except Exception as exc:  # an anchor that fails must not end the run
                row["note"] = describe(exc)
                print(f"  skipped {name} at B{b} H{h} N{n}: {row['note']}", flush=True)
            else:
                print(f"  {name:16s} B{b} H{h} N{n}: fwd {row['fwd_ms']:.3f} ms, "
                      f"fwd+bwd {row['fwdbwd_ms']:.3f} ms, peak {row['peak_mib']:.0f} MiB", flush=True)
            rows.append(row)
            torch.cuda.empty_cache()  # the failed or finished impl's tensors are gone now
    return rows


CASES = [dense_causal_rows]


# ---------------------------------------------------------------- report

def fmt(ms):
    return "—" if ms is None else f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def fmt_ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.2f}×"


def dense_markdown(rows, impls):
    by_key = {(r["B"], r["H"], r["N"], r["impl"]): r for r in rows if r.get("case") == "dense"}
    shapes = list(dict.fromkeys((r["B"], r["H"], r["N"]) for r in rows if r.get("case") == "dense"))
    anchors = [a for a in ANCHORS_VS_OURS if a in impls] if "ours" in impls else []
    head = (["B, H, N", "floor fwd / fwd+bwd"] + [f"{i} fwd / fwd+bwd" for i in impls]
            + [f"ours vs {a} fwd / fwd+bwd" for a in anchors]
            + (["ours / floor fwd / fwd+bwd"] if "ours" in impls else [])
            + [f"{i} peak MiB" for i in impls])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, h, n in shapes:
        rs = {i: by_key[(b, h, n, i)] for i in impls}
        any_row, ours = rs[impls[0]], rs.get("ours")
        cells = [f"{b}, {h}, {n}", f"{fmt(any_row['floor_fwd_ms'])} / {fmt(any_row['floor_fwdbwd_ms'])}"]
        cells += [f"{fmt(rs[i]['fwd_ms'])} / {fmt(rs[i]['fwdbwd_ms'])}" for i in impls]
        for a in anchors:
            cells.append(" / ".join(fmt_ratio(rs[a][t], ours[t]) for t in ("fwd_ms", "fwdbwd_ms")))
        if ours is not None:
            cells.append(" / ".join(fmt_ratio(ours[t], ours[f"floor_{t}"]) for t in ("fwd_ms", "fwdbwd_ms")))
        cells += ["—" if rs[i]["peak_mib"] is None else f"{rs[i]['peak_mib']:.0f}" for i in impls]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(rows, impls, ctx):
    notes = [f"- {r['impl']} at B{r['B']} H{r['H']} N{r['N']}: {r['note']}" for r in rows if "note" in r]
    return "\n".join([
        f"# Lightning Attention-2 benchmark on {ctx['gpu']}",
        "",
        f"bf16, D = E = {D}, ALiBi slopes; median ms of triton.testing.do_bench; torch {ctx['torch']}, "
        f"triton {ctx['triton']}. Copy bandwidth {ctx['copy_tbps']:.2f} TB/s (read + written); floor = "
        f"{FWD_TENSORS} (fwd) or {FWDBWD_TENSORS} (fwd+bwd) tensors at that bandwidth. "
        "Speed-up = anchor ms / ours ms; peak = extra memory of one fwd+bwd.",
        "",
        dense_markdown(rows, impls),
        *(["", "Skipped:", *notes] if notes else []),
    ])


# ---------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="h200", help="results go to bench/results/<name>.{json,md}")
    p.add_argument("--shapes", default=None, help='"B,H,N;B,H,N" (default: the six standard shapes)')
    p.add_argument("--impls", default=",".join(LOADERS), help=f"comma list out of {','.join(LOADERS)}")
    p.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    args = p.parse_args(argv)
    args.shapes = ([tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";") if s.strip()]
                   if args.shapes else DEFAULT_SHAPES)
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in args.impls if i not in LOADERS]
    if unknown or any(len(s) != 3 for s in args.shapes):
        p.error(f"unknown impls {unknown} or a shape that is not B,H,N: {args.shapes}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.py: no CUDA GPU is visible; this benchmark needs one (nothing was measured).",
              file=sys.stderr)
        return 1
    import triton
    ctx = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    ctx["copy_tbps"] = measure_copy_tbps(args.quick)
    print(f"{ctx['gpu']}: device-to-device copy {ctx['copy_tbps']:.2f} TB/s", flush=True)

    rows = [{"case": "copy", "impl": "copy", "bytes": 2 * COPY_BYTES, "copy_tbps": ctx["copy_tbps"],
             "gpu": ctx["gpu"], "torch": ctx["torch"], "triton": ctx["triton"]}]
    for case in CASES:
        rows += case(args, ctx)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{args.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    report = markdown_report(rows, args.impls, ctx)
    (RESULTS_DIR / f"{args.name}.md").write_text(report + "\n")
    print(report)
    ours_failed = any(r["impl"] == "ours" and "note" in r for r in rows)
    return 1 if ours_failed else 0


if __name__ == "__main__":
    sys.exit(main())
