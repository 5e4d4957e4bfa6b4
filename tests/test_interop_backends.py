"""The training backend (auto | hf | unsloth) and experiment trackers (training.report_to).

Unsloth needs an NVIDIA GPU; here the tests cover the choice, its errors and everything around the
Unsloth calls (target modules, trainer arguments, the card's tag). Its load and LoRA calls run only
on a CUDA machine with unsloth installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from data_rows import tiny_config

import hubtune
from hubtune import config as cfg
from hubtune import families
from hubtune.card import card_data, publishing_verdict
from hubtune.cli import main
from hubtune.config import resolve_builtin
from hubtune.errors import ConfigError
from hubtune.hardware import Hardware
from hubtune.interop import backends
from hubtune.runs import RunFolder

CPU = Hardware("cpu", torch.float32, "adamw_torch")
GPU = Hardware("cuda", torch.bfloat16, "paged_adamw_8bit")
UNSLOTH_INSTALLED = backends.importlib.util.find_spec("unsloth") is not None


def test_auto_picks_hf_here_and_says_why():
    choice = backends.select("auto", CPU, cfg.ModelSection())
    assert choice.name == "hf"
    assert "CUDA GPU" in choice.why and ("unsloth package" in choice.why) != UNSLOTH_INSTALLED
    assert backends.select("hf", GPU, cfg.ModelSection()).name == "hf"


@pytest.mark.skipif(UNSLOTH_INSTALLED, reason="unsloth is installed here")
def test_auto_on_a_gpu_without_unsloth_names_the_package():
    choice = backends.select("auto", GPU, cfg.ModelSection())
    assert choice.name == "hf" and "pip install unsloth" in choice.why and "CUDA" not in choice.why


def test_unsloth_where_it_cannot_run_names_what_is_missing():
    with pytest.raises(ConfigError) as info:
        backends.select("unsloth", CPU, cfg.ModelSection(quantization="fp4"))
    (path, message), = info.value.problems
    assert path == "training.backend"
    assert "a CUDA GPU" in message and "nf4" in message and "training.backend: hf" in message


def test_hubtune_train_with_unsloth_here_stops_before_loading_anything(tmp_path, capsys):
    code = main(["train", str(Path(__file__).parent.parent / "examples" / "invoices.yaml"),
                 "training.backend=unsloth", f"output.dir={tmp_path / 'run'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "training.backend: unsloth cannot run here" in err and "CUDA GPU" in err
    assert not (tmp_path / "run" / "data_report.json").exists()


def test_all_linear_for_unsloth_is_the_seven_llama_projections():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_builtin("hubtune:tiny-llama"))
    assert families.linear_module_names(model) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def test_unsloth_checkpoints_gradients_itself(tmp_path):
    from hubtune.train import sft_args

    config = cfg.build({"training": {"gradient_checkpointing": True}})
    assert sft_args(config, CPU, tmp_path, has_eval=False).gradient_checkpointing is True
    assert sft_args(config, CPU, tmp_path, has_eval=False, backend="unsloth").gradient_checkpointing is False


def test_the_card_is_tagged_unsloth_when_unsloth_trained(make_run):
    run = RunFolder(make_run())
    assert run.summary.backend["name"] == "hf"  # what the real run recorded
    assert "unsloth" not in card_data(run, "alice/x", publishing_verdict(run)).tags
    run.write_summary(run.summary.model_copy(update={
        "backend": {"name": "unsloth", "why": "auto: a CUDA GPU and unsloth are present"}}))
    assert "unsloth" in card_data(run, "alice/x", publishing_verdict(run)).tags


def test_report_to_is_one_list():
    assert cfg.TrainingSection().report_to == []
    assert cfg.TrainingSection(report_to="none").report_to == []
    assert cfg.TrainingSection(report_to="tensorboard").report_to == ["tensorboard"]
    with pytest.raises(ValueError):
        cfg.TrainingSection(report_to=["tensorbored"])


@pytest.mark.skipif(backends.importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_stops_before_training(tmp_path, capsys):
    code = main(["train", str(Path(__file__).parent.parent / "examples" / "invoices.yaml"),
                 "training.report_to=[tensorboard, wandb]", f"output.dir={tmp_path / 'run'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "training.report_to: wandb is not installed: pip install wandb" in err and "tensorboard is not" not in err
    assert not (tmp_path / "run" / "data_report.json").exists()


@pytest.mark.slow
def test_tensorboard_gets_the_runs_losses(tmp_path, one_torch_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = hubtune.train(tiny_config(
        tmp_path, rows=40, model={"quantization": "none"}, data={"val_set_size": 8, "max_seq_len": 256},
        training={"max_steps": 4, "micro_batch_size": 8, "logging_steps": 2, "eval_steps": 4,
                  "report_to": ["tensorboard"]}))
    events = list((run.path / "tensorboard").glob("events.out.tfevents.*"))
    assert events, list(run.path.iterdir())
    acc = EventAccumulator(str(run.path / "tensorboard"))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("train/loss")}
    metrics = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx({m["step"]: m["loss"] for m in metrics if "loss" in m}, rel=1e-6)
    assert [e.step for e in acc.Scalars("eval/loss")] == [0, 4]  # the baseline before training, then the end
    assert not list((run.path / "checkpoints").glob("**/events.out.tfevents.*"))  # in one place only
    shutil.rmtree(run.path)
