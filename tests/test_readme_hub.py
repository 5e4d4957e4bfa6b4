"""The README's "Hub, licences and publishing" section: its commands and snippet run against the
loopback Hub, and the output it shows is what the command prints."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HUB_TOKEN
from hub_server import readme
import readme_blocks

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

HUBTUNE = str(Path(sys.executable).parent / "hubtune")


def section_blocks() -> list[tuple[str, str]]:
    blocks = readme_blocks.section_blocks("Hub, licences and publishing")
    assert [lang for lang, _ in blocks] == ["bash", "text", "python"]
    return blocks


@pytest.fixture
def readme_hub(hub, make_run, tmp_path):
    sha = hub.seed("meta-llama/Llama-3.1-8B", {"README.md": readme(license="llama3.1")}, gated="manual")
    hub.grant("meta-llama/Llama-3.1-8B", "alice")  # the README's user accepted the base's terms
    hub.seed("acme/invoices", {"README.md": readme(license="cc-by-nc-4.0")}, repo_type="dataset")
    make_run(base_model="meta-llama/Llama-3.1-8B", base_revision=sha, datasets=("acme/invoices",),
             use="research", name="runs/my-adapter")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1", HF_TOKEN=HUB_TOKEN)
    return hub, env


def test_the_commands_run_and_print_what_the_readme_shows(readme_hub, tmp_path):
    hub, env = readme_hub
    blocks = dict(section_blocks())
    commands = [line for line in blocks["bash"].splitlines() if line]
    results = []
    for line in commands:
        args = shlex.split(line)
        assert args[0] == "hubtune"
        results.append(subprocess.run([HUBTUNE, *args[1:]], cwd=tmp_path, env=env, capture_output=True,
                                      text=True, timeout=300))
    check_commercial, check_research, push = results
    assert check_commercial.returncode == 3, check_commercial.stderr
    shown = [line.rstrip() for line in blocks["text"].splitlines()]
    printed = [line.rstrip() for line in check_commercial.stdout.splitlines()]
    assert printed[:len(shown)] == shown

    assert check_research.returncode == 0, check_research.stderr
    verdict = json.loads(check_research.stdout)
    assert verdict["verdict"] == "allow" and {"reasons", "obligations", "repos"} <= set(verdict)

    assert push.returncode == 0, push.stderr
    assert f"{hub.url}/alice/Llama-3.1-8B-invoices" in push.stdout
    assert hub.repos[("model", "alice/Llama-3.1-8B-invoices")].private is True


def test_the_python_snippet_runs(readme_hub, tmp_path):
    hub, env = readme_hub
    body = dict(section_blocks())["python"]
    result = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.startswith("allow ") and "Built with Llama" in first
    assert second.startswith(f"{hub.url}/alice/Llama-3.1-8B-invoices-v2 ")
    assert "adapter_model.safetensors" in hub.files("alice/Llama-3.1-8B-invoices-v2")
