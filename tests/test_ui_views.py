"""What the pages show, read from run folders; the push-target check before training; where runs live."""

from __future__ import annotations

import math
import shutil

import pytest
import yaml

from conftest import HUB_TOKEN
from hubtune import config as cfg
from hubtune.demo import DEMO_CONFIG
from hubtune.errors import NamingRuleError, PushError
from hubtune.licence import RepoLicence, licence_verdict
from hubtune.progress import Figures
from hubtune.publish import check_target
from hubtune.runs import RunFolder
from hubtune.ui import hosting, views


@pytest.mark.parametrize("config", [cfg.RunConfig(), cfg.load(DEMO_CONFIG)])
def test_advanced_editor_lists_every_field_with_its_description_and_round_trips(config):
    text = views.annotated_yaml(config)
    assert cfg.build(yaml.safe_load(text)) == config
    for section in cfg.RunConfig.model_fields:
        for name, field in getattr(cfg, type(getattr(config, section)).__name__).model_fields.items():
            assert f"{name}:" in text and (field.description is None or field.description in text)


def test_progress_and_chart_of_a_finished_run(eval_run):
    run = RunFolder(eval_run)
    p = views.progress(run)
    steps = run.config.training.max_steps
    assert p["status"] == "finished" and p["step"] == p["total"] == steps and p["fraction"] == 1.0
    assert f"step {steps}/{steps} (100%)" in p["line"] and "held-out loss" in p["line"] and "peak memory" in p["line"]
    metrics = run.metrics()
    train, held = sum("loss" in m for m in metrics), sum("eval_loss" in m for m in metrics)
    assert train >= 2 and held >= 2
    points = views.loss_points([run])
    assert views.chart_caption(points) == f"{train} training-loss points, {held} held-out-loss points"


def test_total_steps_from_epochs_once_the_data_is_prepared(eval_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(eval_run, copy)
    tree = RunFolder(copy).config.model_dump(mode="json")
    tree["training"].update(max_steps=None, epochs=2, micro_batch_size=4, gradient_accumulation_steps=2)
    (copy / RunFolder.CONFIG).write_text(cfg.build(tree).to_yaml())
    logged = (copy / RunFolder.METRICS).read_text()
    (copy / RunFolder.METRICS).unlink()  # data prepared, no step logged yet
    train_rows = RunFolder(copy).data_report["train"]
    per_epoch = math.ceil(math.ceil(train_rows / 4) / 2)
    assert views.total_steps(RunFolder(copy)) == (2 * per_epoch, True)
    # Once training logs, the Trainer's own total is the one the console and the page show.
    (copy / RunFolder.METRICS).write_text(logged)
    figures = Figures.from_rows(RunFolder(copy).metrics())
    assert views.total_steps(RunFolder(copy), figures) == (figures.total, True) and figures.total != 2 * per_epoch


def test_the_page_shows_the_consoles_step_total_and_time_left(tmp_path):
    import json

    path = tmp_path / "run"
    run = RunFolder.create(path, cfg.build({"output": {"dir": str(path)}, "training": {"max_steps": 99}}))
    rows = [{"step": 0, "total_steps": 0, "eval_loss": 3.2, "elapsed_seconds": 0.0},
            {"step": 10, "total_steps": 40, "loss": 2.5, "tokens_per_second": 1234.5, "elapsed_seconds": 30.0,
             "learning_rate": 0.001, "epoch": 0.5}]
    (path / RunFolder.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = Figures.from_rows(rows)
    with run.lock("train"):
        p = views.progress(run)
    assert (p["total"], p["exact_total"], p["eta_seconds"]) == (40, True, figures.eta) and figures.eta == 90.0
    assert "step 10/40 (25%)" in p["line"] and "ETA 1:30" in p["line"] and "1:30 left" in figures.line()
    assert (p["learning_rate"], p["epoch"]) == (0.001, 0.5)
    assert views.progress(run)["eta_seconds"] is None  # not running: no time left to show


def test_config_diff_names_what_changed(eval_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(eval_run, other)
    tree = RunFolder(other).config.model_dump(mode="json")
    tree["training"]["learning_rate"] = 0.0001
    (other / RunFolder.CONFIG).write_text(cfg.build(tree).to_yaml())
    diff = views.config_diff(RunFolder(eval_run), RunFolder(other))
    assert "-  learning_rate: 0.003" in diff and "+  learning_rate: 0.0001" in diff and "output" not in diff


def test_storage_notice_says_runs_vanish_on_a_space_without_a_volume(tmp_path):
    assert "vanish when this Space restarts" in hosting.storage_notice(tmp_path, space=True)
    assert "vanish" not in hosting.storage_notice(tmp_path, space=False)
    assert hosting.mount_of(tmp_path) is None or hosting.mount_of(tmp_path) != tmp_path.anchor


def test_push_target_is_checked_before_training(hub):
    assert check_target("alice/invoices", HUB_TOKEN) == "alice"
    assert check_target("alice-org/invoices", HUB_TOKEN) == "alice"
    with pytest.raises(PushError, match="alice cannot write to 'bob'"):
        check_target("bob/invoices", HUB_TOKEN)
    with pytest.raises(PushError, match="rejected the token"):
        check_target("alice/invoices", "hf_not_a_token")
    with pytest.raises(PushError, match="no Hugging Face token"):
        check_target("alice/invoices", None)
    with pytest.raises(PushError, match="not a valid repo id"):
        check_target("alice/in voices", HUB_TOKEN)
    llama = licence_verdict(RepoLicence("meta-llama/Llama-3.1-8B", "model", "hub", ["llama3.1"]), [], publish=True)
    with pytest.raises(NamingRuleError, match="alice/Llama-invoices"):
        check_target("alice/invoices", HUB_TOKEN, llama)
    assert check_target("alice/Llama-invoices", HUB_TOKEN, llama) == "alice"


def test_will_it_fit_estimates_against_the_gpu_and_suggests_a_fix(tmp_path):
    demo = hosting.memory_estimate_line(cfg.load(DEMO_CONFIG))
    assert "GB peak on the GPU" in demo and "fits an L4" in demo
    big = cfg.build({"data": {"max_seq_len": 8192},
                     "training": {"micro_batch_size": 64, "gradient_checkpointing": False}})
    line = hosting.memory_estimate_line(big)
    assert "does **not** fit an L4" in line and "To fit: gradient checkpointing" in line
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    unknown = hosting.memory_estimate_line(cfg.build({"model": {"id": str(tmp_path)}}))
    assert unknown.startswith("**Will it fit:** no estimate:") and "gpt2" in unknown
