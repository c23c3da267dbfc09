"""List-scheduling model of the packed varlen output pass as it was in v3-v5
(docs/perf.md, v3 and v4; since v6 the output pass is a relay, which this does not model).

That output pass launched one CTA per (sequence, head, 64-column v slice); the GPU
started them in rank order (longest sequence first) as slots freed up, two per SM.
A CTA's time is taken as its number of 64-token blocks ("block-times"). Prints the
makespan of the packed launch, of the equal-length batch on the same tokens, and of
cutting long sequences into parts that each wait for the previous part's state.

    python3 bench/schedule_model.py
"""
import heapq

from bench import VARLEN_HEADS, VARLEN_SEQS, VARLEN_TOKENS, varlen_lengths

SLOTS = 2 * 132  # two CTAs per SM on an H200
CTAS_PER_SEQ = VARLEN_HEADS * 2  # heads x v slices (E = 128 in 64-column tiles)
BLOCK = 64


def makespan(jobs):
    """jobs: (block-times, index of the job it waits for or None), in start order;
    a waiting CTA holds its slot until the job it waits for is done."""
    free, finish = [0.0] * SLOTS, []
    for length, waits_for in jobs:
        start = heapq.heappop(free)
        if waits_for is not None:
            start = max(start, finish[waits_for])
        finish.append(start + length)
        heapq.heappush(free, finish[-1])
    return max(finish)


def packed(blocks, max_part=None):
    """Sequences of `blocks` cut into parts of at most max_part blocks (None: whole),
    ordered by the blocks left in their sequence, longest first."""
    parts = []
    for seq, n in enumerate(blocks):
        count = 1 if max_part is None else max(1, -(-n // max_part))
        sizes = [n // count + (i < n % count) for i in range(count)]
        for copy in range(CTAS_PER_SEQ):
            parts += [(-sum(sizes[i:]), i, seq, copy, size) for i, size in enumerate(sizes)]
    index, jobs = {}, []
    for _, i, seq, copy, size in sorted(parts):
        jobs.append((size, index.get((seq, copy, i - 1))))
        index[(seq, copy, i)] = len(jobs) - 1
    return makespan(jobs)


def main():
    for seqs in VARLEN_SEQS:
        blocks = [-(-n // BLOCK) for n in varlen_lengths(seqs)]
        equal = makespan([(VARLEN_TOKENS // seqs // BLOCK, None)] * (seqs * CTAS_PER_SEQ))
        work = sum(blocks) * CTAS_PER_SEQ / SLOTS
        cuts = ", ".join(f"≤{m}: {packed(blocks, m):.0f}" for m in (16, 24, 32, 52, 64))
        print(f"{seqs} sequences: equal {equal:.0f}, work per slot {work:.1f}, packed {packed(blocks):.0f}, "
              f"cut into parts of {cuts} block-times")


if __name__ == "__main__":
    main()
