"""The README's blocks for Unsloth, trackers and the guide's PEFT listing run as written (the Axolotl
and `hf tune` blocks run in test_interop_axolotl.py and test_hf_extension.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from hubtune import config as cfg
from readme_blocks import section_blocks


def only(section: str, lang: str) -> str:
    (body,) = [b for kind, b in section_blocks(section) if kind == lang]
    return body


def test_backend_and_tracker_snippets_are_valid_configs():
    assert cfg.build(yaml.safe_load(only("Unsloth and pre-quantized bases", "yaml"))).training.backend == "auto"
    assert cfg.build(yaml.safe_load(only("Experiment trackers", "yaml"))).training.report_to == ["tensorboard"]
    assert cfg.RunConfig().training.backend == "auto" and cfg.RunConfig().training.report_to == []


@pytest.mark.slow
def test_the_guides_peft_listing_in_hubtune_runs(tmp_path, monkeypatch, capsys, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    exec(compile(only("From the guide's PEFT code to hubtune", "python"), "README.md", "exec"), {})
    adapter = tmp_path / "runs" / "peft-listing" / "adapter"
    printed = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert printed[0] == "runs/peft-listing/adapter" and printed[-1] == "qlora"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (16, 32, 0.05)
    assert sorted(saved["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                      "up_proj", "down_proj"])
    summary = json.loads((tmp_path / "runs" / "peft-listing" / "summary.json").read_text())
    assert summary["method"] == "qlora" and summary["global_steps"] == 2
