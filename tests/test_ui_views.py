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


def test_loss_chart_draws_a_point_per_value_on_whole_steps_with_named_curves(eval_run):
    import json

    from hubtune.ui import charts

    def spec(points):
        plot = charts.loss_chart(points)
        assert plot.chart == "line"  # gradio sizes it to its box and themes it as its own line charts
        top = json.loads(plot.plot)
        return top, top["layer"][0]

    run = RunFolder(eval_run)
    assert charts.loss_chart([]) is None
    top, one = spec([{"step": 1, "loss": 2.5, "curve": views.TRAINING_LOSS}])
    assert one["mark"]["type"] == "line" and one["mark"]["point"]  # a single logged value still shows
    assert one["encoding"]["x"]["axis"] == {"format": "d", "tickMinStep": 1}  # never a 0.5 step
    assert one["encoding"]["x"]["scale"]["domain"] == [0, 1]
    assert top["usermeta"]["embedOptions"]["renderer"] == "svg"  # the legend is text in the page
    _, both = spec(views.loss_points([run, run], label_runs=True))
    name = run.path.name
    assert both["encoding"]["color"]["scale"]["domain"] == [f"{name}: training loss", f"{name}: held-out loss"]
    _, rewards = spec([{"step": 1, "loss": 0.5, "curve": "preference accuracy"},
                       {"step": 1, "loss": 0.7, "curve": "training loss"}])
    assert rewards["encoding"]["color"]["scale"]["domain"] == ["training loss", "preference accuracy"]
    assert rewards["encoding"]["y"]["title"] == "loss, reward, accuracy"


def test_the_log_and_the_status_speak_the_page(eval_run, tmp_path):
    from hubtune.errors import TrainingInterrupted
    from hubtune.runs import Status
    from hubtune.ui.jobs import LOG, Job, header

    path = tmp_path / "runs" / "tiny-run"
    shutil.copytree(eval_run, path, ignore=shutil.ignore_patterns(".lock", "checkpoints", "summary.json", "eval.json"))
    run = RunFolder(path)
    started = header(Job(path, "train"))
    assert started == f"$ hubtune train --resume {path}  # starts the run"  # the log on disk keeps the command
    (run.checkpoints / "checkpoint-6").mkdir(parents=True)
    err = TrainingInterrupted(f"training stopped at step 6 by SIGTERM; a checkpoint is in {run.checkpoints}. "
                              f"Continue with `hubtune train --resume {path}`").for_page("Stopped at step 6 (you pressed Stop).")
    run.mark(Status.INTERRUPTED, str(err), "Stopped at step 6 (you pressed Stop).")
    (path / LOG).write_text(f"\n{started}\ntraining  step 6/12 · loss 5.1\nsaving    adapter to {path}/adapter\n"
                            f"error: {err}\n\n{header(Job(path, 'train'))}\n\n$ hubtune eval {path} --limit 5\n")
    log = views.page_log(run, 20)
    assert log.splitlines() == ["▶ Training starts (a new run)", "training  step 6/12 · loss 5.1",
                                "saving    adapter to tiny-run/adapter", "Stopped at step 6 (you pressed Stop).",
                                "▶ Resuming from the checkpoint at step 6", "▶ Evaluating on at most 5 test examples"]
    p = views.progress(run)
    assert p["status"] == "interrupted" and p["line"].endswith("Stopped at step 6 (you pressed Stop).")
    assert views.runs_table([run])[0][-1] == "Stopped at step 6 (you pressed Stop)."
    run.mark(Status.RUNNING)  # a resumed job clears the error; its line in the log keeps the page's words
    assert "Stopped at step 6 (you pressed Stop)." in views.page_log(run, 20) and "SIGTERM" not in views.page_log(run, 20)


def test_before_start_the_steps_and_the_duration_on_this_device_from_a_measured_run(eval_run, tmp_path):
    from hubtune.progress import Throughput, clock

    root = tmp_path / "runs"
    root.mkdir()
    config = RunFolder(eval_run).config
    first = views.duration_estimate(config, root)  # nothing measured here yet, and a CPU has no data-sheet pace
    assert first == (f"{config.training.max_steps} steps; no duration estimate yet: nothing measured for "
                     f"hubtune:tiny-llama on the CPU; the first run here measures its pace, and later ones get an estimate")
    shutil.copytree(eval_run, root / "earlier", ignore=shutil.ignore_patterns(".lock"))
    earlier = RunFolder(root / "earlier")
    pace = Throughput.from_rows(earlier.metrics(), "")
    shape = views.data_shape(earlier.read_json(RunFolder.DATA_REPORT))
    per_step = config.training.micro_batch_size * config.training.gradient_accumulation_steps * shape["mean_tokens"]
    line = views.duration_estimate(config, root)
    assert line == (f"{config.training.max_steps} steps, about {clock(pace.seconds(config.training.max_steps, per_step))} "
                    f"of training on this device ({per_step:,.0f} tokens per step: "
                    f"{config.training.micro_batch_size * config.training.gradient_accumulation_steps} rows x "
                    f"{shape['mean_tokens']:,.0f} tokens, the data's mean; at {pace.tokens_per_second:,.0f} tokens/s, "
                    f"measured: the median of run earlier on this device)")
    tree = config.model_dump(mode="json")
    tree["training"].update(max_steps=None, epochs=2)
    tree["data"]["sources"] = [{"path": "hubtune:data/general/train.jsonl"}]  # no run of it here
    by_epochs = cfg.build(tree)
    assert "the step count and the duration follow once the data is checked" in views.duration_estimate(by_epochs, root)


def test_small_files_hold_out_ten_rows_shown_before_training_and_uploads_go_by_their_names(tmp_path):
    from data_rows import label_rows, write_jsonl
    from hubtune.data.pipeline import held_out_size
    from hubtune.ui import handlers as h
    from hubtune.ui.access import Session

    assert [held_out_size(n, 0.05) for n in (3, 30, 60, 300, 400)] == [0.05, 6, 10, 15, 0.05]
    root = tmp_path / "runs"
    session = Session(user="alice")
    h.upload_folder(session, root).mkdir(parents=True)
    upload = write_jsonl(h.upload_folder(session, root) / "my_labels.jsonl", label_rows(60))
    config = h.data_config(h.DEMO_MODEL, str(upload))
    assert config.data.val_set_size == 10
    assert "10 rows held out (Advanced settings: data → val_set_size)" in h.training_on(config, root)
    text, note = h.compose_config(h.DEMO_MODEL, str(upload), "quick", 0, 12, 0, "personal", root=root)
    shown = h.named_uploads(text, session, root)
    assert str(root) not in shown and "path: my_labels.jsonl" in shown and "This run:** 12 steps; no duration estimate yet" in note
    assert h.parse_config(shown, session, root).data.sources[0].path == str(upload.resolve())
    assert views.page_keys("hold out at least 10 (data.val_set_size: 10); data.jsonl") == (
        "hold out at least 10 (Advanced settings: data → val_set_size: 10); data.jsonl")
