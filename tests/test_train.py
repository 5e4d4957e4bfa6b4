"""The training recipe on the embedded tiny model, end to end on CPU."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from data_rows import tiny_config

import hubtune
from hubtune import config as cfg
from hubtune.config import resolve_builtin
from hubtune.errors import ConfigError
from hubtune.runs import RunFolder

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

ROOT = Path(__file__).resolve().parent.parent
BASE = resolve_builtin("hubtune:tiny-llama")


def small_config(tmp: Path, **training) -> cfg.RunConfig:
    """The demo task cut to 96 examples and a handful of steps."""
    return tiny_config(tmp, rows=96, data={"val_set_size": 16},
                       training={"learning_rate": 2e-3, "max_steps": 12, "micro_batch_size": 8, "warmup_steps": 2,
                                 "logging_steps": 2, "save_steps": 6, "eval_steps": 12, **training})


@pytest.fixture(scope="module")
def trained(trained_run):
    """The session's shared real run (tests/conftest.py) and its weight snapshot."""
    return trained_run


def test_run_folder_holds_everything(trained):
    run, _ = trained
    assert {"config.yaml", "adapter", "metrics.jsonl", "summary.json", "data_report.json"} <= {
        p.name for p in run.path.iterdir()}
    assert (run.adapter / "adapter_config.json").is_file()
    assert (run.adapter / "adapter_model.safetensors").is_file()
    assert (run.adapter / "tokenizer.json").is_file()
    assert cfg.load(run.path / "config.yaml").training.max_steps == 12
    lines = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == [2, 4, 6, 8, 10, 12]
    assert all(x["total_steps"] == 12 and x["elapsed_seconds"] >= 0 for x in lines if x["step"])
    assert all(x["tokens_per_second"] > 0 and "learning_rate" in x and "epoch" in x for x in train_lines)
    assert any("eval_loss" in x for x in lines)
    s = run.summary
    assert s.method == "qlora" and s.global_steps == 12
    assert 0 < s.trainable_parameters < s.total_parameters
    assert s.versions["transformers"] and s.peak_memory_mb["process_rss"] > 0
    assert s.duration_seconds > 0
    assert run.status == hubtune.Status.FINISHED and not (run.path / ".lock").exists()
    # The held-out rows are in the run, so evaluation reads them instead of re-running the data steps.
    assert len(run.rows("validation")) == s.eval_examples and len(run.rows("train")) == s.train_examples


def test_training_lowers_held_out_loss(trained):
    run, _ = trained
    assert run.summary.final_eval_loss < run.summary.initial_eval_loss - 0.05


def test_every_lora_parameter_changed_and_no_base_weight_did(trained):
    _, snap = trained
    lora = [n for n in snap.before if "lora_" in n]
    assert lora and set(lora) == snap.trainable
    for name in lora:
        assert not torch.equal(snap.before[name], snap.after[name]), f"{name} did not change"
    for name in snap.before:
        if name not in snap.trainable:
            assert torch.equal(snap.before[name], snap.after[name]), f"base weight {name} changed"
    assert len(snap.layers_before) == 4 * 7  # q, k, v, o, gate, up, down in each of 4 layers
    for name, state in snap.layers_before.items():
        assert "weight.quant_state.bitsandbytes__nf4" in state  # really 4-bit
        for key, value in state.items():
            assert torch.equal(value, snap.layers_after[name][key]), f"frozen base layer {name}: {key} changed"


def test_adapter_reloads_on_unquantized_base_and_merges(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = trained
    tok = AutoTokenizer.from_pretrained(run.adapter)
    ids = tok("INVOICE #123\nSteel Bolt x2 @ $4.25", return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    with torch.no_grad():
        plain = base(ids).logits
    tuned = PeftModel.from_pretrained(base, str(run.adapter))
    with torch.no_grad():
        adapted = tuned(ids).logits
        merged = tuned.merge_and_unload()(ids).logits
    assert (adapted - plain).abs().max() > 1e-3
    assert (merged - adapted).abs().max() < 1e-4


def test_lora_rank_above_hidden_size_is_a_config_error(tmp_path):
    config = small_config(tmp_path)
    config.lora.r = 1000
    with pytest.raises(ConfigError) as info:
        hubtune.train(config)
    assert info.value.paths == ["lora.r"] and "hidden size" in str(info.value)


def test_existing_run_folder_is_not_overwritten(trained):
    run, _ = trained
    config = cfg.load(run.path / "config.yaml")
    with pytest.raises(hubtune.HubtuneError, match="--resume"):
        hubtune.train(config)


def _hubtune(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "hubtune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=kw.get("cwd"))


def test_sigterm_leaves_a_checkpoint_and_resume_finishes_the_run(tmp_path):
    config = small_config(tmp_path, max_steps=20, save_steps=100, logging_steps=1, eval_steps=None)
    path = tmp_path / "run.yaml"
    path.write_text(config.to_yaml())
    proc = _hubtune("train", str(path))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--resume" in out and "Traceback" not in out
    checkpoints = list((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 3 <= stopped_at < 20
    assert not (tmp_path / "run" / "summary.json").exists()
    cli_words, page_words = RunFolder(tmp_path / "run").page_renderings[-1]  # one error, two renderings
    assert f"error: {cli_words}" in out
    assert page_words == f"Stopped at step {stopped_at} (SIGTERM received). Resume continues from the last checkpoint."

    proc = _hubtune("train", "--resume", str(tmp_path / "run"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["global_steps"] == 20
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if "loss" in json.loads(x)]
    assert steps == list(range(1, 21))


def test_cli_reports_config_errors_without_traceback(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora:\n  r: 0\ntraining:\n  lerning_rate: 1\n")
    proc = cli("train", str(bad))
    assert proc.returncode == 2
    assert "lora.r" in proc.stderr and "training.lerning_rate" in proc.stderr and "Traceback" not in proc.stderr
