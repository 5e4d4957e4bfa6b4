"""The shipped invoice task and general set pass through the pipeline with the shipped base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubtune.config import DataSection, resolve_builtin
from hubtune.data import load_tokenizer, prepare

INVOICES = "hubtune:data/invoices/train.jsonl"
GENERAL = "hubtune:data/general/train.jsonl"


@pytest.fixture
def base_tokenizer():
    return load_tokenizer("hubtune:tiny-llama")


def read(ref: str) -> list[dict]:
    return [json.loads(line) for line in Path(resolve_builtin(ref)).read_text().splitlines() if line.strip()]


def test_the_invoice_task_passes_through_clean(base_tokenizer):
    rows = read(INVOICES)
    prepared = prepare(DataSection(sources=[INVOICES]), base_tokenizer, seed=42)
    r = prepared.report
    assert r["format"] == "alpaca" and r["total"] == len(rows)
    assert r["kept"] == len(rows)  # distinct invoices with full answers: nothing to remove
    assert r["train"] + r["eval"] == len(rows) and 0.02 < r["eval"] / len(rows) < 0.09
    assert r["chat_template"]["template"].startswith("the base model's own")
    answers = {row["output"] for row in rows}
    for row in prepared.train.select(range(20)):
        assert row["completion"][0]["content"] in answers
        ids = base_tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                                 return_dict=True)["input_ids"]
        assert ids[-1] == base_tokenizer.eos_token_id
        assert len(ids) <= r["lengths"]["example_tokens"]["max"]


def test_the_general_set_passes_through_with_its_tasks(base_tokenizer):
    rows = read(GENERAL)
    one_token = sum(len(base_tokenizer(r["output"], add_special_tokens=False)["input_ids"]) < 2 for r in rows)
    r = prepare(DataSection(sources=[GENERAL]), base_tokenizer).report
    # A third of the answers are one token (sums, capitals): the task, not noise, so they stay...
    assert r["total"] == len(rows) and r["too_short"] == 0 and one_token > len(rows) / 4
    # ...unless the bar is set as an absolute one.
    absolute = prepare(DataSection(sources=[GENERAL], short_relative=False), base_tokenizer).report
    assert absolute["too_short"] == one_token
    assert {name: t["read"] for name, t in r["tasks"].items()} == {
        name: sum(row["task"] == name for row in rows) for name in {row["task"] for row in rows}}
    everything = prepare(DataSection(sources=[GENERAL], min_response_tokens=1, val_set_size=0), base_tokenizer)
    assert everything.report["kept"] == len(rows) == len(everything.train)


def test_general_data_mixes_into_the_invoice_task(base_tokenizer):
    general_answers = {r["output"] for r in read(GENERAL)}
    data = DataSection(sources=[INVOICES], mix={"source": GENERAL, "ratio": 0.1})
    prepared = prepare(data, base_tokenizer, seed=42)
    r = prepared.report
    task_rows = r["train"] - r["mixed"]
    assert r["mixed"] == round(0.1 * task_rows / 0.9)
    mixed = [row for row in prepared.train if row["completion"][0]["content"] in general_answers]
    assert len(mixed) == r["mixed"] > len(read(GENERAL))  # the small general set is repeated to reach the ratio
