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

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
