"""The Space repo: its front matter and pins, and `hubtune space deploy` against the loopback Hub."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import gradio
import pytest
import yaml

from conftest import HUB_TOKEN
from hub_server import card_metadata
from hubtune.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "space"


def pins(text: str) -> dict[str, str]:
    found = (re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line.strip()) for line in text.splitlines())
    return {m.group(1).lower().replace("_", "-"): m.group(2) for m in found if m}


def test_front_matter_pins_gradio_and_asks_for_oauth_scopes():
    meta = card_metadata((SPACE / "README.md").read_bytes())
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__
    assert (SPACE / meta["app_file"]).is_file()
    assert meta["hf_oauth"] is True
    assert {"read-repos", "write-repos", "gated-repos"} <= set(meta["hf_oauth_scopes"])
    assert meta["suggested_hardware"].startswith(("l4", "a10g", "a100", "t4", "h100", "l40s"))
    assert meta["license"] == "apache-2.0"


def test_requirements_pin_what_the_project_is_tested_with():
    space = pins((SPACE / "requirements.txt").read_text())
    tested = pins((ROOT / "constraints.txt").read_text())
    shared = set(space) & set(tested)
    assert {"torch", "transformers", "peft", "trl", "gradio", "huggingface-hub"} <= shared
    assert {name: space[name] for name in shared} == {name: tested[name] for name in shared}
    assert "gradio[oauth]==" in (SPACE / "requirements.txt").read_text()
    # app.py installs the hubtune wheel without its dependencies: requirements.txt must list every one.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {re.split(r"[<>=\[ ;]", d)[0].lower().replace("_", "-") for d in project["dependencies"]}
    listed = {re.split(r"[<>=\[ ;#]", line.strip())[0].lower().replace("_", "-")
              for line in (SPACE / "requirements.txt").read_text().splitlines() if line.strip() and line[0] != "#"}
    assert needed <= listed, needed - listed


@pytest.mark.slow  # builds this hubtune's wheel
def test_deploy_creates_the_space_uploads_this_hubtune_and_requests_hardware(hub_token, hub, capsys):
    assert main(["space", "deploy", "alice/hubtune-demo", "--private"]) == 0
    out = capsys.readouterr().out
    assert f"{hub.url}/spaces/alice/hubtune-demo" in out and "requested l4x1" in out
    repo = hub.repos[("space", "alice/hubtune-demo")]
    assert repo.private and repo.sdk == "gradio" and repo.hardware == "l4x1"
    files = hub.files("alice/hubtune-demo", repo_type="space")
    assert {"app.py", "README.md", "requirements.txt"} <= set(files)
    assert files["README.md"] == (SPACE / "README.md").read_bytes()
    wheel = [name for name in files if re.fullmatch(r"wheels/hubtune-[\d.]+-py3-none-any\.whl", name)]
    assert len(wheel) == 1
    names = zipfile.ZipFile(io.BytesIO(files[wheel[0]])).namelist()
    assert {"hubtune/ui/app.py", "hubtune/space/app.py", "hubtune/assets/tiny-llama/model.safetensors",
            "hubtune/cli/__init__.py", "hubtune/cli/train.py"} <= set(names)  # the page trains through the CLI
    assert not any(HUB_TOKEN.encode() in content for content in files.values())
    # A second deploy updates the same Space in a new commit.
    before = hub.commit_count("alice/hubtune-demo", "space")
    assert main(["space", "deploy", "alice/hubtune-demo", "--hardware", ""]) == 0
    assert hub.commit_count("alice/hubtune-demo", "space") == before + 1
    assert "no hardware requested" in capsys.readouterr().out


def test_deploy_into_a_namespace_the_token_cannot_write_is_refused(hub_token, capsys, tmp_path):
    wheel = tmp_path / "hubtune-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not needed: the Hub refuses first")
    assert main(["space", "deploy", "bob/hubtune", "--wheel", str(wheel)]) == 2
    err = capsys.readouterr().err
    assert "refused the Space bob/hubtune (403" in err
