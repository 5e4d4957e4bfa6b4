"""Exact and near-duplicate detection.

Texts are normalised for comparison only (unicode NFKC, case, whitespace); the training
text is never altered. Near duplicates are pairs whose sets of word shingles (n consecutive
words) have a Jaccard similarity at or above a threshold. Candidates come from MinHash LSH
(datasketch's MinHashLSH over LeanMinHash signatures computed with numpy, bit for bit what
datasketch's own "affine32" MinHash computes), and each candidate pair is then confirmed on
the exact shingle sets, so a reported pair really is that similar. Each example is compared
with the ones kept before it: the first of each cluster stays.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

WORD = re.compile(r"\w+")
SPACE = re.compile(r"\s+")
NUM_PERM = 128
SEED = 1
CHUNK_SHINGLES = 32_768  # shingles per numpy block: keeps the (num_perm x block) array in cache
U64 = np.uint64
MASK32 = np.uint64(0xFFFFFFFF)


def normalise(text: str) -> str:
    """For comparison only: unicode compatibility form, case folded, whitespace collapsed."""
    return SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_key(prompt: str, response: str) -> bytes:
    return hashlib.blake2b(f"{normalise(prompt)}\x00{normalise(response)}".encode(), digest_size=16).digest()


def exact_duplicates(keys: list[bytes]) -> dict[int, int]:
    """{index of a duplicate: index of the first row with the same key}."""
    first: dict[bytes, int] = {}
    dups = {}
    for i, k in enumerate(keys):
        j = first.setdefault(k, i)
        if j != i:
            dups[i] = j
    return dups


@dataclass(frozen=True)
class NearDuplicate:
    index: int  # the removed example
    kept: int  # the earlier example it duplicates
    similarity: float  # exact Jaccard similarity of their shingle sets


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: an avalanching bijection (wrap-around arithmetic intended)."""
    h = h ^ (h >> U64(33))
    h = h * U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> U64(33))
    h = h * U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> U64(33))


def fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class Shingles:
    """Word shingles of many texts as 64-bit hashes in one array; doc i is shingles[offsets[i]:offsets[i+1]].

    Words get ids in order of first appearance, so results do not depend on Python's salted str hash."""

    def __init__(self, texts, n: int = 3):
        self.n = n
        vocab: dict[str, int] = {}
        parts, counts = [], []
        batch: list[int] = []
        lengths: list[int] = []
        for text in texts:
            words = WORD.findall(normalise(text))
            batch.extend([vocab.setdefault(w, len(vocab)) for w in words])
            lengths.append(len(words))
            if len(batch) >= 200_000:
                self._flush(batch, lengths, parts, counts)
                batch, lengths = [], []
        self._flush(batch, lengths, parts, counts)
        self.hashes = np.concatenate(parts) if parts else np.zeros(0, U64)
        self.offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts) if counts else [])]).astype(np.int64)

    def _flush(self, ids: list[int], lengths: list[int], parts: list, counts: list) -> None:
        if not lengths:
            return
        ids_arr = fmix64(np.asarray(ids, dtype=U64) + U64(1))
        lens = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        n = self.n
        # Shingle at word position p covers words p..p+n-1 of the same text. A text shorter
        # than n words gets one shingle of all its words (zero-padded), an empty text none.
        per_doc = np.where(lens >= n, lens - n + 1, np.minimum(lens, 1))
        total = int(per_doc.sum())
        doc_of = np.repeat(np.arange(len(lens)), per_doc)
        pos = np.arange(total) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc) + starts[doc_of]
        end = starts[doc_of] + lens[doc_of]
        h = np.zeros(total, dtype=U64)
        for k in range(n):
            at = pos + k
            word = np.where(at < end, ids_arr[np.minimum(at, max(len(ids_arr) - 1, 0))], U64(0))
            h = fmix64(h * U64(0x9E3779B97F4A7C15) + word)
        parts.append(h)
        counts.append(per_doc)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i]:self.offsets[i + 1]]

    def minhash_inputs(self) -> np.ndarray:
        """The 32-bit value each shingle is hashed to before MinHash's permutations."""
        return (self.hashes >> U64(32)).astype(np.uint32)


