"""The README's quickstart, CLI, Python and config blocks run as written."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hubtune import config as cfg
from readme_blocks import section_blocks

ROOT = Path(__file__).resolve().parent.parent


def blocks(section: str, lang: str) -> list[str]:
    return [body for kind, body in section_blocks(section) if kind == lang]


def commands(section: str) -> list[str]:
    return [ln.split("#")[0].strip() for b in blocks(section, "bash") for ln in b.splitlines() if ln.strip()]


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path


def hubtune_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hubtune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_quickstart_targets_install_then_run():
    assert commands("Quickstart") == ["make demo", "make test"]
    for target, runs in (("demo", ".venv/bin/hubtune demo"), ("test", ".venv/bin/pytest")):
        plan = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert "python3 -m venv .venv" in plan and "-c constraints.txt torch" in plan, plan
        assert plan.index("constraints.txt torch") < plan.index('-e ".[dev]"') < plan.index(runs), plan
    assert "torch==" in (ROOT / "constraints.txt").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_demo_prints_its_result_line(tmp_path):
    # The README's `make demo` runs `hubtune demo`; here with few steps and examples to stay quick.
    proc = hubtune_cli(["demo", "--out", str(tmp_path / "demo"), "--limit", "8", "training.max_steps=4",
                        "training.logging_steps=2"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"demo: base_exact_match=(\d\.\d\d) tuned_exact_match=(\d\.\d\d) minutes=(\d+\.\d) run=(\S+)", last)
    assert m, last
    run = tmp_path / "demo"
    assert Path(m.group(4)) == run and (run / "eval.json").is_file()
    # The tour: licence verdict, data report, live training line, the eval table, the card it would push.
    out = proc.stdout
    for shown in ("verdict: allow (use: personal)", "What each step removed", "training  step 4/4 · loss",
                  "base 3-shot", "regression set accuracy", f"card      {run / 'README.md'}"):
        assert shown in out, shown
    assert (run / "README.md").read_text().startswith("---\n")
    # A calm console: no third-party warnings, progress bars or raw log dicts.
    assert "Warning" not in proc.stderr + out and "it/s]" not in proc.stderr and "{'loss'" not in out


@pytest.mark.slow
def test_command_line_section_runs(workdir, cli):
    lines = commands("The command line")
    assert lines[0].startswith("hubtune train examples/invoices.yaml") and lines[1].startswith("hubtune train --resume")
    printed = []
    for line in lines:
        proc = cli(*shlex.split(line)[1:], cwd=workdir)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
        printed += proc.stdout.splitlines()
    # The console the README pastes: the same phases, the advice line and the live training line.
    (pasted,) = [b for b in blocks("The command line", "text") if b.startswith("licence")]
    phases = lambda text: [ln.split()[0] for ln in text if ln.strip()]  # noqa: E731
    assert set(phases(pasted.splitlines())) <= set(phases(printed)), printed
    assert any(ln.startswith("training  step 4/4 · loss") for ln in printed), printed
    run = workdir / "runs" / "readme"
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "summary.json").is_file()


def test_config_error_example_matches_the_real_message(workdir, cli):
    (workdir / "bad.yaml").write_text("lora:\n  r: 0\ntraining:\n  lerning_rate: 1\n")
    proc = cli("train", "bad.yaml", cwd=workdir)
    shown = [ln.split("...")[0].rstrip(", ") for b in blocks("The command line", "text") if b.startswith("error:")
             for ln in b.splitlines()]
    assert shown
    for line in shown:
        assert line in proc.stderr, f"{line!r} not in {proc.stderr!r}"


@pytest.mark.slow
def test_python_section_runs(workdir, monkeypatch):
    (code,) = blocks("The Python API", "python")
    monkeypatch.chdir(workdir)
    exec(compile(code, "README.md", "exec"), {})
    assert (workdir / "runs" / "api" / "summary.json").is_file()


def test_config_example_is_valid_and_matches_the_defaults():
    (text,) = blocks("A run config", "yaml")
    data = yaml.safe_load(text)
    shown = cfg.build(data)
    defaults = cfg.RunConfig()
    for section in ("model", "lora", "training"):
        for key, value in data[section].items():
            assert getattr(getattr(shown, section), key) == getattr(getattr(defaults, section), key), (section, key)
    for key in ("format", "val_set_size", "max_seq_len", "packing"):
        assert getattr(shown.data, key) == getattr(defaults.data, key), key
