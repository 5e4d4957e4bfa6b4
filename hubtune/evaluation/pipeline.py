"""`hubtune eval`, top to bottom: is the tuned adapter better than the base at the task, and did it
forget anything?

    result = hubtune.evaluate("runs/demo")          # writes runs/demo/eval.json

1. held-out loss and perplexity, tuned and base;
2. exact match and token F1 of greedy answers on the test set: base zero-shot, base few-shot
   (k training examples in the prompt) and tuned, and whether fine-tuning beat the best prompt;
3. lm-evaluation-harness tasks, base and tuned;
4. the regression set, base and tuned, scored by the harness (reusing a harness task of step 3 that
   scored the same questions): a drop beyond the threshold marks the run regressed;
5. an LLM judge, when one is configured: rubric scores and pairwise wins against the base;
6. optionally, a blinded CSV for human raters.

The base is the same loaded model with the adapter switched off. Generations and judge replies
are cached under RUN/eval_cache/, so a rerun after a crash or a failing judge resumes.
"""

from __future__ import annotations

import json
import random
import sys
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path


from hubtune import config as cfg
from hubtune.data.chat import call_matches
from hubtune.errors import EvalError
from hubtune.runs import EvalResult, RunFolder
from hubtune.evaluation import report
from hubtune.evaluation.cache import AnswerCache, cached_answers, file_fingerprint
from hubtune.evaluation.generate import chat_for, generate_answers, load_tuned
from hubtune.evaluation.judge import Judge, judge_answers
from hubtune.evaluation.likelihood import heldout_loss
from hubtune.evaluation.scoring import evals_dir, exact_match_scores, token_f1_scores

MODELS = ("base", "base_few_shot", "tuned")


