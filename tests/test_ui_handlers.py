"""The app's handlers through gradio_client against the app served on 127.0.0.1, the job runner with real
`hubtune train` subprocesses, and `hubtune ui` itself."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import HUB_OTHER_TOKEN, HUB_TOKEN, HUB_USER
from hubtune.runs import RunFolder, Status
from hubtune.ui import handlers as h
from hubtune.ui.jobs import LOG, Job, JobRunner

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out


@pytest.fixture
def client(ui_app):
    from gradio_client import Client

    return Client(ui_app.local_url, verbose=False)


def check(client, dataset="hubtune:data/invoices/train.jsonl", model="hubtune:tiny-llama", columns=""):
    return client.predict(model, dataset, None, "auto", columns, "personal", api_name="/check_data")


def test_check_data_shows_rows_format_licence_and_report(client):
    fmt, rows, licence, access, report, histogram, pairs, training_on, *_ = check(client)
    assert training_on.startswith("Training on: **hubtune:data/invoices/train.jsonl**, 1200 rows, built in")
    assert "10% general data mixed in: hubtune:data/general/train.jsonl (apache-2.0)" in training_on
    bins = [b for b, _ in histogram["value"]["data"]]  # drawn in numeric order, not as text sorts them
    assert histogram["sort"] == bins == sorted(bins, key=lambda b: int(b.split("-")[0])) != sorted(bins)
    assert "1200 rows" in fmt and "format **alpaca**" in fmt
    assert rows["headers"] == ["instruction", "input", "output"] and len(rows["data"]) == 5
    assert "Licence verdict: allow" in licence
    assert "nothing to request" in access
    assert "for training" in report and "near-duplicate" in report
    assert sum(count for _, count in histogram["value"]["data"]) > 1000


def test_try_prompting_first_scores_the_base(client, one_torch_thread):
    text = client.predict("hubtune:tiny-llama", "auto", "", "personal", 4,  # the data: the session's (the demo)
                          api_name="/try_prompting")
    assert "the fine-tune has to beat this" in text and "| base, zero-shot | 0.00 |" in text and "3-shot" in text


def test_problems_are_named_messages(client, tmp_path):
    fmt, rows, *_ = check(client, dataset=str(tmp_path / "missing.jsonl"))
    assert fmt.startswith("**Problem:**") and "missing.jsonl" in fmt
    fmt, *_ = check(client, columns="answer")
    assert "FIELD=COLUMN" in fmt
    table, run, other, note = client.predict(None, api_name="/runs")
    assert "No runs yet" in note


def test_start_refuses_a_bad_config_and_an_unwritable_push_target(client, ui_app, hub):
    client.predict(HUB_TOKEN, api_name="/sign_in")
    message = client.predict("training:\n  lerning_rate: 0.1\n", "", api_name="/start")
    assert "training.lerning_rate: unknown key" in message
    config = h.compose_config(h.DEMO_MODEL, h.DEMO_DATA, "quick", 0, 2, 0, "personal")[0]
    message = client.predict(config, "bob/invoices", api_name="/start")
    assert f"{HUB_USER} cannot write to 'bob'" in message
    assert not any(ui_app.root.glob("*/config.yaml")), "a refused start left a run folder"


def test_finished_run_history_chat_card_and_publish(client, ui_app, hub, eval_run):
    shutil.copytree(eval_run, ui_app.root / "done", ignore=shutil.ignore_patterns(".lock"))
    signed = client.predict(HUB_TOKEN, api_name="/sign_in")
    assert f"Signed in as **{HUB_USER}**" in signed
    table, *_ = client.predict(None, api_name="/runs")
    assert [row[:2] for row in table["data"]] == [["done", "finished"]]
    run = str(ui_app.root / "done")
    line, config, chart, eval_text, samples, log = client.predict(run, api_name="/run")
    assert "finished" in line and "step 12/12" in line
    (points,) = json.loads(chart["plot"])["datasets"].values()  # the chart's Vega-Lite spec, its rows inline
    assert len(points) >= 3 and {p["curve"] for p in points} == {"training loss", "held-out loss"}
    question = "Extract all product names and prices from this invoice text.\n\nProduct: Oak Chair\nPrice: $12.00"
    base, tuned, prompt = client.predict(run, question, [], [], "", 0, 1, 32, api_name="/chat")
    assert [m["role"] for m in base] == [m["role"] for m in tuned] == ["user", "assistant"] and prompt == ""
    assert base[1]["content"] and tuned[1]["content"] and "Problem" not in base[1]["content"] + tuned[1]["content"]
    # A second turn goes on from each model's own answers, after a system prompt, sampled.
    base, tuned, _ = client.predict(run, "And the total?", base, tuned, "Answer in JSON.", 0.7, 0.9, 16,
                                    api_name="/chat")
    assert [m["role"] for m in tuned] == ["user", "assistant", "user", "assistant"]
    assert "And the total?" in str(tuned[2]["content"]) and "Problem" not in str(tuned[3]["content"])
    repo, card = client.predict(run, api_name="/publish_defaults")
    assert repo == f"{HUB_USER}/tiny-llama-done"
    assert "base_model_relation: adapter" in card and "QLoRA" in card
    refused = client.predict(run, repo, True, "", api_name="/publish")
    assert refused.startswith("**Refused:**") and "acknowledge" in refused  # local data, no licence metadata
    data = RunFolder(run).config.data.sources[0].path
    result = client.predict(run, repo, True, Path(data).name, api_name="/publish")  # the file as the page names it
    assert "Published" in result and repo in result
    assert "adapter_model.safetensors" in hub.files(repo)
    assert RunFolder(run).status == Status.PUSHED
    client.predict(HUB_OTHER_TOKEN, api_name="/sign_in")  # bob, on alice's repo
    refused = client.predict(run, repo, True, data, api_name="/publish")
    assert refused.startswith("**Refused:**") and "403" in refused


def test_outside_paths_are_refused(client, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="is not a run under"):
        client.predict(str(tmp_path), "hello", [], [], "", 0, 1, 16, api_name="/chat")


# ---- the job runner -----------------------------------------------------------------------------------
def queued_run(root: Path, name: str, config_text: str | None = None) -> Path:
    config = h.parse_config(h.compose_config(h.DEMO_MODEL, h.DEMO_DATA, "quick", 0, 2, 0, "personal")[0])
    run = RunFolder.create(root / name, config, owner="alice")
    if config_text is not None:
        (run.path / RunFolder.CONFIG).write_text(config_text)
    return run.path


def test_queue_is_first_come_first_served_and_survives_a_restart(tmp_path):
    first, second = queued_run(tmp_path, "a"), queued_run(tmp_path, "b")
    runner = JobRunner(tmp_path, slots=[])  # no free device: everything waits
    runner.queue.clear()  # the queued folders were picked up at start; submit them in order instead
    assert runner.submit(Job(first, "train")) == 1
    assert runner.submit(Job(second, "train")) == 2
    assert runner.place(second) == 2
    assert "left the queue" in runner.stop(first)
    assert RunFolder(first).status == Status.INTERRUPTED and runner.place(second) == 1
    restarted = JobRunner(tmp_path, slots=[])
    assert [j.run for j in restarted.queue] == [second]


def test_on_the_cpu_an_evaluation_runs_beside_a_training_and_a_second_training_waits(tmp_path, eval_run):
    training, waiting = queued_run(tmp_path, "training"), queued_run(tmp_path, "waiting")
    shutil.copytree(eval_run, tmp_path / "done", ignore=shutil.ignore_patterns(".lock", "eval*"))
    runner = JobRunner(tmp_path, slots=[None])
    runner.queue.clear()
    with RunFolder(training).lock("train"):  # a live training holds the CPU
        RunFolder(training).mark(Status.RUNNING)
        try:
            runner.submit(Job(waiting, "train"))
            runner.submit(Job(tmp_path / "done", "eval", options=["--limit", "1"]))
            assert runner.place(waiting) == 1 and tmp_path / "done" in runner.running  # not behind the training
        finally:
            for r in runner.running.values():
                r.process.kill()
                r.process.wait(timeout=60)


def test_a_job_that_dies_early_is_failed_and_its_token_stays_in_its_environment(tmp_path):
    run = queued_run(tmp_path, "broken", config_text="training:\n  learning_rate: lots\n")
    runner = JobRunner(tmp_path, slots=[None])
    runner.queue.clear()
    secret = "hf_only_in_the_environment_0123"
    runner.submit(Job(run, "train", owner="alice", token=secret))
    process = runner.running[run].process
    deadline, environ = time.time() + 10, b""
    while not environ and process.poll() is None and time.time() < deadline:  # empty while the exec settles
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    assert environ, "the job exited before its environment could be read"
    assert f"HF_TOKEN={secret}".encode() in environ.split(b"\0")
    assert secret.encode() not in cmdline
    deadline = time.time() + 180
    while run in runner.running and time.time() < deadline:
        time.sleep(0.5)
        runner.tick()
    folder = RunFolder(run)
    assert folder.status == Status.FAILED, (folder.state(), (run / LOG).read_text()[-2000:])
    assert "learning_rate" in folder.error, (folder.error, (run / LOG).read_text()[-2000:])
    assert folder.page_error.startswith("Training ended before it started (exit code 2): ") and "learning_rate" in folder.page_error
    assert secret not in (run / LOG).read_text() and secret not in (run / RunFolder.STATE).read_text()


def test_resume_pressed_twice_starts_one_job(tmp_path):
    """Between its launch and its first write a resumed run still reads "interrupted": a second Resume then
    must not start a second process on it. A stopped job, only exiting, does not hold a resume back."""
    run = queued_run(tmp_path, "twice")
    RunFolder(run).mark(Status.INTERRUPTED)
    runner = JobRunner(tmp_path, slots=[None])
    session = h.Session(user="alice")
    try:
        assert "Resuming" in h.resume_run(str(run), session, runner)  # launched at once: the slot is free
        assert run in runner.running and RunFolder(run).status == Status.INTERRUPTED
        assert "already has a job" in h.resume_run(str(run), session, runner)
        assert not runner.queue
        runner.stop(run)
        RunFolder(run).mark(Status.INTERRUPTED)  # as the stopped process leaves it
        # Queued behind the exiting process, or started already if that one has exited.
        assert "Resuming" in h.resume_run(str(run), session, runner)
        assert runner.place(run) == 1 or run in runner.running
    finally:
        runner.queue.clear()
        for r in runner.running.values():
            r.process.kill()
            r.process.wait(timeout=60)


def test_hubtune_ui_serves_on_the_gradio_address(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "hubtune.cli", "ui", "--root", str(tmp_path / "runs")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, config = time.time() + 120, {}
        while time.time() < deadline and process.poll() is None:
            try:
                config = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5))
                break
            except OSError:
                time.sleep(1)
        assert config.get("title") == "hubtune", process.stderr.read().decode() if process.poll() else "no page"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_evaluate_runs_hubtune_eval_in_the_background(client, ui_app, eval_run):
    shutil.copytree(eval_run, ui_app.root / "scored", ignore=shutil.ignore_patterns(".lock", "eval*"))
    run = str(ui_app.root / "scored")
    assert "Evaluating **scored**" in client.predict(run, 3, api_name="/evaluate")
    deadline = time.time() + 400
    while RunFolder(run).status != Status.EVALUATED and time.time() < deadline:
        assert RunFolder(run).status in (Status.FINISHED, Status.EVALUATING), RunFolder(run).status
        time.sleep(2)
    line, config, chart, eval_text, samples, log = client.predict(run, api_name="/run")
    assert "evaluated" in line
    assert "regression set" in eval_text and "exact match" in eval_text
    assert {"reference", "base", "tuned"} <= set(samples["headers"]) and len(samples["data"]) == 3
    assert "regression" in log  # the tail of `hubtune eval`'s own output


def test_uploads_are_size_checked_renamed_and_kept_with_the_run(client, ui_app, tmp_path, monkeypatch):
    from gradio_client import handle_file

    rows = (Path(__file__).resolve().parents[1] / "hubtune/assets/data/invoices/train.jsonl").read_text().splitlines()
    upload = tmp_path / "my data (v2).jsonl"
    upload.write_text("\n".join(rows[:64]) + "\n")
    fmt, *_ = client.predict("hubtune:tiny-llama", "", handle_file(str(upload)), "auto", "", "personal",
                             api_name="/check_data")
    assert "64 rows" in fmt and "alpaca" in fmt
    stored = ui_app.root / ".uploads" / "local" / "my_data_v2_.jsonl"
    assert stored.read_text() == upload.read_text()

    session = h.Session(user="alice")
    text = h.compose_config(h.DEMO_MODEL, str(stored), "quick", 0, 2, 0, "personal")[0]
    path, message = h.start_training(text, "", session, JobRunner(ui_app.root, slots=[]), ui_app.root)
    run = RunFolder(path)
    assert [s.path for s in run.config.data.sources] == [str(run.path / "uploads" / "my_data_v2_.jsonl")]
    assert (run.path / "uploads" / "my_data_v2_.jsonl").read_text() == upload.read_text()
    assert run.owner == "alice" and run.status == Status.QUEUED and "Queued" in message

    monkeypatch.setattr(h.hosting, "UPLOAD_LIMIT_MB", 0)
    fmt, *_ = client.predict("hubtune:tiny-llama", "", handle_file(str(upload)), "auto", "", "personal",
                             api_name="/check_data")
    assert "uploads are limited to 0 MB" in fmt


def test_two_runs_compared_config_diff_and_curves_overlaid(client, ui_app, eval_run):
    from hubtune import config as cfg

    for name, lr in (("first", None), ("second", 0.0005)):
        shutil.copytree(eval_run, ui_app.root / name, ignore=shutil.ignore_patterns(".lock"))
        if lr:
            tree = RunFolder(ui_app.root / name).config.model_dump(mode="json")
            tree["training"]["learning_rate"] = lr
            (ui_app.root / name / RunFolder.CONFIG).write_text(cfg.build(tree).to_yaml())
    diff, overlay = client.predict(str(ui_app.root / "first"), str(ui_app.root / "second"), api_name="/compare")
    assert "+  learning_rate: 0.0005" in diff
    spec = json.loads(overlay["plot"])  # the chart's Vega-Lite spec (hubtune.ui.charts), its rows inline
    series = {row["curve"] for rows in spec["datasets"].values() for row in rows}
    domain = spec["layer"][0]["encoding"]["color"]["scale"]["domain"]
    assert domain == sorted(series, key=lambda c: (c.split(":")[0], "held" in c))
    assert series == {"first: training loss", "first: held-out loss", "second: training loss", "second: held-out loss"}


def test_own_upload_is_named_mixed_only_when_asked_and_a_rejected_one_clears(client, ui_app, tmp_path, monkeypatch):
    from gradio_client import handle_file

    from data_rows import label_rows, write_jsonl

    mine = write_jsonl(tmp_path / "my_labels.jsonl", label_rows(60))
    out = client.predict("hubtune:tiny-llama", "hubtune:data/invoices/train.jsonl", handle_file(str(mine)), "auto",
                         "", "personal", False, True, api_name="/check_data")
    fmt, _, licence, _, report, _, _, training_on, *_ = out
    assert "60 rows" in fmt
    assert training_on.startswith("Training on: **my_labels.jsonl**, 60 rows, uploaded (sha256 ")
    assert "rights declared by you (not signed in)" in training_on and "no general data mixed in" in training_on
    assert "Kept **60 of 60**" in report and "mixed in" not in report.split("\n")[0]
    assert "declared by the uploader" in licence and str(ui_app.root) not in licence + report + training_on

    monkeypatch.setattr(h.hosting, "UPLOAD_LIMIT_MB", 0)  # too large: refused, and nothing stands in for it
    fmt, *_, training_on, upload, dataset = client.predict(
        "hubtune:tiny-llama", "hubtune:data/invoices/train.jsonl", handle_file(str(mine)), "auto", "", "personal",
        False, False, api_name="/check_data")
    assert upload is None and dataset == ""
    assert training_on.startswith("**Nothing to train on:** my_labels.jsonl was rejected. my_labels.jsonl is 0 MB")
