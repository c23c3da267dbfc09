"""Time lightning_attn2_cuda against its anchors on one GPU, in one run.

Usage:
    python3 bench/bench.py                      # all shapes, all impls -> bench/results/<gpu>.{json,md}
    python3 bench/bench.py --name h200-try --quick
    python3 bench/bench.py --shapes "4,32,2048;1,16,65536" --impls ours,fla_chunk

Every case measures, per implementation and (B, H, N): forward and forward+backward
milliseconds (median of triton.testing.do_bench), bf16, D = E = 128, ALiBi slopes
s_i = 2^(-8(i+1)/H), and the peak extra memory of one forward+backward. A device-to-device
copy timed in the same run gives the bandwidth for the memory floor (4 tensors forward,
11 forward+backward). An anchor that is not installed or raises gets null times and a "note";
the script exits 1 only when "ours" fails (after writing the results) or no CUDA GPU is
visible. To add rows, write a function that returns rows and append it to CASES.

Two more tables:
- varlen: 16 packed sequences of mixed lengths totalling 65536 tokens, H = 16, with
  cu_seqlens: ours in [1, T, H, D] without and with max_seqlen, and FLA chunk_simple_gla;
  beside ours on the same tokens as an equal-length batch of 16 x 4096 in the same layout;
  then ours packed (max_seqlen) and equal-length again in [B, H, N, D]; ours' rows in
  VARLEN_ROUNDS turns, their medians reported. Then the same for
  64 shorter sequences (64 x 1024) and 512 short ones (512 x 128), where a sequence's
  partial last block is a large share of its blocks.
- learnable: forward and forward+backward with the decay learnable, its gradient
  computed too (4, 32, 2048 and 1, 16, 65536): ours with slope.requires_grad, FLA
  chunk_simple_gla with its per-token log decay g = -s from the same leaf s (fla-core
  0.6.0 gives g_gamma no gradient). The official kernels give the slope no gradient.
- decode: one token per sequence against fp32 states (B64 H32 and B256 H16): ours
  lightning_attn_decode updating the cache in place, FLA fused_recurrent_simple_gla with
  initial_state and output_final_state. Reported as state bytes read + written per second
  against the copy bandwidth.
"""
import argparse
import inspect
import json
import random
import re
import statistics
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

def load_ours(s, **options):
    """options: lightning_attn's keyword arguments (layout, cu_seqlens, max_seqlen)."""
    import lightning_attn2_cuda
    return lambda q, k, v: lightning_attn2_cuda.lightning_attn(q, k, v, s, scale=1.0, **options)


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


def timed_row(case, name, b, h, n, load, layout, args, ctx, **extra):
    """One implementation's fwd / fwd+bwd row on [b, h, n] inputs; an anchor that fails
    gets a note instead of times and does not end the run."""
    tensor_bytes = b * h * n * D * 2
    row = {"case": case, "impl": name, "B": b, "H": h, "N": n, "D": D, "E": E, "dtype": "bf16", "layout": layout,
           **extra,
           "fwd_ms": None, "fwdbwd_ms": None, "peak_mib": None,
           "floor_fwd_ms": FWD_TENSORS * tensor_bytes / (ctx["copy_tbps"] * 1e9),
           "floor_fwdbwd_ms": FWDBWD_TENSORS * tensor_bytes / (ctx["copy_tbps"] * 1e9),
           "gpu": ctx["gpu"], "copy_tbps": ctx["copy_tbps"]}
    torch.manual_seed(0)
    measured(row, f"{case} {name} at B{b} H{h} N{n}", lambda: measure_impl(row, load(), layout, args.quick),
             lambda: f"{case} {name:18s} B{b} H{h} N{n}: fwd {row['fwd_ms']:.3f} ms, "
                     f"fwd+bwd {row['fwdbwd_ms']:.3f} ms, peak {row['peak_mib']:.0f} MiB")
    torch.cuda.empty_cache()  # the failed or finished impl's tensors are gone now
    return row


def measured(row, what, measure, summary):
    """Runs measure(), which fills row; an anchor that raises gets a note in row
    instead and does not end the run. Prints summary() or the note."""
    try:
        measure()
    except Exception as exc:
        row["note"] = describe(exc)
        print(f"  skipped {what}: {row['note']}", flush=True)
    else:
        print(f"  {summary()}", flush=True)


def dense_causal_rows(args, ctx):
    """The main table: one row per (impl, shape) of full causal attention."""
    rows = []
    for b, h, n in args.shapes:
        s = alibi_slopes(h)
        for name in args.impls:
            rows.append(timed_row("dense", name, b, h, n, lambda: LOADERS[name](s), LAYOUT[name], args, ctx))
    return rows


LEARNABLE_SHAPES = [(4, 32, 2048), (1, 16, 65536)]