def evaluate(run_path: str | Path, *, tasks: list[str] | None = None, judge: str | None = None,
             judge_model: str | None = None, limit: int | None = None, export_human: int | None = None,
             overrides: list[str] | None = None, log=None) -> EvalResult:
    """Evaluate a finished run folder; writes RUN/eval.json and returns what it holds.

    tasks, judge, judge_model and limit override the run's `eval` config section; `overrides` are
    `section.key=value` pairs like `hubtune train` takes (e.g. eval.few_shot_k=5).
    export_human: write RUN/human_eval.csv with this many blinded base/tuned answer pairs.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    folder = RunFolder.open(run_path).require_finished()
    with folder.lock("eval"):
        return _evaluate(folder, tasks, judge, judge_model, limit, export_human, overrides, log)


def _evaluate(folder: RunFolder, tasks, judge, judge_model, limit, export_human, overrides, log) -> EvalResult:
    run = folder.path
    tree = folder.config.model_dump(mode="json")
    updates = {"tasks": tasks, "judge": judge, "judge_model": judge_model, "limit": limit}
    tree["eval"].update({k: v for k, v in updates.items() if v is not None})
    config = cfg.build(tree, overrides, source=str(run / RunFolder.CONFIG), check_paths=False)
    ev = config.eval
    # A malformed judge is a setting to fix before any generation, not a partial result after.
    judge_client = Judge(ev.judge, model=ev.judge_model, timeout=ev.judge_timeout, retries=ev.judge_retries,
                         backoff=ev.judge_backoff) if ev.judge else None
    harness_note = _check_harness(ev.tasks, needed=bool(ev.tasks or ev.regression_set))

    log(f"loading {config.model.id} ({config.model.quantization}) with the adapter in {folder.adapter}")
    model, tokenizer = load_tuned(run, quantization=config.model.quantization)
    chat = chat_for(model, tokenizer, config.data.thinking)
    reasoning_rows = folder.data_report.get("reasoning_rows", 0)
    thinking = {"on": True, "off": False}.get(ev.thinking, reasoning_rows > 0)
    data = EvalData.load(folder, config, ev)
    cache = AnswerCache(run / RunFolder.GENERATIONS_CACHE)
    keys = {"tuned": f"tuned|{file_fingerprint(_adapter_weights(folder))}|{config.model.quantization}",
            "base": f"base|{config.model.id}|{config.model.revision}|{config.model.quantization}"}
    result: dict = {"run": str(run), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "settings": ev.model_dump(mode="json"), "data": data.describe()}

    # 1. Held-out loss and perplexity.
    loss_rows = data.validation or data.test
    if loss_rows:
        log(f"held-out loss on {len(loss_rows)} examples ({data.loss_split})")
        result["loss"] = {"dataset": data.loss_dataset, "split": data.loss_split}
        for name in ("base", "tuned"):
            with _as(model, name):
                result["loss"][name] = heldout_loss(model, tokenizer, loss_rows, config.data.max_seq_len, ev.batch_size,
                                                         chat)

    # 2. Task metrics: base zero-shot, base few-shot, tuned.
    answers: dict[str, list[str]] = {}
    stopped: dict[str, float] = {}
    generated: dict[str, list[str]] = {}
    if data.test:
        rows = data.test[:ev.limit] if ev.limit else data.test
        refs = [r["completion"][-1]["content"] for r in rows]
        few_shot = [data.few_shot_prompt(r["prompt"], tokenizer, _context_length(model, tokenizer) - ev.max_new_tokens, chat)
                    for r in rows] if data.shots else None
        asked = [{"messages": r["prompt"], "tools": r["tools"]} if r.get("tools") else r["prompt"] for r in rows]
        calls = [_reference_call(r) for r in rows]
        prompts = {"base": asked, "tuned": asked,
                   "base_few_shot": [p for p, _ in few_shot] if few_shot else None}
        task = {"dataset": data.test_dataset, "split": data.test_split, "n": len(rows), "few_shot_k": len(data.shots)}
        if few_shot:
            # Shots that would push a prompt past the model's context are left out of that prompt.
            task["few_shot_k_mean"] = sum(k for _, k in few_shot) / len(few_shot)
        for name in MODELS:
            if prompts[name] is None:
                continue
            log(f"generating {len(rows)} answers: {name}")
            generated[name] = _answers(model, tokenizer, cache, keys, name, prompts[name], ev, chat, thinking)
            answers[name] = [chat.answer(t) for t in generated[name]]
            stopped[name] = sum(chat.stopped(t) for t in generated[name]) / len(generated[name])
            task[name] = {"exact_match": exact_match_scores(answers[name], refs),
                          "exact_match_normalized": exact_match_scores(answers[name], refs, normalize=True),
                          "token_f1": token_f1_scores(answers[name], refs)}
        result["task"] = report.summarize_task(task)
        if any(calls):
            # The call metric on the rows whose answer is a tool call: the function named and the JSON arguments equal.
            result["task"]["tool_calls"] = {m: sum(call_matches(a, c) for a, c in zip(answers[m], calls) if c) /
                                            sum(1 for c in calls if c) for m in answers}
        # The share of answers that ended on a stop token rather than at max_new_tokens.
        result["task"]["stopped"] = stopped
        if chat.family is not None and chat.family.thinking:
            result["task"]["thinking"] = thinking
        _write_answers(folder.answers, rows, refs, answers, task, generated)

    # 3. Harness tasks (per-document scores stay in memory: the regression set may reuse them).
    harness_runs: dict = {}
    if harness_note:
        result["harness"] = {"skipped": harness_note}
    elif ev.tasks:
        harness_runs = _harness(model, tokenizer, ev, log)
        result["harness"] = {m: {t: {k: v for k, v in r.items() if k != "per_doc"} for t, r in runs.items()}
                             for m, runs in harness_runs.items()}

    # 4. Regression set, scored by the harness like any multiple-choice task.
    if ev.regression_set and harness_note:
        result["regression"] = {"dataset": ev.regression_set, "skipped": harness_note}
    elif ev.regression_set:
        log(f"regression set {ev.regression_set}")
        result["regression"] = reg = _regression(model, tokenizer, ev, harness_runs)
        if reg["regressed"]:
            log(f"REGRESSED: regression set accuracy fell {reg['drop']:.3f} ({reg['base']:.3f} -> {reg['tuned']:.3f}), "
                f"more than eval.regression_threshold={reg['threshold']}")

    # 5. LLM judge.
    if judge_client and answers:
        items = [{"question": _question(r["prompt"]), "reference": r["completion"][-1]["content"],
                  "tuned": t, "base": b} for r, t, b in zip(rows, answers["tuned"], answers["base"])][:ev.judge_max_items]
        log(f"judging {len(items)} answers with {ev.judge}")
        result["judge"] = judge_answers(judge_client, items, AnswerCache(run / RunFolder.JUDGE_CACHE))

    # 6. Blinded answers for human raters.
    if export_human:
        path, key = _export_human(folder, model, tokenizer, cache, keys, data, ev, export_human, chat, thinking)
        result["human_export"] = {"csv": str(path), "key": str(key),
                                  "n": min(export_human, len(data.test))}

    if "task" in result:
        result["answers_file"] = str(folder.answers)
    result["regressed"] = bool(result.get("regression", {}).get("regressed"))
    measured = EvalResult.model_validate(result)
    measured.metrics = report.metric_entries(measured)
    folder.write_eval(measured)
    return measured


class EvalData:
    """The rows an evaluation reads: the run's held-out split, the test set, few-shot examples."""

    def __init__(self):
        self.validation: list[dict] = []
        self.test: list[dict] = []
        self.shots: list[dict] = []
        self.loss_dataset = self.loss_split = self.test_dataset = self.test_split = None
        self.test_in_train = 0

    @classmethod
    def load(cls, run: RunFolder, config: cfg.RunConfig, ev: cfg.EvalSection) -> EvalData:
        """The rows training wrote into the run; only an eval.test file is read anew."""
        from hubtune.data import dedup, pipeline

        out = cls()
        train_rows = _scored_rows(run.rows("train"))
        mixed = run.data_report.get("mixed", 0)
        task_rows = train_rows[:len(train_rows) - mixed]  # general data is mixed in last
        out.validation = [r for r in _scored_rows(run.rows("validation")) if "prompt" in r]
        summary = run.summary
        recorded = {d.path: d for d in (summary.datasets if summary else [])}  # with the commit each was read at
        single = recorded.get(config.data.sources[0].path) if len(config.data.sources) == 1 else None
        sources = report.dataset_entry([s.path for s in config.data.sources], config=single and single.name,
                                       revision=single and single.revision_sha)
        if ev.test is not None:
            examples, read, _ = pipeline.read_examples([ev.test], config.data)
            out.test = _scored_rows([ex.row() for ex in examples if ex.text is None])
            out.test_dataset = report.dataset_entry(ev.test.path, config=ev.test.name,
                                                    revision=read[0]["revision_sha"] if read else None)
            # A Hub dataset's split is the one read; a local file is the test set whatever split `datasets` gave it.
            out.test_split = ev.test.split if "type" in out.test_dataset else "test"
            train_keys = {dedup.exact_key(*_parts(r)) for r in task_rows if "prompt" in r}
            out.test_in_train = sum(dedup.exact_key(*_parts(r)) in train_keys for r in out.test)
        else:
            out.test = out.validation
            out.test_dataset, out.test_split = sources, "validation"
        out.loss_dataset, out.loss_split = (sources, "validation") if out.validation else (out.test_dataset, out.test_split)
        if not out.test and not out.validation:
            raise EvalError("nothing to evaluate on: the run has no held-out split (data.val_set_size: 0) and "
                            "eval.test is not set; set eval.test to a test file or dataset")
        candidates = [r for r in task_rows if "prompt" in r]
        out.shots = random.Random(config.training.seed).sample(candidates, min(ev.few_shot_k, len(candidates)))
        return out

    def few_shot_prompt(self, prompt: list[dict], tokenizer, max_tokens: int, chat=None) -> tuple[list[dict], int]:
        """(messages, k): up to k solved training examples as earlier chat turns, then the question,
        with as many shots as fit in max_tokens."""
        system = [m for m in prompt if m["role"] == "system"]
        question = [m for m in prompt if m["role"] != "system"]
        for k in range(len(self.shots), -1, -1):
            turns = [m for s in self.shots[:k] for m in s["prompt"] + s["completion"] if m["role"] != "system"]
            messages = system + turns + question
            text = chat.generation_prompt(messages) if chat is not None else \
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if k == 0 or len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_tokens:
                return messages, k
        return prompt, 0

    def describe(self) -> dict:
        return {"validation_examples": len(self.validation), "test_examples": len(self.test),
                "test_dataset": self.test_dataset, "test_split": self.test_split,
                "few_shot_k": len(self.shots), "test_examples_also_in_train": self.test_in_train}


