"""The chat template: the base's own or the documented default, and the EOS check."""

from __future__ import annotations

import pytest
from conftest import TEST_CHAT_TEMPLATE
from data_rows import alpaca_rows, section, write_jsonl

from hubtune.data import prepare
from hubtune.data.template import DEFAULT_CHAT_TEMPLATE
from hubtune.errors import DataError

NO_EOS_TEMPLATE = TEST_CHAT_TEMPLATE.replace("message['content'] + '</s>'", "message['content'] + '\n'")


def tokenized_like_the_trainer(tokenizer, row):
    """What TRL does with a conversational prompt-completion row: the prompt rendered with the
    generation prompt, then prompt + completion; the completion is where they diverge."""
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    return (tokenizer(prompt, add_special_tokens=False)["input_ids"],
            tokenizer(full, add_special_tokens=False)["input_ids"])


def test_the_base_template_is_used_and_answers_end_with_eos(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(3))
    prepared = prepare(section(path), chat_tokenizer)
    assert chat_tokenizer.chat_template == TEST_CHAT_TEMPLATE
    assert prepared.report["chat_template"]["template"].startswith("the base model's own")
    for row in prepared.train:
        prompt_ids, full_ids = tokenized_like_the_trainer(chat_tokenizer, row)
        assert full_ids[:len(prompt_ids)] == prompt_ids
        assert full_ids[-1] == chat_tokenizer.eos_token_id


def test_a_base_without_template_gets_the_default_and_the_report_says_so(tmp_path, make_tokenizer):
    tokenizer = make_tokenizer(template=None)
    path = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(3))
    prepared = prepare(section(path), tokenizer)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    info = prepared.report["chat_template"]
    assert info["template"] == "hubtune default (the base model has none)"
    assert info["rendered_example"].endswith("The answer is 42." + tokenizer.eos_token)
    for row in prepared.train:
        prompt_ids, full_ids = tokenized_like_the_trainer(tokenizer, row)
        assert full_ids[:len(prompt_ids)] == prompt_ids
        assert full_ids[-1] == tokenizer.eos_token_id


def test_a_template_whose_answers_do_not_end_with_eos_fails_clearly(tmp_path, make_tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(3))
    with pytest.raises(DataError) as err:
        prepare(section(path), make_tokenizer(template=NO_EOS_TEMPLATE))
    message = str(err.value)
    assert "not the EOS token '</s>'" in message and "never learn to stop" in message
    assert "data.chat_template: default" in message


def test_the_default_template_can_replace_a_broken_one(tmp_path, make_tokenizer):
    tokenizer = make_tokenizer(template=NO_EOS_TEMPLATE)
    path = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(3))
    prepared = prepare(section(path, chat_template="default"), tokenizer)
    assert prepared.report["chat_template"]["template"] == "hubtune default (data.chat_template: default)"
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE


def test_an_eos_token_that_does_not_encode_to_its_id_fails(tmp_path, make_tokenizer):
    # The text "</s>" is in the template, but the tokenizer's EOS is another token: training
    # would teach the model to print "</s>" as text, and it would never stop.
    tokenizer = make_tokenizer()
    tokenizer.eos_token = "<pad>"
    path = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(3))
    with pytest.raises(DataError, match="not the EOS token '<pad>'"):
        prepare(section(path), tokenizer)
