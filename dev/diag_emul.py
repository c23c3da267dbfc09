#!/usr/bin/env python3
"""Per-lane numpy emulation of DiagonalKScale (csrc/tile_ops.cuh).

For a 16x16 bf16 tile A (one m-tile, one k-step of the state update's A = K^T) and
the 16 key weights w of that k-step:
  * builds every lane's m16n8k16 A fragment (PTX ISA 9.7.14.5.8 layout),
  * builds every lane's uint4 table entry exactly as diagonal_scale_fragments does
    (hi/lo bf16 bits shifted by 16 * (g % 2), zero unless g / 2 == t),
  * emulates the four mma.sync m16n8k8 .bf16 products *from the fragments*:
    reassembles A (16x8) from a0/a1 (PTX 9.7.14.5.7 layout), B (8x8) from b0/b1
    (row 2t + i, col g), computes D = A B + C exactly (float64: at most two nonzero
    terms per element, exact) and rounds to fp32 (RNE, and RZ as a pessimistic
    model of the tensor core's accumulation), then hands D out per the C/D layout,
  * repacks pack2<bf16> (RNE, first argument in the low half) into a[0..3],
  * decodes the repacked fragments back into a 16x16 tile and compares with
      old = bf16_rn(fp32(a * w))     (the previous per-register path), and
      exact = bf16_rn(a * w)         (one rounding of the exact product).
Reports max differences in bf16 ulps and lists mismatches.
"""
import math
import sys

import numpy as np

rng = np.random.default_rng(12345)

# ---------------------------------------------------------------- bf16 helpers
def f32_bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def bf16_rn_bits(x):
    """__float2bfloat16_rn of fp32 x: RNE, subnormals kept, NaN quietened."""
    u = f32_bits(x).astype(np.uint64)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    r = np.where(nan, ((u >> 16) | 0x40) & 0xFFFF, r)
    return r.astype(np.uint16)


def bf16_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def bf16_rn(x):
    return bf16_to_f32(bf16_rn_bits(np.asarray(x, dtype=np.float32)))