def _context_length(model, tokenizer) -> int:
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    return min((n for n in limits if isinstance(n, int) and 0 < n < 10**7), default=10**6)


def _scored_rows(rows: list[dict]) -> list[dict]:
    """Rows as prompt and reference answer: a preference pair's reference is its chosen answer, a KTO row
    counts only when its answer is the desirable one."""
    out = []
    for r in rows:
        if "chosen" in r:
            out.append({"prompt": r["prompt"], "completion": r["chosen"]})
        elif "label" in r:
            if r["label"]:
                out.append({"prompt": r["prompt"], "completion": r["completion"]})
        else:
            out.append(r)
    return out


def _parts(row: dict) -> tuple[str, str]:
    prompt = "\n".join(f"{m['role']}: {m['content']}" for m in row["prompt"])
    return prompt, "\n".join(m["content"] for m in row["completion"])


def _adapter_weights(run: RunFolder) -> Path:
    found = sorted(run.adapter.glob("adapter_model.*"))
    if not found:
        raise EvalError(f"{run.adapter} holds no adapter weights (adapter_model.safetensors)")
    return found[0]


def _as(model, name: str):
    """The base is the tuned model with its adapter switched off."""
    return model.disable_adapter() if name.startswith("base") else nullcontext()


def _answers(model, tokenizer, cache, keys, name, prompts, ev, chat, thinking) -> list[str]:
    """Generated texts as the model wrote them (special tokens kept, up to its stop token), cached."""
    settings = {"max_new_tokens": ev.max_new_tokens, "thinking": thinking, "stop": chat.stop_ids, "raw": True}

    def generate(batch):
        with _as(model, name):
            return generate_answers(model, tokenizer, batch, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                                    chat=chat, thinking=thinking)

    model_key = keys["base" if name.startswith("base") else "tuned"]
    answers, _ = cached_answers(cache, model_key, generate, prompts, settings, chunk=ev.batch_size * 4)
    return answers


