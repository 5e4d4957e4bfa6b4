"""Quality steps after deduplication: token lengths, the scorer hook, task balance, the
held-out split and mixing in general data. Each returns what it keeps and what it counted."""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import random
import sys
from collections.abc import Callable, Sequence

import numpy as np

from hubtune.data.budget import check_renders
from hubtune.data.formats import Example
from hubtune.errors import DataError, OutOfMemoryError, translate

Scorer = Callable[[list[dict]], Sequence[float]]
BATCH = 2000  # examples rendered and tokenized at once


def token_lengths(examples: Sequence[Example], tokenizer, chat=None) -> tuple[np.ndarray, np.ndarray]:
    """(full example, response) lengths in the tokenizer's tokens. A chat example is measured as
    rendered by the chat template, as the trainer will see it (through `chat`, a ChatFormat, when the
    family needs its own rendering); plain text gets one EOS more."""
    count = _token_counter(tokenizer)
    total, response = [], []
    for start in range(0, len(examples), BATCH):
        chunk = examples[start:start + BATCH]
        answers = count([ex.response for ex in chunk], False)
        if chunk[0].text is None:
            conversations = [ex.prompt + ex.completion for ex in chunk]
            name = getattr(tokenizer, "name_or_path", "") or "the base model"
            if chat is not None:  # as the family renders them (a system prompt folded, thinking, tools)
                check_renders(tokenizer, [chat.messages(c) for c in conversations], name)
                rendered = ["".join(chat.render(ex.prompt, ex.completion, ex.tools)) for ex in chunk]
            else:
                check_renders(tokenizer, conversations, name)
                rendered = tokenizer.apply_chat_template(conversations, tokenize=False)
            lengths = count(rendered, False)
            if chunk[0].rejected is not None:  # a pair is as long as its longer answer
                pairs = [ex.prompt + ex.rejected for ex in chunk]
                rejected = (["".join(chat.render(ex.prompt, ex.rejected, ex.tools)) for ex in chunk] if chat is not None
                            else tokenizer.apply_chat_template(pairs, tokenize=False))
                lengths = [max(x, y) for x, y in zip(lengths, count(rejected, False))]
            total += lengths
        else:
            total += [n + 1 for n in count([ex.response for ex in chunk], True)]
        response += answers
    return np.asarray(total, dtype=np.int64), np.asarray(response, dtype=np.int64)


def preference_stats(examples: Sequence[Example], tokenizer) -> dict:
    """What a preference set holds: pairs (or labelled rows), answer lengths on each side, and how often
    the chosen answer is the longer one: near 1.0 a method can learn "longer is better" instead of the
    preference (and near 0.0 the opposite)."""
    count = _token_counter(tokenizer)
    if examples and examples[0].rejected is None:  # unpaired rows
        labels = [ex.label for ex in examples]
        return {"rows": len(labels), "desirable": int(sum(labels)), "undesirable": len(labels) - int(sum(labels))}
    chosen = np.asarray(count(["".join(m["content"] for m in ex.completion) for ex in examples], False))
    rejected = np.asarray(count(["".join(m["content"] for m in ex.rejected) for ex in examples], False))
    return {"pairs": len(examples), "chosen_tokens": stats(chosen), "rejected_tokens": stats(rejected),
            "chosen_longer_share": round(float((chosen > rejected).mean()), 4) if len(chosen) else None}


def _token_counter(tokenizer):
    """texts, add_special_tokens -> token counts; straight from the Rust tokenizer when there is one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda texts, special: [len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=special)]
    return lambda texts, special: [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def load_scorer(spec: str, field: str = "data.scorer.callable", error: type[Exception] = DataError) -> Scorer:
    """`package.module:function` -> the function. Modules in the current folder are found too, as
    `python -m` finds them (`my_scores:reward` next to the run config)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise error(f"{field}: {spec!r} should look like package.module:function")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # last: a module of the same name that is installed still wins
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise error(f"{field}: cannot import {spec!r} ({err}); "
                    f"check the module is importable and defines {attr}") from None
    if not callable(fn):
        raise error(f"{field}: {spec!r} is not a function")
    return fn


def scores(examples: Sequence[Example], scorer: Scorer, batch_size: int, name: str = "the scorer") -> np.ndarray:
    """One score per example, `batch_size` rows per call; whatever the scorer does wrong is a DataError
    naming the rows it was given."""
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        rows = [ex.row() for ex in chunk]
        where = f"rows {start + 1}-{start + len(rows)}, the first from {chunk[0].origin}"
        try:
            got = scorer(rows)
        except Exception as err:
            oom = translate(err, fix=f"lower data.scorer.batch_size (now {batch_size}), or score on a larger device")
            if isinstance(oom, OutOfMemoryError):
                raise oom from None
            raise DataError(f"scorer step: {name} raised {type(err).__name__}: {err} (on {where}); fix the scorer "
                            f"(run it on those rows alone to see the traceback)") from None
        try:
            got = [float(s) for s in got]
        except (TypeError, ValueError):
            shown = repr(got)[:120]
            raise DataError(f"scorer step: {name} returned {shown} (for {where}); it must return a list of numbers, "
                            f"one per row") from None
        if len(got) != len(rows):
            raise DataError(f"scorer step: {name} returned {len(got)} scores for {len(rows)} rows ({where}); "
                            f"it must return one number per row")
        if bad := [start + i + 1 for i, s in enumerate(got) if math.isnan(s)]:
            raise DataError(f"scorer step: {name} returned NaN for row {bad[0]} ({len(bad)} in all); "
                            f"return a number for every row")
        out += got
    return np.asarray(out, dtype=np.float64)


