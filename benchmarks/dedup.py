"""Near-duplicate detection at scale: speed, memory, recall and precision; and the whole
`hubtune data check` at the same scale.

    python benchmarks/dedup.py [--rows 1000000] [--words 160] [--templated] [--seed 0]
    python benchmarks/dedup.py --pipeline [--rows 1000000]

Generates rows of random text (Zipf-distributed words from a made-up vocabulary) with a known
duplicate structure, then runs the detector the data pipeline uses (hubtune.data.dedup):
  - originals: unrelated texts;
  - paraphrases (10% of rows): a copy of an earlier row with 1-4 words substituted, inserted or
    deleted; every one should be found;
  - look-alikes (10%): an earlier row's first half with a new second half (Jaccard about 0.3);
    none should be flagged.
With --templated every row fills one of 20 templates (150 words with 12 slots), as generated datasets
do: unrelated rows of a template share most of their word sequences (Jaccard about 0.6), paraphrases
edit a row, look-alikes draw new slots into an earlier row's template.
Recall is the share of paraphrases found, precision the share of flagged rows that are paraphrases.
Seconds are wall time for detection alone (CPU time is printed above it); peak RSS is the whole
process's, generation included. The last line is:

    dedup: rows=<N> seconds=<s> peak_rss_mb=<MB> recall=<0..1> precision=<0..1>

--pipeline writes the rows as Alpaca JSON lines (an instruction, the text as input, a short answer)
and runs `hubtune data check FILE --json` in a fresh process on the embedded model's tokenizer,
measuring that process's wall time and peak RSS; its last line is:

    data check: rows=<N> seconds=<s> peak_rss_mb=<MB> kept=<K> near_duplicates=<D> planted=<P>

(At 64 words a paraphrase with three or four edits shares under 80% of its 5-word shingles with its
original, so it is not a near duplicate at the default threshold: D is below P by design. Recall and
precision are the detector run's figures.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hubtune.data.dedup import near_duplicates

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "re", "fi", "ba", "no"]
BLOCK = 10_000  # rows drawn at once


def vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    words = set()
    while len(words) < size:
        n = int(rng.integers(1, 4))
        words.add("".join(rng.choice(SYLLABLES, n)) + str(int(rng.integers(0, 10))) * int(rng.integers(0, 2)))
    return sorted(words)


class Words:
    """Zipf-distributed word ids, drawn in blocks."""

    def __init__(self, rng: np.random.Generator, vocab: list[str]):
        self.rng, self.vocab = rng, vocab
        weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
        self.p = weights / weights.sum()
        self.pool, self.at = np.zeros(0, np.int32), 0

    def take(self, n: int) -> list[str]:
        if self.at + n > len(self.pool):
            self.pool = self.rng.choice(len(self.vocab), max(n, BLOCK * 200), p=self.p).astype(np.int32)
            self.at = 0
        self.at += n
        return list(map(self.vocab.__getitem__, self.pool[self.at - n:self.at].tolist()))


def paraphrase(words: list[str], rng: np.random.Generator, fresh: Words) -> list[str]:
    doc = list(words)
    for _ in range(int(rng.integers(1, 5))):
        at = int(rng.integers(len(doc)))
        edit = int(rng.integers(3))
        if edit == 0:
            doc[at] = fresh.take(1)[0]
        elif edit == 1:
            doc.insert(at, fresh.take(1)[0])
        else:
            del doc[at]
    return doc


def generate(rows: int, words: int, seed: int, templated: bool = False) -> tuple[list[str], set[int]]:
    """Texts and the indices of planted paraphrases (texts only: about 1 KB a row)."""
    rng = np.random.default_rng(seed)
    fresh = Words(rng, vocabulary(rng, 30_000))
    kinds = rng.choice(3, rows, p=[0.8, 0.1, 0.1])  # 0 original, 1 paraphrase, 2 look-alike
    kinds[:100] = 0
    templates = [fresh.take(150) for _ in range(20)] if templated else []
    slots = [np.sort(rng.choice(150, 12, replace=False)) for _ in templates]
    texts: list[str] = []
    template_of: list[int] = []
    planted: set[int] = set()

    def filled(t: int) -> list[str]:
        doc = list(templates[t])
        for at, w in zip(slots[t].tolist(), fresh.take(12)):
            doc[at] = w
        return doc

    for i, kind in enumerate(kinds.tolist()):
        if kind == 0:
            if templated:
                t = int(rng.integers(len(templates)))
                doc = filled(t)
            else:
                t, doc = -1, fresh.take(words + int(rng.integers(-20, 21)))
        else:
            source = int(rng.integers(i))
            t = template_of[source]
            if kind == 1:
                doc = paraphrase(texts[source].split(), rng, fresh)
                planted.add(i)
            elif templated:
                doc = filled(t)
            else:
                base = texts[source].split()
                doc = base[:len(base) // 2] + fresh.take(len(base) - len(base) // 2)
        texts.append(" ".join(doc))
        template_of.append(t)
    return texts, planted


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_detector(args) -> None:
    texts, planted = generate(args.rows, args.words, args.seed, args.templated)
    print(f"generated {len(texts)} {'templated ' if args.templated else ''}rows, {len(planted)} planted "
          f"paraphrases, {sum(len(t.split()) for t in texts[:10_000]) / min(len(texts), 10_000):.0f} words per row",
          flush=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    found = near_duplicates(texts, threshold=args.threshold)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    flagged = {d.index for d in found}
    hits = len(flagged & planted)
    recall = hits / len(planted) if planted else 1.0
    precision = hits / len(flagged) if flagged else 1.0
    print(f"flagged {len(flagged)}, of which planted {hits}; {len(texts) / seconds:.0f} rows/s; "
          f"{cpu_seconds:.1f} s of CPU time (on a shared machine, wall time can be far longer)")
    print(f"dedup: rows={len(texts)} seconds={seconds:.1f} peak_rss_mb={peak_rss_mb():.0f} "
          f"recall={recall:.4f} precision={precision:.4f}")


def run_pipeline(args) -> None:
    """`hubtune data check` on the rows as Alpaca JSON lines, in its own process."""
    texts, planted = generate(args.rows, args.words, args.seed, args.templated)
    folder = Path(tempfile.mkdtemp(prefix="datacheck-"))
    path = folder / "rows.jsonl"
    with path.open("w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"instruction": "Summarise this text.", "input": t,
                                "output": f"In short: {t[:60]}"}) + "\n")
    del texts
    print(f"wrote {args.rows} rows ({path.stat().st_size / 1e6:.0f} MB of JSON lines), {len(planted)} planted "
          f"paraphrases", flush=True)
    out = folder / "report.json"
    command = [sys.executable, "-c", "import resource, sys; from hubtune.cli import main; code = main(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)",
               "data", "check", str(path), "--json", "--set", f"max_seq_len={args.max_seq_len}"]
    start = time.perf_counter()
    with out.open("w") as stdout:
        proc = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=os.environ)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"hubtune data check failed:\n{proc.stderr[-3000:]}")
    peak = int(proc.stderr.strip().splitlines()[-1]) / 1024
    report = json.loads(out.read_text())
    print("steps: " + ", ".join(f"{s['step']} -{s['removed']}" for s in report["steps"]))
    print(f"data check: rows={report['total']} seconds={seconds:.1f} peak_rss_mb={peak:.0f} kept={report['kept']} "
          f"near_duplicates={report['near_duplicates']} planted={len(planted)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--words", type=int, default=None,
                        help="words per row (default 160, about 200 tokens of English; with --pipeline 64, rows of "
                             "about 520 bytes: 52 MB of JSON lines per 100,000 rows)")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--templated", action="store_true", help="rows filled into 20 shared templates")
    parser.add_argument("--pipeline", action="store_true", help="time the whole `hubtune data check` instead")
    parser.add_argument("--max-seq-len", type=int, default=2048, help="for --pipeline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.words = args.words or (64 if args.pipeline else 160)
    run_pipeline(args) if args.pipeline else run_detector(args)


if __name__ == "__main__":
    main()
