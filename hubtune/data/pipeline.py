"""The data workflow, top to bottom: read the sources, turn rows into chat examples, check the
chat template, drop exact and near duplicates, filter by token length and score, balance task
types, split off a held-out set, mix in general data, and report what each step did."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset

from hubtune.config import DataSection, DataSource, TrainingSection
from hubtune.data import dedup, quality
from hubtune.data.formats import BadRow, Example, map_columns, resolve_format, to_example
from hubtune.data.sources import read_source
from hubtune.data.template import ensure_chat_template
from hubtune.errors import DataError

EXAMPLES_SHOWN = 5
FIX_WHEN_EMPTY = {
    "read": "the sources hold no usable rows; check the path and the format",
    "exact_duplicates": "every row repeats an earlier one; check the source",
    "near_duplicates": "raise data.near_dup_threshold, or set it to null to skip this step",
    "too_short": "lower data.min_response_tokens",
    "too_long": "raise data.max_seq_len, set data.truncate: true, or raise data.max_length_percentile",
    "scorer": "lower data.scorer.threshold",
    "task_balance": "raise data.max_task_share",
    "split": "lower data.val_set_size",
}


@dataclass
class PreparedData:
    train: Dataset  # conversational prompt/completion rows: {"prompt": [...], "completion": [...]}
    eval: Dataset | None
    report: dict = field(default_factory=dict)


class Steps:
    """What each step removed; an error naming the step that left nothing."""

    def __init__(self):
        self.log: list[dict] = []

    def record(self, step: str, before: int, after: int) -> None:
        self.log.append({"step": step, "removed": before - after, "left": after})
        if after == 0:
            raise DataError(f"no examples left after the {step} step ({before} of {before} removed); "
                            f"fix: {FIX_WHEN_EMPTY[step]}")


def read_examples(sources: list[DataSource], data: DataSection) -> tuple[list[Example], list[dict], list[str]]:
    """All sources as examples, with a summary per source and the bad rows skipped."""
    examples, summary, bad = [], [], []
    for source in sources:
        got = read_source(source, data.skip_bad_rows)
        bad += got.bad_rows
        fmt = resolve_format(got.rows[0], data.format, data.columns, source.path) if got.rows else None
        n_before = len(examples)
        for row, origin in zip(got.rows, got.origins):
            try:
                examples.append(to_example(map_columns(row, data.columns), fmt, data.task_column, origin))
            except BadRow as err:
                if not data.skip_bad_rows:
                    raise DataError(f"{origin}: {err}; fix the row or remove it, or skip bad rows with "
                                    f"--skip-bad-rows (data.skip_bad_rows: true)") from None
                bad.append(f"{origin}: {err}")
        summary.append({"path": source.path, "split": source.split, "name": source.name,
                        "revision": source.revision, "revision_sha": got.revision_sha, "format": fmt,
                        "rows": len(got.rows) + len(got.bad_rows), "examples": len(examples) - n_before})
    if len({ex.text is None for ex in examples}) > 1:
        raise DataError("the sources mix plain text with chat data; train on one kind at a time "
                        f"(formats: {', '.join(str(s['format']) for s in summary)})")
    return examples, summary, bad


@dataclass
class Pool:
    """The examples still in, with what earlier steps measured about each (parallel lists)."""

    examples: list[Example]
    keys: list[bytes]  # hash of the normalised prompt + response
    parts: list[tuple[str, str]]  # (prompt, response) as plain text
    total_len: np.ndarray | None = None  # tokens of the rendered example
    response_len: np.ndarray | None = None  # tokens of the answer

    def __len__(self) -> int:
        return len(self.examples)

    def drop(self, indices, step: str, steps: Steps) -> Pool:
        gone = {int(i) for i in indices}
        keep = [i for i in range(len(self)) if i not in gone]

        def pick(column):
            if column is None or isinstance(column, np.ndarray):
                return None if column is None else column[keep]
            return [column[i] for i in keep]

        pool = Pool(*map(pick, (self.examples, self.keys, self.parts, self.total_len, self.response_len)))
        steps.record(step, len(self), len(pool))
        return pool


def prepare(data: DataSection, tokenizer, seed: int | None = None) -> PreparedData:
    """Read, check, filter and split the training data of a run; the report says what happened.
    `seed` (task balancing, mixing) is the run's training.seed; None takes that field's default.

    Gives `tokenizer` hubtune's default chat template when it has none (the report says so)."""
    seed = TrainingSection.model_fields["seed"].default if seed is None else seed
    steps = Steps()
    examples, sources, bad = read_examples(data.sources, data)
    total = len(examples) + len(bad)
    steps.record("read", total, len(examples))
    tasks_read = Counter(ex.task if ex.task is not None else "(none)" for ex in examples)
    plain_text = examples[0].text is not None
    template = None if plain_text else ensure_chat_template(tokenizer, data.chat_template)
    parts = [ex.comparison_parts() for ex in examples]
    pool = Pool(examples, [dedup.exact_key(p, r) for p, r in parts], parts)

    # Duplicates: exact first, then near duplicates among the rest; the first of each group stays.
    exact = dedup.exact_duplicates(pool.keys) if data.dedup_exact else {}
    exact_shown = [{"kept": pool.examples[j].origin, "removed": pool.examples[i].origin}
                   for i, j in list(exact.items())[:EXAMPLES_SHOWN]]
    pool = pool.drop(exact, "exact_duplicates", steps)
    near = []
    if data.near_dup_threshold is not None:
        near = dedup.near_duplicates([f"{p}\n{r}" for p, r in pool.parts], data.near_dup_threshold,
                                     data.shingle_words)
    near_shown = [_pair(pool, d) for d in sorted(near, key=lambda d: d.similarity)[:EXAMPLES_SHOWN]]
    pool = pool.drop([d.index for d in near], "near_duplicates", steps)

    # Lengths in the base model's tokens: answers too short, examples too long (or truncated).
    pool.total_len, pool.response_len = quality.token_lengths(pool.examples, tokenizer)
    short = np.flatnonzero(pool.response_len < data.min_response_tokens)
    pool = pool.drop(short, "too_short", steps)
    limit = float(np.percentile(pool.total_len, data.max_length_percentile)) if data.max_length_percentile else None
    over = pool.total_len > data.max_seq_len
    too_long = (pool.total_len > limit if limit is not None else np.zeros_like(over)) | (over & (not data.truncate))
    truncated = int((over & ~too_long).sum())
    pool = pool.drop(np.flatnonzero(too_long), "too_long", steps)

    score_stats = None
    if data.scorer is not None:
        s = quality.scores(pool.examples, quality.load_scorer(data.scorer.callable), data.scorer.batch_size,
                           data.scorer.callable)
        score_stats = {"threshold": data.scorer.threshold, "min": float(s.min()), "p50": float(np.median(s)),
                       "mean": round(float(s.mean()), 4), "max": float(s.max())}
        pool = pool.drop(np.flatnonzero(s < data.scorer.threshold), "scorer", steps)

    capped, tasks = quality.balance(pool.examples, data.max_task_share, seed)
    pool = pool.drop(capped, "task_balance", steps)

    # Held-out split by hash, then general data mixed into training only.
    is_eval = quality.held_out(pool.keys, data.val_set_size)
    train = [ex for ex, e in zip(pool.examples, is_eval) if not e]
    held = [ex for ex, e in zip(pool.examples, is_eval) if e]
    steps.record("split", len(pool), len(train))
    mixed = _mix(data, train, set(pool.keys), seed, plain_text)

    removed = {s["step"]: s["removed"] for s in steps.log}
    report = {
        "sources": sources, "format": ", ".join(sorted({str(s["format"]) for s in sources})),
        "chat_template": template,
        "total": total, "kept": len(pool), "train": len(train) + len(mixed), "eval": len(held), "mixed": len(mixed),
        "bad_rows": len(bad), "exact_duplicates": len(exact), "near_duplicates": len(near),
        "too_short": len(short), "too_long": removed["too_long"], "truncated": truncated,
        "low_score": removed.get("scorer", 0), "task_capped": removed["task_balance"],
        "steps": [s for s in steps.log if s["step"] != "split"],
        "bad_row_examples": bad[:EXAMPLES_SHOWN],
        "exact_duplicate_examples": exact_shown,
        "near_duplicate_examples": near_shown,
        "lengths": {"max_seq_len": data.max_seq_len, "percentile_limit": limit,
                    "example_tokens": quality.stats(pool.total_len),
                    "response_tokens": quality.stats(pool.response_len),
                    "histogram": quality.histogram(pool.total_len, data.max_seq_len)},
        "scores": score_stats,
        "tasks": _task_table(tasks_read, tasks),
        "diversity": quality.diversity([f"{p}\n{r}" for p, r in pool.parts], seed),
        "settings": data.model_dump(mode="json"),
    }
    return PreparedData(Dataset.from_list([ex.row() for ex in train + mixed]),
                        Dataset.from_list([ex.row() for ex in held]) if held else None, report)


