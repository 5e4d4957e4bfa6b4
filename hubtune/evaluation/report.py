"""What an evaluation says: the summary of each measure, the metric entries a model card's
model-index is built from, and the side-by-side text `hubtune eval` prints."""

from __future__ import annotations

from pathlib import Path

from hubtune.evaluation.intervals import RESAMPLES, bootstrap_mean, proportion
from hubtune.runs import EvalResult, MetricEntry
from hubtune.tables import text_table

LABELS = {"base": "base", "base_few_shot": "base few-shot", "tuned": "tuned"}
TASK_METRICS = {"exact_match": "exact match", "exact_match_normalized": "exact match (normalised)", "token_f1": "token F1"}
# Exact match is a share of hits (Wilson interval); token F1 is a mean of graded scores (bootstrap).
INTERVALS = {"exact_match": proportion, "exact_match_normalized": proportion, "token_f1": bootstrap_mean}
# `datasets` builders that read local files: a harness task on them has no Hub dataset behind it.
FILE_LOADERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


def summarize_task(task: dict) -> dict:
    """Per-example scores -> mean with a 95% interval per model and metric, plus the prompt-vs-tune verdict."""
    out = {k: task[k] for k in ("dataset", "split", "n", "few_shot_k", "few_shot_k_mean") if k in task}
    for model in LABELS:
        if model in task:
            out[model] = {m: INTERVALS[m](task[model][m]) for m in TASK_METRICS}
    out["versus_best_prompt"] = versus_best_prompt(task)
    return out


def on_hub(ref: str) -> bool:
    from hubtune.refs import is_hub_id

    return ref not in FILE_LOADERS and is_hub_id(ref)


def dataset_entry(refs: str | list[str], *, config: str | None = None, revision: str | None = None,
                  name: str | None = None) -> dict:
    """The dataset a measure was taken on, as the card names it: {"name"} for local files (built-in
    refs as written, other paths by file name, never this machine's folders), plus the model-index's
    {"type": Hub id} (with "config" and the commit read as "revision", when known) only when the data
    is one Hub dataset."""
    refs = [refs] if isinstance(refs, str) else list(refs)
    names = [r if on_hub(r) or r.startswith(("hubtune:", "evals:")) else Path(r).name for r in refs]
    entry = {"name": name or ", ".join(names)}
    if len(refs) == 1 and on_hub(refs[0]):
        entry["type"] = refs[0]
        entry.update({k: v for k, v in (("config", config), ("revision", revision)) if v})
    return entry


def versus_best_prompt(task: dict) -> dict:
    """Did fine-tuning beat the best prompt? Paired differences on the same examples, with bootstrap
    95% intervals."""
    prompts = [m for m in ("base", "base_few_shot") if m in task]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    best = max(prompts, key=lambda m: (mean(task[m]["exact_match"]), mean(task[m]["token_f1"])))
    diffs = {m: bootstrap_mean([t - b for t, b in zip(task["tuned"][m], task[best][m])])
             for m in ("exact_match", "token_f1")}
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


