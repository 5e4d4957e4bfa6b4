"""Preference, unpaired and GRPO data through the real pipeline and tokenizer; GRPO rewards from
hubtune's scorers, a real judge over loopback HTTP and a user's own function."""

from __future__ import annotations

import json
import math
import sys

import pytest
from data_rows import section, write_jsonl
from judge_server import ScriptedJudge

from hubtune import config as cfg
from hubtune import methods
from hubtune.data import prepare
from hubtune.errors import ConfigError, DataError, RewardError
from hubtune.evaluation import rewards

PAIRS = [{"prompt": f"Extract the products.\n\nInvoice {i}: Item{i} Lamp at ${i}.50",
          "chosen": f"Products:\n- Item{i} Lamp: ${i}.50", "rejected": f"Products:\n- Item{i} Lamp"} for i in range(12)]


@pytest.fixture
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama"))


def test_plain_text_pairs_become_conversational_preference_rows(tmp_path, tokenizer):
    prepared = prepare(section(write_jsonl(tmp_path / "p.jsonl", PAIRS), near_dup_threshold=None), tokenizer)
    row = prepared.train[0]
    assert set(row) == {"prompt", "chosen", "rejected"}
    assert row["prompt"][-1]["role"] == "user" and row["chosen"] == [{"role": "assistant", "content": PAIRS[0]["chosen"]}]
    report = prepared.report
    assert report["format"] == "preference" and report["kind"] == "preference"
    assert report["preference"]["pairs"] == 12 and report["preference"]["chosen_longer_share"] == 1.0


def test_implicit_prompt_is_the_turns_chosen_and_rejected_share(tmp_path, tokenizer):
    user = {"role": "user", "content": "Name the capital of France."}
    rows = [{"chosen": [user, {"role": "assistant", "content": f"Paris {i}"}],
             "rejected": [user, {"role": "assistant", "content": f"Lyon {i}"}]} for i in range(3)]
    prepared = prepare(section(write_jsonl(tmp_path / "hh.jsonl", rows), near_dup_threshold=None), tokenizer)
    assert prepared.train[0]["prompt"] == [user]
    assert prepared.train[0]["rejected"] == [{"role": "assistant", "content": "Lyon 0"}]


def test_duplicate_pairs_are_counted_and_dropped(tmp_path, tokenizer):
    rows = PAIRS + [PAIRS[3], dict(PAIRS[3], rejected="Products: none")]  # the second differs: kept
    prepared = prepare(section(write_jsonl(tmp_path / "p.jsonl", rows), near_dup_threshold=None), tokenizer)
    assert prepared.report["exact_duplicates"] == 1 and prepared.report["kept"] == 13


@pytest.mark.parametrize("bad, words", [
    ({"prompt": "Q", "chosen": "A"}, "no value for rejected"),
    ({"prompt": "Q", "chosen": "Same answer", "rejected": " Same answer "}, "chosen and rejected are the same answer"),
    ({"prompt": "Q", "chosen": "", "rejected": "B"}, "chosen or rejected is empty"),
])
def test_bad_pairs_are_errors_naming_the_row(tmp_path, tokenizer, bad, words):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS[:4] + [bad])
    with pytest.raises(DataError, match=rf"p.jsonl, line 5: {words}"):
        prepare(section(path), tokenizer)


def test_unpaired_kto_rows_and_their_labels(tmp_path, tokenizer):
    rows = [{"prompt": f"Q{i}", "completion": f"answer number {i}", "label": ["true", False, 1][i % 3]} for i in range(9)]
    prepared = prepare(section(write_jsonl(tmp_path / "k.jsonl", rows), near_dup_threshold=None), tokenizer)
    assert prepared.report["kind"] == "kto"
    assert [r["label"] for r in prepared.train][:3] == [True, False, True]
    assert prepared.report["preference"] == {"rows": 9, "desirable": 6, "undesirable": 3}
    with pytest.raises(DataError, match="line 2: label is 'maybe'"):
        prepare(section(write_jsonl(tmp_path / "bad.jsonl", rows[:1] + [dict(rows[1], label="maybe")])), tokenizer)