def load_fla_learnable(s, b, n):
    """FLA's way to a learnable per-head decay: chunk_simple_gla's per-token log decay
    g, here -s at every token of [b, n] (autograd sums its gradient back onto s)."""
    from fla.ops.simple_gla import chunk_simple_gla
    return lambda q, k, v: chunk_simple_gla(q, k, v, g=(-s).expand(b, n, -1), scale=1.0)[0]


def learnable_rows(args, ctx):
    """Ours and FLA chunk with the slopes requiring grad (see the module's docstring)."""
    rows = []
    for b, h, n in LEARNABLE_SHAPES:
        s = alibi_slopes(h).requires_grad_(True)
        loaders = {"ours": lambda: load_ours(s), "fla_chunk": lambda: load_fla_learnable(s, b, n)}
        for name in [i for i in args.impls if i in loaders]:
            rows.append(timed_row("learnable", name, b, h, n, loaders[name], LAYOUT[name], args, ctx))
    return rows


VARLEN_TOKENS, VARLEN_HEADS = 65536, 16
VARLEN_SEQS = [16, 64, 512]  # sequences per packed batch, one table row group each
# Ours' rows of a group are timed this many times, in turns of rotating order, and
# reported as medians: packed and equal-length differ by a few percent, less than the
# drift between rows timed once one after the other (perf.md v15: 0.92x once, 1.01x in
# turns, the same closures on the same GPU).
VARLEN_ROUNDS = 3
DECODE_SHAPES = [(64, 32), (256, 16)]
# Which --impls select each decode row: ours, and FLA's fused recurrent kernel (its
# decode path, which no loader names) with either FLA loader.
DECODE_SELECTED_BY = {"ours": {"ours"}, "fla_fused_recurrent": {"fla_chunk", "fla_fused_chunk"}}


def varlen_lengths(seqs):
    """`seqs` mixed lengths that sum to 65536, fixed (16: 782 to 6623, like ANCHORS.md's
    668 to 6771)."""
    rng = random.Random(1)
    raw = [rng.uniform(1.0, 10.0) for _ in range(seqs)]
    lengths = [round(VARLEN_TOKENS * r / sum(raw)) for r in raw]
    lengths[-1] += VARLEN_TOKENS - sum(lengths)
    return lengths


def varlen_rows(args, ctx):
    return [row for seqs in VARLEN_SEQS for row in varlen_rows_of(seqs, args, ctx)]


