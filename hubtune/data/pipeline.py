"""The data workflow, top to bottom: read the sources, turn rows into chat examples, check the
chat template, drop exact and near duplicates, filter by token length and score, balance task
types, split off a held-out set, mix in general data, and report what each step did.

Sized for a million rows: rows are read one at a time and each example is kept as compact JSON
bytes with its task as a code and its origin as a number (ExampleStore); the steps work on arrays of
indices, keys and lengths; the prepared datasets are built only when asked for, and a large one is
written to an Arrow file and memory-mapped rather than held as Python objects."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
from datasets import Dataset

from hubtune.config import DataSection, DataSource, TrainingSection
from hubtune.data import dedup, quality
from hubtune.data.formats import (BadRow, Example, map_columns, rename_turn_key, resolve_format, to_example,
                                  without_system)
from hubtune.data.chat import reasoning_of
from hubtune.data.sources import iter_source_rows, locate
from hubtune.data.template import chat_format
from hubtune.errors import DataError

EXAMPLES_SHOWN = 5
KIND_NAMES = {"text": "plain text", "chat": "chat", "preference": "preference pair", "kto": "labelled (KTO)"}
IN_MEMORY_ROWS = 100_000  # larger prepared splits go to a memory-mapped Arrow file
FIX_WHEN_EMPTY = {
    "read": "the sources hold no usable rows; check the path and the format",
    "exact_duplicates": "every row repeats an earlier one; check the source",
    "near_duplicates": "raise data.near_dup_threshold, or set it to null to skip this step",
    "too_short": "lower data.min_response_tokens, or set data.short_relative: true",
    "too_long": "raise data.max_seq_len, set data.truncate: true, or raise data.max_length_percentile",
    "scorer": "lower data.scorer.threshold",
    "task_balance": "raise data.max_task_share",
    "split": "lower data.val_set_size",
}


class ExampleStore(Sequence):
    """Examples in order, a few hundred bytes each: the training row as JSON bytes, the task as a
    code, the origin as (where, number). `store[i]` gives the Example back."""

    def __init__(self):
        self._rows: list[bytes] = []
        self._where: list[str] = []
        self._where_of = np.zeros(0, np.int32)
        self._number = np.zeros(0, np.int64)
        self._task = np.zeros(0, np.int32)
        self._task_names: list[str | None] = [None]
        self._pending: list[tuple[int, int, int]] = []
        self._codes: dict[str | None, int] = {None: 0}

    def append(self, ex: Example, where: str, number: int) -> None:
        if not self._where or self._where[-1] != where:
            self._where.append(where)
        code = self._codes.setdefault(ex.task, len(self._task_names))
        if code == len(self._task_names):
            self._task_names.append(ex.task)
        self._rows.append(json.dumps([ex.prompt, ex.completion, ex.text, ex.tools, ex.rejected, ex.label],
                                     ensure_ascii=False).encode())
        self._pending.append((len(self._where) - 1, number, code))
        if len(self._pending) >= 65536:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            w, n, t = np.asarray(self._pending, dtype=np.int64).T
            self._where_of = np.concatenate([self._where_of, w.astype(np.int32)])
            self._number = np.concatenate([self._number, n])
            self._task = np.concatenate([self._task, t.astype(np.int32)])
            self._pending = []

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        self._flush()
        prompt, completion, text, tools, rejected, label = json.loads(self._rows[i])
        return Example(prompt, completion, text, self._task_names[self._task[i]], self.origin(i), tools, rejected, label)

    def origin(self, i: int) -> str:
        self._flush()
        return f"{self._where[self._where_of[i]]} {self._number[i]}"

    def tasks(self, indices: np.ndarray) -> list[str | None]:
        self._flush()
        return [self._task_names[c] for c in self._task[indices].tolist()]

    def release(self, indices: np.ndarray) -> None:
        """Free the rows no step will read again."""
        for i in indices.tolist():
            self._rows[i] = b""


class Subset(Sequence):
    """Examples (or one derived value of each) of a store at some indices, read on demand."""

    def __init__(self, store: ExampleStore, indices: np.ndarray, view=None):
        self.store, self.indices, self.view = store, indices, view

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        ex = self.store[int(self.indices[k])]
        return self.view(ex) if self.view else ex


def comparison_text(ex: Example) -> str:
    prompt, response = ex.comparison_parts()
    return f"{prompt}\n{response}"


class PreparedData:
    """The prepared rows: `train` and `eval` (None when nothing is held out) are datasets of
    conversational prompt/completion rows ({"prompt": [...], "completion": [...]}, or {"text": ...}),
    built when first used; `report` says what each step did."""

    def __init__(self, report: dict, store: ExampleStore | None = None, train_idx=None, eval_idx=None,
                 mixed: list[Example] | None = None):
        self.report = report
        self._store, self._train_idx, self._eval_idx, self._mixed = store, train_idx, eval_idx, mixed or []
        self._train: Dataset | None = None
        self._eval: Dataset | None | bool = False
        self.chat = None  # the ChatFormat the rows are rendered with (None for plain text)

    @property
    def train(self) -> Dataset:
        if self._train is None:
            rows = (self._store[int(i)].row() for i in self._train_idx)
            self._train = _dataset(rows, len(self._train_idx) + len(self._mixed), extra=self._mixed)
        return self._train

    @property
    def eval(self) -> Dataset | None:
        if self._eval is False:
            n = len(self._eval_idx)
            self._eval = _dataset((self._store[int(i)].row() for i in self._eval_idx), n) if n else None
        return self._eval


def _dataset(rows: Iterator[dict], n: int, extra: list[Example] = ()) -> Dataset:
    """A Dataset of rows: in memory when small, else written to an Arrow file in batches and mapped."""
    rows = itertools.chain(rows, (ex.row() for ex in extra))
    if n <= IN_MEMORY_ROWS:
        return Dataset.from_list(list(rows))
    import pyarrow as pa

    fd, path = tempfile.mkstemp(prefix="hubtune-prepared-", suffix=".arrow")
    os.close(fd)
    atexit.register(_remove, path)  # the dataset maps the file until the process ends
    writer, schema, batch = None, None, []
    for row in rows:
        batch.append(row)
        if len(batch) == 10_000:
            writer, schema = _write(batch, path, writer, schema, pa)
            batch = []
    if batch:
        writer, schema = _write(batch, path, writer, schema, pa)
    writer.close()
    return Dataset.from_file(path)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write(batch, path, writer, schema, pa):
    table = pa.Table.from_pylist(batch, schema=schema)
    if writer is None:
        schema = table.schema
        writer = pa.ipc.new_stream(path, schema)
    writer.write_table(table)
    return writer, schema


class Steps:
    """What each step removed; an error naming the step that left nothing."""

    def __init__(self):
        self.log: list[dict] = []

    def record(self, step: str, before: int, after: int) -> None:
        self.log.append({"step": step, "removed": before - after, "left": after})
        if after == 0:
            raise DataError(f"no examples left after the {step} step ({before} of {before} removed); "
                            f"fix: {FIX_WHEN_EMPTY[step]}")


def stream_examples(sources: list[DataSource], data: DataSection, sink, summary: list[dict], bad: list[str]) -> None:
    """Every row of every source turned into an Example, handed to sink(example, where, number); a
    summary per source and the bad rows skipped are appended to `summary` and `bad`."""
    kinds = set()
    for source in sources:
        fmt, rows, examples, unusable, bad_before = None, 0, 0, 0, len(bad)
        files, revision_sha = locate(source)
        for row, where, number in iter_source_rows(source, files, data.skip_bad_rows, bad):
            rows += 1
            if fmt is None:
                fmt = resolve_format(row, data.format, data.columns, source.path)
            try:
                mapped = map_columns(row, data.columns)
                if data.reasoning_field != "reasoning_content":
                    mapped = rename_turn_key(mapped, data.reasoning_field, "reasoning_content")
                ex = to_example(mapped, fmt, data.task_column, f"{where} {number}")
                if source.drop_system_message:
                    ex = without_system(ex)
            except BadRow as err:
                if not data.skip_bad_rows:
                    raise DataError(f"{where} {number}: {err}; fix the row or remove it, or skip bad rows with "
                                    f"--skip-bad-rows (data.skip_bad_rows: true)") from None
                bad.append(f"{where} {number}: {err}")
                unusable += 1
                continue
            kinds.add(ex.kind)
            examples += 1
            sink(ex, where, number)
        # rows: what the source holds, malformed ones included; examples: what became an example
        summary.append({"path": source.path, "split": source.split, "name": source.name,
                        "revision": source.revision, "revision_sha": revision_sha, "format": fmt,
                        "rows": rows + len(bad) - bad_before - unusable, "examples": examples})
    if len(kinds) > 1:
        names = [KIND_NAMES[k] for k in KIND_NAMES if k in kinds]
        raise DataError(f"the sources mix {' with '.join(names)} data; train on one kind at a time "
                        f"(formats: {', '.join(str(s['format']) for s in summary)})")


def read_examples(sources: list[DataSource], data: DataSection) -> tuple[list[Example], list[dict], list[str]]:
    """All sources as a list of examples, with a summary per source and the bad rows skipped."""
    examples: list[Example] = []
    summary: list[dict] = []
    bad: list[str] = []
    stream_examples(sources, data, lambda ex, where, number: examples.append(ex), summary, bad)
    return examples, summary, bad


def prepare(data: DataSection, tokenizer, seed: int | None = None, model_config=None,
            generation_config=None) -> PreparedData:
    """Read, check, filter and split the training data of a run; the report says what happened.
    `seed` (task balancing, mixing) is the run's training.seed; None takes that field's default.
    `model_config` and `generation_config` tell the model's family (hubtune.families) and what it stops on.

    Gives `tokenizer` hubtune's default chat template when it has none (the report says so)."""
    seed = TrainingSection.model_fields["seed"].default if seed is None else seed
    steps = Steps()
    store = ExampleStore()
    keys: list[bytes] = []
    summary: list[dict] = []
    bad: list[str] = []

    def keep(ex: Example, where: str, number: int) -> None:
        store.append(ex, where, number)
        keys.append(dedup.exact_key(*ex.comparison_parts()))

    stream_examples(data.sources, data, keep, summary, bad)
    total = len(store) + len(bad)
    steps.record("read", total, len(store))
    tasks_read = Counter(t if t is not None else "(none)" for t in store.tasks(np.arange(len(store))))
    kind = store[0].kind
    plain_text = kind == "text"
    chat, template = (None, None) if plain_text else chat_format(tokenizer, data.chat_template, model_config,
                                                                  generation_config, data.thinking,
                                                                  data.template_reasoning_key)
    pool = np.arange(len(store))
    removed_shown: dict[str, list[dict]] = {}

    def drop(gone, step: str) -> np.ndarray:
        nonlocal pool
        mask = np.ones(len(pool), dtype=bool)
        mask[np.asarray(list(gone), dtype=np.int64)] = False
        if step not in ("exact_duplicates", "near_duplicates"):  # those show pairs of their own
            removed_shown[step] = [_shown(store, int(i)) for i in pool[~mask][:EXAMPLES_SHOWN]]
        store.release(pool[~mask])
        before, pool = len(pool), pool[mask]
        steps.record(step, before, len(pool))
        return mask

    # Duplicates: exact first, then near duplicates among the rest; the first of each group stays.
    exact = dedup.exact_duplicates(keys) if data.dedup_exact else {}
    exact_shown = [{"kept": store.origin(j), "removed": store.origin(i)} for i, j in list(exact.items())[:EXAMPLES_SHOWN]]
    near: list[dedup.NearDuplicate] = []
    near_shown: list[dict] = []
    drop(exact.keys(), "exact_duplicates")
    if data.near_dup_threshold is not None:
        near = dedup.near_duplicates(Subset(store, pool, comparison_text), data.near_dup_threshold, data.shingle_words)
        near_shown = [_pair(store, pool, d) for d in sorted(near, key=lambda d: d.similarity)[:EXAMPLES_SHOWN]]
    drop([d.index for d in near], "near_duplicates")

    # Lengths in the base model's tokens: answers too short, examples too long (or truncated). "Too
    # short" is relative to the data: when short answers are the bulk (labels, names, numbers) they are
    # the task, so the bar drops to the 10th percentile of the answers' own lengths: only outliers go.
    total_len, response_len = quality.token_lengths(Subset(store, pool), tokenizer, chat)
    short_below = data.min_response_tokens
    if data.short_relative:
        short_below = min(short_below, max(int(np.percentile(response_len, 10)), 1))
    short = np.flatnonzero(response_len < short_below)
    mask = drop(short, "too_short")
    total_len, response_len = total_len[mask], response_len[mask]
    limit = float(np.percentile(total_len, data.max_length_percentile)) if data.max_length_percentile else None
    over = total_len > data.max_seq_len
    too_long = (total_len > limit if limit is not None else np.zeros_like(over)) | (over & (not data.truncate))
    truncated = int((over & ~too_long).sum())
    mask = drop(np.flatnonzero(too_long), "too_long")
    total_len, response_len = total_len[mask], response_len[mask]

    score_stats, low_score = None, 0
    if data.scorer is not None:
        s = quality.scores(Subset(store, pool), quality.load_scorer(data.scorer.callable), data.scorer.batch_size,
                           data.scorer.callable)
        score_stats = {"threshold": data.scorer.threshold, "min": float(s.min()), "p50": float(np.median(s)),
                       "mean": round(float(s.mean()), 4), "max": float(s.max())}
        mask = drop(np.flatnonzero(s < data.scorer.threshold), "scorer")
        total_len, response_len = total_len[mask], response_len[mask]
        low_score = int((~mask).sum())

    capped, tasks = quality.balance_tasks(store.tasks(pool), data.max_task_share, seed)
    mask = drop(capped, "task_balance")
    total_len, response_len = total_len[mask], response_len[mask]
    task_capped = int((~mask).sum())

    # Held-out split by hash, then general data mixed into training only.
    pool_keys = [keys[i] for i in pool.tolist()]
    is_eval = np.asarray(quality.held_out(pool_keys, data.val_set_size), dtype=bool)
    train_idx, eval_idx = pool[~is_eval], pool[is_eval]
    steps.record("split", len(pool), len(train_idx))

    mixed, mix_source = _mix(data, len(train_idx), set(pool_keys), seed, plain_text)
    # Rows each source gives to training and to the held-out split (a store holds the sources in order).
    ends = np.cumsum([s["examples"] for s in summary])
    for i, s in enumerate(summary):
        s["train"] = int(np.count_nonzero(np.searchsorted(ends, train_idx, side="right") == i))
        s["eval"] = int(np.count_nonzero(np.searchsorted(ends, eval_idx, side="right") == i))
    if mixed and kind in ("preference", "kto"):
        raise DataError("data.mix mixes instruction rows into preference data, which a preference method cannot "
                        "train on; set data.mix.ratio: 0")
    if mix_source is not None:
        mix_source.update(train=len(mixed), eval=0, role="mix")

    report = {
        "sources": summary, "mix_source": mix_source, "format": ", ".join(sorted({str(s["format"]) for s in summary})), "kind": kind,
        "chat_template": template,
        "reasoning_rows": 0 if plain_text else sum(reasoning_of(ex.completion[-1])[0] is not None
                                                   for ex in Subset(store, pool)),
        "total": total, "kept": len(pool), "train": len(train_idx) + len(mixed), "eval": len(eval_idx),
        "mixed": len(mixed), "bad_rows": len(bad), "exact_duplicates": len(exact), "near_duplicates": len(near),
        "too_short": len(short), "too_long": int(too_long.sum()), "truncated": truncated,
        "low_score": low_score, "task_capped": task_capped,
        "steps": [s for s in steps.log if s["step"] != "split"],
        "bad_row_examples": bad[:EXAMPLES_SHOWN],
        "exact_duplicate_examples": exact_shown,
        "near_duplicate_examples": near_shown,
        "removed_examples": removed_shown,  # per step, its first removed examples
        "warnings": guardrails(len(train_idx) + len(mixed), len(eval_idx), len(pool), data.val_set_size),
        "lengths": {"max_seq_len": data.max_seq_len, "percentile_limit": limit, "short_below": short_below,
                    "example_tokens": quality.stats(total_len),
                    "response_tokens": quality.stats(response_len),
                    "histogram": quality.histogram(total_len, data.max_seq_len)},
        "scores": score_stats,
        "tasks": _task_table(tasks_read, tasks),
        "diversity": quality.diversity(Subset(store, pool, comparison_text), seed),
        "settings": data.model_dump(mode="json"),
        "preference": quality.preference_stats(Subset(store, pool), tokenizer) if kind in ("preference", "kto") else None,
    }
    prepared = PreparedData(report, store, train_idx, eval_idx, mixed)
    prepared.chat = chat
    return prepared


