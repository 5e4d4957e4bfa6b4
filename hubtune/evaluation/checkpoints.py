"""Scores of a checkpoint while it trains: the run's task metric on a held-out slice and the regression set,
for `training.select: task` (which checkpoint the run keeps).

    scores = score_checkpoint(model, tokenizer, rows, config.eval)
    best = choose(history, "task")
"""

from __future__ import annotations

from hubtune.config import EvalSection
from hubtune.evaluation.intervals import proportion


def score_checkpoint(model, tokenizer, rows: list[dict], ev: EvalSection, base_regression: dict | None = None) -> dict:
    """Exact match (with its interval) of greedy answers on `rows`, and the regression verdict against the
    base (its accuracy, measured once and passed back in as base_regression)."""
    from hubtune.evaluation.generate import generate_answers
    from hubtune.evaluation.scoring import exact_match_scores

    answers = generate_answers(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=ev.max_new_tokens,
                               batch_size=ev.batch_size)
    scores = {"exact_match": proportion(exact_match_scores(answers, [r["completion"][-1]["content"] for r in rows]))}
    scores["regression"] = regression(model, tokenizer, ev, base_regression)
    return scores


def regression(model, tokenizer, ev: EvalSection, base: dict | None) -> dict | None:
    """{accuracy, base, drop, passed} on eval.regression_set, or None when there is none or lm-eval is missing."""
    from contextlib import nullcontext

    from hubtune.errors import EvalError

    if not ev.regression_set:
        return None
    try:
        from hubtune.evaluation.harness import multiple_choice_task, run_harness
        from hubtune.evaluation.pipeline import regression_file

        spec = multiple_choice_task("hubtune_regression", regression_file(ev.regression_set))
        if base is None:
            with model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext():
                base = _accuracy(run_harness(model, tokenizer, [spec], batch_size=max(ev.batch_size, 16),
                                             chat_template="never"), spec)
        tuned = _accuracy(run_harness(model, tokenizer, [spec], batch_size=max(ev.batch_size, 16),
                                      chat_template="never"), spec)
    except EvalError as err:
        if "need lm-eval" in str(err):
            return None
        raise
    drop = base["accuracy"] - tuned["accuracy"]
    return {"accuracy": tuned["accuracy"], "base": base["accuracy"], "drop": drop,
            "passed": drop <= ev.regression_threshold + 1e-12}


def _accuracy(results: dict, spec: dict) -> dict:
    got = results[spec["task"]]
    return {"accuracy": proportion([float(v) for v in got["per_doc"]["scores"]["acc"]])["mean"]}


def choose(history: list[dict], select: str) -> dict | None:
    """The checkpoint to keep: select=task, the best exact match among those whose regression verdict passes
    (on a tie, the one that kept more of the regression set, then the earliest: a small held-out slice often
    scores every late checkpoint alike); eval_loss, the lowest held-out loss; last (or nothing scored), the
    last one."""
    if not history:
        return None
    if select == "task":
        passing = [h for h in history if (h.get("regression") or {}).get("passed", True)]
        pool = passing or history
        return max(pool, key=lambda h: (h["exact_match"]["mean"], (h.get("regression") or {}).get("accuracy") or 0.0,
                                        -h["step"]))
    if select == "eval_loss":
        scored = [h for h in history if h.get("eval_loss") is not None]
        if scored:
            return min(scored, key=lambda h: (h["eval_loss"], h["step"]))
    return history[-1]
