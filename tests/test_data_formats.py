"""Every row format and file type becomes the same conversational prompt/completion rows."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_rows import section, write_jsonl

from hubtune.data import alpaca_to_messages, prepare
from hubtune.errors import DataError

ANSWER = "The total comes to forty two dollars and ten cents."


def rows_of(prepared):
    return prepared.train.to_list()


def test_alpaca_with_input_and_system(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Add the prices.", "input": "12.00 and 30.10", "output": ANSWER, "system": "Be exact."},
        {"instruction": "Say the total of the invoice.", "input": "", "output": "It is forty dollars in all."},
    ])
    prepared = prepare(section(path), chat_tokenizer)
    assert prepared.report["format"] == "alpaca"
    assert rows_of(prepared) == [
        {"prompt": [{"role": "system", "content": "Be exact."},
                    {"role": "user", "content": "Add the prices.\n\n12.00 and 30.10"}],
         "completion": [{"role": "assistant", "content": ANSWER}]},
        {"prompt": [{"role": "user", "content": "Say the total of the invoice."}],
         "completion": [{"role": "assistant", "content": "It is forty dollars in all."}]},
    ]
    # The helper other modules use builds the same prompt as training does.
    assert alpaca_to_messages({"instruction": "Add the prices.", "input": "12.00 and 30.10", "output": ANSWER}) == {
        "prompt": [{"role": "user", "content": "Add the prices.\n\n12.00 and 30.10"}],
        "completion": [{"role": "assistant", "content": ANSWER}]}


def test_sharegpt_multi_turn_puts_all_but_the_last_answer_in_the_prompt(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": [
        {"from": "system", "value": "You read invoices."},
        {"from": "human", "value": "What is on invoice 7?"},
        {"from": "gpt", "value": "Two lamps and a chair."},
        {"from": "human", "value": "And the total?"},
        {"from": "gpt", "value": ANSWER},
        {"from": "human", "value": "Thanks, that is all for today."},
    ]}])
    prepared = prepare(section(path), chat_tokenizer)
    assert prepared.report["format"] == "sharegpt"
    (row,) = rows_of(prepared)
    assert [m["role"] for m in row["prompt"]] == ["system", "user", "assistant", "user"]
    assert row["prompt"][2]["content"] == "Two lamps and a chair."
    assert row["completion"] == [{"role": "assistant", "content": ANSWER}]


def test_openai_messages_with_system_turn_and_text_parts(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [
        {"role": "system", "content": "You read invoices."},
        {"role": "user", "content": [{"type": "text", "text": "Total of "}, {"type": "text", "text": "invoice 9?"}]},
        {"role": "assistant", "content": ANSWER},
    ]}])
    (row,) = rows_of(prepare(section(path), chat_tokenizer))
    assert row["prompt"] == [{"role": "system", "content": "You read invoices."},
                             {"role": "user", "content": "Total of invoice 9?"}]
    assert row["completion"] == [{"role": "assistant", "content": ANSWER}]


def test_prompt_completion_as_strings_and_as_messages(tmp_path, chat_tokenizer):
    conversational = {"prompt": [{"role": "user", "content": "Total of invoice 9?"}],
                      "completion": [{"role": "assistant", "content": ANSWER}]}
    path = write_jsonl(tmp_path / "pc.jsonl", [
        {"prompt": "Total of invoice 8?", "completion": "It is eleven dollars and five cents."}, conversational])
    prepared = prepare(section(path), chat_tokenizer)
    assert prepared.report["format"] == "prompt_completion"
    first, second = rows_of(prepared)
    assert first == {"prompt": [{"role": "user", "content": "Total of invoice 8?"}],
                     "completion": [{"role": "assistant", "content": "It is eleven dollars and five cents."}]}
    assert second == conversational


def test_plain_text_rows_stay_text(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "Invoice 7 lists two lamps and a chair."},
                                              {"text": "Invoice 8 lists a table and four cups."}])
    prepared = prepare(section(path), chat_tokenizer)
    assert prepared.report["format"] == "text"
    assert prepared.report["chat_template"] is None
    assert rows_of(prepared) == [{"text": "Invoice 7 lists two lamps and a chair."},
                                 {"text": "Invoice 8 lists a table and four cups."}]


def test_column_mapping_and_explicit_format(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "Total of invoice 9?", "answer": ANSWER, "kind": "totals"}])
    prepared = prepare(section(path, format="alpaca", columns={"instruction": "question", "output": "answer"},
                               task_column="kind"), chat_tokenizer)
    assert rows_of(prepared) == [{"prompt": [{"role": "user", "content": "Total of invoice 9?"}],
                                  "completion": [{"role": "assistant", "content": ANSWER}]}]
    assert prepared.report["tasks"]["totals"]["read"] == 1


def test_mapping_also_drives_detection(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"dialog": [{"role": "user", "content": "Total of invoice 9?"},
                                                          {"role": "assistant", "content": ANSWER}]}])
    prepared = prepare(section(path, columns={"messages": "dialog"}), chat_tokenizer)
    assert prepared.report["format"] == "messages"
    assert rows_of(prepared)[0]["completion"][0]["content"] == ANSWER


def test_csv_parquet_json_array_and_folder_read_alike(tmp_path, chat_tokenizer):
    rows = [{"instruction": f"Total of invoice {i}?", "input": "", "output": f"It is {i} dollars and {i + 1} cents."}
            for i in range(3)]
    expected = [{"prompt": [{"role": "user", "content": r["instruction"]}],
                 "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows]
    with (tmp_path / "r.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    (tmp_path / "r.json").write_text(json.dumps(rows, indent=2))
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", [{"instruction": "held back", "input": "", "output": "not for training here"}])
    for source in ("r.csv", "r.parquet", "r.json", "folder"):
        prepared = prepare(section(tmp_path / source), chat_tokenizer)
        assert rows_of(prepared) == expected, source
    assert prepare(section(tmp_path / "folder"), chat_tokenizer).report["sources"][0]["rows"] == 3


def test_several_sources_of_different_formats_combine(tmp_path, chat_tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Total of invoice 1?", "output": "It is nine dollars."}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": "Total of invoice 2?"},
                                                              {"from": "gpt", "value": "It is ten dollars."}]}])
    prepared = prepare(section(a).model_copy(update={"sources": section(a).sources + section(b).sources}),
                       chat_tokenizer)
    assert prepared.report["format"] == "alpaca, sharegpt"
    assert [r["completion"][0]["content"] for r in rows_of(prepared)] == ["It is nine dollars.", "It is ten dollars."]


def test_text_and_chat_sources_cannot_mix(tmp_path, chat_tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Total of invoice 1?", "output": "It is nine dollars."}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "Invoice 2 totals ten dollars."}])
    data = section(a).model_copy(update={"sources": section(a).sources + section(b).sources})
    with pytest.raises(DataError, match="mix plain text with chat data"):
        prepare(data, chat_tokenizer)
