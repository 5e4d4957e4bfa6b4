"""Streaming one answer token by token gives the same greedy answer as batched generation."""

from __future__ import annotations

from hubtune.evaluation import generate_answers, load_tuned
from hubtune.evaluation.generate import stream_answer


def test_streamed_answer_grows_and_equals_the_batched_one(eval_run, one_torch_thread):
    model, tokenizer = load_tuned(eval_run)
    messages = [{"role": "user", "content": "Extract all product names and prices from this invoice text.\n\n"
                                            "Product: Oak Chair\nQuantity: 2\nPrice: $12.00"}]
    steps = list(stream_answer(model, tokenizer, messages, max_new_tokens=32))
    assert len(steps) > 1 and all(b.startswith(a) for a, b in zip(steps, steps[1:]))
    assert steps[-1] == generate_answers(model, tokenizer, [messages], max_new_tokens=32)[0]
