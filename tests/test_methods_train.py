"""Each method trains the embedded tiny base through the real recipe and TRL trainer on the committed
invoice data and moves its own held-out measure."""

from __future__ import annotations

import json

import pytest

import hubtune
from hubtune import config as cfg
from hubtune.card import write_card
from hubtune.errors import DataError, RewardError
from hubtune.runs import RunFolder, Status

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _config(tmp_path, method: str, source: str, steps: int, **training) -> cfg.RunConfig:
    return cfg.build({
        "model": {"id": "hubtune:tiny-llama", "quantization": training.pop("quantization", "none")},
        "data": {"sources": [source], "val_set_size": training.pop("held_out", 16), "max_seq_len": 256},
        "training": {"method": method, "max_steps": steps, "learning_rate": 1e-3, "micro_batch_size": 8,
                     "gradient_accumulation_steps": 1, "warmup_steps": 0, "gradient_checkpointing": False,
                     "logging_steps": 1, "save_steps": 100, **training},
        "eval": {"tasks": [], "regression_set": None, "batch_size": 16},
        "output": {"dir": str(tmp_path / method)},
    })


PAIRS = "hubtune:data/invoices/preferences_train.jsonl"


def test_dpo_moves_held_out_preference_accuracy_from_a_tie_to_the_chosen_answers(tmp_path):
    run = hubtune.train(_config(tmp_path, "dpo", PAIRS, 4))
    s = run.summary
    assert s.training_method == "dpo"
    assert s.method_settings == {"method": "dpo", "trainer": "trl.DPOTrainer", "beta": 0.1,
                                 "reference": "the base model with the adapter disabled (no second copy)"}
    before, after = s.held_out["before"]["preference"], s.held_out["after"]["preference"]
    # Before any update the policy is the reference: every pair is a tie.
    assert before["accuracy"] == 0.5 and before["margin"] == 0.0 and before["pairs"] == 16
    assert after["accuracy"] >= 0.9 and after["margin"] > 0.2
    logged = [json.loads(line) for line in (run.path / RunFolder.METRICS).read_text().splitlines()]
    assert len(logged) == 4 and all("rewards/accuracies" in row and "rewards/margins" in row for row in logged)
    card = write_card(run.path, "alice/tiny-dpo").read_text()
    assert "Direct Preference Optimization (DPO) through `trl.DPOTrainer`" in card and "| Beta | 0.1 |" in card
    assert "| preference accuracy (implicit reward favours chosen) | 0.5000 | " in card
    assert "- dpo" in card.split("---")[1]  # the method is a tag of the card's metadata


@pytest.mark.parametrize("method, trainer", [("orpo", "trl.experimental.orpo.ORPOTrainer"), ("kto", "trl.KTOTrainer")])
def test_orpo_and_kto_train_a_4bit_base_on_the_pairs(tmp_path, method, trainer):
    # KTO reads each pair as a desirable and an undesirable row; ORPO needs no reference at all.
    run = hubtune.train(_config(tmp_path, method, PAIRS, 3, quantization="nf4", beta=0.2))
    s = run.summary
    assert s.method == "qlora" and s.method_settings["trainer"] == trainer and s.method_settings["beta"] == 0.2
    assert s.method_settings["reference"] == ("none" if method == "orpo" else
                                              "the base model with the adapter disabled (no second copy)")
    assert s.held_out["after"]["preference"]["accuracy"] > s.held_out["before"]["preference"]["accuracy"] == 0.5


def test_sft_rows_are_refused_by_a_preference_method_before_the_model_loads(tmp_path):
    with pytest.raises(DataError, match="training.method dpo cannot train on chat rows"):
        hubtune.train(_config(tmp_path, "dpo", "hubtune:data/invoices/short_train.jsonl", 1))


SHORT = "hubtune:data/invoices/short_train.jsonl"
GRPO = {"num_generations": 2, "max_completion_length": 16, "top_k": 2}


def test_grpo_logs_each_reward_per_step_and_scores_held_out_prompts_before_and_after(tmp_path):
    rewards = ["exact_match", {"name": "f1", "weight": 0.5}, {"name": "regex", "pattern": r"\$\d", "weight": 0.25}]
    run = hubtune.train(_config(tmp_path, "grpo", SHORT, 2, micro_batch_size=2, held_out=4,
                                grpo=dict(GRPO, rewards=rewards)))
    s = run.summary
    assert s.method_settings["rewards"] == [{"name": "exact_match", "weight": 1.0}, {"name": "f1", "weight": 0.5},
                                            {"name": "regex", "weight": 0.25}]
    assert s.method_settings["beta"] == 0.0 and s.method_settings["reference"] == "none"
    for moment in ("before", "after"):
        assert set(s.held_out[moment]["rewards"]) == {"exact_match", "f1", "regex"}
    logged = [json.loads(line) for line in (run.path / RunFolder.METRICS).read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2]
    for row in logged:
        means = [row[f"rewards/{n}/mean"] for n in ("exact_match", "f1", "regex")]
        assert row["reward"] == pytest.approx(means[0] + 0.5 * means[1] + 0.25 * means[2], abs=1e-4)
    card = write_card(run.path, "alice/tiny-grpo").read_text()
    assert "| Reward functions (weight) | `exact_match` (1.0), `f1` (0.5), `regex` (0.25) |" in card
    assert "| reward f1 (greedy answers) |" in card
    assert "| Sampling | temperature 1.0, the 2 likeliest tokens |" in card


def test_a_reward_returning_nan_stops_grpo_with_an_error_naming_it(tmp_path, monkeypatch):
    (tmp_path / "bad_rewards.py").write_text("def half_nan(prompts, completions, references):\n"
                                             "    return [float('nan')] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, "grpo", SHORT, 1, micro_batch_size=1, held_out=0,
                     grpo=dict(GRPO, rewards=[{"name": "callable", "callable": "bad_rewards:half_nan"}]))
    with pytest.raises(RewardError, match=r"reward bad_rewards:half_nan returned nan for completion 0"):
        hubtune.train(config)
    run = RunFolder(tmp_path / "grpo")
    assert run.status == Status.FAILED and "bad_rewards:half_nan" in run.error