def _reference_call(row: dict) -> dict | None:
    """The first tool call of a row's answer, with its arguments as an object; None when it calls none."""
    found = (row["completion"][-1].get("tool_calls") or [None])[0]
    if found is None:
        return None
    return {"name": found["function"]["name"], "arguments": json.loads(found["function"]["arguments"])}


def _write_answers(path: Path, rows, refs, answers, task, generated) -> None:
    """Every test prompt with its reference, each model's answer and scores, to read the failures; `generated`
    is the text as written (thinking and the stop token included)."""
    with path.open("w", encoding="utf-8") as f:
        for i, (row, ref) in enumerate(zip(rows, refs)):
            line = {"prompt": row["prompt"], "reference": ref, "answers": {m: answers[m][i] for m in answers},
                    "generated": {m: generated[m][i] for m in generated},
                    **{score: {m: round(task[m][score][i], 4) for m in answers} for score in RunFolder.ANSWER_SCORES}}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


def _question(prompt: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in prompt if m["role"] != "system")


def _check_harness(tasks: list[str], needed: bool) -> str | None:
    """Unknown task names fail before any generation; without lm-eval the harness tasks and the
    regression set are skipped, with a note."""
    if not needed:
        return None
    from hubtune.evaluation import harness

    try:
        harness.check_tasks(tasks)
    except EvalError as err:
        if "need lm-eval" in str(err):
            return str(err)
        raise
    return None


def _harness(model, tokenizer, ev, log) -> dict:
    from hubtune.evaluation.harness import run_harness

    out = {}
    for name in ("base", "tuned"):
        log(f"harness tasks {', '.join(ev.tasks)}: {name}")
        with _as(model, name):
            out[name] = run_harness(model, tokenizer, ev.tasks, limit=ev.limit, batch_size=ev.batch_size,
                                    chat_template=ev.harness_chat_template)
    return out


def regression_file(ref: str) -> Path:
    from hubtune.refs import resolve_builtin
    from hubtune.evaluation.harness import EVALS_PREFIX

    path = evals_dir() / ref[len(EVALS_PREFIX):] if ref.startswith(EVALS_PREFIX) else Path(resolve_builtin(ref))
    if not path.is_file():
        raise EvalError(f"eval.regression_set: {ref!r} not found ({path})")
    return path.resolve()


def regression_rows(ref: str) -> list[dict]:
    """The {context, choices, label} rows of a regression set, each checked before the harness reads them."""
    path = regression_file(ref)
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalError(f"{path}, line {n}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not {"context", "choices", "label"} <= row.keys():
            raise EvalError(f"{path}, line {n}: a regression row holds context, choices and label")
        choices, label = row["choices"], row["label"]
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)
                and isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(choices)):
            raise EvalError(f"{path}, line {n}: choices must be a list of two or more strings and label the "
                            f"index of the right one, counting from 0")
        rows.append(row)
    if not rows:
        raise EvalError(f"eval.regression_set: {path} holds no rows")
    return rows