def _task_table(read: Counter, balanced: dict | None) -> dict | None:
    """Rows per task type as read, before and after the cap; None when no row names a task."""
    if set(read) == {"(none)"}:
        return None
    empty = {"before": 0, "after": 0, "share_before": 0.0, "share_after": 0.0}
    return {name: {"read": count} | (balanced or {}).get(name, empty) for name, count in read.most_common()}


FEW_TRAINING_ROWS = 50
FEW_HELD_OUT = 10


def guardrails(train: int, held_out: int, kept: int, val_set_size: float) -> list[str]:
    """Warnings, in words with the fix, for data too small to trust what training will show. The first
    (nothing held out although held-out loss was asked for) is an error for training: see require_held_out."""
    out = []
    if val_set_size > 0 and not held_out:
        out.append(no_held_out(val_set_size, kept))
    if train < FEW_TRAINING_ROWS:
        out.append(f"only {train} training rows: an adapter learns little from fewer than {FEW_TRAINING_ROWS} and may "
                   f"learn them by heart; add rows (a few hundred is a sound start), and judge the run by the "
                   f"held-out loss, not the training loss")
    if 0 < held_out < FEW_HELD_OUT:
        out.append(f"only {held_out} row{'s' if held_out > 1 else ''} held out: the held-out loss will move with single rows; hold out at "
                   f"least {FEW_HELD_OUT} (data.val_set_size: {FEW_HELD_OUT})")
    return out