def task_caps(counts: dict[str, int], max_share: float) -> dict[str, int]:
    """The largest count c such that no task holds more than max_share of the data once every
    task is cut to at most c rows: {task: rows to keep}."""
    if max_share >= 1.0 or not counts:
        return dict(counts)
    if max_share * len(counts) < 1.0:
        raise DataError(f"task balance step: a cap of {max_share:.0%} cannot hold with {len(counts)} task types "
                        f"(the smallest possible is {1 / len(counts):.0%}); raise data.max_task_share")
    lo, hi = 0, max(counts.values())
    while lo < hi:  # cap * sum(min(n, c)) - c is concave in c and >= 0 at 0, so bisect its last root
        c = (lo + hi + 1) // 2
        if c <= max_share * sum(min(n, c) for n in counts.values()):
            lo = c
        else:
            hi = c - 1
    return {task: min(n, lo) for task, n in counts.items()}


def balance_tasks(tasks: list[str | None], max_share: float, seed: int) -> tuple[list[int], dict | None]:
    """Downsample task types above max_share (seeded), given each example's task: (indices dropped, shares
    before and after)."""
    if all(t is None for t in tasks):
        return [], None
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task if task is not None else "(none)", []).append(i)
    keep_n = task_caps({task: len(idx) for task, idx in by_task.items()}, max_share)
    rng = random.Random(seed)
    dropped = []
    for task, idx in by_task.items():
        if keep_n[task] < len(idx):
            kept = set(rng.sample(idx, keep_n[task]))
            dropped += [i for i in idx if i not in kept]
    left = len(tasks) - len(dropped)
    table = {task: {"before": len(idx), "after": keep_n[task],
                    "share_before": round(len(idx) / len(tasks), 4),
                    "share_after": round(keep_n[task] / max(left, 1), 4)}
             for task, idx in sorted(by_task.items(), key=lambda kv: -len(kv[1]))}
    return sorted(dropped), table


def held_out(keys: list[bytes], size: float) -> list[bool]:
    """Deterministic split by a hash of each normalised example, so reordering changes nothing.
    A share (< 1) holds out the examples whose hash falls below it: adding rows never moves an
    example between sides. A count (>= 1) holds out that many examples, those of lowest hash."""
    position = [int.from_bytes(hashlib.sha256(k).digest()[:8], "big") / 2**64 for k in keys]
    if size < 1:
        return [p < size for p in position]
    chosen = set(sorted(range(len(keys)), key=position.__getitem__)[:int(size)])
    return [i in chosen for i in range(len(keys))]


def mix_rows(pool: list[Example], train_size: int, ratio: float, seed: int) -> list[Example]:
    """Rows of `pool` so that they make up `ratio` of the mixed training set, in a seeded order;
    a pool smaller than needed is repeated."""
    if ratio <= 0 or not pool:
        return []
    need = round(ratio * train_size / (1 - ratio))
    rng = random.Random(seed)
    out: list[Example] = []
    while len(out) < need:
        order = list(range(len(pool)))
        rng.shuffle(order)
        out += [pool[i] for i in order[:need - len(out)]]
    return out


def diversity(texts: Sequence[str], seed: int, sample: int = 10_000) -> dict:
    """Distinct n-gram ratios (distinct n-grams / all n-grams) over the words of up to `sample` examples
    (words as the near-duplicate step reads them, counted by their 64-bit hashes)."""
    from hubtune.data.dedup import fmix64, word_hashes

    if len(texts) > sample:
        texts = random.Random(seed).sample(texts, sample)
    words, counts = word_hashes(list(texts))
    out: dict = {"examples": len(texts), "distinct_1": round(len(np.unique(words)) / len(words), 4) if len(words) else 0.0}
    follows = np.ones(len(words), dtype=bool)  # word p and p + 1 belong to the same text
    follows[(np.cumsum(counts) - 1)[counts > 0]] = False
    pairs = fmix64(words[:-1] * np.uint64(0x9E3779B97F4A7C15) + words[1:])[follows[:-1]]
    out["distinct_2"] = round(len(np.unique(pairs)) / len(pairs), 4) if len(pairs) else 0.0
    return out


def histogram(values: np.ndarray, limit: int) -> list[dict]:
    """Counts in power-of-two bins (0-16, 17-32, 33-64, ...) up to the largest value or `limit`."""
    if not len(values):
        return []
    top = max(int(values.max()), limit)
    edges = [-1, 16]
    while edges[-1] < top:
        edges.append(edges[-1] * 2)
    counts = np.histogram(values, bins=np.asarray(edges) + 0.5)[0]
    return [{"tokens": f"{edges[i] + 1}-{edges[i + 1]}", "count": int(c)} for i, c in enumerate(counts) if c]


def stats(values: np.ndarray) -> dict:
    if not len(values):
        return {}
    p = np.percentile(values, [50, 90, 99])
    return {"min": int(values.min()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]),
            "max": int(values.max()), "mean": round(float(values.mean()), 1)}