def _task_table(read: Counter, balanced: dict | None) -> dict | None:
    """Rows per task type as read, before and after the cap; None when no row names a task."""
    if set(read) == {"(none)"}:
        return None
    empty = {"before": 0, "after": 0, "share_before": 0.0, "share_after": 0.0}
    return {name: {"read": count} | (balanced or {}).get(name, empty) for name, count in read.most_common()}


def _pair(pool: Pool, d: dedup.NearDuplicate) -> dict:
    def show(i: int) -> dict:
        text = "\n".join(pool.parts[i]).strip()
        return {"origin": pool.examples[i].origin, "text": text if len(text) <= 300 else text[:297] + "..."}
    return {"similarity": d.similarity, "kept": show(d.kept), "removed": show(d.index)}


def _mix(data: DataSection, train: list[Example], train_keys: set[bytes], seed: int, plain_text: bool) -> list[Example]:
    if data.mix.ratio <= 0 or data.mix.source is None:
        return []
    general = DataSection(sources=[data.mix.source], skip_bad_rows=data.skip_bad_rows, task_column=data.task_column)
    pool, _, _ = read_examples(general.sources, general)
    if pool and (pool[0].text is not None) != plain_text:
        raise DataError(f"data.mix.source {data.mix.source.path}: its format does not match the training data "
                        f"(one is plain text, the other chat); mix in data of the same kind")
    pool = [ex for ex in pool if dedup.exact_key(*ex.comparison_parts()) not in train_keys]
    if not pool:
        raise DataError(f"data.mix.source {data.mix.source.path}: no rows to mix in (empty, or all already in the "
                        f"training data); give a general instruction dataset")
    return quality.mix_rows(pool, len(train), data.mix.ratio, seed)