def test_the_method_must_match_the_data():
    methods.check_data("dpo", "preference", "preference")
    methods.check_data("kto", "preference", "preference")  # pairs train KTO as two unpaired rows
    with pytest.raises(DataError, match="training.method sft cannot train on preference rows.*dpo, orpo or kto"):
        methods.check_data("sft", "preference", "preference")
    with pytest.raises(DataError, match="training.method dpo cannot train on chat rows"):
        methods.check_data("dpo", "chat", "alpaca")
    with pytest.raises(DataError, match="method grpo cannot train on preference"):
        methods.check_data("grpo", "preference", "preference")


def test_kto_reads_pairs_unpaired_and_grpo_keeps_the_reference():
    from datasets import Dataset

    pairs = Dataset.from_list([{"prompt": [{"role": "user", "content": "Q"}],
                                "chosen": [{"role": "assistant", "content": "good"}],
                                "rejected": [{"role": "assistant", "content": "bad"}]}])
    unpaired = methods.method_dataset("kto", pairs)
    assert sorted(unpaired["label"]) == [False, True]
    chat = Dataset.from_list([{"prompt": [{"role": "user", "content": "Q"}],
                               "completion": [{"role": "assistant", "content": "A"}]}])
    assert methods.method_dataset("grpo", chat)[0] == {"prompt": [{"role": "user", "content": "Q"}], "reference": "A"}


# ---- rewards ------------------------------------------------------------------------------------
def _as_chat(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


def test_built_in_rewards_score_against_the_reference():
    specs = cfg.GRPOSection(rewards=["exact_match", "f1", "json", {"name": "regex", "pattern": r"^Products:"},
                                     {"name": "length", "target_chars": 10, "weight": 0.5}]).rewards
    funcs, weights = rewards.build_rewards(specs, cfg.EvalSection())
    assert [f.__name__ for f in funcs] == ["exact_match", "f1", "json", "regex", "length"]
    assert weights == [1.0, 1.0, 1.0, 1.0, 0.5]
    completions = _as_chat(["Products:\n- Lamp: $2", '{"a": 1}', "Products: Lamp " + "x" * 20])
    refs = ["Products:\n- Lamp: $2", '{"a": 1}', "Products:\n- Lamp: $2"]
    scores = {f.__name__: f(["q"] * 3, completions, reference=refs) for f in funcs}
    assert scores["exact_match"] == [1.0, 1.0, 0.0]
    assert scores["f1"][0] == 1.0 and 0 < scores["f1"][2] < 1
    assert scores["json"] == [0.0, 1.0, 0.0]
    assert scores["regex"] == [1.0, 0.0, 1.0]
    assert scores["length"][1] == 1.0 and scores["length"][2] == 0.0


def test_the_judge_reward_goes_through_the_judge_client():
    server = ScriptedJudge(lambda m: "Good.\nHelpfulness: 5, Accuracy: 3, Format: 1" if "Lamp" in m[-1]["content"]
                           else "Helpfulness: 1, Accuracy: 1, Format: 1").start()
    try:
        funcs, _ = rewards.build_rewards([cfg.RewardSpec(name="judge")],
                                         cfg.EvalSection(judge=server.url, judge_retries=0))
        assert funcs[0](["Extract"] * 2, _as_chat(["Lamp", "nothing"]), reference=["ref", "ref"]) == [0.5, 0.0]
        assert "[Reference answer]" in server.requests[0][-1]["content"]
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="the judge reward needs a judge: set eval.judge"):
        rewards.build_rewards([cfg.RewardSpec(name="judge")], cfg.EvalSection())


@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import math\n"
        "def short(prompts, completions, references):\n    return [1.0 / (1 + len(c)) for c in completions]\n"
        "def broken(prompts, completions, references):\n    raise KeyError('score')\n"
        "def nan(prompts, completions, references):\n    return [0.5, math.nan]\n"
        "def too_few(prompts, completions, references):\n    return [1.0]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPACE_ID", raising=False)
    yield
    sys.modules.pop("my_rewards", None)


def _user(name):
    return rewards.build_rewards([cfg.RewardSpec(name="callable", callable=f"my_rewards:{name}")], cfg.EvalSection())[0][0]


