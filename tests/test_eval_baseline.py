"""Try prompting first: the base zero-shot and few-shot on the test set, before any training."""

from __future__ import annotations

import pytest

from hubtune import config as cfg
from hubtune.evaluation.baseline import score_prompting

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out


def test_base_zero_and_few_shot_on_the_test_set(one_torch_thread, tmp_path):
    config = cfg.build({"data": {"sources": ["hubtune:data/invoices/train.jsonl"], "max_seq_len": 384},
                        "eval": {"test": "hubtune:data/invoices/test.jsonl", "few_shot_k": 2, "max_new_tokens": 48}})
    result = score_prompting(config, limit=6)
    assert result["n"] == 6 and result["few_shot_k"] == 2
    for name in ("base", "base_few_shot"):
        assert 0.0 <= result[name]["exact_match"]["mean"] <= 1.0
        assert 0.0 <= result[name]["token_f1"]["mean"] <= 1.0
        assert len(result[name]["samples"]) == 3 and all(s["answer"] is not None for s in result[name]["samples"])
    # The few-shot prompts carry two solved examples as earlier turns; the embedded base has never seen the
    # answer layout, so zero-shot it matches no answer exactly (README: base_exact_match=0.00).
    assert result["base_few_shot"]["prompt_turns"] == result["base"]["prompt_turns"] + 4
    assert result["base"]["exact_match"]["mean"] == 0.0
    best = max(("base", "base_few_shot"), key=lambda m: (result[m]["exact_match"]["mean"], result[m]["token_f1"]["mean"]))
    assert result["best_prompt"] == best
    assert result["line"].startswith("best prompt: " + ("base zero-shot" if best == "base" else "base 2-shot"))
