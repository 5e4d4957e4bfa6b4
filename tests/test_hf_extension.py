"""`hf tune ...`: hubtune's `hf-tune` console script registered as an extension of huggingface_hub's
`hf` CLI, laid out as `hf extensions install` lays out a Python extension, running the README's
`hf tune check ...` against the loopback Hub."""

from __future__ import annotations

import pytest

import json
import os
import shlex
import subprocess
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from hub_server import readme
from readme_blocks import section_blocks

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def hf_tune_script(folder: Path) -> Path:
    """The installed `hf-tune` script, or, where this checkout is not installed yet, the same console
    script pip writes at install time for the entry point pyproject.toml declares."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["hf-tune"]
    assert declared == "hubtune.cli:hf_tune"
    installed = BIN / "hf-tune"
    if installed.is_file():
        return installed
    from pip._vendor.distlib.scripts import ScriptMaker

    maker = ScriptMaker(None, str(folder), add_launchers=False)
    maker.executable = sys.executable
    maker.make(f"hf-tune = {declared}")
    return folder / "hf-tune"


def test_hf_tune_check_runs_as_an_hf_extension(hub, tmp_path):
    from huggingface_hub.cli.extensions import ExtensionManifest

    hub.seed("meta-llama/Llama-3.1-8B", {"README.md": readme(license="llama3.1")}, gated="manual")
    hub.seed("acme/invoices", {"README.md": readme(license="cc-by-nc-4.0")}, repo_type="dataset")

    home = tmp_path / "home"
    extension = home / ".local" / "share" / "hf" / "extensions" / "hf-tune"
    script = hf_tune_script(extension / "venv" / "bin")
    ExtensionManifest(owner="hubtune", repo="hf-tune", repo_id="hubtune/hf-tune", short_name="tune",
                      executable_path=str(script), type="python", installed_at=datetime.now(timezone.utc),
                      description="Fine-tune, check, evaluate and publish LoRA adapters").save(extension)

    env = {**os.environ, "HOME": str(home), "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_TOKEN", None)
    listed = subprocess.run([str(BIN / "hf"), "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert "tune" in listed.stdout and "hubtune/hf-tune" in listed.stdout, listed.stdout + listed.stderr

    (command,) = [line for kind, body in section_blocks("The hf CLI extension") if kind == "bash"
                  for line in body.splitlines() if line.strip()]  # the README's, as written
    assert command.startswith("hf tune check ")
    checked = subprocess.run([str(BIN / "hf"), *shlex.split(command)[1:]],
                             env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 3, checked.stdout + checked.stderr  # hubtune's exit code comes through hf
    verdict = json.loads(checked.stdout)
    assert verdict["verdict"] == "block"
    assert [r["licence"] for r in verdict["repos"]] == ["llama3.1", "cc-by-nc-4.0"]

    helped = subprocess.run([str(BIN / "hf"), "tune", "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: hf tune")
    for command in ("train", "check", "push", "eval", "config"):
        assert command in helped.stdout