def test_a_users_reward_function_runs_and_every_failure_names_it(user_rewards):
    fn = _user("short")
    assert fn.__name__ == "my_rewards:short"
    assert fn(["q", "q"], _as_chat(["a", "abc"]), reference=["a", "a"]) == [0.5, 0.25]
    with pytest.raises(RewardError, match=r"reward my_rewards:broken raised KeyError: 'score'"):
        _user("broken")(["q"], _as_chat(["a"]), reference=["a"])
    with pytest.raises(RewardError, match=r"reward my_rewards:nan returned nan for completion 1"):
        _user("nan")(["q", "q"], _as_chat(["a", "b"]), reference=["a", "b"])
    with pytest.raises(RewardError, match=r"reward my_rewards:too_few returned 1 for 2 completions"):
        _user("too_few")(["q", "q"], _as_chat(["a", "b"]), reference=["a", "b"])
    with pytest.raises(RewardError, match=r"cannot import 'my_rewards:missing'"):
        _user("missing")


def test_a_users_reward_function_never_runs_on_a_shared_space(user_rewards, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "alice/hubtune")
    with pytest.raises(ConfigError, match="not on a shared Space"):
        _user("short")
    assert "my_rewards" not in sys.modules  # refused before anything was imported


def test_reward_settings_are_checked_where_they_enter():
    with pytest.raises(ConfigError, match="training.grpo.rewards.0: the regex reward needs pattern"):
        cfg.build({"training": {"grpo": {"rewards": [{"name": "regex"}]}}})
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        cfg.build({"training": {"grpo": {"rewards": [{"name": "regex", "pattern": "("}]}}})
    with pytest.raises(ConfigError, match="is not module:function"):
        cfg.build({"training": {"grpo": {"rewards": [{"name": "callable", "callable": "no colon"}]}}})
    assert cfg.build({"training": {"method": "grpo"}}).training.method_beta() == 0.0
    assert cfg.build({"training": {"method": "dpo"}}).training.method_beta() == 0.1
    assert not math.isnan(json.loads(json.dumps(0.1)))


# ---- memory ---------------------------------------------------------------------------------------
def test_the_estimate_counts_each_methods_sequences():
    from dataclasses import replace

    from hubtune import memory

    arch = memory.architecture(json.loads(memory.reference_config("Llama-3.1-8B").read_text()))
    sft = memory.Settings(seq_len=1024, micro_batch=2)
    dpo, grpo = replace(sft, training_method="dpo"), replace(sft, training_method="grpo", num_generations=8,
                                                            max_completion_length=256)

    def activations(s):
        return sum(v for k, v in memory.estimate(arch, s).breakdown.items() if k.startswith("activations"))
    assert activations(dpo) == pytest.approx(2 * activations(sft), rel=0.01)  # chosen and rejected in one batch
    assert activations(grpo) == pytest.approx(8 * 1280 / 1024 * activations(sft), rel=0.01)
    assert any(k.startswith("generation: key/value cache of 16 sequences x 1280 tokens")
               for k in memory.estimate(arch, grpo).breakdown)
    assert "micro-batch 2 pairs (chosen + rejected: 4 sequences)" in dpo.describe()
    config = cfg.build({"training": {"method": "grpo", "grpo": {"num_generations": 6}}})
    assert memory.Settings.from_run_config(config).sequences == 12


