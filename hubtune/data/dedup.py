"""Exact and near-duplicate detection, sized for a million rows.

Texts are normalised for comparison only (unicode NFKC, case, whitespace); the training text is
never altered. Near duplicates are pairs whose sets of word shingles (n consecutive words) have a
Jaccard similarity at or above a threshold; each example is compared with the ones kept before it,
and the first of each cluster stays.

Nothing is held per text but a few numbers. Words are hashed in bulk with numpy (a polynomial hash of
their UTF-8 bytes, so results do not depend on Python's salted str hash), shingles are hashes of word
hashes, and each text gets a one-permutation MinHash of 64 bins (optimal densification fills empty
bins, so two texts agree on a bin with probability equal to their Jaccard similarity). LSH bands of
that signature, kept as 32-bit hashes, propose candidate pairs; each candidate is confirmed on the
exact shingle sets, re-read from the text, so a reported pair really is that similar.

Templated data (rows that share most word sequences, as generated datasets do) would put most rows
in the same LSH buckets: the bands are taken over the shingles that are not frequent in the corpus
(found on a sample), while the exact check still uses every shingle. A bucket pairs each row with at
most its first BUCKET_CAP members, which bounds the work on degenerate data.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"\w+")
SPACE = re.compile(r"\s+")
SEED = 1
BINS = 64  # one-permutation MinHash bins
CHUNK_TEXTS = 4096  # texts hashed per numpy pass
BUCKET_CAP = 64
FREQUENT_SAMPLE = 20_000  # texts sampled to find frequent shingles
FREQUENT_SHARE, FREQUENT_MIN_DOCS = 0.01, 20  # a shingle in >= 1% (and >= 20) of the sampled texts
U64 = np.uint64
EMPTY = np.uint32(0xFFFFFFFF)
_WORD_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
# byte -> 1 for word bytes (ASCII \w, and UTF-8 bytes of non-ASCII words: texts with any are split
# by the regex first), 0 otherwise; and byte -> lower case
_IS_WORD = bytes(1 if b in _WORD_CHARS or b >= 128 else 0 for b in range(256))
_LOWER = bytes(range(256)).lower()


def normalise(text: str) -> str:
    """For comparison only: unicode compatibility form, case folded, whitespace collapsed."""
    return SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_key(prompt: str, response: str) -> bytes:
    return hashlib.blake2b(f"{normalise(prompt)}\x00{normalise(response)}".encode(), digest_size=16).digest()


def exact_duplicates(keys: Sequence[bytes]) -> dict[int, int]:
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


_P = 0x100000001B3  # odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 2**64)
_POWERS: list[np.ndarray] = []  # [P^k, P^-k] for k below the largest chunk seen


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^k and P^-k (mod 2^64) for k < n, grown by doubling and kept."""
    if not _POWERS or len(_POWERS[0]) < n:
        size = 1 << max(16, (n - 1).bit_length())
        _POWERS[:] = [np.concatenate([[U64(1)], np.cumprod(np.full(size - 1, p, dtype=U64))]) for p in (_P, _P_INV)]
    return _POWERS[0], _POWERS[1]


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the words of each normalised text, all in one array, and the number of words
    per text. ASCII texts are split and lower-cased in bulk (NFKC leaves ASCII alone, casefold is
    lower); others go through the regex first, and their words are hashed the same way: a polynomial
    in their bytes, read off prefix sums over the whole chunk, then mixed."""
    parts = [t if t.isascii() else " ".join(WORD.findall(normalise(t))) for t in texts]
    blob = ("\n" + "\n".join(parts) + "\n").encode()  # separators before, between and after
    is_word = np.frombuffer(blob.translate(_IS_WORD), dtype=np.uint8)
    edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]  # each word is blob[start:end]
    sizes = np.fromiter((len(p) if p.isascii() else len(p.encode()) for p in parts), np.int64, len(parts))
    bounds = np.concatenate([[0], np.cumsum(sizes + 1)])  # text i's bytes lie in [bounds[i], bounds[i + 1])
    counts = np.diff(np.searchsorted(starts, bounds)).astype(np.int64)
    if not len(starts):
        return np.zeros(0, U64), counts
    powers, inverse = _power_tables(len(blob))
    prefix = np.zeros(len(blob) + 1, dtype=U64)
    np.cumsum((np.frombuffer(blob.translate(_LOWER), dtype=np.uint8) + U64(1)) * powers[:len(blob)], out=prefix[1:])
    raw = (prefix[ends] - prefix[starts]) * inverse[starts]  # sum of (byte + 1) * P^(position in the word)
    return fmix64(raw + (ends - starts).astype(U64) * U64(0x9E3779B97F4A7C15)), counts


def shingle_hashes(words: np.ndarray, counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the n-word shingles of each text (hashes, shingles per text). The shingle at word p
    covers words p..p+n-1 of the same text; a text shorter than n words gets one shingle of all its
    words (zero-padded), an empty text none."""
    starts = np.cumsum(counts) - counts
    per_doc = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
    # Every window of n consecutive words of the chunk, from shifted views; a short text's one window
    # would run into the next text, so its words past the end are zeroed first.
    padded = np.concatenate([words, np.zeros(n, U64)])
    windows = [padded[k:k + len(words)] for k in range(n)]
    short = np.flatnonzero((counts > 0) & (counts < n))
    if len(short):
        windows = [w.copy() for w in windows]
        for k in range(1, n):
            cut = short[counts[short] <= k]
            windows[k][starts[cut]] = 0
    h = np.zeros(len(words), dtype=U64)
    for w in windows:
        h = fmix64(h * U64(0x9E3779B97F4A7C15) + w)
    total = int(per_doc.sum())
    take = np.repeat(starts - (np.cumsum(per_doc) - per_doc), per_doc) + np.arange(total)
    return h[take], per_doc.astype(np.int64)


