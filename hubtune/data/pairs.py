"""Preference pairs from an evaluated run: the loop "fine-tune, find what it still gets wrong, prefer the
right answers". `hubtune eval RUN` leaves every test prompt's answers (tuned, base, few-shot base) with
their exact match and token F1 in RUN/eval_answers.jsonl; each prompt whose answers score differently
becomes a pair: the best-scoring answer chosen, the worst rejected. With `reference_chosen`, a prompt that
no answer gets fully right gets the reference answer as chosen and the tuned model's answer as rejected.

    rows, report = pairs_from_eval("runs/invoices", metric="token_f1")
"""

from __future__ import annotations

import json
from pathlib import Path

from hubtune.errors import DataError
from hubtune.runs import RunFolder

METRICS = RunFolder.ANSWER_SCORES


def pairs_from_eval(run_dir: str | Path, metric: str = "token_f1", reference_chosen: bool = False,
                    margin: float = 0.0) -> tuple[list[dict], dict]:
    """(prompt/chosen/rejected rows, a report of what was kept and why the rest was not)."""
    if metric not in METRICS:
        raise DataError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
    path = RunFolder(run_dir).answers  # written by `hubtune eval`
    if not path.is_file():
        raise DataError(f"{path} does not exist: evaluate the run first (`hubtune eval {run_dir}`), which writes "
                        f"every test prompt's answers there")
    rows, report = [], {"prompts": 0, "pairs": 0, "reference_chosen": 0, "tied": 0, "metric": metric}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        report["prompts"] += 1
        answers, scores = item["answers"], item[metric]
        ranked = sorted(answers, key=lambda m: scores[m], reverse=True)
        best, worst = ranked[0], ranked[-1]
        if reference_chosen and scores[best] < 1.0 and "tuned" in answers \
                and answers["tuned"].strip() != item["reference"].strip():
            rows.append({"prompt": item["prompt"], "chosen": item["reference"], "rejected": answers["tuned"],
                         "origin": f"{path.name} line {number}: reference over tuned"})
            report["reference_chosen"] += 1
        elif scores[best] - scores[worst] > margin and answers[best].strip() != answers[worst].strip():
            rows.append({"prompt": item["prompt"], "chosen": answers[best], "rejected": answers[worst],
                         "origin": f"{path.name} line {number}: {best} ({scores[best]:.2f}) over {worst} "
                                   f"({scores[worst]:.2f})"})
        else:
            report["tied"] += 1
    report["pairs"] = len(rows)
    return rows, report


def write_pairs(rows: list[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out
