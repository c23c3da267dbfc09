"""Model of the relay output pass (docs/perf.md v6-v8) on the varlen rows: can a packed
call be as fast as the equal-length call on the same tokens?

Per v slice, the relay lays every (head, sequence) job end to end on a line of 64-token
blocks and cuts it into 132 equal segments (one per SM pair of slots), each swept by
one CTA; a segment's time is the sum of its blocks' costs. A full block costs 1. A
sequence's partial last block of r tokens costs `partial(r)`: about 1 as the kernel
is (its tiles are padded), r / 64 if it cost no more than its tokens. Prints the
slowest and the mean segment, packed and equal-length.

    python3 bench/relay_model.py
"""
from bench import VARLEN_HEADS, VARLEN_SEQS, VARLEN_TOKENS, varlen_lengths

SEGMENTS = 132
BLOCK = 64

PARTIAL_COSTS = {
    "as the kernel is (1)": lambda r: 1.0,
    "warps past the end skip their output (v8, tried)": lambda r: (128 + 24 * -(-r // 16)) / 224,
    "its share of tokens (r / 64)": lambda r: r / BLOCK,
}


def segment_times(lengths, partial):
    """Slowest and mean segment time of one v slice, segments cut at block boundaries
    as the relay cuts them (ceil(line / segments) blocks each)."""
    costs = []
    for _ in range(VARLEN_HEADS):
        for n in lengths:
            costs += [1.0 if min(BLOCK, n - b) == BLOCK else partial(n - b) for b in range(0, n, BLOCK)]
    length = -(-len(costs) // SEGMENTS)
    times = [sum(costs[i : i + length]) for i in range(0, len(costs), length)]
    return max(times), sum(costs) / SEGMENTS


def main():
    for seqs in VARLEN_SEQS:
        equal = segment_times([VARLEN_TOKENS // seqs] * seqs, PARTIAL_COSTS["as the kernel is (1)"])
        print(f"{seqs} sequences: equal-length slowest {equal[0]:.2f}, mean {equal[1]:.2f} block-times")
        for name, partial in PARTIAL_COSTS.items():
            packed = segment_times(varlen_lengths(seqs), partial)
            print(f"  packed, partial block costing {name}: slowest {packed[0]:.2f}, mean {packed[1]:.2f}")


if __name__ == "__main__":
    main()
