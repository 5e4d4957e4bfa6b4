"""The Hub misbehaving, through the real CLI: `check`, `train` and `push` against the loopback Hub behind the
fault proxy (tests/fault_proxy.py) answering 500, 503, hanging, or garbling its body. Every case ends in a
typed error (exit code 5) that names the endpoint and the setting, never a traceback; idempotent calls are
retried, a push's commit only on a server error; a passing fault is retried through."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HUB_TOKEN
from data_rows import invoice_lines, tiny_run_config
from hub_server import readme

from hubtune.cli import main
from hubtune.runs import RunFolder, Status

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

HUBTUNE = str(Path(sys.executable).parent / "hubtune")
FAULTS = [500, 503, "hang", "garbage"]
TRIES = 3  # HUBTUNE_HUB_RETRIES=2 in the faulty_hub fixture


def expect(kind, setting_for_hang: str) -> tuple[str, str]:
    """(what the message says, the setting it names) for a fault kind."""
    return {500: ("with 500", "HUBTUNE_HUB_RETRIES"), 503: ("with 503", "HUBTUNE_HUB_RETRIES"),
            "hang": ("did not answer", setting_for_hang), "garbage": ("body that is not JSON", "HF_ENDPOINT")}[kind]


def failed_cleanly(capsys, code: int) -> str:
    """The error message (progress bars may come before it on stderr), after checking there is no traceback."""
    err = capsys.readouterr().err
    assert code == 5, err
    assert "Traceback" not in err and "\nerror: " in "\n" + err
    return err[err.index("error: ") if err.startswith("error: ") else err.index("\nerror: ") + 1:]


# ---- check --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", FAULTS)
def test_check(faulty_hub, fault_proxy, capsys, kind):
    faulty_hub.seed("acme/fault-base", {"README.md": readme(license="apache-2.0")})
    route = r"^/api/models/acme/fault-base"
    fault_proxy.fault(route, kind)
    err = failed_cleanly(capsys, main(["check", "acme/fault-base"]))
    says, setting = expect(kind, "HF_HUB_ETAG_TIMEOUT")
    assert says in err and setting in err, err
    assert f"GET {fault_proxy.url}/api/models/acme/fault-base" in err
    assert "not in the local cache" in err
    assert len(fault_proxy.hits(kind)) == TRIES, "repo info is idempotent: tried again, then given up"


def test_check_gets_through_a_passing_fault(faulty_hub, fault_proxy, capsys):
    faulty_hub.seed("acme/flaky-base", {"README.md": readme(license="apache-2.0")})
    fault_proxy.fault(r"^/api/models/acme/flaky-base", 503, times=1)
    fault_proxy.fault(r"^/api/models/acme/flaky-base", "garbage", times=1)
    assert main(["check", "acme/flaky-base"]) == 0
    assert "apache-2.0" in capsys.readouterr().out
    info = [s for s in fault_proxy.seen if "flaky-base" in s[1] and "/tree/" not in s[1] and "/resolve/" not in s[1]]
    assert [s[2] for s in info] == [503, "garbage", None]  # then the licence texts' listing and download


def test_a_hang_is_bounded_by_the_etag_timeout(faulty_hub, fault_proxy, capsys, monkeypatch):
    faulty_hub.seed("acme/slow-base", {"README.md": readme(license="mit")})
    fault_proxy.fault(r"^/api/models/acme/slow-base", "hang")
    monkeypatch.setenv("HUBTUNE_HUB_RETRIES", "0")
    start = time.monotonic()
    err = failed_cleanly(capsys, main(["check", "acme/slow-base"]))
    assert time.monotonic() - start < 10
    assert "within 1 s (HF_HUB_ETAG_TIMEOUT=1)" in err and "export HF_HUB_ETAG_TIMEOUT=60" in err


def test_the_installed_command_honours_the_timeout_setting(faulty_hub, fault_proxy, tmp_path):
    """A real subprocess: HF_HUB_ETAG_TIMEOUT read from the environment, one error line, no traceback."""
    faulty_hub.seed("acme/hung-base", {"README.md": readme(license="mit")})
    fault_proxy.fault(r"^/api/models/acme/hung-base", "hang")
    env = {**os.environ, "HF_ENDPOINT": fault_proxy.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "1",
           "HUBTUNE_HUB_RETRIES": "0"}
    env.pop("HUBTUNE_DEBUG", None)
    done = subprocess.run([HUBTUNE, "check", "acme/hung-base"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 5, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: the Hub did not answer GET")
    assert "within 1 s (HF_HUB_ETAG_TIMEOUT=1)" in done.stderr


# ---- train: the licence gate and the dataset download --------------------------------------------
def train_config(tmp_path: Path, dataset: str, steps: int = 1) -> Path:
    return tiny_run_config(tmp_path / "run.yaml", dataset, steps, output=tmp_path / "run")


def seed_dataset(hub, repo: str, n: int = 16) -> None:
    hub.seed(repo, {"train.jsonl": "\n".join(invoice_lines(n)) + "\n", "README.md": readme(license="cc-by-4.0")},
             repo_type="dataset")


@pytest.mark.parametrize("kind", FAULTS)
def test_train(faulty_hub, fault_proxy, capsys, tmp_path, kind):
    seed_dataset(faulty_hub, "acme/fault-data")
    fault_proxy.fault(r"^/api/datasets/acme/fault-data", kind)
    err = failed_cleanly(capsys, main(["train", str(train_config(tmp_path, "acme/fault-data"))]))
    says, setting = expect(kind, "HF_HUB_ETAG_TIMEOUT")
    assert says in err and setting in err and f"GET {fault_proxy.url}/api/datasets/acme/fault-data" in err, err
    assert len(fault_proxy.hits(kind)) == TRIES
    run = RunFolder(tmp_path / "run")
    assert run.status == Status.FAILED and says in run.error  # the run folder says why, too


def test_train_gets_through_a_passing_fault(faulty_hub, fault_proxy, capsys, tmp_path):
    """A 503 and a garbled answer on the licence gate's call, a 500 on the download's file listing: all
    retried, and training runs."""
    seed_dataset(faulty_hub, "acme/flaky-data")
    fault_proxy.fault(r"^/api/datasets/acme/flaky-data", 503, times=1)
    fault_proxy.fault(r"^/api/datasets/acme/flaky-data", "garbage", times=1)  # then a garbled answer to the retry
    fault_proxy.fault(r"^/api/datasets/acme/flaky-data/tree/", 500, times=1)  # the library retries its listing
    assert main(["train", str(train_config(tmp_path, "acme/flaky-data"))]) == 0, capsys.readouterr().err
    run = RunFolder(tmp_path / "run")
    assert run.status == Status.FINISHED and run.summary.datasets[0].revision_sha
    assert {s[2] for s in fault_proxy.hits()} == {503, "garbage", 500}


# ---- push ---------------------------------------------------------------------------------------
@pytest.fixture
def run_to_push(faulty_hub, make_run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    return make_run()


@pytest.mark.parametrize("kind", FAULTS)
def test_push(faulty_hub, fault_proxy, run_to_push, capsys, kind):
    repo = f"alice/fault-push-{kind}"
    fault_proxy.fault(r"^/api/models/alice/fault-push-.*/commit/", kind)
    before = sorted(p.name for p in run_to_push.iterdir())
    err = failed_cleanly(capsys, main(["push", str(run_to_push), "--repo", repo]))
    says, setting = expect(kind, "HF_HUB_DOWNLOAD_TIMEOUT")
    assert says in err and setting in err and f"POST {fault_proxy.url}/api/models/{repo}/commit/main" in err, err
    assert "run the same push again" in err
    # The commit is not idempotent: retried on a server error only, never after it may have landed.
    assert len(fault_proxy.hits(kind)) == (TRIES if isinstance(kind, int) else 1)
    assert faulty_hub.commit_count(repo) == (2 if kind == "garbage" else 1)  # a garbled answer hid a landed commit
    assert sorted(p.name for p in run_to_push.iterdir()) == before
    assert RunFolder(run_to_push).state()["pushes"] == []


def test_push_retries_the_commit_after_a_server_error(faulty_hub, fault_proxy, run_to_push, capsys):
    repo = "alice/flaky-push"
    fault_proxy.fault(r"^/api/models/alice/flaky-push/commit/", 500, times=1)
    fault_proxy.fault(r"^/api/repos/create", 503, times=1)
    assert main(["push", str(run_to_push), "--repo", repo]) == 0, capsys.readouterr().err
    assert faulty_hub.commit_count(repo) == 2 and "adapter_model.safetensors" in faulty_hub.files(repo)
    assert {s[2] for s in fault_proxy.hits()} == {500, 503}


def test_a_killed_push_leaves_no_staging_folder_for_ever(faulty_hub, fault_proxy, run_to_push, tmp_path, monkeypatch):
    """Kill a push while its commit hangs: its staging folder stays in the temp folder until the next push,
    which removes it (and leaves the staging folder of a push that is still running alone)."""
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    fault_proxy.fault(r"^/api/models/alice/killed-push/commit/", "hang")
    env = {**os.environ, "HF_ENDPOINT": fault_proxy.url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": HUB_TOKEN,
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "600", "TMPDIR": str(temp)}
    pushing = subprocess.Popen([HUBTUNE, "push", str(run_to_push), "--repo", "alice/killed-push"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not fault_proxy.hits("hang") and time.monotonic() < deadline and pushing.poll() is None:
            time.sleep(0.2)
        assert fault_proxy.hits("hang"), "the push never reached its commit"
        pushing.send_signal(signal.SIGKILL)
        pushing.wait(30)
    finally:
        if pushing.poll() is None:
            pushing.kill()
    (left,) = temp.glob("hubtune-push-*")
    host = socket.gethostname()
    assert left.name.startswith(f"hubtune-push-{pushing.pid}@{host}-")
    assert (left / "adapter_model.safetensors").is_file()
    alive = temp / f"hubtune-push-{os.getpid()}@{host}-running"  # a push still running: left alone
    elsewhere = temp / f"hubtune-push-{pushing.pid}@another-host-x1"  # another machine's: cannot tell, left alone
    alive.mkdir()
    elsewhere.mkdir()

    fault_proxy.clear()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert main(["push", str(run_to_push), "--repo", "alice/after-kill"]) == 0
    assert not left.exists() and alive.is_dir() and elsewhere.is_dir()
