"""training.select: task keeps the checkpoint that is best at the task, not the last one."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from hubtune.evaluation.checkpoints import choose


class SpoilLastStep(TrainerCallback):
    """Scrambles the adapter's up-projections just before the final checkpoint is saved, so the last
    checkpoint is genuinely worse at the task than the ones before it."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        import torch

        if state.global_step == state.max_steps:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(torch.randn_like(p) * 2.0)


@pytest.mark.slow
def test_select_task_keeps_the_best_checkpoint_not_the_last(tmp_path):
    import torch

    import hubtune
    from hubtune import config as cfg
    from hubtune.evaluation.generate import generate_answers, load_tuned

    # A task the tiny base learns in a few steps: answer every question with one fixed word.
    rows = [{"instruction": f"Question {i}: what is the code word?", "output": "Blue"} for i in range(48)]
    (tmp_path / "code.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = cfg.build({
        "model": {"id": "hubtune:tiny-llama", "quantization": "none"},
        "data": {"sources": [str(tmp_path / "code.jsonl")], "val_set_size": 8, "max_seq_len": 128,
                 "dedup_exact": False, "near_dup_threshold": None, "min_response_tokens": 0},
        "training": {"learning_rate": 1e-2, "max_steps": 12, "micro_batch_size": 8, "gradient_accumulation_steps": 1,
                     "warmup_steps": 0, "gradient_checkpointing": False, "logging_steps": 4, "save_steps": 4,
                     "save_total_limit": 1, "select": "task", "select_examples": 8},
        "eval": {"max_new_tokens": 8, "batch_size": 8},
        "output": {"dir": str(tmp_path / "run")},
    })
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = hubtune.train(config, callbacks=[SpoilLastStep()])
    finally:
        torch.set_num_threads(threads)

    selection = run.summary.selection
    scores = {c["step"]: c for c in selection["checkpoints"]}
    assert sorted(scores) == [4, 8, 12]
    assert selection["select"] == "task" and selection["last_step"] == 12
    best = max(c["exact_match"]["mean"] for c in scores.values())
    assert best > scores[12]["exact_match"]["mean"], scores  # the spoiled last step is worse
    assert selection["chosen_step"] != 12
    chosen = scores[selection["chosen_step"]]
    assert chosen["exact_match"]["mean"] == best and chosen["exact_match"]["ci95"] is not None
    # The regression verdict is real: where no checkpoint kept the base's general answers, the best task
    # score is kept all the same and the summary says none passed.
    passed = [c for c in scores.values() if c["regression"]["passed"]]
    assert chosen["regression"]["passed"] if passed else selection["regression_passed"] is False
    assert chosen["eval_loss"] is not None  # every checkpoint also has its held-out loss

    # RUN/adapter is the chosen checkpoint's: it answers like that checkpoint did.
    model, tokenizer = load_tuned(run.path, quantization="none")
    held_out = [r for r in run.rows("validation") if "prompt" in r][:8]
    answers = generate_answers(model, tokenizer, [r["prompt"] for r in held_out], max_new_tokens=8)
    hits = sum(a.strip() == "Blue" for a in answers) / len(answers)
    assert hits == pytest.approx(chosen["exact_match"]["mean"])
    assert (run.path / "checkpoint_scores.json").is_file()

    # The card says which step was kept and shows every checkpoint's scores.
    from hubtune.card import write_card

    card = write_card(run.path, "me/code-word").read_text()
    assert f"kept step **{selection['chosen_step']}** of 12" in card
    for step in (4, 8, 12):
        assert f"| {step} | {scores[step]['eval_loss']:.4f} | {scores[step]['exact_match']['mean']:.3f}" in card

    # So does the Runs tab of the web app.
    from hubtune.ui.handlers import checkpoint_view

    view = checkpoint_view(run)
    assert f"kept step {selection['chosen_step']} of 12" in view and view.count("| yes |") == 1


def test_choose_rules():
    def h(step, em, passed=True, loss=None, accuracy=None):
        return {"step": step, "exact_match": {"mean": em}, "regression": {"passed": passed, "accuracy": accuracy},
                "eval_loss": loss}

    history = [h(4, 0.5, loss=2.0), h(8, 0.9, passed=False, loss=1.0), h(12, 0.7, loss=1.5)]
    assert choose(history, "task")["step"] == 12  # step 8 scores higher but forgot the regression set
    assert choose(history, "eval_loss")["step"] == 8
    assert choose(history, "last")["step"] == 12
    assert choose([h(4, 0.5), h(8, 0.5)], "task")["step"] == 4  # a tie keeps the earlier step
    # ... unless a later one kept more of the regression set (the demo: 1.0 everywhere on 32 held-out examples)
    tied = [h(100, 1.0, accuracy=0.95), h(200, 1.0, accuracy=0.975), h(300, 1.0, accuracy=0.975)]
    assert choose(tied, "task")["step"] == 200
    assert choose([], "task") is None


@pytest.mark.slow
def test_select_task_without_held_out_split_is_a_config_error(tmp_path):
    import hubtune
    from hubtune import config as cfg
    from hubtune.errors import ConfigError

    rows = [{"instruction": f"Q{i}", "output": "A"} for i in range(8)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = cfg.build({"data": {"sources": [str(tmp_path / "d.jsonl")], "val_set_size": 0, "min_response_tokens": 0,
                                 "max_seq_len": 256},
                        "training": {"max_steps": 1, "select": "task"}, "output": {"dir": str(tmp_path / "run")}})
    with pytest.raises(ConfigError, match="training.select"):
        hubtune.train(config)