def varlen_rows_of(seqs, args, ctx):
    lengths = varlen_lengths(seqs)
    cu = torch.tensor([0] + lengths, device="cuda").cumsum(0)
    s = alibi_slopes(VARLEN_HEADS)

    def ours_packed(layout, max_seqlen=None):
        return load_ours(s, layout=layout, cu_seqlens=cu.to(torch.int32), max_seqlen=max_seqlen)

    def fla_packed():
        from fla.ops.simple_gla import chunk_simple_gla
        return lambda q, k, v: chunk_simple_gla(q, k, v, g_gamma=-s, scale=1.0, cu_seqlens=cu)[0]

    # Packed and equal-length in each of ours' layouts, so that each pair is compared on
    # the same memory order: in BNHD the equal-length batch [seqs, T / seqs, H, D] is
    # laid out as the packed [1, T, H, D].
    packed, equal = (1, VARLEN_TOKENS), (seqs, VARLEN_TOKENS // seqs)
    impls = {"ours": (lambda: ours_packed("BNHD"), packed, "BNHD"),
             "ours_max_seqlen": (lambda: ours_packed("BNHD", max(lengths)), packed, "BNHD"),
             "ours_equal_length": (lambda: load_ours(s, layout="BNHD"), equal, "BNHD"),
             "ours_max_seqlen_bhnd": (lambda: ours_packed("BHND", max(lengths)), packed, "BHND"),
             "ours_equal_length_bhnd": (lambda: load_ours(s, layout="BHND"), equal, "BHND"),
             "fla_chunk": (fla_packed, packed, "BTHD")}
    selected = {name: spec for name, spec in impls.items()
                if ("ours" if name.startswith("ours") else name) in args.impls}  # --impls ours selects all of ours'
    ours = [name for name in selected if name.startswith("ours")]
    timed = {name: [] for name in selected}
    turns = [ours[r % len(ours):] + ours[:r % len(ours)] for r in range(VARLEN_ROUNDS)] if ours else []
    for name in [name for turn in turns for name in turn] + [name for name in selected if name not in ours]:
        load, (b, n), layout = selected[name]
        timed[name].append(timed_row("varlen", name, b, VARLEN_HEADS, n, load, layout, args, ctx, seqs=seqs,
                                     lengths=lengths))
    return [median_row(timed[name]) for name in selected]


def median_row(rounds):
    """One row from the rows of several rounds: the medians of their times (and peaks),
    with every round's times under "rounds"."""
    row = dict(rounds[0])
    for key in ("fwd_ms", "fwdbwd_ms", "peak_mib"):
        values = [r[key] for r in rounds if r[key] is not None]
        row[key] = statistics.median(values) if values else None
    if len(rounds) > 1:
        row["rounds"] = {key: [r[key] for r in rounds] for key in ("fwd_ms", "fwdbwd_ms")}
    return row


def decode_rows(args, ctx):
    rows = []
    for b, h in DECODE_SHAPES:
        s = alibi_slopes(h)
        state_bytes = 2 * b * h * D * E * 4  # fp32 state read and written
        torch.manual_seed(0)
        q, k = (torch.randn(b, h, D, device="cuda", dtype=DTYPE) for _ in range(2))
        v = torch.randn(b, h, E, device="cuda", dtype=DTYPE)
        cache = torch.randn(b, h, D, E, device="cuda")

        def ours():
            import lightning_attn2_cuda
            return lambda: lightning_attn2_cuda.lightning_attn_decode(q, k, v, cache, s, 1.0)

        def fla():
            from fla.ops.simple_gla import fused_recurrent_simple_gla
            q4, k4, v4 = (x[:, None] for x in (q, k, v))  # [B, 1, H, dim]
            return lambda: fused_recurrent_simple_gla(q4, k4, v4, g_gamma=-s, scale=1.0, initial_state=cache,
                                                      output_final_state=True)
        for name, load in (("ours", ours), ("fla_fused_recurrent", fla)):
            if not DECODE_SELECTED_BY[name] & set(args.impls):
                continue
            row = {"case": "decode", "impl": name, "B": b, "H": h, "D": D, "E": E, "dtype": "bf16",
                   "state_bytes": state_bytes, "ms": None, "gpu": ctx["gpu"], "copy_tbps": ctx["copy_tbps"]}

            def measure():
                row["ms"] = time_ms(load(), args.quick)
                row["state_tbps"] = state_bytes / (row["ms"] * 1e-3) / 1e12
                row["fraction_of_copy"] = row["state_tbps"] / ctx["copy_tbps"]

            measured(row, f"decode {name} B{b} H{h}", measure,
                     lambda: f"decode {name:20s} B{b} H{h}: {row['ms'] * 1e3:.1f} us, {row['state_tbps']:.2f} TB/s "
                             f"({100 * row['fraction_of_copy']:.0f}% of copy)")
            rows.append(row)
    return rows


CASES = [dense_causal_rows, learnable_rows, varlen_rows, decode_rows]


# ---------------------------------------------------------------- report

def fmt(ms):
    return "—" if ms is None else f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def fmt_ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.2f}×"


def shapes_markdown(rows, impls, case):
    """The table of a case timed per (impl, shape): dense, or learnable."""
    by_key = {(r["B"], r["H"], r["N"], r["impl"]): r for r in rows if r.get("case") == case}
    shapes = list(dict.fromkeys((r["B"], r["H"], r["N"]) for r in rows if r.get("case") == case))
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


def varlen_markdown(rows):
    tables = []
    for seqs in VARLEN_SEQS:
        rs = [r for r in rows if r.get("case") == "varlen" and r["seqs"] == seqs]
        if not rs:
            continue
        ours = next((r for r in rs if r["impl"] == "ours"), None)
        tables += [f"Varlen: {seqs} sequences, {VARLEN_TOKENS} tokens, H = {VARLEN_HEADS} "
                   f"(lengths {min(rs[0]['lengths'])} to {max(rs[0]['lengths'])}; equal length "
                   f"{VARLEN_TOKENS // seqs}); floor {fmt(rs[0]['floor_fwd_ms'])} / "
                   f"{fmt(rs[0]['floor_fwdbwd_ms'])} ms"
                   + (f"; ours' rows are medians of {len(ours['rounds']['fwd_ms'])} rounds timed in turn."
                      if ours and "rounds" in ours else "."),
                   "", "| impl | layout | fwd / fwd+bwd ms | vs ours packed fwd / fwd+bwd | / floor fwd / fwd+bwd "
                   "| peak MiB |",
                   "|---|---|---|---|---|---|"]
        for r in rs:
            vs = " / ".join(fmt_ratio(r[t], ours[t]) if ours else "—" for t in ("fwd_ms", "fwdbwd_ms"))
            floor = " / ".join(fmt_ratio(r[t], r[f"floor_{t}"]) for t in ("fwd_ms", "fwdbwd_ms"))
            peak = "—" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            tables.append(f"| {r['impl']} | {r['layout']} | {fmt(r['fwd_ms'])} / {fmt(r['fwdbwd_ms'])} | {vs} | "
                          f"{floor} | {peak} |")
        by_impl = {r["impl"]: r for r in rs}
        pairs = [(layout, by_impl.get(f"ours_max_seqlen{suffix}"), by_impl.get(f"ours_equal_length{suffix}"))
                 for layout, suffix in (("BNHD", ""), ("BHND", "_bhnd"))]
        speeds = [f"{layout} " + " / ".join("—" if p[t] is None or e[t] is None else f"{e[t] / p[t]:.3f}×"
                                            for t in ("fwd_ms", "fwdbwd_ms"))
                  for layout, p, e in pairs if p and e]
        if speeds:
            tables += ["", "Packed (max_seqlen) speed as a multiple of equal-length in the same layout, fwd / "
                       "fwd+bwd: " + "; ".join(speeds) + "."]
        tables.append("")
    return "\n".join(tables).rstrip()


