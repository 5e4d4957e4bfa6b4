"""Exact match, token F1 and the prompt-versus-tune verdict: the metric modules shipped in
evals/metrics/ loaded through the `evaluate` library, offline."""

from __future__ import annotations

import evaluate
import pytest

from hubtune import config as cfg
from hubtune.errors import ConfigError
from hubtune.evaluation import exact_match, token_f1
from hubtune.evaluation.report import metric_entries, versus_best_prompt
from hubtune.evaluation.scoring import evals_dir, exact_match_scores, token_f1_scores

INVOICE = "Products:\n- Steel Bolt: $4.25\n- Oak Shelf: $19.99"


def test_metric_modules_load_offline_through_evaluate(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    em = evaluate.load(str(evals_dir() / "metrics" / "exact_match"), keep_in_memory=True)
    f1 = evaluate.load(str(evals_dir() / "metrics" / "token_f1"), keep_in_memory=True)
    assert em.compute(predictions=["a", "b "], references=["a", "c"]) == {"exact_match": 0.5, "scores": [1.0, 0.0]}
    assert f1.compute(predictions=["cat sat"], references=["cat sat on mat"])["f1"] == pytest.approx(2 / 3)


def test_exact_match_is_strict_on_the_whole_answer_unless_normalised():
    assert exact_match(INVOICE + "\n", INVOICE) and exact_match("  " + INVOICE, INVOICE)
    assert not exact_match(INVOICE.replace("4.25", "4.26"), INVOICE)
    assert not exact_match(INVOICE.lower(), INVOICE)
    assert exact_match(INVOICE.lower(), INVOICE, normalize=True)
    assert exact_match("The Eiffel Tower!", "eiffel tower", normalize=True)
    assert not exact_match("The Eiffel Tower!", "eiffel tower")


def test_token_f1_follows_squad_normalisation():
    assert token_f1("the cat sat on the mat", "a cat sat on a mat") == 1.0  # articles and case drop out
    assert token_f1("cat sat", "cat sat on mat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("cat", "") == 0.0
    # Repeated tokens count with multiplicity: precision 2/4, recall 2/2.
    assert token_f1("bolt bolt bolt bolt", "bolt bolt") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert token_f1_scores(["a b", "c"], ["a b", "d"]) == [1.0, 0.0]
    assert exact_match_scores([], []) == []


def task(base, few, tuned, f1=None):
    f1 = f1 or {}
    return {"dataset": "d", "split": "test", "n": len(tuned), "few_shot_k": 3,
            "base": {"exact_match": base, "token_f1": f1.get("base", base)},
            "base_few_shot": {"exact_match": few, "token_f1": f1.get("few", few)},
            "tuned": {"exact_match": tuned, "token_f1": f1.get("tuned", tuned)}}


def test_verdict_names_the_best_prompt_and_the_margin():
    won = versus_best_prompt(task([0.0] * 10, [1.0] * 2 + [0.0] * 8, [1.0] * 9 + [0.0]))
    assert won["best_prompt"] == "base_few_shot" and won["beat"]
    assert won["difference"]["exact_match"]["mean"] == pytest.approx(0.7)
    assert won["line"].startswith("fine-tuning beat the best prompt (base 3-shot) by +0.70 exact match")

    lost = versus_best_prompt(task([1.0] * 10, [0.0] * 10, [0.0] * 10))
    assert lost["best_prompt"] == "base" and not lost["beat"]
    assert lost["line"].startswith("fine-tuning did worse than the best prompt (base) by 1.00 exact match")

    # One more hit in ten is within noise: not a win.
    close = versus_best_prompt(task([0.0] * 10, [1.0] + [0.0] * 9, [1.0] * 2 + [0.0] * 8))
    assert not close["beat"] and "did not clearly beat the best prompt (base 3-shot): +0.10" in close["line"]


def test_metric_entries_carry_model_dataset_and_split():
    result = {"loss": {"dataset": "acme/inv", "split": "validation",
                       "tuned": {"loss": 0.5, "perplexity": 1.65}, "base": {"loss": 2.0, "perplexity": 7.39}},
              "regression": {"dataset": "evals:regression/general_mc.jsonl", "base": 0.9, "tuned": 0.8}}
    entries = metric_entries(result)
    assert {(e["name"], e["model"], e["value"]) for e in entries} == {
        ("held-out loss", "tuned", 0.5), ("perplexity", "tuned", 1.65), ("held-out loss", "base", 2.0),
        ("perplexity", "base", 7.39), ("regression set accuracy", "tuned", 0.8),
        ("regression set accuracy", "base", 0.9)}
    assert all(set(e) == {"name", "type", "value", "dataset", "split", "model"} for e in entries)


def test_eval_section_is_validated_with_paths():
    config = cfg.build({"eval": {"test": "hubtune:data/invoices/test.jsonl", "few_shot_k": 5}})
    assert config.eval.test.path == "hubtune:data/invoices/test.jsonl" and config.eval.few_shot_k == 5
    with pytest.raises(ConfigError) as err:
        cfg.build({"eval": {"few_shot_k": -1, "regression_threshold": 2, "judge_retrys": 3}})
    assert set(err.value.paths) == {"eval.few_shot_k", "eval.regression_threshold", "eval.judge_retrys"}


def test_an_unknown_harness_task_fails_before_any_model_is_loaded(tmp_path):
    from hubtune.errors import EvalError
    from hubtune.evaluation import evaluate

    (tmp_path / "config.yaml").write_text(cfg.RunConfig().to_yaml())  # no adapter: nothing could be loaded
    with pytest.raises(EvalError) as err:
        evaluate(tmp_path, tasks=["hubtune_invoices", "hellaswagg", "hubtune_general"], log=lambda m: None)
    message = str(err.value)
    assert "hellaswagg (did you mean hellaswag" in message and "hubtune_general (did you mean hubtune_general_mc" in message
    assert "hubtune_invoices (" not in message
