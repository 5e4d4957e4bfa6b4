"""The run folder: one type for its layout, status and lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from hubtune import config as cfg
from hubtune.cli import main
from hubtune.errors import HubtuneError, RunLockedError
from hubtune.runs import EvalResult, RunFolder, Status, list_runs


def new_run(tmp_path, name="run") -> RunFolder:
    return RunFolder.create(tmp_path / name, cfg.build({"output": {"dir": str(tmp_path / name)}}), owner="alice")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_status_follows_the_life_of_a_run(tmp_path):
    run = new_run(tmp_path)
    assert run.status == Status.QUEUED and run.owner == "alice"
    with run.lock("train"):
        run.mark(Status.RUNNING)
        assert RunFolder(run.path).status == Status.RUNNING  # a live process holds it
    assert run.status == Status.INTERRUPTED  # marked running, no live holder: stopped or killed
    run.mark(Status.FAILED, error="CUDA out of memory")
    assert run.status == Status.FAILED and run.error == "CUDA out of memory"
    (run.path / RunFolder.SUMMARY).write_text("{}")
    assert run.status == Status.FINISHED
    run.write_eval(EvalResult(run=str(run.path), created="2026-01-01T00:00:00+00:00", settings={}, data={}))
    assert run.status == Status.EVALUATED
    run.record_push("alice/x", "https://hub/alice/x", "abc123")
    assert run.status == Status.PUSHED and run.state()["pushes"][0]["commit"] == "abc123"
    with run.lock("eval"):
        assert run.status == Status.EVALUATING


def test_a_second_writer_is_refused_with_who_holds_it(tmp_path):
    run = new_run(tmp_path)
    with run.lock("train"):
        with pytest.raises(RunLockedError) as err:
            with RunFolder(run.path).lock("train"):
                pass
    message = str(err.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message and "hubtune train" in message
    assert err.value.exit_code == 4
    assert not (run.path / RunFolder.LOCK).exists()  # released on exit


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    run = new_run(tmp_path)
    (run.path / RunFolder.LOCK).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                                                       "command": "train", "started": "earlier"}))
    assert run.status == Status.QUEUED and run.lock_holder() is None
    with run.lock("train"):
        assert run.lock_holder()["pid"] == os.getpid() and run.lock_holder()["started"] != "earlier"


def test_a_holder_killed_mid_run_leaves_a_lock_that_is_taken_over(tmp_path):
    run = new_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from hubtune.runs import RunFolder, Status\n"
        "run = RunFolder(sys.argv[1])\n"
        "with run.lock('train'):\n"
        "    run.mark(Status.RUNNING)\n"
        "    print('holding', flush=True)\n"
        "    time.sleep(600)\n"), str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert run.status == Status.RUNNING and run.lock_holder()["pid"] == holder.pid
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with run.lock("train"):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, its details stay in the folder
        holder.wait()
    assert json.loads((run.path / RunFolder.LOCK).read_text())["pid"] == holder.pid
    assert run.status == Status.INTERRUPTED and run.lock_holder() is None
    with run.lock("train"):
        assert run.lock_holder()["pid"] == os.getpid() and run.status == Status.RUNNING
    assert not (run.path / RunFolder.LOCK).exists()


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path):
    run = new_run(tmp_path)
    # Our own pid, alive, but it holds no lock on this run: the original holder is gone.
    (run.path / RunFolder.LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                       "command": "train", "started": "earlier",
                                                       "process_start": "1"}))
    assert run.lock_holder() is None and run.status == Status.QUEUED
    with run.lock("eval"):
        holder = run.lock_holder()
        assert (holder["command"], holder["started"] != "earlier") == ("eval", True)
        assert run.status == Status.EVALUATING


def test_a_lock_from_another_machine_is_respected(tmp_path):
    run = new_run(tmp_path)
    (run.path / RunFolder.LOCK).write_text(json.dumps({"pid": 1, "host": "gpu-box-7", "command": "train"}))
    with pytest.raises(RunLockedError, match=f"gpu-box-7.*delete {run.path / RunFolder.LOCK}"):
        with run.lock("train"):
            pass


def test_two_trainings_into_one_folder_the_second_is_refused(tmp_path, capsys):
    run = new_run(tmp_path)
    with run.lock("train"):
        assert main(["train", "--resume", str(run.path)]) == 4
    assert "is in use by `hubtune train`" in capsys.readouterr().err


def test_create_refuses_a_folder_that_holds_a_run_and_open_needs_a_config(tmp_path):
    run = new_run(tmp_path)
    run.checkpoints.mkdir()
    with pytest.raises(HubtuneError, match="already holds a run.*--resume"):
        new_run(tmp_path)
    with pytest.raises(HubtuneError, match="not a run folder"):
        RunFolder.open(tmp_path / "nothing")


def test_eval_json_round_trips_typed_and_one_hubtune_did_not_write_is_refused(tmp_path):
    run = RunFolder(tmp_path)
    result = EvalResult(run=str(tmp_path), created="2026-01-01T00:00:00+00:00", settings={"limit": 3}, data={},
                        task={"n": 3}, metrics=[{"name": "exact match", "type": "exact_match", "value": 0.5,
                                                 "dataset": {"name": "t.jsonl"}, "split": "test", "model": "base"}])
    run.write_eval(result)
    written = json.loads((tmp_path / RunFolder.EVAL).read_text())
    assert "loss" not in written and "judge" not in written  # steps that did not run leave their section out
    assert written["metrics"][0]["ci95"] is None and run.eval == result
    (tmp_path / RunFolder.EVAL).write_text('{"metrics": [{"name": "bad", "value": "high"}]}')
    with pytest.raises(HubtuneError, match=r"eval.json is not what `hubtune eval` writes \(run: Field required\); "
                                           r"evaluate the run again with `hubtune eval"):
        run.eval


def test_list_runs_newest_first(tmp_path):
    first, second = new_run(tmp_path, "a"), new_run(tmp_path, "b")
    os.utime(first.path / RunFolder.CONFIG, (1, 1))
    assert [r.path.name for r in list_runs(tmp_path)] == ["b", "a"]
    assert list_runs(tmp_path / "missing") == []


def test_metrics_skip_a_line_cut_short_by_a_crash(tmp_path):
    run = new_run(tmp_path)
    (run.path / RunFolder.METRICS).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert run.metrics() == [{"step": 1, "loss": 2.0}]
