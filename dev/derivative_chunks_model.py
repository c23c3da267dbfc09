"""The slope-derivative sweep cut into chunks, checked in float64 (branch deriv-chunks).

The derivative sweep keeps the state S and S' = derivative_scale * (-dS/dslope). Cut
into chunks of L tokens, it follows the chunk passes of the state sweep:
  state pass   chunk c from zero states, block by block as update_state does:
               S' <- lambda^B (S' + ds B S) + ds sum_j (B-1-j) lambda^(B-1-j) k_j^T v_j,
               S  <- lambda^B S + sum_j lambda^(B-1-j) k_j^T v_j      (B the block's tokens)
               giving X_c and X'_c;
  prefix pass  E_1 = X_0, E'_1 = X'_0,
               E'_{c+1} = lambda^L (E'_c + ds L E_c) + X'_c,  E_{c+1} = lambda^L E_c + X_c;
  output pass  chunk c enters from E_c + lambda^(cL) S_{-1} and
               E'_c + ds cL lambda^(cL) S_{-1}.
This model runs those steps and compares the states entering every chunk, and the
final ones, with the definition
  S_t  = lambda^(t+1) S_{-1} + sum_{s <= t} lambda^(t-s) k_s^T v_s,
  S'_t = ds ((t+1) lambda^(t+1) S_{-1} + sum_{s <= t} (t-s) lambda^(t-s) k_s^T v_s).

Run: python3 dev/derivative_chunks_model.py [cases]   (prints the largest relative error)."""
import random
import sys

import numpy as np

BLOCK = 64


def by_definition(k, v, lam, ds, initial, t):
    """S_t and S'_t from their sums (t = -1: the initial state and 0)."""
    d = t - np.arange(t + 1)
    weights = lam**d
    s = lam ** (t + 1) * initial + (k[: t + 1] * weights[:, None]).T @ v[: t + 1]
    s_prime = ds * ((t + 1) * lam ** (t + 1) * initial + (k[: t + 1] * (d * weights)[:, None]).T @ v[: t + 1])
    return s, s_prime


def sweep_blocks(k, v, lam, ds, s, s_prime):
    """update_state over the tokens of k, v from (s, s'), block by block."""
    for b0 in range(0, len(k), BLOCK):
        kb, vb = k[b0 : b0 + BLOCK], v[b0 : b0 + BLOCK]
        valid = len(kb)
        d = valid - 1 - np.arange(valid)
        s_prime = lam**valid * (s_prime + ds * valid * s) + ds * (kb * (d * lam**d)[:, None]).T @ vb
        s = lam**valid * s + (kb * (lam**d)[:, None]).T @ vb
    return s, s_prime


def check(rng, n, chunk_blocks, dim_qk, dim_v, slope):
    k, v = rng.standard_normal((n, dim_qk)), rng.standard_normal((n, dim_v))
    initial = rng.standard_normal((dim_qk, dim_v))
    lam = np.exp(-slope)
    ds = rng.uniform(0.25, 4.0)
    length = chunk_blocks * BLOCK
    num_chunks = max(1, -(-n // length))
    # State pass: every chunk but the last, from zero.
    zero = np.zeros((dim_qk, dim_v))
    local = [sweep_blocks(k[c * length : (c + 1) * length], v[c * length : (c + 1) * length], lam, ds, zero, zero)
             for c in range(num_chunks - 1)]
    # Prefix pass.
    entering = [(zero, zero)]
    for c in range(num_chunks - 1):
        e, e_prime = entering[-1] if c > 0 else (zero, zero)
        x, x_prime = local[c]
        entering.append((lam**length * e + x, lam**length * (e_prime + ds * length * e) + x_prime))
    worst = 0.0
    for c in range(num_chunks):
        e, e_prime = entering[c]
        steps = c * length
        s = e + lam**steps * initial
        s_prime = e_prime + ds * steps * lam**steps * initial
        expected = by_definition(k, v, lam, ds, initial, steps - 1)
        # The output pass then sweeps the chunk; the last one ends at the final states.
        if c == num_chunks - 1:
            s, s_prime = sweep_blocks(k[steps:], v[steps:], lam, ds, s, s_prime)
            expected = by_definition(k, v, lam, ds, initial, n - 1)
        for got, want in zip((s, s_prime), expected):
            worst = max(worst, np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))
    return worst


def main():
    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rng = np.random.default_rng(0)
    pick = random.Random(0)
    worst = 0.0
    for _ in range(cases):
        n = pick.choice([1, 63, 64, 65, 1000, 2049, 5000, 9000])
        slope = pick.choice([0.0, 1e-4, 0.0625, 0.5, 3.0])
        err = check(rng, n, pick.randint(1, 20), pick.choice([1, 3, 8]), pick.choice([1, 2, 5]), slope)
        worst = max(worst, err)
        assert err < 1e-10, f"n {n} slope {slope}: relative error {err}"
    print(f"{cases} cases: largest relative error {worst:.2e}")


if __name__ == "__main__":
    main()