def learnable_markdown(rows, impls):
    timed = {r["impl"] for r in rows if r.get("case") == "learnable"}
    if not timed:
        return ""
    return ("Learnable decay: the slopes require grad (FLA: per-token g = -s).\n\n"
            + shapes_markdown(rows, [i for i in impls if i in timed], "learnable"))


def decode_markdown(rows):
    rs = [r for r in rows if r.get("case") == "decode"]
    if not rs:
        return ""
    lines = ["Decode: one token per sequence, fp32 state read + written.", "",
             "| B, H | impl | us | state TB/s | of copy |", "|---|---|---|---|---|"]
    for r in rs:
        if r["ms"] is None:
            lines.append(f"| {r['B']}, {r['H']} | {r['impl']} | — | — | — |")
        else:
            lines.append(f"| {r['B']}, {r['H']} | {r['impl']} | {r['ms'] * 1e3:.1f} | {r['state_tbps']:.2f} | "
                         f"{100 * r['fraction_of_copy']:.0f}% |")
    return "\n".join(lines)


def markdown_report(rows, impls, ctx):
    notes = [f"- {r['case']} {r['impl']} at B{r['B']} H{r['H']}: {r['note']}" for r in rows if "note" in r]
    return "\n".join([
        f"# Lightning Attention-2 benchmark on {ctx['gpu']}",
        "",
        f"bf16, D = E = {D}, ALiBi slopes; median ms of triton.testing.do_bench"
        f"{' (--quick: warmup 5 ms, rep 20 ms)' if ctx['quick'] else ''}; torch {ctx['torch']}, "
        f"triton {ctx['triton']}. Copy bandwidth {ctx['copy_tbps']:.2f} TB/s (read + written); floor = "
        f"{FWD_TENSORS} (fwd) or {FWDBWD_TENSORS} (fwd+bwd) tensors at that bandwidth. "
        "Speed-up = anchor ms / ours ms; peak = extra memory of one fwd+bwd.",
        "",
        shapes_markdown(rows, impls, "dense"),
        "",
        learnable_markdown(rows, impls),
        "",
        varlen_markdown(rows),
        "",
        decode_markdown(rows),
        *(["", "Skipped:", *notes] if notes else []),
    ])


# ---------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default=None,
                   help="results go to bench/results/<name>.{json,md} (default: the GPU's model, e.g. h200)")
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


def results_name(gpu):
    """The results' file name for a GPU: its model ("NVIDIA H100 80GB HBM3" -> "h100"), so
    that a run on whichever GPU the pool gives is not filed under another's name."""
    models = re.findall(r"\b([A-Z]+\d{2,4}[A-Z]?)\b", gpu)
    return (models[0] if models else re.sub(r"\W+", "_", gpu)).lower()


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.py: no CUDA GPU is visible; this benchmark needs one (nothing was measured).",
              file=sys.stderr)
        return 1
    import triton
    ctx = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "quick": args.quick}
    name = args.name or results_name(ctx["gpu"])
    ctx["copy_tbps"] = measure_copy_tbps(args.quick)
    print(f"{ctx['gpu']}: device-to-device copy {ctx['copy_tbps']:.2f} TB/s", flush=True)

    rows = [{"case": "copy", "impl": "copy", "bytes": 2 * COPY_BYTES, "copy_tbps": ctx["copy_tbps"],
             "gpu": ctx["gpu"], "torch": ctx["torch"], "triton": ctx["triton"], "quick": ctx["quick"]}]
    for case in CASES:
        rows += case(args, ctx)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    report = markdown_report(rows, args.impls, ctx)
    (RESULTS_DIR / f"{name}.md").write_text(report + "\n")
    print(report)
    ours_failed = any(r["impl"] == "ours" and "note" in r for r in rows)
    return 1 if ours_failed else 0


if __name__ == "__main__":
    sys.exit(main())
