"""What an evaluation says: the summary of each measure, the metric entries a model card's
model-index is built from, and the side-by-side text `hubtune eval` prints."""

from __future__ import annotations

from hubtune.evaluation.judge import mean_ci

LABELS = {"base": "base", "base_few_shot": "base few-shot", "tuned": "tuned"}
TASK_METRICS = {"exact_match": "exact match", "exact_match_normalized": "exact match (normalised)", "token_f1": "token F1"}


def summarize_task(task: dict) -> dict:
    """Per-example scores -> mean with 95% CI per model and metric, plus the prompt-vs-tune verdict."""
    out = {k: task[k] for k in ("dataset", "split", "n", "few_shot_k", "few_shot_k_mean") if k in task}
    for model in LABELS:
        if model in task:
            out[model] = {m: mean_ci(task[model][m]) for m in TASK_METRICS}
    out["versus_best_prompt"] = versus_best_prompt(task)
    return out


def versus_best_prompt(task: dict) -> dict:
    """Did fine-tuning beat the best prompt? Paired differences on the same examples, with 95% CIs."""
    prompts = [m for m in ("base", "base_few_shot") if m in task]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    best = max(prompts, key=lambda m: (mean(task[m]["exact_match"]), mean(task[m]["token_f1"])))
    diffs = {m: mean_ci([t - b for t, b in zip(task["tuned"][m], task[best][m])]) for m in ("exact_match", "token_f1")}
    em = diffs["exact_match"]
    tuned_em, best_em = mean(task["tuned"]["exact_match"]), mean(task[best]["exact_match"])
    name = LABELS[best] if best == "base" else f"base {task['few_shot_k']}-shot"
    detail = (f"exact match {tuned_em:.2f} vs {best_em:.2f}, token F1 {mean(task['tuned']['token_f1']):.2f} vs "
              f"{mean(task[best]['token_f1']):.2f}, n={task['n']}")
    ci = em["ci95"]
    if ci and ci[0] > 0:
        line = f"fine-tuning beat the best prompt ({name}) by {em['mean']:+.2f} exact match ({detail})"
        beat = True
    elif ci and ci[1] < 0:
        line = f"fine-tuning did worse than the best prompt ({name}) by {-em['mean']:.2f} exact match ({detail})"
        beat = False
    else:
        line = (f"fine-tuning did not clearly beat the best prompt ({name}): {em['mean']:+.2f} exact match, "
                f"within noise ({detail})")
        beat = False
    return {"best_prompt": best, "beat": beat, "difference": diffs, "line": line}


def metric_entries(result: dict) -> list[dict]:
    """Flat {name, type, value, dataset, split, model} entries; tuned ones become the card's model-index."""
    out = []

    def add(name, type_, value, dataset, split, model):
        if value is not None:
            out.append({"name": name, "type": type_, "value": round(float(value), 6), "dataset": dataset,
                        "split": split, "model": model})

    if "loss" in result:
        loss = result["loss"]
        for model in ("tuned", "base"):
            add("held-out loss", "loss", loss[model]["loss"], loss["dataset"], loss["split"], model)
            add("perplexity", "perplexity", loss[model]["perplexity"], loss["dataset"], loss["split"], model)
    if "task" in result:
        task = result["task"]
        for model in ("tuned", "base", "base_few_shot"):
            for metric, label in TASK_METRICS.items():
                if model in task:
                    type_ = "f1" if metric == "token_f1" else "exact_match"
                    add(label, type_, task[model][metric]["mean"], task["dataset"], task["split"], model)
    for model, tasks in (result.get("harness") or {}).items():
        if model == "skipped":
            continue
        for name, values in tasks.items():
            for metric, value in values["metrics"].items():
                add(f"{name} {metric}", metric, value, name, "test", model)
    if "regression" in result:
        reg = result["regression"]
        for model in ("tuned", "base"):
            add("regression set accuracy", "accuracy", reg[model], reg["dataset"], "test", model)
    judge = result.get("judge") or {}
    if judge.get("single"):
        for model in ("tuned", "base"):
            add("judge score (1-5)", "llm_judge_score", judge["single"][model]["overall"]["mean"],
                result["task"]["dataset"], result["task"]["split"], model)
        add("judge win rate vs base", "win_rate", judge["pairwise"]["win_rate"],
            result["task"]["dataset"], result["task"]["split"], "tuned")
    return out


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    ci = stat.get("ci95")
    return f"{stat['mean']:.2f}" + (f" ±{(ci[1] - ci[0]) / 2:.2f}" if ci else "")


