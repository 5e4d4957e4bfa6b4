"""`hubtune eval` on a real trained run of the tiny model: generation, held-out loss against TRL's,
the regression set through the harness, the README commands end to end with a judge on
127.0.0.1, resuming after a crash, the regression alarm and the blinded human-eval sheet."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from data_rows import invoice_lines

from hubtune import cli
from hubtune import config as cfg
from hubtune.evaluation import evaluate, generate_answers, load_tuned, token_f1
from hubtune.evaluation.harness import run_harness
from hubtune.evaluation.pipeline import regression_rows
from hubtune.runs import RunFolder
from judge_server import ScriptedJudge
from readme_blocks import section_blocks

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints", "eval_cache", "eval*.json*", "human_eval*"))
    return dest


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def loaded(eval_run):
    return load_tuned(eval_run)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_generate_answers_batches_left_padded_like_greedy_one_at_a_time(loaded):
    model, tok = loaded
    rows = [json.loads(x) for x in Path(cfg.resolve_builtin("hubtune:data/invoices/test.jsonl")).read_text().splitlines()[:5]]
    prompts = [user(r["instruction"] + "\n\n" + r["input"]) for r in rows]
    side = tok.padding_side
    batched = generate_answers(model, tok, prompts, max_new_tokens=24, batch_size=3)
    assert tok.padding_side == side
    assert batched == [generate_answers(model, tok, [p], max_new_tokens=24, batch_size=1)[0] for p in prompts]

    # The same answer from a plain greedy loop: argmax token by token, stop at </s>.
    text = tok.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(24):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert batched[0] == tok.decode(new, skip_special_tokens=True)
    assert not any("</s>" in a or "<pad>" in a for a in batched)
    assert generate_answers(model, tok, []) == []


def test_load_tuned_puts_the_adapter_over_the_4bit_base_and_can_switch_it_off(loaded, eval_run):
    import bitsandbytes as bnb
    from peft import PeftModel

    model, tok = loaded
    assert isinstance(model, PeftModel)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    x = tok("Invoice no. 12 - Acme Ltd", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        tuned = model(**x).logits
        with model.disable_adapter():
            base = model(**x).logits
    assert (tuned - base).abs().max() > 1e-3

    plain, _ = load_tuned(eval_run, quantization="none")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in plain.modules())


def test_the_regression_set_reuses_a_harness_run_of_the_same_questions(eval_run, tmp_path):
    run = copy_run(eval_run, tmp_path / "run")
    logged = []
    result = evaluate(run, tasks=["hubtune_general_mc"], overrides=["eval.test=null", "eval.few_shot_k=0",
                                                                     "eval.max_new_tokens=8"], log=logged.append)
    reg, harness = result.regression, result.harness
    assert reg["harness_task"] == "hubtune_general_mc" and reg["n"] == 40  # the 40 questions were scored once
    assert not any("hubtune_regression" in m for m in logged)
    for model in ("base", "tuned"):
        assert reg[model] == harness[model]["hubtune_general_mc"]["metrics"]["acc"]
        assert reg["ci95"][model] == harness[model]["hubtune_general_mc"]["ci95"]["acc"]
        assert "per_doc" not in harness[model]["hubtune_general_mc"]  # per-document scores stay out of eval.json

    # The held-out rows are the validation split of a local file: named, split "validation", no Hub type.
    task = result.task
    assert (task["dataset"], task["split"]) == ({"name": "invoices.jsonl"}, "validation")
    assert {e.split for e in result.metrics if e.name in ("held-out loss", "exact match")} == {"validation"}
    assert not any("type" in e.dataset for e in result.metrics)


def test_validation_split_by_default_and_loss_matches_training(eval_run, tmp_path):
    run = copy_run(eval_run, tmp_path / "run")
    result = evaluate(run, tasks=[], limit=3, overrides=["eval.test=null", "eval.regression_set=null",
                                                          "eval.few_shot_k=1"], log=lambda m: None)
    summary = json.loads((run / "summary.json").read_text())
    assert result.data["test_split"] == "validation" and result.task["n"] == 3
    # The same held-out rows and completion-only loss TRL reported while training.
    assert result.loss["split"] == "validation" and result.data["validation_examples"] == summary["eval_examples"]
    assert result.loss["tuned"]["loss"] == pytest.approx(summary["final_eval_loss"], abs=0.02)
    assert result.loss["base"]["loss"] == pytest.approx(summary["initial_eval_loss"], abs=0.02)
    assert result.loss["tuned"]["loss"] < result.loss["base"]["loss"]
    assert result.harness is None and result.regression is None and not result.regressed
    assert result == RunFolder(run).eval  # what it returns is what eval.json holds


def judge_by_reference(messages: list[dict]) -> str:
    """A judge that prefers the answer with the higher token F1 against the reference."""
    text = messages[-1]["content"]
    reference = text.split("[Reference answer]\n", 1)[1]
    if "[Answer to grade]\n" in text:
        reference, answer = reference.split("[Answer to grade]\n", 1)
        score = 1 + round(4 * token_f1(answer, reference))
        return f"Helpfulness: {score}, Accuracy: {score}, Format: {score}"
    reference, rest = reference.split("[Assistant A]\n", 1)
    a, b = rest.split("[Assistant B]\n", 1)
    fa, fb = token_f1(a, reference), token_f1(b, reference)
    return "[[A]]" if fa > fb else "[[B]]" if fb > fa else "[[C]]"


def test_readme_evaluating_section_runs(eval_run, tmp_path, monkeypatch, capsys):
    blocks = section_blocks("Evaluating")
    assert [lang for lang, _ in blocks] == ["bash", "yaml", "python"]
    copy_run(eval_run, tmp_path / "runs" / "demo")
    monkeypatch.chdir(tmp_path)
    run = Path("runs/demo")
    judge = ScriptedJudge(judge_by_reference).start()
    try:
        for line in blocks[0][1].strip().splitlines():
            argv = shlex.split(line.replace("http://127.0.0.1:8000/v1", judge.url))
            assert argv[0] == "hubtune"
            code = cli.main(argv[1:])
            result = json.loads((run / "eval.json").read_text())
            assert code == (3 if result["regressed"] else 0)
    finally:
        judge.stop()
    out = capsys.readouterr().out
    interval = r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\]"
    assert re.search(rf"exact match \(n=20\)\s+{interval}\s+{interval}\s+{interval}\n", out)
    assert re.search(rf"regression set accuracy \(n=40\)\s+{interval}\s+{interval}\n", out)
    assert "[lower, upper]: 95% intervals; Wilson score" in out
    assert "fine-tuning " in out and "best prompt (base" in out and "judge pairwise vs base" in out

    # eval.json: every measure, for base, base few-shot and tuned.
    task = result["task"]
    assert task["n"] == 20 and task["few_shot_k"] == 3
    assert task["dataset"] == {"name": "hubtune:data/invoices/test.jsonl"}
    assert task["split"] == "test"  # a local file scored as the test set, whatever split `datasets` read it as
    entries = {(e["name"], e["model"]) for e in result["metrics"]}
    for model in ("tuned", "base", "base_few_shot"):
        assert {("exact match", model), ("token F1", model)} <= entries
    assert {("held-out loss", "tuned"), ("perplexity", "base"), ("hubtune_invoices exact_match", "tuned"),
            ("hubtune_general_mc acc", "base"), ("regression set accuracy", "tuned"),
            ("judge score (1-5)", "tuned"), ("judge win rate vs base", "tuned")} <= entries
    assert all(set(e) == {"name", "type", "value", "ci95", "dataset", "split", "model"} for e in result["metrics"])
    for e in result["metrics"]:
        if e["type"] in ("exact_match", "f1", "acc", "acc_norm", "accuracy", "llm_judge_score", "win_rate"):
            assert e["ci95"][0] <= e["value"] <= e["ci95"][1], e
    assert result["harness"]["tuned"]["hubtune_invoices"]["n"] == 20
    assert result["regression"]["n"] == 40 and result["regression"]["harness_task"] == "hubtune_regression"

    # The judge saw each item in both orders; its verdicts follow token F1, so the counts must too.
    answers = [json.loads(x) for x in (run / "eval_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 20
    f1 = [(token_f1(a["answers"]["tuned"], a["reference"]), token_f1(a["answers"]["base"], a["reference"])) for a in answers]
    pw = result["judge"]["pairwise"]
    assert (pw["wins"], pw["losses"], pw["ties"]) == (sum(t > b for t, b in f1), sum(t < b for t, b in f1),
                                                       sum(t == b for t, b in f1))
    assert pw["position_consistency"] == 1.0 and pw["unparsable"] == 0 and len(judge.requests) == 80
    tuned_scores = [1 + round(4 * t) for t, _ in f1]
    assert result["judge"]["single"]["tuned"]["overall"]["mean"] == pytest.approx(sum(tuned_scores) / 20)
    assert [a["exact_match"]["tuned"] for a in answers] == [float(a["answers"]["tuned"].strip() == a["reference"].strip())
                                                           for a in answers]

    # The blinded sheet: shuffled rows, models hidden behind answer_1 / answer_2, ratings empty.
    with (run / "human_eval.csv").open() as f:
        sheet = list(csv.DictReader(f))
    key = json.loads((run / "human_eval_key.json").read_text())
    assert len(sheet) == 10 and list(sheet[0]) == ["item", "prompt", "reference", "answer_1", "answer_2",
                                                   "rating_1", "rating_2", "preferred", "notes"]
    assert all(r["rating_1"] == r["rating_2"] == r["preferred"] == "" for r in sheet)
    assert {tuple(v.values()) for v in key.values()} <= {("tuned", "base"), ("base", "tuned")}
    model, tok = load_tuned(run)
    for row in sheet[:3]:
        tuned = generate_answers(model, tok, [user(row["prompt"])], max_new_tokens=48)[0]
        with model.disable_adapter():
            base = generate_answers(model, tok, [user(row["prompt"])], max_new_tokens=48)[0]
        columns = key[row["item"]]
        assert {columns["answer_1"]: row["answer_1"], columns["answer_2"]: row["answer_2"]} == {"tuned": tuned,
                                                                                             "base": base}

    # The run config section and the Python snippet.
    section = cfg.build(yaml.safe_load(blocks[1][1]))
    assert section.eval.tasks == ["hubtune_invoices", "hubtune_general_mc"] and section.eval.few_shot_k == 3
    cached = lines(run / "eval_cache" / "generations.jsonl")
    exec(compile(blocks[2][1], "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2].startswith("fine-tuning ") and printed[-1].split()[0] in ("regressed", "no")
    assert lines(run / "eval_cache" / "generations.jsonl") == cached  # all 60 answers came from the cache


def test_a_crash_keeps_the_generations_made_and_a_rerun_resumes(eval_run, tmp_path):
    run = copy_run(eval_run, tmp_path / "run")
    cache = run / "eval_cache" / "generations.jsonl"
    settings = dict(tasks=[], limit=4, overrides=["eval.regression_set=null", "eval.few_shot_k=1"])

    def crash_before_tuned(message: str):
        if message.startswith("generating") and message.endswith("tuned"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(run, log=crash_before_tuned, **settings)
    assert lines(cache) == 8 and not (run / "eval.json").exists()  # base and base few-shot answers kept

    result = evaluate(run, log=lambda m: None, **settings)
    assert lines(cache) == 12  # only the four tuned answers were generated
    assert result.task["tuned"]["exact_match"]["n"] == 4 and (run / "eval.json").exists()


def test_a_run_that_forgot_is_marked_regressed_loudly(eval_run, loaded, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run = copy_run(eval_run, tmp_path / "run")
    weights = run / "adapter" / "adapter_model.safetensors"
    state = load_file(weights)
    save_file({k: v * 40 if "lora_B" in k else v for k, v in state.items()}, weights)  # an adapter that wrecks the base
    argv = ["eval", str(run), "eval.tasks=[]", "eval.few_shot_k=0", "--limit", "1"]

    assert cli.main(argv) == 3
    captured = capsys.readouterr()
    assert "REGRESSED: regression set accuracy fell" in captured.out and "REGRESSED" in captured.err
    reg = json.loads((run / "eval.json").read_text())["regression"]
    assert reg["regressed"] and reg["drop"] > 0.05 and reg["forgotten"]
    # Forgotten and learned items come from the per-document scores: they account for the drop exactly.
    contexts = [r["context"] for r in regression_rows(reg["dataset"])]
    assert set(reg["forgotten"]) <= set(contexts)
    assert round(reg["drop"] * reg["n"]) == len(reg["forgotten"]) - reg["learned"]
    model, tok = loaded  # the intact run: with the adapter off it is the same base
    with model.disable_adapter():  # the regression task built from the file scores as the shipped harness task
        shipped = run_harness(model, tok, ["hubtune_general_mc"], batch_size=16)["hubtune_general_mc"]
    assert reg["base"] == shipped["metrics"]["acc"] and shipped["n"] == reg["n"] == 40

    assert cli.main([*argv[:2], "eval.regression_threshold=1.0", *argv[2:]]) == 0
    assert not json.loads((run / "eval.json").read_text())["regressed"]
    assert "no regression" in capsys.readouterr().out


def test_few_shot_prompts_leave_out_shots_that_would_overflow_the_context(loaded):
    from hubtune.data import alpaca_to_messages
    from hubtune.evaluation.pipeline import EvalData

    _, tok = loaded
    train = [json.loads(x) for x in invoice_lines(3)]
    data = EvalData()
    data.shots = [alpaca_to_messages(r) for r in train]
    question = user("Read the invoice below and extract each product name and its price.\n\nInvoice no. 7")

    def length(messages):
        return len(tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"])

    full, k = data.few_shot_prompt(question, tok, 10**6)
    assert k == 3 and [m["role"] for m in full] == ["user", "assistant"] * 3 + ["user"] and full[-1] == question[0]
    assert full[1]["content"] == train[0]["output"]
    fewer, k = data.few_shot_prompt(question, tok, length(full) - 1)
    assert k == 2 and fewer == full[:4] + question and length(fewer) <= length(full) - 1
    assert data.few_shot_prompt(question, tok, 5) == (question, 0)
