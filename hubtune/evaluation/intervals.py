"""95% intervals that stay honest at small n.

A proportion (exact match, accuracy, win rate) gets the Wilson score interval: unlike the normal
approximation it does not collapse to a point at 0 or 1 (0 of 5 right is anywhere up to 0.43).
A mean of graded scores (token F1, judge scores, paired differences) gets a seeded percentile
bootstrap, so the same answers always give the same interval.

Each summary is {"mean", "ci95": [lower, upper] or None, "n", "interval": "wilson" | "bootstrap"}.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

Z95 = NormalDist().inv_cdf(0.975)
RESAMPLES = 1000
SEED = 0


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of successes / n (no continuity correction); None for n = 0."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Exact 0 and 1 at the ends: the rounding of centre - half must not leave 1e-17 below 0 / above p.
    return (0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half))


def proportion(values: list[float]) -> dict:
    """Share of hits among 0/1 values, with its Wilson interval."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0, "interval": "wilson"}
    hits = sum(float(v) for v in values)
    if any(float(v) not in (0.0, 1.0) for v in values):
        raise ValueError("a proportion is a mean of 0/1 values; use bootstrap_mean for graded scores")
    return {"mean": hits / n, "ci95": list(wilson(round(hits), n)), "n": n, "interval": "wilson"}


def bootstrap_mean(values: list[float], resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Mean with a percentile bootstrap interval (resamples of the values, drawn with a fixed seed).
    One value gives no interval."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0, "interval": "bootstrap"}
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if n == 1:
        return {"mean": mean, "ci95": None, "n": 1, "interval": "bootstrap"}
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # bounded memory for large test sets
    means = np.concatenate([data[rng.integers(0, n, size=(min(chunk, resamples - done), n))].mean(axis=1)
                            for done in range(0, resamples, chunk)])
    lower, upper = np.percentile(means, [2.5, 97.5])
    return {"mean": mean, "ci95": [float(lower), float(upper)], "n": n, "interval": "bootstrap"}


def summarize(values: list[float]) -> dict:
    """Wilson when every value is 0 or 1 (a proportion), the bootstrap otherwise: for per-sample
    scores whose kind is not known in advance, such as a harness task's."""
    if all(float(v) in (0.0, 1.0) for v in values):
        return proportion(values)
    return bootstrap_mean(values)
