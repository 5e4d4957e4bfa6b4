"""What each process of a launch shows: progress from the main process alone, every error with its rank
(hubtune.distributed.console / ended / launch_report). The processes here are this one, given the
environment accelerate launch gives its processes; tests/test_distributed.py runs real 2-process launches."""

from __future__ import annotations

import pytest

from hubtune import distributed
from hubtune.cli import main
from hubtune.errors import LaunchError


def _launched(monkeypatch, rank: int, size: int, per_machine: int) -> None:
    """This process as accelerate launch (torchrun) starts the process of global rank `rank`."""
    for name, value in {"RANK": rank, "WORLD_SIZE": size, "LOCAL_RANK": rank % per_machine,
                        "LOCAL_WORLD_SIZE": per_machine, "GROUP_RANK": rank // per_machine}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv(distributed.ENDINGS, raising=False)


def test_a_process_other_than_the_main_one_prints_only_its_error_with_its_rank(monkeypatch, capsys, tmp_path):
    _launched(monkeypatch, rank=1, size=2, per_machine=2)
    bad = tmp_path / "run.yaml"
    bad.write_text("training:\n  learning_rate: fast\n")
    code = main(["train", str(bad)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: rank 1 of 2: invalid run config") and "training.learning_rate" in err


def test_only_the_main_process_prints_progress(monkeypatch, capsys, tmp_path):
    # `hubtune config export` writes the Axolotl config on stdout: rank 0 shows it, rank 1 does not.
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  id: hubtune:tiny-llama\n")
    _launched(monkeypatch, rank=0, size=2, per_machine=2)
    assert main(["config", "export", str(config)]) == 0
    assert "base_model: hubtune:tiny-llama" in capsys.readouterr().out
    _launched(monkeypatch, rank=1, size=2, per_machine=2)
    assert main(["config", "export", str(config)]) == 0
    assert capsys.readouterr().out == ""


def test_the_first_process_of_another_machine_says_where_progress_shows(monkeypatch, capsys, tmp_path):
    _launched(monkeypatch, rank=2, size=4, per_machine=2)
    assert distributed.console_role() == "warnings" and distributed.who() == "rank 2 of 4 on machine 1"
    code = main(["train", str(tmp_path / "missing.yaml")])
    out, err = capsys.readouterr()
    assert out == "" and code != 0
    assert err.splitlines()[0] == "machine 1: ranks 2-3 of 4 train here; the run's progress shows on machine 0"
    assert err.splitlines()[1].startswith("error: rank 2 of 4 on machine 1: ")
    _launched(monkeypatch, rank=3, size=4, per_machine=2)
    assert distributed.console_role() == "errors"


def test_under_hubtunes_launcher_each_process_records_its_end_and_the_launcher_reports_them_once(
        monkeypatch, capsys, tmp_path):
    folder = tmp_path / "endings"
    folder.mkdir()
    bad = tmp_path / "run.yaml"
    bad.write_text("training:\n  learning_rate: fast\n")
    for rank in (0, 1):  # the same error in both processes
        _launched(monkeypatch, rank=rank, size=3, per_machine=3)
        monkeypatch.setenv(distributed.ENDINGS, str(folder))
        assert main(["train", str(bad)]) == 2
    _launched(monkeypatch, rank=2, size=3, per_machine=3)
    monkeypatch.setenv(distributed.ENDINGS, str(folder))
    distributed.started()  # and then killed: it records nothing more
    assert capsys.readouterr() == ("", "")  # the processes leave the words to the launching command
    failure = distributed.launch_report(folder, returncode=1)
    assert isinstance(failure, LaunchError) and failure.exit_code == 1
    lines = str(failure).splitlines()
    assert lines[0] == "the 3-process run stopped:"
    assert lines[1].startswith("  rank 2 of 3: stopped without an error of its own, killed by a signal")
    assert lines[2].startswith("  ranks 0, 1 of 3: invalid run config")
    assert lines[3].startswith("      training.learning_rate: ")  # the rest of that message, indented under it
    assert distributed.launch_report(folder, returncode=0) is None


def test_a_single_process_prints_its_error_as_before(monkeypatch, capsys, tmp_path):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(distributed.ENDINGS, str(tmp_path))  # not launched: ignored
    code = main(["train", str(tmp_path / "missing.yaml")])
    assert code != 0 and capsys.readouterr().err.startswith("error: ") and not list(tmp_path.iterdir())
