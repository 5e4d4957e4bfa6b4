"""Small crafted datasets for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

from hubtune.config import DataSection

WORDS = ("amber basil cedar delta ember fjord garnet harbor indigo juniper kestrel lagoon meadow nectar "
         "orchid pebble quartz raven saffron timber umber velvet willow yarrow zephyr acorn bramble cobalt "
         "dune elm fern glacier heron iris jade kelp lotus maple nova opal pine quill reed sage thyme").split()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sentence(seed: int, n: int = 40) -> str:
    """A deterministic run of n words that shares no 3-word shingle with other seeds' runs in practice."""
    return " ".join(WORDS[(seed * 7 + i * (seed % 11 + 3)) % len(WORDS)] + str((seed * 31 + i) % 97) for i in range(n))


def alpaca_rows(n: int, start: int = 0) -> list[dict]:
    """n distinct Alpaca rows with answers of several words."""
    return [{"instruction": f"Describe item {i}.", "input": sentence(i, 12), "output": sentence(i + 1000, 8)}
            for i in range(start, start + n)]


def tiny_run_config(path: Path, dataset, steps: int = 1, output: Path | None = None) -> Path:
    """A run config training the embedded tiny base for `steps` steps of 2 examples of `dataset`, nothing
    held out, written to `path` (command-line overrides change it per case)."""
    path.write_text(f"""model:
  id: hubtune:tiny-llama
data:
  sources: [{dataset}]
  val_set_size: 0
  max_seq_len: 384
training:
  max_steps: {steps}
  micro_batch_size: 2
  gradient_accumulation_steps: 1
  gradient_checkpointing: false
  warmup_steps: 0
  logging_steps: 1
""" + (f"output:\n  dir: {output}\n" if output else ""))
    return path


def section(path, **settings) -> DataSection:
    """A data section on one source with the held-out split off unless asked for."""
    settings.setdefault("val_set_size", 0)
    return DataSection(sources=[str(path)], **settings)


LABELS = ("positive", "negative", "neutral")


def label_rows(n: int = 60) -> list[dict]:
    """n chat-format rows whose answers are one-word labels (a classification task, as users bring one)."""
    return [{"messages": [{"role": "user", "content": f"Label the sentiment of this review: {sentence(i, 10)}"},
                          {"role": "assistant", "content": LABELS[i % len(LABELS)]}]} for i in range(n)]
