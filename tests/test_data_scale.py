"""The data pipeline at scale: examples kept compactly, large splits memory-mapped, rows streamed."""

from __future__ import annotations

from data_rows import alpaca_rows, section, write_jsonl

from hubtune.data import pipeline, prepare
from hubtune.data.formats import Example


def test_the_store_gives_every_example_back():
    store = pipeline.ExampleStore()
    chat = Example([{"role": "user", "content": "Hi é"}], [{"role": "assistant", "content": "Hello"}], None, "greet",
                   "a.jsonl, line 3")
    text = Example(None, None, "plain text", None, "b.jsonl, line 9")
    store.append(chat, "a.jsonl, line", 3)
    store.append(text, "b.jsonl, line", 9)
    assert len(store) == 2 and store[0] == chat and store[1] == text
    assert store.origin(1) == "b.jsonl, line 9" and store.tasks(__import__("numpy").arange(2)) == ["greet", None]


def test_a_large_split_is_written_to_arrow_and_reads_the_same(tmp_path, make_tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "rows.jsonl", alpaca_rows(60))
    small = prepare(section(path, val_set_size=0.25), make_tokenizer())
    small_train, small_eval = small.train, small.eval  # built while the limit is the real one
    monkeypatch.setattr(pipeline, "IN_MEMORY_ROWS", 5)
    large = prepare(section(path, val_set_size=0.25), make_tokenizer())
    assert large.report == small.report
    assert list(large.train) == list(small_train) and list(large.eval) == list(small_eval)
    assert large.train.cache_files and not small_train.cache_files  # memory-mapped from disk