def metric_entries(result: EvalResult) -> list[MetricEntry]:
    """The flat list of measures; tuned ones become the card's model-index. dataset is {"name"} plus "type"
    for a Hub dataset (see dataset_entry); ci95 is [lower, upper] or None."""
    out = []

    def add(name, type_, value, dataset, split, model, ci95=None):
        if value is not None:
            out.append(MetricEntry(name=name, type=type_, value=round(float(value), 6),
                                   ci95=[round(x, 6) for x in ci95] if ci95 else None, dataset=dataset,
                                   split=split, model=model))

    if result.loss:
        loss = result.loss
        for model in ("tuned", "base"):
            add("held-out loss", "loss", loss[model]["loss"], loss["dataset"], loss["split"], model)
            add("perplexity", "perplexity", loss[model]["perplexity"], loss["dataset"], loss["split"], model)
    if result.task:
        task = result.task
        for model in ("tuned", "base", "base_few_shot"):
            for metric, label in TASK_METRICS.items():
                if model in task:
                    type_ = "f1" if metric == "token_f1" else "exact_match"
                    stat = task[model][metric]
                    add(label, type_, stat["mean"], task["dataset"], task["split"], model, stat["ci95"])
    for model, tasks in (result.harness or {}).items():
        if model == "skipped":
            continue
        for name, values in tasks.items():
            ds = values.get("dataset") or {}
            dataset = (dataset_entry(ds["path"], config=ds.get("config"), name=name) if ds.get("path")
                       else {"name": name})
            for metric, value in values["metrics"].items():
                add(f"{name} {metric}", metric, value, dataset, ds.get("split") or "test", model,
                    (values.get("ci95") or {}).get(metric))
    if result.regression and "skipped" not in result.regression:
        reg = result.regression
        for model in ("tuned", "base"):
            add("regression set accuracy", "accuracy", reg[model], dataset_entry(reg["dataset"]), "test", model,
                (reg.get("ci95") or {}).get(model))
    judge = result.judge or {}
    if judge.get("single"):
        task = result.task
        for model in ("tuned", "base"):
            overall = judge["single"][model]["overall"]
            add("judge score (1-5)", "llm_judge_score", overall["mean"], task["dataset"], task["split"], model,
                overall["ci95"])
        pairwise = judge["pairwise"]
        add("judge win rate vs base", "win_rate", pairwise["win_rate"], task["dataset"], task["split"], "tuned",
            (pairwise.get("ci95") or {}).get("win_rate"))
    return out


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return _with_interval(stat["mean"], stat.get("ci95"))


def _with_interval(value: float | None, ci: list[float] | None) -> str:
    """0.40 [0.12, 0.77]: the estimate and its 95% interval, which need not be symmetric."""
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def format_report(result: EvalResult) -> str:
    """Base (zero- and few-shot) and tuned side by side, one measure per line."""
    rows: list[tuple[str, str, str, str]] = []
    if result.loss:
        loss = result.loss
        rows.append((f"held-out loss ({loss['split']})", _num(loss["base"]["loss"]), "", _num(loss["tuned"]["loss"])))
        rows.append(("perplexity", _num(loss["base"]["perplexity"], 2), "", _num(loss["tuned"]["perplexity"], 2)))
    task = result.task
    if task:
        for metric, label in TASK_METRICS.items():
            rows.append((f"{label} (n={task['n']})", *(_ci(task.get(m, {}).get(metric)) for m in LABELS)))
    harness = result.harness or {}
    if "skipped" not in harness:
        for name, values in harness.get("tuned", {}).items():
            base = harness["base"][name]
            for metric, value in values["metrics"].items():
                rows.append((f"{name} {metric} (n={values['n']})",
                             _with_interval(base["metrics"].get(metric), (base.get("ci95") or {}).get(metric)),
                             "", _with_interval(value, (values.get("ci95") or {}).get(metric))))
    reg = result.regression
    skipped_reg = (reg or {}).get("skipped")
    reg = None if skipped_reg else reg
    if reg:
        ci = reg.get("ci95") or {}
        rows.append((f"regression set accuracy (n={reg['n']})", _with_interval(reg["base"], ci.get("base")), "",
                     _with_interval(reg["tuned"], ci.get("tuned"))))
    judge = result.judge or {}
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
    lines = text_table(header, rows, right=(1, 2, 3)).splitlines()
    if any("[" in c for r in rows for c in r[1:]):
        lines.append(f"[lower, upper]: 95% intervals; Wilson score for exact match and accuracy, percentile "
                     f"bootstrap ({RESAMPLES:,} resamples) for token F1 and judge scores")
    if task and "tuned" in task:
        lines += notes
        lines.append(task["versus_best_prompt"]["line"])
    if harness.get("skipped"):
        lines.append(f"harness skipped: {harness['skipped']}")
    if skipped_reg:
        lines.append(f"regression set skipped: {skipped_reg}")
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
    if result.human_export:
        lines.append(f"human eval sheet: {result.human_export['csv']} (answer key: {result.human_export['key']})")
    return "\n".join(lines)


def _judge_lines(judge: dict) -> list[str]:
    lines = []
    pw = judge.get("pairwise")
    if pw and pw["n"]:
        ci = (pw.get("ci95") or {}).get("win_rate")
        wins = f"{pw['win_rate']:.0%}" + (f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else "")
        lines.append(f"judge pairwise vs base, both orders (n={pw['n']}): tuned wins {wins}, "
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