def test_estimate_on_the_command_line_takes_a_training_method(capsys):
    from hubtune.cli import main

    main(["estimate", "hubtune:tiny-llama", "--method", "grpo", "--generations", "8", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["settings"]["training_method"] == "grpo" and out["settings"]["num_generations"] == 8
    assert any(k.startswith("generation: key/value cache") for k in out["breakdown_gb"])


# ---- the documentation ----------------------------------------------------------------------------
def test_the_run_configs_in_the_docs_validate():
    import yaml
    from readme_blocks import section_blocks

    blocks = [block for title in ("Preference data", "GRPO and its rewards")
              for lang, block in section_blocks(title) if lang == "yaml"]
    methods_found = {cfg.build(yaml.safe_load(block)).training.method for block in blocks}
    assert methods_found == {"dpo", "grpo"}


def test_the_memory_table_in_the_docs_is_what_the_estimate_says():
    from readme_blocks import section

    from hubtune import memory

    arch = memory.architecture(json.loads(memory.reference_config("Llama-3.1-8B").read_text()))
    text = section("Memory, compared with SFT").text
    for method in ("sft", "kto", "dpo", "orpo", "grpo"):
        est = memory.estimate(arch, memory.Settings(seq_len=1024, micro_batch=2, training_method=method))
        activations = sum(v for k, v in est.breakdown.items() if k.startswith(("activations", "logits")))
        row = next(line for line in text.splitlines() if line.startswith("| ") and method in line.split("|")[1])
        assert f"{est.total_gb:.2f} GB | {activations / memory.GB:.2f} GB |" in row, (method, row)


# ---- pairs from an evaluated run ---------------------------------------------------------------------
def test_an_evaluated_runs_answers_become_a_preference_set(tmp_path, tokenizer, capsys):
    from hubtune.cli import main

    prompt = [{"role": "user", "content": "List the products."}]
    lines = [  # as hubtune.evaluation.pipeline writes RUN/eval_answers.jsonl
        {"prompt": prompt, "reference": "Lamp: $2", "answers": {"tuned": "Lamp: $2", "base": "Lamp"},
         "exact_match": {"tuned": 1.0, "base": 0.0}, "token_f1": {"tuned": 1.0, "base": 0.5}},
        {"prompt": prompt, "reference": "Desk: $9", "answers": {"tuned": "Desk", "base": "Desk"},
         "exact_match": {"tuned": 0.0, "base": 0.0}, "token_f1": {"tuned": 0.5, "base": 0.5}},
    ]
    write_jsonl(tmp_path / "eval_answers.jsonl", lines)
    assert main(["data", "pairs", str(tmp_path), "--out", str(tmp_path / "pairs.jsonl")]) == 0
    assert "1 pairs from 2 prompts (0 with the reference chosen, 1 left out" in capsys.readouterr().out
    main(["data", "pairs", str(tmp_path), "--out", str(tmp_path / "pairs.jsonl"), "--reference-chosen"])
    written = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [(r["chosen"], r["rejected"]) for r in written] == [("Lamp: $2", "Lamp"), ("Desk: $9", "Desk")]
    prepared = prepare(section(tmp_path / "pairs.jsonl", near_dup_threshold=None, min_response_tokens=1), tokenizer)
    assert prepared.report["kind"] == "preference" and prepared.report["kept"] == 2
    assert main(["data", "pairs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "evaluate the run first (`hubtune eval" in capsys.readouterr().err


def test_judge_scored_pairs_go_through_the_judge_client_with_its_own_key(tmp_path, monkeypatch, capsys):
    """`data pairs RUN --judge URL`: each answer graded on the rubric by a (loopback) judge; the best and the
    worst graded answers of a prompt make the pair; the judge gets its own key, never the Hub token."""
    from hubtune.cli import main
    from hubtune.runs import RunFolder

    def grades(messages):
        answer = messages[-1]["content"].split("[Answer to grade]")[1]
        if "unreadable" in answer:
            return "I cannot decide."
        return "Fine.\nHelpfulness: 5, Accuracy: 5, Format: 4" if "$" in answer else "Helpfulness: 2, Accuracy: 1, Format: 3"

    run = RunFolder.create(tmp_path / "run", cfg.build({"eval": {"judge_retries": 0}})).path  # as trained
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "List the products."}]
    write_jsonl(run / "eval_answers.jsonl", [  # token F1 ties both prompts; the judge does not
        {"prompt": prompt, "reference": "Lamp: $2", "answers": {"tuned": "Lamp: $2", "base": "Lamp: 2"},
         "exact_match": {"tuned": 1.0, "base": 0.0}, "token_f1": {"tuned": 1.0, "base": 1.0}},
        {"prompt": prompt, "reference": "Desk: $9", "answers": {"tuned": "Desk $9", "base": "unreadable Desk"},
         "exact_match": {"tuned": 0.0, "base": 0.0}, "token_f1": {"tuned": 0.5, "base": 0.5}}])
    monkeypatch.setenv("HF_TOKEN", "hf_never_sent_to_the_judge")
    monkeypatch.setenv("HUBTUNE_JUDGE_API_KEY", "judge-key")
    server = ScriptedJudge(grades).start()
    out = tmp_path / "pairs.jsonl"
    try:
        assert main(["data", "pairs", str(run), "--out", str(out), "--metric", "token_f1"]) == 0
        assert "0 pairs from 2 prompts" in capsys.readouterr().out
        assert main(["data", "pairs", str(run), "--out", str(out), "--judge", server.url]) == 0
        said = capsys.readouterr().out
        assert "1 pairs from 2 prompts" in said and "ranked by the judge" in said and "1 answer the judge left unscored" in said
        asked = len(server.requests)
        assert asked == 4 and set(server.authorizations) == {"Bearer judge-key"}
        assert all("Be brief." not in m[-1]["content"] for m in server.requests)  # the request, not the system prompt
        written = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(r["chosen"], r["rejected"]) for r in written] == [("Lamp: $2", "Lamp: 2")]
        assert "tuned (4.67) over base (2.00) by judge" in written[0]["origin"]
        # The replies are cached in the run folder (as `hubtune eval` caches them): a rerun asks nothing new.
        assert (run / RunFolder.JUDGE_CACHE).is_file()
        assert main(["data", "pairs", str(run), "--out", str(out), "--judge", server.url]) == 0
        assert len(server.requests) == asked
        # A judge that keeps failing: a typed error naming it, nothing written.
        server.fail_next(100)
        out.unlink()
        assert main(["data", "pairs", str(run), "--out", str(out), "--judge", server.url + "/",
                     "--metric", "judge"]) != 0
        assert f"judge {server.url}/ failed" in capsys.readouterr().err and not out.exists()
    finally:
        server.stop()
    assert main(["data", "pairs", str(run), "--out", str(out), "--metric", "judge"]) == 2
    assert "metric judge needs a judge: give one with --judge" in capsys.readouterr().err


# ---- the page ---------------------------------------------------------------------------------------
def test_the_page_previews_pairs_sets_the_method_and_charts_rewards(tmp_path):
    from hubtune.runs import RunFolder
    from hubtune.ui import handlers as h
    from hubtune.ui import views

    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    shown, line = h._preview(cfg.build({"data": {"sources": [str(pairs)]}}))
    assert set(shown[0]) == {"prompt", "chosen", "rejected"}
    assert "format **preference** (detected)" in line and "choose the method dpo, orpo or kto" in line
    text, note = h.compose_config(h.DEMO_MODEL, str(pairs), "quick", 0, 2, 0, "personal", method="dpo")
    assert h.parse_config(text).training.method == "dpo"
    _, sft_note = h.compose_config(h.DEMO_MODEL, str(pairs), "quick", 0, 2, 0, "personal", method="sft")
    assert "(DPO, QLoRA" in note and "DPO" not in sft_note  # the memory line follows the method
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / RunFolder.METRICS, [{"step": 1, "loss": 0.5, "rewards/exact_match/mean": 0.25,
                                           "rewards/exact_match/std": 0.1, "reward": 0.25}])
    points = views.loss_points([RunFolder(run)])
    assert {p["curve"]: p["loss"] for p in points} == {"training loss": 0.5, "reward exact_match": 0.25}
    assert views.chart_caption(points) == "1 training-loss points, 0 held-out-loss points, 1 reward points"
    from hubtune.ui import charts

    spec = json.loads(charts.loss_chart(points).plot)  # the reward is a curve of its own in the page's chart
    domain = next(layer["encoding"]["color"]["scale"]["domain"] for layer in spec["layer"])
    assert domain == ["training loss", "reward exact_match"]


def test_evaluation_scores_a_preference_run_against_the_chosen_answers():
    from hubtune.evaluation.pipeline import _scored_rows

    prompt, good, bad = ([{"role": r, "content": c}] for r, c in (("user", "Q"), ("assistant", "A"), ("assistant", "B")))
    rows = [{"prompt": prompt, "chosen": good, "rejected": bad},
            {"prompt": prompt, "completion": bad, "label": False}, {"prompt": prompt, "completion": good, "label": True}]
    assert _scored_rows(rows) == [{"prompt": prompt, "completion": good}] * 2