class Shingles:
    """Word shingles of many texts as 64-bit hashes in one array; doc i is shingles[offsets[i]:offsets[i+1]]."""

    def __init__(self, texts: Sequence[str], n: int = 3):
        self.n = n
        parts, counts = [], []
        for start in range(0, len(texts), CHUNK_TEXTS):
            h, c = shingle_hashes(*word_hashes(texts[start:start + CHUNK_TEXTS]), n)
            parts.append(h)
            counts.append(c)
        self.hashes = np.concatenate(parts) if parts else np.zeros(0, U64)
        self.offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts) if counts else [])]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i]:self.offsets[i + 1]]


def one_permutation_signatures(hashes: np.ndarray, counts: np.ndarray, bins: int = BINS) -> np.ndarray:
    """One-permutation MinHash, shape (docs, bins), uint32: each shingle's (re-mixed) hash picks a
    bin by its top bits, the bin keeps the least of the low 32 bits; empty bins borrow the value of
    the bin a fixed pseudo-random probe sequence reaches first (optimal densification, Shrivastava
    2017), so P[two docs agree on a bin] = their Jaccard similarity. Docs without shingles stay EMPTY."""
    n = len(counts)
    sig = np.full(n * bins, EMPTY, dtype=np.uint32)
    if len(hashes):
        h = fmix64(hashes ^ U64(0x5851F42D4C957F2D))
        shift = U64(64 - int(np.log2(bins)))
        doc_of = np.repeat(np.arange(n, dtype=np.int64), counts)
        np.minimum.at(sig, doc_of * bins + (h >> shift).astype(np.int64), (h & U64(0xFFFFFFFF)).astype(np.uint32))
    sig = sig.reshape(n, bins)
    original = sig.copy()
    probes = _PROBES[bins]
    rows, cols = np.nonzero((sig == EMPTY) & (counts > 0)[:, None])
    for attempt in range(probes.shape[0]):
        if not len(rows):
            break
        borrowed = original[rows, probes[attempt, cols]]
        fill = borrowed != EMPTY
        sig[rows[fill], cols[fill]] = borrowed[fill]
        rows, cols = rows[~fill], cols[~fill]
    return sig


def _probe_table(bins: int, attempts: int = 256) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return rng.integers(0, bins, size=(attempts, bins))


_PROBES = {BINS: _probe_table(BINS)}


