"""Exact match, token F1, their 95% intervals and the prompt-versus-tune verdict: the metric modules
shipped in evals/metrics/ loaded through the `evaluate` library, offline; the entries a card is built from."""

from __future__ import annotations

import evaluate
import pytest

from hubtune import config as cfg
from hubtune.errors import ConfigError
from hubtune.evaluation import exact_match, token_f1
from hubtune.evaluation.intervals import bootstrap_mean, proportion, summarize, wilson
from hubtune.evaluation.report import dataset_entry, format_report, metric_entries, summarize_task, versus_best_prompt
from hubtune.evaluation.scoring import evals_dir, exact_match_scores, token_f1_scores
from hubtune.runs import EvalResult


def evaluated(**sections) -> EvalResult:
    return EvalResult(run="runs/x", created="2026-01-01T00:00:00+00:00", settings={}, data={}, **sections)

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


# Wilson score intervals (no continuity correction), computed once with scipy 1.17:
# binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson"). Pinned, so the check runs without scipy.
WILSON = {(0, 5): (0.0, 0.434482), (5, 5): (0.565518, 1.0), (1, 5): (0.036224, 0.624465),
          (3, 10): (0.107791, 0.603222), (37, 40): (0.801358, 0.974164), (0, 40): (0.0, 0.087622),
          (1, 1): (0.206549, 1.0), (50, 100): (0.403832, 0.596168)}


def test_wilson_interval_matches_the_reference_values():
    for (k, n), want in WILSON.items():
        assert wilson(k, n) == pytest.approx(want, abs=1e-6), (k, n)
    assert wilson(0, 0) is None
    # The interval a normal approximation collapses: 0 of 5 and 5 of 5 are not certainties.
    assert proportion([0.0] * 5) == {"mean": 0.0, "ci95": [0.0, pytest.approx(0.434482, abs=1e-6)], "n": 5,
                                     "interval": "wilson"}
    with pytest.raises(ValueError):
        proportion([0.5, 1.0])


