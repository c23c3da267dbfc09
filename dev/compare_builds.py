"""Two builds of lightning_attn2_cuda side by side (dev/probe_calls.py in subprocesses):
the differences of their outputs and gradients on the same calls, then their times in
alternating rounds. Usage: compare_builds.py ROOT_A ROOT_B OUTDIR [ROUNDS]; PROBE_CALLS
(names joined by ";") limits the calls."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch

root_a, root_b, out = sys.argv[1:4]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 2
probe = [sys.executable, __file__.replace("compare_builds.py", "probe_calls.py")]


def run(root, *extra):
    calls = ["--calls", os.environ["PROBE_CALLS"]] if os.environ.get("PROBE_CALLS") else []
    result = subprocess.run(probe + ["--root", root, *calls, *extra], capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr[-3000:])
        raise SystemExit(f"probe failed for {root}")
    return json.loads(result.stdout.strip().splitlines()[-1])


scratch = tempfile.mkdtemp()  # outputs of the large calls: GBs, kept out of OUTDIR
run(root_a, "--save", f"{scratch}/a.pt")
run(root_b, "--save", f"{scratch}/b.pt")
a, b = torch.load(f"{scratch}/a.pt"), torch.load(f"{scratch}/b.pt")
shutil.rmtree(scratch)
print("outputs and gradients, B against A: bitwise equal, max |diff| / max |A|, relative L2 of diff")
for name in a:
    parts = []
    for i, (x, y) in enumerate(zip(a[name], b[name])):
        x, y = x.double(), y.double()
        label = ["o", "dq", "dk", "dv", "dslope"][i]
        same = torch.equal(x, y)
        rel_max = ((x - y).abs().max() / x.abs().max().clamp_min(1e-300)).item()
        rel_l2 = ((x - y).norm() / x.norm().clamp_min(1e-300)).item()
        nan = bool(torch.isnan(y).any())
        parts.append(f"{label} {'=' if same else f'{rel_max:.1e}/{rel_l2:.1e}'}{' NaN!' if nan else ''}")
    print(f"  {name:34s} " + ", ".join(parts))
sys.stdout.flush()

if rounds == 0:
    raise SystemExit(0)
results = {"a": [], "b": []}
for r in range(rounds):
    for side, root in (("a", root_a), ("b", root_b)):
        results[side].append(run(root, "--time"))
json.dump(results, open(f"{out}/times.json", "w"), indent=1)
print(f"\ndo_bench medians, ms, {rounds} alternating rounds: A | B | B/A (mean of rounds)")
for name in results["a"][0]:
    line = []
    for key in ("fwd_ms", "fwdbwd_ms"):
        ta = [t[name][key] for t in results["a"]]
        tb = [t[name][key] for t in results["b"]]
        ma, mb = sum(ta) / len(ta), sum(tb) / len(tb)
        line.append(f"{key[:-3]} {'/'.join(f'{x:.3f}' for x in ta)} | {'/'.join(f'{x:.3f}' for x in tb)} | {mb / ma:.3f}")
    print(f"  {name:34s} " + "   ".join(line))
print("\nper-kernel µs (last round), A -> B")
for name in results["a"][-1]:
    for key in ("fwd_kernels_us", "fwdbwd_kernels_us"):
        ka, kb = results["a"][-1][name][key], results["b"][-1][name][key]
        sweep = {k: (ka.get(k), kb.get(k)) for k in sorted(set(ka) | set(kb)) if "pass" in k}
        print(f"  {name:34s} {key[:-11]:7s} " + "; ".join(f"{k}: {x} -> {y}" for k, (x, y) in sweep.items()))