def held_out_size(rows: int, share: float) -> float:
    """data.val_set_size for a file of `rows` rows. A share of a small file holds out a handful of rows, and
    how many varies with the rows' hashes; there, a count: the share's, at least FEW_HELD_OUT, at most a fifth
    of the file."""
    if not 0 < share < 1 or rows < 5 or rows * share >= FEW_HELD_OUT * 2:
        return share
    return float(min(max(FEW_HELD_OUT, round(rows * share)), max(rows // 5, 1)))


def no_held_out(val_set_size: float, kept: int) -> str:
    return (f"data.val_set_size is {val_set_size:g}, but of {kept} examples none fell in the held-out split, so "
            f"there would be no held-out loss: hold out a number of rows instead (data.val_set_size: "
            f"{min(FEW_HELD_OUT, max(kept // 5, 1))}), or set data.val_set_size: 0 to train without held-out loss")


def require_held_out(report: dict, data: DataSection) -> None:
    """Before training: held-out loss was asked for (val_set_size > 0) and nothing was held out."""
    if data.val_set_size > 0 and not report["eval"]:
        raise DataError(no_held_out(data.val_set_size, report["kept"]))


def _shown(store: ExampleStore, i: int) -> dict:
    """One example as a report shows it: where it came from and its text, cut at 300 characters."""
    text = "\n".join(store[i].comparison_parts()).strip()
    return {"origin": store.origin(i), "text": text if len(text) <= 300 else text[:297] + "..."}


def _pair(store: ExampleStore, pool: np.ndarray, d: dedup.NearDuplicate) -> dict:
    return {"similarity": d.similarity, "kept": _shown(store, int(pool[d.kept])),
            "removed": _shown(store, int(pool[d.index]))}


def _mix(data: DataSection, train_size: int, train_keys: set[bytes], seed: int,
         plain_text: bool) -> tuple[list[Example], dict | None]:
    """The general rows mixed into training, and the summary of the source they came from."""
    if data.mix.ratio <= 0 or data.mix.source is None:
        return [], None
    general = DataSection(sources=[data.mix.source], skip_bad_rows=data.skip_bad_rows, task_column=data.task_column)
    pool, read, _ = read_examples(general.sources, general)
    if pool and (pool[0].text is not None) != plain_text:
        raise DataError(f"data.mix.source {data.mix.source.path}: its format does not match the training data "
                        f"(one is plain text, the other chat); mix in data of the same kind")
    pool = [ex for ex in pool if dedup.exact_key(*ex.comparison_parts()) not in train_keys]
    if not pool:
        raise DataError(f"data.mix.source {data.mix.source.path}: no rows to mix in (empty, or all already in the "
                        f"training data); give a general instruction dataset")
    return quality.mix_rows(pool, train_size, data.mix.ratio, seed), read[0]