def format_report(result: dict) -> str:
    """Base (zero- and few-shot) and tuned side by side, one measure per line."""
    rows: list[tuple[str, str, str, str]] = []
    if "loss" in result:
        loss = result["loss"]
        rows.append((f"held-out loss ({loss['split']})", _num(loss["base"]["loss"]), "", _num(loss["tuned"]["loss"])))
        rows.append(("perplexity", _num(loss["base"]["perplexity"], 2), "", _num(loss["tuned"]["perplexity"], 2)))
    task = result.get("task")
    if task:
        for metric, label in TASK_METRICS.items():
            rows.append((f"{label} (n={task['n']})", *(_ci(task.get(m, {}).get(metric)) for m in LABELS)))
    harness = result.get("harness") or {}
    if "skipped" not in harness:
        for name, values in harness.get("tuned", {}).items():
            for metric, value in values["metrics"].items():
                rows.append((f"{name} {metric} (n={values['n']})", _num(harness["base"][name]["metrics"].get(metric)),
                             "", _num(value)))
    reg = result.get("regression")
    if reg:
        rows.append((f"regression set accuracy (n={reg['n']})", _num(reg["base"]), "", _num(reg["tuned"])))
    judge = result.get("judge") or {}
    if judge.get("single"):
        rows.append((f"judge score 1-5 (n={judge['judged']})", _ci(judge["single"]["base"]["overall"]), "",
                     _ci(judge["single"]["tuned"]["overall"])))
    shots = (task or {}).get("few_shot_k") or 0
    header = ("", "base", f"base {shots}-shot" if shots else "", "tuned")
    if task and task.get("few_shot_k_mean") is not None and task["few_shot_k_mean"] < shots:
        notes = [f"few-shot prompts held {task['few_shot_k_mean']:.1f} examples on average: more would not fit "
                 f"in the model's context"]
    else:
        notes = []
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()
             for r in [header, *rows]]
    if task and "tuned" in task:
        lines += notes
        lines.append(task["versus_best_prompt"]["line"])
    if harness.get("skipped"):
        lines.append(f"harness skipped: {harness['skipped']}")
    if judge:
        lines += _judge_lines(judge)
    if reg:
        if reg["regressed"]:
            lines.append(f"REGRESSED: regression set accuracy fell {reg['drop']:.3f} (base {reg['base']:.3f} -> "
                         f"tuned {reg['tuned']:.3f}), more than the allowed {reg['threshold']:.3f}; "
                         f"forgotten: {'; '.join(reg['forgotten'][:5])}")
        else:
            lines.append(f"no regression: accuracy change {-reg['drop']:+.3f} on {reg['n']} items "
                         f"(allowed drop {reg['threshold']:.3f})")
    if result.get("human_export"):
        lines.append(f"human eval sheet: {result['human_export']['csv']} (answer key: {result['human_export']['key']})")
    return "\n".join(lines)


def _judge_lines(judge: dict) -> list[str]:
    lines = []
    pw = judge.get("pairwise")
    if pw and pw["n"]:
        lines.append(f"judge pairwise vs base, both orders (n={pw['n']}): tuned wins {pw['win_rate']:.0%}, "
                     f"ties {pw['tie_rate']:.0%}, losses {pw['loss_rate']:.0%}; "
                     f"orders agree on {pw['position_consistency']:.0%}")
    if pw is not None:
        unparsable = pw["unparsable"] + judge["single"]["tuned"]["unparsable"] + judge["single"]["base"]["unparsable"]
        lines.append(f"judge {judge['judge']}: judged {judge['judged']} of {judge['items']} items, "
                     f"{unparsable} replies could not be parsed")
    if judge.get("partial"):
        lines.append(f"judge result is PARTIAL ({judge['judged']} of {judge['items']} items): {judge.get('error')}; "
                     f"rerun `hubtune eval` to resume from the cached replies")
    return lines
