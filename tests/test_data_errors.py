"""Bad input: every error says where (file, line, column), what was expected, and the fix."""

from __future__ import annotations

import json

import pytest
from data_rows import alpaca_rows, section, write_jsonl

from hubtune.data import prepare
from hubtune.errors import DataError


def lines_file(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_json_line_names_file_line_and_column(tmp_path, chat_tokenizer):
    good = [json.dumps(r) for r in alpaca_rows(4)]
    broken = '{"instruction": "Total?", "output": "nine"'  # the closing brace is missing
    path = lines_file(tmp_path / "bad.jsonl", good[:2] + [broken] + good[2:])
    with pytest.raises(DataError) as err:
        prepare(section(path), chat_tokenizer)
    message = str(err.value)
    assert f"{path}, line 3, column {len(broken) + 1}: not valid JSON" in message
    assert "--skip-bad-rows" in message and "data.skip_bad_rows: true" in message


def test_skip_bad_rows_counts_and_shows_them(tmp_path, chat_tokenizer):
    good = [json.dumps(r) for r in alpaca_rows(4)]
    path = lines_file(tmp_path / "bad.jsonl", [good[0], "{not json", good[1], "[1, 2]", good[2],
                                               json.dumps({"instruction": "No answer here"}), good[3]])
    r = prepare(section(path, skip_bad_rows=True), chat_tokenizer).report
    assert (r["total"], r["bad_rows"], r["kept"]) == (7, 3, 4)
    assert [b.split(":")[0] for b in r["bad_row_examples"]] == [
        f"{path}, line 2, column 2", f"{path}, line 4", f"{path}, line 6"]
    assert r["steps"][0] == {"step": "read", "removed": 3, "left": 4}


def test_a_row_that_is_not_an_object_names_its_line(tmp_path, chat_tokenizer):
    path = lines_file(tmp_path / "bad.jsonl", [json.dumps(alpaca_rows(1)[0]), '"just a string"'])
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: a row is a JSON object, got str"):
        prepare(section(path), chat_tokenizer)


def test_a_row_missing_a_field_names_its_line(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", alpaca_rows(2) + [{"instruction": "Total?", "input": ""}])
    with pytest.raises(DataError, match=r"bad.jsonl, line 3: no value for output \(format alpaca; "
                                        r"columns here: instruction, input\)"):
        prepare(section(path), chat_tokenizer)


def test_missing_column_lists_the_columns_found_and_the_format_expected(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Total?", "answer": "Nine dollars in all."}])
    with pytest.raises(DataError) as err:
        prepare(section(path, format="alpaca"), chat_tokenizer)
    message = str(err.value)
    assert "missing column instruction, output for format alpaca" in message
    assert "columns found: question, answer" in message
    assert "data.columns" in message and "--column output=answer" in message


def test_undetectable_format_lists_columns_and_formats(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Total?", "answer": "Nine dollars in all."}])
    with pytest.raises(DataError) as err:
        prepare(section(path), chat_tokenizer)
    message = str(err.value)
    assert "cannot tell the format from the columns found: question, answer" in message
    assert "alpaca (instruction, output)" in message and "sharegpt (conversations)" in message


@pytest.mark.parametrize("conversation, problem", [
    ([{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Hello"}], "turn 1 has role 'robot'"),
    ([{"from": "human", "value": "Hi"}, {"from": "human", "value": "Anyone?"}],
     "the conversation has no assistant turn"),
    ([{"from": "gpt", "value": "Hello"}], "the conversation starts with the assistant"),
    ([{"from": "human"}], "turn 0 needs 'from' and 'value' keys"),
])
def test_bad_conversations_name_the_row_and_the_problem(tmp_path, chat_tokenizer, conversation, problem):
    good = {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello to you"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [good, {"conversations": conversation}])
    with pytest.raises(DataError) as err:
        prepare(section(path), chat_tokenizer)
    assert f"c.jsonl, line 2: {problem}" in str(err.value)


def test_broken_json_array_names_line_and_column(tmp_path, chat_tokenizer):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(DataError, match=r"bad.json, line 3, column 23: not valid JSON"):
        prepare(section(path), chat_tokenizer)


def test_an_empty_file_is_empty_after_reading(tmp_path, chat_tokenizer):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="no examples left after the read step"):
        prepare(section(path), chat_tokenizer)


def test_a_source_gone_since_the_config_was_checked(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "x.jsonl", alpaca_rows(2))
    data = section(path)
    path.unlink()
    with pytest.raises(DataError, match=r"x.jsonl: no such file or folder"):
        prepare(data, chat_tokenizer)