def round_f64_to(x, mant_bits, emin, emax, mode="rne"):
    """Round float64 x (treated as exact) to a binary format with `mant_bits` bits of
    significand (incl. the implicit one), min normal exponent emin, max exponent emax."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for idx, v in np.ndenumerate(x):
        if not math.isfinite(v) or v == 0.0:
            out[idx] = v
            continue
        m, e = math.frexp(abs(v))  # v = m 2^e, m in [0.5, 1)
        e1 = max(e - 1, emin)  # exponent of the leading bit (clamped: subnormals)
        q = math.ldexp(1.0, e1 - (mant_bits - 1))  # ulp
        n = abs(v) / q  # exact (power of two scaling)
        if mode == "rne":
            r = math.floor(n)
            frac = n - r
            if frac > 0.5 or (frac == 0.5 and r % 2 == 1):
                r += 1
        else:  # rz
            r = math.floor(n)
        res = r * q
        if res >= math.ldexp(1.0, emax + 1):
            res = math.inf if mode == "rne" else math.ldexp(2.0 - 2.0 ** (1 - mant_bits), emax)
        out[idx] = math.copysign(res, v)
    return out


def to_f32(x, mode):
    return round_f64_to(x, 24, -126, 127, mode).astype(np.float32)


def bf16_exact(x64):
    return round_f64_to(x64, 8, -126, 127, "rne").astype(np.float32)


def bf16_ordinal(v):
    """Monotone integer of a bf16 value (for ulp distances)."""
    b = bf16_rn_bits(np.asarray(v, dtype=np.float32)).astype(np.int64)
    return np.where(b & 0x8000, -(b & 0x7FFF), b)


# ---------------------------------------------------------------- fragments
LANES = range(32)


def pack(lo_bits, hi_bits):
    return (int(hi_bits) << 16) | int(lo_bits)


def unpack(reg):
    return reg & 0xFFFF, reg >> 16


def a_fragments_16x16(A_bits):
    """m16n8k16 A fragment: a[0] = (g, 2t..2t+1), a[1] = (g+8, ..), a[2] = (g, 2t+8..),
    a[3] = (g+8, 2t+8..); lower-indexed element in the low half."""
    frags = []
    for lane in LANES:
        g, t = lane // 4, lane % 4
        regs = []
        for rr, cc in ((g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)):
            regs.append(pack(A_bits[rr, cc], A_bits[rr, cc + 1]))
        frags.append(regs)
    return frags


def decode_16x16(frags):
    A = np.zeros((16, 16), dtype=np.uint16)
    for lane in LANES:
        g, t = lane // 4, lane % 4
        for reg, (rr, cc) in zip(frags[lane], ((g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8))):
            lo, hi = unpack(reg)
            A[rr, cc], A[rr, cc + 1] = lo, hi
    return A


def diagonal_scale_fragments(k_step, lane, w):
    """Exactly the device function: w(key) is the fp32 weight of key `key`."""
    g, t = lane // 4, lane % 4
    parts = [0, 0, 0, 0]
    if g // 2 == t:
        for half in range(2):
            weight = np.float32(w(16 * k_step + 8 * half + g))
            hi = bf16_rn_bits(weight)
            lo = bf16_rn_bits(np.float32(weight - bf16_to_f32(hi)))  # fp32 subtraction
            parts[2 * half] = int(hi) << (16 * (g % 2))
            parts[2 * half + 1] = int(lo) << (16 * (g % 2))
    return parts


def mma_m16n8k8_bf16(a0s, a1s, bs, cs, mode):
    """Per-lane registers in, per-lane d[4] out (float32)."""
    A = np.zeros((16, 8))
    B = np.zeros((8, 8))
    C = np.zeros((16, 8))
    for lane in LANES:
        g, t = lane // 4, lane % 4
        for i in range(4):  # A: row g for a0,a1; g+8 for a2,a3; col 2t + (i & 1)
            reg = a0s[lane] if i < 2 else a1s[lane]
            bits = unpack(reg)[i & 1]
            A[g + 8 * (i >= 2), 2 * t + (i & 1)] = float(bf16_to_f32(bits))
        for i in range(2):  # B: row 2t + i, col g
            B[2 * t + i, g] = float(bf16_to_f32(unpack(bs[lane])[i]))
        for i in range(4):  # C: row g (+8 for c2,c3), col 2t + (i & 1)
            C[g + 8 * (i >= 2), 2 * t + (i & 1)] = cs[lane][i]
    with np.errstate(invalid="ignore", over="ignore"):
        # exact: each element has at most one nonzero product (diagonal B) plus C;
        # a sum with NaN/Inf follows IEEE.
        D = np.zeros((16, 8))
        for r in range(16):
            for n in range(8):
                terms = [A[r, k] * B[k, n] for k in range(8)] + [C[r, n]]
                if all(math.isfinite(x) for x in terms):
                    D[r, n] = math.fsum(terms)
                else:
                    D[r, n] = sum(terms)
    D32 = to_f32(D, mode)
    return [[D32[g + 8 * (i >= 2), 2 * t + (i & 1)] for i in range(4)] for g, t in ((l // 4, l % 4) for l in LANES)]


def scale_columns_on_tensor_cores(frags, table, mode):
    zero = [[0.0] * 4 for _ in LANES]
    a = frags
    low = mma_m16n8k8_bf16([x[0] for x in a], [x[1] for x in a], [w[0] for w in table], zero, mode)
    low = mma_m16n8k8_bf16([x[0] for x in a], [x[1] for x in a], [w[1] for w in table], low, mode)
    high = mma_m16n8k8_bf16([x[2] for x in a], [x[3] for x in a], [w[2] for w in table], zero, mode)
    high = mma_m16n8k8_bf16([x[2] for x in a], [x[3] for x in a], [w[3] for w in table], high, mode)
    out = []
    for lane in LANES:
        L, H = low[lane], high[lane]
        p = lambda x, y: pack(bf16_rn_bits(np.float32(x)), bf16_rn_bits(np.float32(y)))
        out.append([p(L[0], L[1]), p(L[2], L[3]), p(H[0], H[1]), p(H[2], H[3])])
    return out


# ---------------------------------------------------------------- weights like the kernel
def masked_decay_value(kv_scale, slope, derivative_scale, state, distance):
    if distance < 0:
        decay = np.float32(0.0)
    else:
        decay = np.float32(kv_scale) * np.float32(math.exp(-slope * distance))
    if state == 0:
        return np.float32(decay)
    return np.float32(np.float32(derivative_scale) * np.float32(distance)) * decay


def random_tile(kind):
    if kind == "normal":
        x = rng.standard_normal((16, 16))
    elif kind == "wide":
        x = rng.standard_normal((16, 16)) * 10.0 ** rng.uniform(-30, 30, (16, 16))
    elif kind == "sparse":
        x = rng.standard_normal((16, 16)) * (rng.random((16, 16)) < 0.5)
    else:  # bf16 bit patterns, finite only
        b = rng.integers(0, 0x10000, (16, 16)).astype(np.uint16)
        v = bf16_to_f32(b)
        v[~np.isfinite(v)] = 1.0
        x = v
    with np.errstate(over="ignore"):
        return bf16_rn_bits(np.asarray(x, dtype=np.float32))


def old_path(A_bits, w16):
    a = bf16_to_f32(A_bits)
    with np.errstate(over="ignore", invalid="ignore"):
        return bf16_rn_bits((a * w16[None, :]).astype(np.float32))  # fp32 RNE product, then bf16


def exact_path(A_bits, w16):
    a = bf16_to_f32(A_bits).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return bf16_rn_bits(bf16_exact(a * w16.astype(np.float64)[None, :]))


def run_case(A_bits, wfun, k_step, mode, stats, label):
    table = [diagonal_scale_fragments(k_step, lane, wfun) for lane in LANES]
    new = decode_16x16(scale_columns_on_tensor_cores(a_fragments_16x16(A_bits), table, mode))
    w16 = np.array([wfun(16 * k_step + c) for c in range(16)], dtype=np.float32)
    old = old_path(A_bits, w16)
    ex = exact_path(A_bits, w16)
    newv, oldv, exv = bf16_to_f32(new), bf16_to_f32(old), bf16_to_f32(ex)
    for name, ref, refv in (("old", old, oldv), ("exact", ex, exv)):
        both_nan = np.isnan(newv) & np.isnan(refv)
        signed_zero = (newv == 0) & (refv == 0) & (new != ref)
        stats[name]["signed_zero"] += int(np.sum(signed_zero))
        same = (new == ref) | both_nan | signed_zero
        if not np.all(same):
            finite = np.isfinite(newv) & np.isfinite(refv)
            d = np.abs(bf16_ordinal(newv) - bf16_ordinal(refv))
            d = np.where(finite, d, 0)
            stats[name]["elems_diff"] += int(np.sum(~same))
            stats[name]["max_ulp"] = max(stats[name]["max_ulp"], int(d.max()))
            nonfinite_mismatch = int(np.sum(~same & ~finite))
            stats[name]["nonfinite_mismatch"] += nonfinite_mismatch
            dd = np.where(~same, d, -1)
            r, c = np.unravel_index(int(np.argmax(dd)), dd.shape)
            ulp = int(dd[r, c])
            small_w = float(w16[c]) < 2.0 ** -126 * 2.0 ** 8 or abs(float(newv[r, c])) < 2.0 ** -126 or abs(float(refv[r, c])) < 2.0 ** -126
            key = "tiny" if small_w else "normal"
            stats[name]["max_ulp_" + key] = max(stats[name].get("max_ulp_" + key, 0), ulp)
            stats[name]["diff_" + key] = stats[name].get("diff_" + key, 0)
            for (rr, cc) in np.argwhere(~same):
                tiny = (float(w16[cc]) < 2.0 ** -118 or abs(float(newv[rr, cc])) < 2.0 ** -126
                        or abs(float(refv[rr, cc])) < 2.0 ** -126)
                stats[name]["diff_" + ("tiny" if tiny else "normal")] = stats[name].get("diff_" + ("tiny" if tiny else "normal"), 0) + 1
                if not tiny:
                    stats[name]["max_ulp_normal_all"] = max(stats[name].get("max_ulp_normal_all", 0), int(d[rr, cc]))
                    if len(stats[name]["normal_examples"]) < 6:
                        stats[name]["normal_examples"].append(
                            f"{label}: a={float(bf16_to_f32(A_bits[rr, cc])):.9g} w={float(w16[cc]):.9g} "
                            f"new={float(newv[rr, cc]):.9g} {name}={float(refv[rr, cc]):.9g} ({int(d[rr, cc])} ulp)")
            if len(stats[name]["examples"]) < 6 and ulp > 1:
                stats[name]["examples"].append(
                    f"{label}: a={float(bf16_to_f32(A_bits[r, c])):.9g} w={float(w16[c]):.9g} "
                    f"new={float(newv[r, c]):.9g} {name}={float(refv[r, c]):.9g} ({ulp} ulp)")
        stats[name]["elems"] += 256


def main():
    modes = ["rne", "rz"]
    n_random = int(sys.argv[1]) if len(sys.argv) > 1 else 240
    only = sys.argv[2] if len(sys.argv) > 2 else "all"  # all | raw | kernel
    results = {}
    for mode in modes:
        stats = {n: dict(elems=0, elems_diff=0, max_ulp=0, nonfinite_mismatch=0, signed_zero=0, examples=[], normal_examples=[]) for n in ("old", "exact")}
        local = np.random.default_rng(7)
        cases = 0
        # 1) raw log-uniform weights 1e-40 .. 1e4 (with zeros and sign-free), random tiles
        for i in range(n_random if only != "kernel" else 0):
            kind = ("normal", "wide", "sparse", "bits")[i % 4]
            A = random_tile(kind)
            logw = local.uniform(-40, 4, 64)
            w = (10.0 ** logw).astype(np.float32)
            w[local.random(64) < 0.1] = 0.0
            k_step = int(local.integers(0, 4))
            run_case(A, lambda key, w=w: w[key], k_step, mode, stats, f"raw[{i}] {kind}")
            cases += 1
        # 2) the kernel's own tables: kv_scale x slope x valid x state
        for kv_scale in ((1.0, 0.5, 1e-6, 1e4, 3.7e-3) if only != "raw" else ()):
            for slope in (0.0, 0.0078125, 0.5, 1.0, 10.0, 1.5e-3):
                for valid in (64, 63, 37, 16, 9, 1):
                    for state, dscale in ((0, 1.0), (1, 1.0), (1, 0.125)):
                        k_step = int(local.integers(0, 4))
                        A = random_tile(("normal", "wide", "sparse", "bits")[cases % 4])
                        wf = lambda key, kv=kv_scale, s=slope, v=valid, st=state, ds=dscale: masked_decay_value(
                            kv, s, ds, st, v - 1 - key)
                        run_case(A, wf, k_step, mode, stats,
                                 f"kv={kv_scale} slope={slope} valid={valid} state={state} ks={k_step}")
                        cases += 1
        results[mode] = (cases, stats)
    for mode, (cases, stats) in results.items():
        print(f"== fp32 accumulation modelled as {mode.upper()}: {cases} tiles ({cases * 256} elements)")
        for name, s in stats.items():
            print(f"  vs {name:5s}: elements differing {s['elems_diff']} / {s['elems']}"
                  f" ({100.0 * s['elems_diff'] / s['elems']:.4f}%), max {s['max_ulp']} bf16 ulp,"
                  f" non-finite mismatches {s['nonfinite_mismatch']}, signed-zero-only {s['signed_zero']} (counted equal)")
            print(f"      normal range (|w| >= 2^-118, results >= 2^-126): {s.get('diff_normal', 0)} differ,"
                  f" max {s.get('max_ulp_normal_all', 0)} ulp")
            print(f"      tiny range (w < 2^-118 or result subnormal): {s.get('diff_tiny', 0)} differ")
            for e in s["normal_examples"]:
                print("      normal:", e)
            for e in s["examples"]:
                print("      worst :", e)

    # 3) special values
    print("== special values (RNE model)")
    A = random_tile("normal")
    A[3, 5] = 0x7F80  # +Inf in row 3, column 5 (key 5 of the k-step)
    A[10, 12] = 0x7FC0  # NaN in row 10, column 12
    w = np.full(64, 0.75, dtype=np.float32)
    table = [diagonal_scale_fragments(0, lane, lambda k: w[k]) for lane in LANES]
    new = bf16_to_f32(decode_16x16(scale_columns_on_tensor_cores(a_fragments_16x16(A), table, "rne")))
    old = bf16_to_f32(old_path(A, w[:16]))
    print("  row 3  new:", np.array2string(new[3], precision=3, max_line_width=200))
    print("  row 3  old:", np.array2string(old[3], precision=3, max_line_width=200))
    print("  row 10 new:", np.array2string(new[10], precision=3, max_line_width=200))
    print("  row 10 old:", np.array2string(old[10], precision=3, max_line_width=200))
    print("  other rows identical:", bool(np.array_equal(np.delete(new, [3, 10], 0), np.delete(old, [3, 10], 0))))
    A = random_tile("normal")
    for wv in (np.float32(np.inf), np.float32(3.4e38)):
        w = np.full(64, 1.0, dtype=np.float32)
        w[2] = wv
        table = [diagonal_scale_fragments(0, lane, lambda k: w[k]) for lane in LANES]
        new = bf16_to_f32(decode_16x16(scale_columns_on_tensor_cores(a_fragments_16x16(A), table, "rne")))
        old = bf16_to_f32(old_path(A, w[:16]))
        print(f"  weight {wv:g} in column 2: new col2 {new[:4, 2]} old col2 {old[:4, 2]};"
              f" other columns equal: {bool(np.array_equal(np.delete(new, 2, 1), np.delete(old, 2, 1)))}")


if __name__ == "__main__":
    main()