def signatures(shingles: Shingles, num_perm: int = NUM_PERM, seed: int = SEED) -> np.ndarray:
    """MinHash signatures, shape (docs, num_perm), uint32: for every doc and permutation (a, b),
    min over its shingles x of a * fmix32(x) + b (mod 2^32), datasketch's "affine32" scheme
    with the permutations of MinHash(num_perm, seed). Empty docs keep the all-max signature."""
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    a, b = a[:, None], b[:, None]
    x = fmix32(shingles.minhash_inputs())
    offsets = shingles.offsets
    out = np.full((len(shingles), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    doc = 0
    n_docs = len(shingles)
    while doc < n_docs:
        # A block of whole docs holding about CHUNK_SHINGLES shingles (at least one doc).
        stop = int(np.searchsorted(offsets, offsets[doc] + CHUNK_SHINGLES, side="right")) - 1
        stop = min(max(stop, doc + 1), n_docs)
        lo, hi = offsets[doc], offsets[stop]
        if hi > lo:
            block = a * x[lo:hi] + b  # (num_perm, shingles in block), wraps mod 2^32
            starts = offsets[doc:stop] - lo
            filled = offsets[doc + 1:stop + 1] > offsets[doc:stop]
            mins = np.minimum.reduceat(block, starts[filled], axis=1)
            out[np.arange(doc, stop)[filled]] = mins.T
        doc = stop
    return out


def jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Exact Jaccard similarity of two arrays of shingle hashes, as sets."""
    x, y = np.unique(x), np.unique(y)
    if not len(x) and not len(y):
        return 1.0
    inter = len(np.intersect1d(x, y, assume_unique=True))
    return inter / (len(x) + len(y) - inter)


ESTIMATE_MARGIN = 0.15  # about 4 standard errors of a 128-permutation estimate near 0.8


def near_duplicates(texts, threshold: float = 0.8, shingle_words: int = 3, num_perm: int = NUM_PERM,
                    seed: int = SEED) -> list[NearDuplicate]:
    """Texts whose shingle sets reach `threshold` Jaccard similarity with an earlier kept one.

    LSH looks for candidates at a lower similarity than the threshold, so that pairs just above
    it are rarely missed (recall); the signatures' estimate screens the candidates and the exact
    check on shingle sets removes those below the threshold (precision). Cost grows with the
    number of candidates: on heavily templated text, where most shingles are shared by all rows,
    LSH buckets grow large and the check slows down (quadratically in the worst case)."""
    shingles = Shingles(texts, shingle_words)
    sigs = signatures(shingles, num_perm, seed)
    lsh = MinHashLSH(threshold=max(0.1, threshold - 0.2), num_perm=num_perm)
    found: list[NearDuplicate] = []
    for i in range(len(shingles)):
        if shingles.offsets[i + 1] == shingles.offsets[i]:
            continue  # no words: nothing to compare
        sketch = LeanMinHash(seed=seed, hashvalues=sigs[i], scheme="affine32")
        best = None
        candidates = np.fromiter(lsh.query(sketch), dtype=np.int64)
        if len(candidates):
            # The signatures' estimate is cheap for many candidates at once; the exact check is not.
            estimate = (sigs[candidates] == sigs[i]).mean(axis=1)
            for j in np.sort(candidates[estimate >= threshold - ESTIMATE_MARGIN]).tolist():
                sim = jaccard(shingles.doc(i), shingles.doc(j))
                if sim >= threshold and (best is None or sim > best[0]):
                    best = (sim, j)
        if best is None:
            lsh.insert(i, sketch, check_duplication=False)
        else:
            found.append(NearDuplicate(i, best[1], round(best[0], 4)))
    return found