def test_wilson_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 3), (2, 7), (19, 20), (120, 200), (1, 1000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_bootstrap_interval_is_seeded_and_agrees_with_scipy():
    values = [0.512, 0.95, 0.144, 0.949, 0.312, 0.423, 0.828, 0.409, 0.55, 0.028, 0.754, 0.538, 0.33, 0.788, 0.303,
              0.453, 0.134, 0.403, 0.203, 0.262, 0.75, 0.28, 0.485, 0.981, 0.962, 0.725, 0.541, 0.277, 0.161, 0.97]
    got = bootstrap_mean(values)
    assert got == bootstrap_mean(values) and got["interval"] == "bootstrap" and got["n"] == 30
    lower, upper = got["ci95"]
    assert lower < got["mean"] < upper and 0.1 < upper - lower < 0.3
    assert bootstrap_mean(values, seed=1)["ci95"] != got["ci95"]  # a different draw, a slightly different interval
    assert bootstrap_mean([3.0])["ci95"] is None and bootstrap_mean([])["mean"] is None
    assert summarize([1.0, 0.0, 1.0])["interval"] == "wilson" and summarize([0.5, 1.0])["interval"] == "bootstrap"
    stats = pytest.importorskip("scipy.stats")
    import numpy as np

    ref = stats.bootstrap((np.array(values),), np.mean, n_resamples=20000, method="percentile",
                          rng=np.random.default_rng(0)).confidence_interval
    assert got["ci95"] == pytest.approx([ref.low, ref.high], abs=0.02)  # 1,000 resamples: Monte Carlo noise


def test_printed_table_shows_asymmetric_intervals_at_small_n():
    task = summarize_task({"dataset": {"name": "t.jsonl"}, "split": "test", "n": 5, "few_shot_k": 0,
                           "base": {"exact_match": [0.0] * 5, "exact_match_normalized": [0.0] * 5,
                                    "token_f1": [0.2, 0.4, 0.1, 0.3, 0.5]},
                           "tuned": {"exact_match": [1.0] * 5, "exact_match_normalized": [1.0] * 5,
                                     "token_f1": [1.0, 0.9, 1.0, 0.8, 1.0]}})
    assert task["tuned"]["exact_match"]["ci95"] == [pytest.approx(0.565518, abs=1e-6), 1.0]
    assert task["tuned"]["token_f1"]["interval"] == "bootstrap"
    lines = format_report(evaluated(task=task)).splitlines()
    assert set(lines[1]) == {"-", " "}  # the rule under the header
    assert lines[2].split() == ["exact", "match", "(n=5)", "0.00", "[0.00,", "0.43]", "-", "1.00", "[0.57,", "1.00]"]
    assert lines[4].startswith("token F1 (n=5)") and "[" in lines[4]
    assert lines[5].startswith("[lower, upper]: 95% intervals; Wilson score for exact match")


def test_model_index_datasets_name_local_files_and_type_only_hub_datasets(tmp_path):
    local = tmp_path / "private" / "test.jsonl"
    local.parent.mkdir()
    local.write_text("{}\n")
    assert dataset_entry(str(local)) == {"name": "test.jsonl"}  # no folders of this machine on a card
    assert dataset_entry("hubtune:data/invoices/test.jsonl") == {"name": "hubtune:data/invoices/test.jsonl"}
    assert dataset_entry("acme/invoices", config="en") == {"name": "acme/invoices", "type": "acme/invoices",
                                                           "config": "en"}
    assert dataset_entry(["acme/invoices", str(local)]) == {"name": "acme/invoices, test.jsonl"}
    assert dataset_entry("json", name="hubtune_general_mc") == {"name": "hubtune_general_mc"}
    assert dataset_entry("Rowan/hellaswag", name="hellaswag") == {"name": "hellaswag", "type": "Rowan/hellaswag"}


def test_metric_entries_carry_model_dataset_split_and_interval():
    result = evaluated(
        loss={"dataset": {"name": "acme/inv", "type": "acme/inv"}, "split": "validation",
              "tuned": {"loss": 0.5, "perplexity": 1.65}, "base": {"loss": 2.0, "perplexity": 7.39}},
        regression={"dataset": "evals:regression/general_mc.jsonl", "base": 0.9, "tuned": 0.8,
                    "ci95": {"base": [0.77, 0.96], "tuned": [0.65, 0.9]}},
        harness={"tuned": {"hellaswag": {"metrics": {"acc": 0.3}, "ci95": {"acc": [0.2, 0.4]}, "n": 50,
                                         "dataset": {"path": "Rowan/hellaswag", "split": "validation"}}},
                 "base": {}})
    entries = [e.model_dump() for e in metric_entries(result)]
    assert {(e["name"], e["model"], e["value"]) for e in entries} == {
        ("held-out loss", "tuned", 0.5), ("perplexity", "tuned", 1.65), ("held-out loss", "base", 2.0),
        ("perplexity", "base", 7.39), ("regression set accuracy", "tuned", 0.8),
        ("regression set accuracy", "base", 0.9), ("hellaswag acc", "tuned", 0.3)}
    assert all(set(e) == {"name", "type", "value", "ci95", "dataset", "split", "model"} for e in entries)
    by_name = {(e["name"], e["model"]): e for e in entries}
    assert by_name["regression set accuracy", "tuned"]["ci95"] == [0.65, 0.9]
    assert by_name["regression set accuracy", "tuned"]["dataset"] == {"name": "evals:regression/general_mc.jsonl"}
    assert by_name["held-out loss", "tuned"]["ci95"] is None
    assert by_name["hellaswag acc", "tuned"]["dataset"] == {"name": "hellaswag", "type": "Rowan/hellaswag"}
    assert by_name["hellaswag acc", "tuned"]["split"] == "validation"

    # On the card: only the tuned model's measures on Hub datasets enter the model-index.
    from hubtune.card import eval_entries, eval_results_from

    index = eval_results_from(evaluated(metrics=entries))
    assert {(r.dataset_type, r.dataset_split, r.metric_name) for r in index} == {
        ("acme/inv", "validation", "held-out loss"), ("acme/inv", "validation", "perplexity"),
        ("Rowan/hellaswag", "validation", "hellaswag acc")}
    rows = {(r["name"], r["model"]): r for r in eval_entries(evaluated(metrics=entries))}
    assert rows["regression set accuracy", "base"]["dataset_type"] is None
    assert rows["regression set accuracy", "base"]["ci95"] == [0.77, 0.96]


def test_eval_section_is_validated_with_paths():
    config = cfg.build({"eval": {"test": "hubtune:data/invoices/test.jsonl", "few_shot_k": 5}})
    assert config.eval.test.path == "hubtune:data/invoices/test.jsonl" and config.eval.few_shot_k == 5
    with pytest.raises(ConfigError) as err:
        cfg.build({"eval": {"few_shot_k": -1, "regression_threshold": 2, "judge_retrys": 3}})
    assert set(err.value.paths) == {"eval.few_shot_k", "eval.regression_threshold", "eval.judge_retrys"}


def no_model_loading(message: str) -> None:
    assert not message.startswith("loading"), f"a model was loaded before the settings were checked: {message}"


def test_an_unknown_harness_task_fails_before_any_model_is_loaded(make_run):
    from hubtune.errors import EvalError
    from hubtune.evaluation import evaluate

    with pytest.raises(EvalError) as err:
        evaluate(make_run(), tasks=["hubtune_invoices", "hellaswagg", "hubtune_general"], log=no_model_loading)
    message = str(err.value)
    assert "hellaswagg (did you mean hellaswag" in message and "hubtune_general (did you mean hubtune_general_mc" in message
    assert "hubtune_invoices (" not in message


def test_a_malformed_regression_row_is_named_by_file_and_line(tmp_path):
    from hubtune.errors import EvalError
    from hubtune.evaluation.pipeline import regression_rows

    good = '{"context": "The capital of France is", "choices": ["Paris", "Rome"], "label": 0}'
    for bad, says in [('{"context": "x", "choices": ["a", "b"]}', "holds context, choices and label"),
                      ('{"context": "x", "choices": ["a", "b"], "label": 2}', "label the index of the right one"),
                      ('{"context": "x", "choices": "a", "label": 0}', "choices must be a list"),
                      ("{not json", "not JSON")]:
        path = tmp_path / "set.jsonl"
        path.write_text(good + "\n\n" + bad + "\n")
        with pytest.raises(EvalError) as err:
            regression_rows(str(path))
        assert f"{path}, line 3: " in str(err.value) and says in str(err.value)
    path.write_text(good + "\n")
    assert regression_rows(str(path))[0]["label"] == 0
