"""Reasoning and tool calls end to end. Qwen3 trained on rows with reasoning and rows without it
(data.thinking: auto): asked with thinking on it
thinks, then answers; asked with thinking off it answers at once; both are scored on the answer after the
thinking, through `hubtune train` and `hubtune eval`."""

from __future__ import annotations

import json

import pytest

from family_models import answers, label_rows, run_config, train_and_eval

pytestmark = pytest.mark.slow  # each test trains and evaluates a model


def test_qwen3_obeys_both_thinking_modes_after_training(family_model, cli, tmp_path, one_torch_thread):
    rows = label_rows(60, 1, reasoning=True) + label_rows(60, 3)
    run = tmp_path / "run"
    result = train_and_eval(cli, run_config(tmp_path, family_model("qwen3"), rows, steps=250, max_new_tokens=40), run,
                            "eval.thinking=off")
    report = json.loads((run / "data_report.json").read_text())
    # A reasoning row whose note and answer repeat a plain row's is an exact duplicate, and goes.
    assert 55 <= report["reasoning_rows"] <= 60 and report["chat_template"]["family"] == "Qwen3"

    task = result["task"]
    assert task["thinking"] is False
    assert task["tuned"]["exact_match"]["mean"] >= 0.9 and task["stopped"]["tuned"] >= 0.95
    assert not any("<think>" in a["generated"]["tuned"] for a in answers(run))  # no thinking when told not to

    scored = cli("eval", run, "eval.thinking=on")
    assert scored.returncode == 0, scored.stderr[-2000:]
    task = json.loads((run / "eval.json").read_text())["task"]
    assert task["thinking"] is True
    assert task["tuned"]["exact_match"]["mean"] >= 0.9 and task["stopped"]["tuned"] >= 0.95
    thought = [a for a in answers(run) if " means " in a["generated"]["tuned"].split("</think>")[0]]
    assert len(thought) >= 0.9 * len(answers(run))  # it reasons before answering when asked to


def test_a_tool_calling_task_is_scored_by_the_call_metric(family_model, cli, tmp_path, one_torch_thread):
    from family_models import TEST_ROWS, tool_rows

    run = tmp_path / "run"
    # The label sits ~20 tokens into the call ([TOOL_CALLS][{"name": ..., "arguments": {"label": ...): more steps.
    config = run_config(tmp_path, family_model("mistral"), tool_rows(120, 1), steps=300,
                        test_rows=tool_rows(TEST_ROWS, 2), max_new_tokens=64)
    task = train_and_eval(cli, config, run)["task"]
    assert task["tool_calls"]["tuned"] >= 0.9 and task["tool_calls"]["base"] == 0.0
    assert task["stopped"]["tuned"] >= 0.95
