"""Small crafted datasets for the data tests, and the short runs of the embedded tiny base the training
tests share: the first rows of the invoice task and a config of a few small steps."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hubtune import config as cfg
from hubtune.config import DataSection, resolve_builtin

INVOICES = "hubtune:data/invoices/train.jsonl"
# One small step, nothing held out: what a test of something other than the training maths needs.
TINY_TRAINING = {"max_steps": 1, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                 "gradient_checkpointing": False, "warmup_steps": 0, "logging_steps": 1}

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


def invoice_lines(n: int) -> list[str]:
    """The first n rows of the embedded invoice task, as JSON lines."""
    return Path(resolve_builtin(INVOICES)).read_text().splitlines()[:n]


def invoice_file(path: Path, n: int) -> Path:
    """The first n invoices as a local JSON-lines dataset at `path`."""
    path.write_text("\n".join(invoice_lines(n)) + "\n")
    return path


def tiny_tree(dataset, output: Path | None = None, *, model: dict | None = None, data: dict | None = None,
              training: dict | None = None, **sections) -> dict:
    """The settings of a short run of the embedded tiny base on `dataset` (TINY_TRAINING, nothing held out);
    each section's keys override these."""
    tree = {"model": {"id": "hubtune:tiny-llama", **(model or {})},
            "data": {"sources": [str(dataset)], "val_set_size": 0, "max_seq_len": 384, **(data or {})},
            "training": {**TINY_TRAINING, **(training or {})}, **sections}
    if output is not None:
        tree["output"] = {"dir": str(output)}
    return tree


def tiny_config(tmp: Path, rows: int = 40, run: str = "run", **settings) -> cfg.RunConfig:
    """A short run of the embedded tiny base on the first `rows` invoices (written under `tmp`), into
    tmp/run; `model=`, `data=`, `training=` and other sections override tiny_tree's settings."""
    data = invoice_file(tmp / "invoices.jsonl", rows)
    return cfg.build(tiny_tree(data, tmp / run, **settings))


def tiny_run_config(path: Path, dataset, steps: int = 1, output: Path | None = None, **settings) -> Path:
    """tiny_tree for `steps` steps as a run config file at `path` (command-line overrides change it per case)."""
    settings["training"] = {"max_steps": steps, **settings.get("training", {})}
    path.write_text(yaml.safe_dump(tiny_tree(dataset, output, **settings), sort_keys=False))
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
