"""Preference pairs from an evaluated run: the loop "fine-tune, find what it still gets wrong, prefer the
right answers". `hubtune eval RUN` leaves every test prompt's answers (tuned, base, few-shot base) with
their exact match and token F1 in RUN/eval_answers.jsonl; each prompt whose answers score differently
becomes a pair: the best-scoring answer chosen, the worst rejected. The score is one of those metrics, or
the LLM judge's mean rubric score (1-5) for each answer, through `grade` (hubtune.evaluation.judge.
answer_grader). With `reference_chosen`, a prompt that no answer gets fully right gets the reference answer
as chosen and the tuned model's answer as rejected.

    rows, report = pairs_from_eval("runs/invoices", metric="token_f1")
    rows, report = pairs_from_eval("runs/invoices", metric="judge", grade=answer_grader(judge, cache))
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from hubtune.errors import DataError
from hubtune.runs import RunFolder

METRICS = (*RunFolder.ANSWER_SCORES, "judge")
FULL_MARKS = {"exact_match": 1.0, "token_f1": 1.0, "judge": 5.0}

# grade(question, reference, {name: answer}) -> {name: score, or None when it could not be scored}
Grader = Callable[[str, str, dict[str, str]], dict[str, float | None]]


def pairs_from_eval(run_dir: str | Path, metric: str = "token_f1", reference_chosen: bool = False,
                    margin: float = 0.0, grade: Grader | None = None) -> tuple[list[dict], dict]:
    """(prompt/chosen/rejected rows, a report of what was kept and why the rest was not)."""
    if metric not in METRICS:
        raise DataError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
    if metric == "judge" and grade is None:
        raise DataError("metric judge needs a judge: give one with --judge (an OpenAI-compatible base URL, a Hub "
                        "model id or a model folder), or set eval.judge in the run's config")
    path = RunFolder(run_dir).answers  # written by `hubtune eval`
    if not path.is_file():
        raise DataError(f"{path} does not exist: evaluate the run first (`hubtune eval {run_dir}`), which writes "
                        f"every test prompt's answers there")
    rows, report = [], {"prompts": 0, "pairs": 0, "reference_chosen": 0, "tied": 0, "unscored": 0, "metric": metric}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        report["prompts"] += 1
        answers = item["answers"]
        if metric == "judge":
            scores = grade(_question(item["prompt"]), item.get("reference"), answers)
            report["unscored"] += sum(s is None for s in scores.values())  # the judge's reply held no scores
            scores = {m: s for m, s in scores.items() if s is not None}
        else:
            scores = item[metric]
        ranked = sorted(scores, key=lambda m: scores[m], reverse=True)
        if not ranked:
            report["tied"] += 1
            continue
        best, worst = ranked[0], ranked[-1]
        if reference_chosen and scores[best] < FULL_MARKS[metric] and "tuned" in answers \
                and answers["tuned"].strip() != item["reference"].strip():
            rows.append({"prompt": item["prompt"], "chosen": item["reference"], "rejected": answers["tuned"],
                         "origin": f"{path.name} line {number}: reference over tuned"})
            report["reference_chosen"] += 1
        elif scores[best] - scores[worst] > margin and answers[best].strip() != answers[worst].strip():
            rows.append({"prompt": item["prompt"], "chosen": answers[best], "rejected": answers[worst],
                         "origin": f"{path.name} line {number}: {best} ({scores[best]:.2f}) over {worst} "
                                   f"({scores[worst]:.2f}) by {metric}"})
        else:
            report["tied"] += 1
    report["pairs"] = len(rows)
    return rows, report


def _question(prompt) -> str:
    """The prompt as the judge reads it: its messages' text, the system prompt left out."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m["content"] for m in prompt if m["role"] != "system")


def write_pairs(rows: list[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out
