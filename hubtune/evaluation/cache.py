"""Generations and judge replies cached in the run folder, so an interrupted evaluation resumes.

One JSON line per answer, appended as soon as a batch finishes; the key hashes everything the
answer depends on (which model, the messages, the generation settings).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def file_fingerprint(path: Path) -> str:
    """A short hash of a file's bytes (the adapter weights), so a retrained adapter misses the cache."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class AnswerCache:
    """key -> text, persisted as JSON lines; a torn last line (a crash mid-write) is ignored."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.entries[row["key"]] = row["text"]

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def put_many(self, items: dict[str, str]) -> None:
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for key, text in items.items():
                f.write(json.dumps({"key": key, "text": text}, ensure_ascii=False) + "\n")
        self.entries.update(items)


def cached_answers(cache: AnswerCache, model_key: str, generate, prompts: list[list[dict]],
                   settings: dict, chunk: int = 32) -> tuple[list[str], int]:
    """Answers for `prompts`, generating only those not cached; returns (answers, how many were generated).

    `generate(prompts) -> answers` is called on chunks so each finished chunk is saved before the next.
    """
    keys = [key_of(model_key, p, settings) for p in prompts]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    seen = set()
    todo = [i for i in todo if not (keys[i] in seen or seen.add(keys[i]))]
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        answers = generate([prompts[i] for i in part])
        cache.put_many({keys[i]: a for i, a in zip(part, answers)})
    return [cache.get(k) for k in keys], len(todo)