# What makes a harness task the same questions scored the same way as the regression task.
_SAME_TASK = ("dataset_path", "dataset_kwargs", "test_split", "output_type", "doc_to_text", "doc_to_choice",
              "doc_to_target", "target_delimiter")


def _reusable(spec: dict, tasks: list[str], runs: dict, n: int) -> tuple[str, dict] | None:
    """A harness task of this evaluation that already scored every regression row on the raw text."""
    from hubtune.evaluation.harness import local_tasks, resolve_specs

    local = local_tasks()
    for name in tasks:
        got = runs.get(name)
        if name not in local or not got or got["chat_template"] or got["n"] != n:
            continue
        other = resolve_specs([name])[name]
        if all(other.get(k) == spec[k] for k in _SAME_TASK) and "acc" in got["per_doc"]["scores"]:
            return name, got
    return None


def _regression(model, tokenizer, ev, harness_runs: dict) -> dict:
    """Accuracy of base and tuned on the regression set through the harness's `acc`, and the items
    the base got right that the tuned model now gets wrong."""
    from hubtune.evaluation.harness import multiple_choice_task, run_harness
    from hubtune.evaluation.intervals import proportion

    rows = regression_rows(ev.regression_set)
    spec = multiple_choice_task("hubtune_regression", regression_file(ev.regression_set))
    correct, reused = {}, None
    for name in ("base", "tuned"):
        found = _reusable(spec, ev.tasks, harness_runs.get(name) or {}, len(rows))
        if found:
            reused, got = found
        else:
            with _as(model, name):
                got = run_harness(model, tokenizer, [spec], batch_size=max(ev.batch_size, 16),
                                  chat_template="never")[spec["task"]]
        if got["per_doc"]["doc_ids"] != list(range(len(rows))):
            raise EvalError(f"the harness scored {len(got['per_doc']['doc_ids'])} of the {len(rows)} rows of "
                            f"{ev.regression_set}")
        correct[name] = [bool(v) for v in got["per_doc"]["scores"]["acc"]]
    stats = {name: proportion([float(c) for c in correct[name]]) for name in correct}
    drop = stats["base"]["mean"] - stats["tuned"]["mean"]
    pairs = list(zip(correct["base"], correct["tuned"]))
    return {"dataset": ev.regression_set, "n": len(rows), "base": stats["base"]["mean"],
            "tuned": stats["tuned"]["mean"], "ci95": {m: stats[m]["ci95"] for m in stats}, "drop": drop,
            "threshold": ev.regression_threshold, "regressed": drop > ev.regression_threshold + 1e-12,
            "forgotten": [rows[i]["context"] for i, (b, t) in enumerate(pairs) if b and not t],
            "learned": sum(t and not b for b, t in pairs), "harness_task": reused or spec["task"]}


def _export_human(run: RunFolder, model, tokenizer, cache, keys, data, ev, n: int, chat,
                  thinking) -> tuple[Path, Path]:
    """N test prompts with base and tuned answers in random columns, rows shuffled, rating columns empty;
    (the sheet, its answer key)."""
    import csv

    rng = random.Random(f"human-eval|{run.path.name}")
    rows = rng.sample(data.test, min(n, len(data.test)))
    prompts = [r["prompt"] for r in rows]
    tuned = [chat.answer(t) for t in _answers(model, tokenizer, cache, keys, "tuned", prompts, ev, chat, thinking)]
    base = [chat.answer(t) for t in _answers(model, tokenizer, cache, keys, "base", prompts, ev, chat, thinking)]
    path, key = run.path / RunFolder.HUMAN_EVAL, run.path / RunFolder.HUMAN_EVAL_KEY
    answer_key = {}
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item", "prompt", "reference", "answer_1", "answer_2", "rating_1", "rating_2", "preferred", "notes"])
        for i, (row, t, b) in enumerate(zip(rows, tuned, base), 1):
            swap = rng.random() < 0.5
            first, second = (("base", b), ("tuned", t)) if swap else (("tuned", t), ("base", b))
            answer_key[i] = {"answer_1": first[0], "answer_2": second[0]}
            w.writerow([i, _question(row["prompt"]), row["completion"][-1]["content"], first[1], second[1], "", "", "", ""])
    key.write_text(json.dumps(answer_key, indent=2))
    return path, key

