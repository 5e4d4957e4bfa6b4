"""Near-duplicate detection at scale: speed, memory, recall and precision.

    python benchmarks/dedup.py [--rows 100000] [--words 160] [--seed 0]

Generates rows of random text (Zipf-distributed words from a made-up vocabulary) with a known
duplicate structure, then runs the detector the data pipeline uses (hubtune.data.dedup):
  - originals: unrelated texts;
  - paraphrases (10% of rows): a copy of an earlier original with 1-4 words substituted,
    inserted or deleted; every one should be found;
  - look-alikes (10%): an earlier original's first half with a new second half (Jaccard about
    0.3); none should be flagged.
Recall is the share of paraphrases found, precision the share of flagged rows that are
paraphrases. Seconds are wall time for detection alone (CPU time is printed above it); peak RSS
is the whole process's, generation included. The last line is:

    dedup: rows=<N> seconds=<s> peak_rss_mb=<MB> recall=<0..1> precision=<0..1>
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from hubtune.data.dedup import near_duplicates

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "re", "fi", "ba", "no"]


def vocabulary(rng: np.random.Generator, size: int) -> np.ndarray:
    words = set()
    while len(words) < size:
        n = int(rng.integers(1, 4))
        words.add("".join(rng.choice(SYLLABLES, n)) + str(int(rng.integers(0, 10))) * int(rng.integers(0, 2)))
    return np.array(sorted(words))


def generate(rows: int, words: int, seed: int) -> tuple[list[str], set[int]]:
    """Texts and the indices of planted paraphrases."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng, 30_000).tolist()
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    pool = rng.choice(len(vocab), rows * (words + 30), p=weights / weights.sum()).astype(np.int32)
    taken = 0

    def fresh(n: int) -> np.ndarray:
        nonlocal taken
        taken += n
        return pool[taken - n:taken]

    kinds = rng.choice(3, rows, p=[0.8, 0.1, 0.1])  # 0 original, 1 paraphrase, 2 look-alike
    kinds[:100] = 0
    docs: list[np.ndarray] = []
    originals: list[int] = []
    planted: set[int] = set()
    for i, kind in enumerate(kinds):
        if kind == 0:
            docs.append(fresh(words + int(rng.integers(-20, 21))))
            originals.append(i)
            continue
        base = docs[originals[int(rng.integers(len(originals)))]]
        if kind == 1:
            doc = base.copy()
            for _ in range(int(rng.integers(1, 5))):
                at = int(rng.integers(len(doc)))
                edit = rng.integers(3)
                if edit == 0:
                    doc[at] = fresh(1)[0]
                elif edit == 1:
                    doc = np.insert(doc, at, fresh(1))
                else:
                    doc = np.delete(doc, at)
            planted.add(i)
        else:
            doc = np.concatenate([base[: len(base) // 2], fresh(len(base) - len(base) // 2)])
        docs.append(doc)
    return [" ".join([vocab[k] for k in d.tolist()]) for d in docs], planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=160, help="words per row; 160 words of English are about 200 tokens")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    texts, planted = generate(args.rows, args.words, args.seed)
    print(f"generated {len(texts)} rows, {len(planted)} planted paraphrases, "
          f"{sum(len(t.split()) for t in texts) / len(texts):.0f} words per row")
    start, start_cpu = time.perf_counter(), time.process_time()
    found = near_duplicates(texts, threshold=args.threshold)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    flagged = {d.index for d in found}
    hits = len(flagged & planted)
    recall = hits / len(planted) if planted else 1.0
    precision = hits / len(flagged) if flagged else 1.0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"flagged {len(flagged)}, of which planted {hits}; {len(texts) / seconds:.0f} rows/s; "
          f"{cpu_seconds:.1f} s of CPU time (on a shared machine, wall time can be far longer)")
    print(f"dedup: rows={len(texts)} seconds={seconds:.1f} peak_rss_mb={peak_mb:.0f} "
          f"recall={recall:.4f} precision={precision:.4f}")


if __name__ == "__main__":
    main()
