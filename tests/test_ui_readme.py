"""The README's web-app commands, run as written (the port swapped for a free one)."""

from __future__ import annotations

import pytest

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from readme_blocks import section_blocks

from hubtune.cli import main

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

ROOT = Path(__file__).resolve().parents[1]


def commands() -> list[str]:
    return [line for lang, body in section_blocks("The web app and the Space") if lang == "bash"
            for line in body.splitlines() if line.strip()]


def test_make_ui_runs_hubtune_ui():
    assert commands()[0] == "make ui"
    recipe = re.search(r"^ui: .*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert recipe == "$(VENV)/bin/hubtune ui"


def test_hubtune_ui_with_address_and_runs_root_from_the_environment(tmp_path):
    words = shlex.split(commands()[1])
    env_words = [w for w in words if re.match(r"^[A-Z_]+=", w)]
    assert words[len(env_words):] == ["hubtune", "ui"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **dict(w.split("=", 1) for w in env_words), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "hubtune.cli", "ui"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, config = time.time() + 120, {}
        while time.time() < deadline and process.poll() is None and not config:
            try:
                config = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5))
            except OSError:
                time.sleep(1)
        assert config.get("title") == "hubtune"
        assert (tmp_path / "my-runs").is_dir()  # HUBTUNE_HOME=./my-runs
        assert str(tmp_path / "my-runs") in json.dumps(config)  # the page says where runs are kept
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_space_deploy_as_written(hub_token, hub, capsys):
    words = shlex.split(commands()[2])
    assert words[:3] == ["hubtune", "space", "deploy"]
    assert main(words[1:]) == 0
    repo = hub.repos[("space", "alice/hubtune")]
    assert repo.private and repo.hardware == "l4x1"
    assert capsys.readouterr().out.strip().endswith(f"{hub.url}/spaces/alice/hubtune")
