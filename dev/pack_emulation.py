"""The preparing pass's warp packer (pack_few_sequences, csrc/chunk_passes.cu) emulated
lane by lane in Python, shuffles, ballot and all, against a serial packer written from
pack_sequences' definitions (the tables seq_start, job_end, chunk_start, relay_start,
longest_chunk and row_starts), on random cu_seqlens of up to 31 sequences, valid and
not, with and without jobs, forward and reversed (perf.md v24). Prints the cases that
differ, then their count. Run anywhere: python3 dev/pack_emulation.py [cases]."""
import random
import sys

BLOCK = 64  # kSweepBlockN
LANES = range(32)


def blocks_of(tokens):
    return (tokens + BLOCK - 1) // BLOCK


def chunks_of(blocks, chunk_blocks):
    return max(1, (blocks + chunk_blocks - 1) // chunk_blocks)


def job_counts(blocks, chunk_blocks):
    return (chunks_of(blocks, chunk_blocks), max(1, blocks), max(1, min(blocks, chunk_blocks)))


def joins_previous_job(job_blocks, prev, start, nxt):
    if job_blocks == 0:
        return False
    half = job_blocks * BLOCK // 2
    return start - prev <= half and nxt - start <= half and prev // half == start // half


def set_row_bit(rows, word, row):
    rows[word + row // BLOCK] = rows.get(word + row // BLOCK, 0) | (1 << (row % BLOCK))


def serial(cu, seqlen, chunk_blocks, job_blocks, reversed_):
    seqs = len(cu) - 1
    starts, running = [], 0
    for x in cu:
        running = max(running, min(max(x, 0), seqlen))
        starts.append(running)
    marks = [n in (0, seqs) or not joins_previous_job(job_blocks, starts[n - 1], starts[n], starts[n + 1])
             for n in range(seqs + 1)]
    job_end = [min(m for m in range(n + 1, seqs + 1) if marks[m]) if n < seqs else seqs for n in range(seqs + 1)]
    chunk_start, relay_start, chunks, cost, longest = [], [], 0, 0, 1
    for n in range(seqs + 1):
        chunk_start.append(chunks)
        relay_start.append(cost)
        if n == seqs:
            break
        if marks[n]:
            c, r, l = job_counts(blocks_of(starts[job_end[n]] - starts[n]), chunk_blocks)
            chunks, cost, longest = chunks + c, cost + r, max(longest, l)
        else:
            chunks += chunks_of(blocks_of(starts[n + 1] - starts[n]), chunk_blocks)
    rows = {}
    for n in range(seqs if job_blocks else 0):
        first = max(m for m in range(n + 1) if marks[m])
        if job_end[first] == first + 1:
            continue
        job_first, job_last = starts[first], starts[job_end[first]]
        row = job_last - starts[n + 1] if reversed_ else starts[n] - job_first
        if 0 < row < job_last - job_first:
            set_row_bit(rows, relay_start[first], row)
    return starts, job_end, chunk_start, relay_start, longest, rows


def warp(cu, seqlen, chunk_blocks, job_blocks, reversed_):
    seqs = len(cu) - 1
    up = lambda x, d: [x[n - d] if n >= d else x[n] for n in LANES]  # __shfl_up_sync
    down = lambda x, d: [x[n + d] if n + d < 32 else x[n] for n in LANES]  # __shfl_down_sync
    is_entry = [n <= seqs for n in LANES]
    is_sequence = [n < seqs for n in LANES]
    start = [min(max(cu[n], 0), seqlen) if is_entry[n] else 0 for n in LANES]
    for offset in (1, 2, 4, 8, 16):
        earlier = up(start, offset)
        start = [max(start[n], earlier[n]) if n >= offset else start[n] for n in LANES]
    prev, nxt = up(start, 1), down(start, 1)
    mark = [n == 0 or not is_sequence[n] or not joins_previous_job(job_blocks, prev[n], start[n], nxt[n])
            for n in LANES]
    marks = sum(1 << n for n in LANES if mark[n])  # __ballot_sync
    ffs = lambda x: (x & -x).bit_length()
    job_end = [ffs(marks >> (n + 1)) + n if is_sequence[n] else seqs for n in LANES]
    job_end_start = [start[job_end[n]] for n in LANES]
    counts = [(0, 0, 1)] * 32
    for n in LANES:
        if is_sequence[n]:
            counts[n] = (job_counts(blocks_of(job_end_start[n] - start[n]), chunk_blocks) if mark[n]
                         else (chunks_of(blocks_of(nxt[n] - start[n]), chunk_blocks), 0, 1))
    combine = lambda a, b: (a[0] + b[0], a[1] + b[1], max(a[2], b[2]))
    inclusive = counts
    for offset in (1, 2, 4, 8, 16):
        earlier = up(inclusive, offset)
        inclusive = [combine(earlier[n], inclusive[n]) if n >= offset else inclusive[n] for n in LANES]
    before = [up(inclusive, 1)[n] if n > 0 else (0, 0, 1) for n in LANES]
    entries = range(seqs + 1)
    rows = {}
    for n in LANES if job_blocks else ():
        first = (marks & (0xFFFFFFFF >> (31 - n))).bit_length() - 1
        if not is_sequence[n] or job_end[first] == first + 1:
            continue
        job_first, job_last = start[first], job_end_start[first]
        row = job_last - nxt[n] if reversed_ else start[n] - job_first
        if 0 < row < job_last - job_first:
            set_row_bit(rows, before[first][1], row)
    return ([start[n] for n in entries], [job_end[n] for n in entries], [before[n][0] for n in entries],
            [before[n][1] for n in entries], inclusive[31][2], rows)


def main():
    random.seed(1)
    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    differ = 0
    for _ in range(cases):
        lengths = [random.choice([0, 1, 63, 64, 65, random.randint(0, 300), random.randint(0, 5000)])
                   for _ in range(random.randint(0, 31))]
        cu = [0]
        for length in lengths:
            cu.append(cu[-1] + length)
        seqlen = cu[-1]
        if random.random() < 0.2:  # invalid: the pass clamps and makes it non-decreasing
            cu = [random.randint(-100, seqlen + 100) for _ in cu]
        args = (cu, seqlen, random.choice([1, 2, 3, 7, 16, 1000]), random.choice([0, 0, 2, 4, 8, 16, 248]),
                random.random() < 0.5)
        if serial(*args) != warp(*args):
            differ += 1
            if differ <= 3:
                print("differ:", args)
    print(f"{differ} of {cases} cases differ")


if __name__ == "__main__":
    main()