def band_layout(threshold: float, bins: int = BINS) -> tuple[int, int]:
    """(bands, rows per band) whose LSH threshold, (1/bands)^(1/rows), sits about 0.25 below the
    similarity threshold, so that pairs just above it are rarely missed."""
    target = max(0.1, threshold - 0.25)
    layouts = [(bins // r, r) for r in (8, 4, 2, 1) if bins % r == 0]
    for bands, rows in layouts:
        if (1 / bands) ** (1 / rows) <= target:
            return bands, rows
    return layouts[-1]


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint32: a hash of each band's rows of the signature."""
    out = np.empty((len(sig), bands), dtype=np.uint32)
    for b in range(bands):
        h = np.full(len(sig), b + 1, dtype=U64)
        for v in sig[:, b * rows:(b + 1) * rows].T:
            h = fmix64(h * U64(0x9E3779B97F4A7C15) + v.astype(U64))
        out[:, b] = (h >> U64(32)).astype(np.uint32)
    return out


def frequent_shingles(texts: Sequence[str], n: int, sample: int = FREQUENT_SAMPLE) -> np.ndarray:
    """Sorted hashes of the shingles found in at least FREQUENT_SHARE (and FREQUENT_MIN_DOCS) of a
    sample of the texts: a template's boilerplate, which would put every row in the same bucket.
    (Occurrences are counted, so a shingle repeated within a text counts more than once.)"""
    step = max(1, len(texts) // sample)
    picked = range(0, len(texts), step)
    hashes = np.concatenate([np.zeros(0, U64)] + [
        shingle_hashes(*word_hashes([texts[i] for i in picked[k:k + CHUNK_TEXTS]]), n)[0]
        for k in range(0, len(picked), CHUNK_TEXTS)])
    values, df = np.unique(hashes, return_counts=True)
    return values[df >= max(FREQUENT_MIN_DOCS, FREQUENT_SHARE * len(picked))]


def _is_in(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values in a small sorted set: a 2^20-bit filter on the top bits, then a search for the few that pass."""
    out = np.zeros(len(values), dtype=bool)
    if not len(sorted_set):
        return out
    bits = np.zeros(1 << 20, dtype=bool)
    bits[(sorted_set >> U64(44)).astype(np.int64)] = True
    maybe = np.flatnonzero(bits[(values >> U64(44)).astype(np.int64)])
    at = np.minimum(np.searchsorted(sorted_set, values[maybe]), len(sorted_set) - 1)
    out[maybe] = sorted_set[at] == values[maybe]
    return out


def candidate_pairs(bands: np.ndarray, usable: np.ndarray, cap: int = BUCKET_CAP) -> np.ndarray:
    """Unique (earlier, later) index pairs that share a bucket in some band; in a bucket each member
    is paired with at most the first `cap` members before it."""
    found = []
    docs = np.flatnonzero(usable)
    for b in range(bands.shape[1]):
        order = docs[np.argsort(bands[docs, b], kind="stable")]  # stable: members in index order
        keys = bands[order, b]
        new_bucket = np.concatenate([[True], keys[1:] != keys[:-1]])
        bucket_start = np.flatnonzero(new_bucket)
        rank = np.arange(len(order)) - np.repeat(bucket_start, np.diff(np.append(bucket_start, len(order))))
        partners = np.minimum(rank, cap)
        total = int(partners.sum())
        if not total:
            continue
        later = np.repeat(np.arange(len(order)), partners)
        earlier = np.arange(total) - np.repeat(np.cumsum(partners) - partners, partners) + (later - rank[later])
        found.append(order[earlier].astype(np.int64) << 32 | order[later].astype(np.int64))
    if not found:
        return np.zeros((0, 2), np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes >> 32, codes & 0xFFFFFFFF], axis=1)


def near_duplicates(texts: Sequence[str], threshold: float = 0.8, shingle_words: int = 3) -> list[NearDuplicate]:
    """Texts whose shingle sets reach `threshold` Jaccard similarity with an earlier kept one.

    `texts` needs random access (a list, or a sequence that reads its rows back): each text is hashed
    once, in chunks, into a 64-bin signature and its LSH bands (about 300 bytes a text), and read
    again only when it is a candidate, for the exact check."""
    n = len(texts)
    if n < 2:
        return []
    frequent = frequent_shingles(texts, shingle_words)
    bands, rows = band_layout(threshold)
    band_of = np.empty((n, bands), dtype=np.uint32)
    usable = np.zeros(n, dtype=bool)
    for start in range(0, n, CHUNK_TEXTS):
        hashes, counts = shingle_hashes(*word_hashes(texts[start:start + CHUNK_TEXTS]), shingle_words)
        rare = ~_is_in(hashes, frequent)
        doc_of = np.repeat(np.arange(len(counts)), counts)
        rare_counts = np.bincount(doc_of[rare], minlength=len(counts))
        # A text made only of frequent shingles is banded on all of them.
        keep = rare | (rare_counts[doc_of] == 0)
        sig = one_permutation_signatures(hashes[keep], np.bincount(doc_of[keep], minlength=len(counts)))
        band_of[start:start + len(counts)] = band_hashes(sig, bands, rows)
        usable[start:start + len(counts)] = counts > 0
    pairs = candidate_pairs(band_of, usable)
    del band_of
    similarity = _exact_similarities(texts, pairs, shingle_words)

    # In index order: a text goes when an earlier text that stayed is similar enough (the most similar is named).
    kept = usable.copy()
    found: list[NearDuplicate] = []
    confirmed = similarity >= threshold
    pairs, similarity = pairs[confirmed], similarity[confirmed]
    order = np.lexsort((-similarity, pairs[:, 1]))
    current, done = -1, False
    for k in order.tolist():
        j, i = int(pairs[k, 0]), int(pairs[k, 1])
        if i != current:
            current, done = i, False
        if done or not kept[j]:
            continue
        kept[i] = False
        done = True
        found.append(NearDuplicate(i, j, round(float(similarity[k]), 4)))
    return found


def _exact_similarities(texts: Sequence[str], pairs: np.ndarray, n: int, batch: int = 20_000) -> np.ndarray:
    """Exact Jaccard of each candidate pair, re-reading the texts in batches of pairs."""
    out = np.zeros(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        docs, local = np.unique(chunk, return_inverse=True)
        local = local.reshape(chunk.shape)
        shingles = Shingles([texts[int(d)] for d in docs], n)
        sets = [np.unique(shingles.doc(k)) for k in range(len(docs))]
        for k, (a, b) in enumerate(local.tolist()):
            x, y = sets[a], sets[b]
            inter = len(np.intersect1d(x, y, assume_unique=True))
            union = len(x) + len(y) - inter
            out[start + k] = inter / union if union else 1.0
    return out
