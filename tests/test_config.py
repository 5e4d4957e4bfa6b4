"""The run config: defaults, YAML, overrides, and every error reported at once with its path."""

from __future__ import annotations

import pytest
import yaml

from hubtune import config as cfg
from hubtune.errors import ConfigError


def problems(exc: ConfigError) -> dict[str, str]:
    return dict(exc.problems)


def test_defaults_follow_the_qlora_guidance():
    c = cfg.RunConfig()
    assert (c.model.quantization, c.model.double_quant, c.model.compute_dtype) == ("nf4", True, "auto")
    assert (c.lora.r, c.lora.alpha, c.lora.target_modules) == (16, 32, "all-linear")
    t = c.training
    assert (t.learning_rate, t.lr_scheduler) == (2e-4, "cosine")
    assert t.micro_batch_size * t.gradient_accumulation_steps == 8
    assert t.warmup_steps > 0 and t.epochs <= 3


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(cfg.RunConfig().to_yaml())
    c = cfg.load(path, ["training.learning_rate=1e-4", "lora.target_modules=[q_proj, v_proj]",
                        "data.packing=true", "output.dir=runs/x"])
    assert c.training.learning_rate == 1e-4
    assert c.lora.peft_target_modules() == ["q_proj", "v_proj"]
    assert c.data.packing is True and c.output.dir == "runs/x"
    assert cfg.RunConfig.model_validate(yaml.safe_load(c.to_yaml())) == c


def test_presets_map_to_module_names():
    assert cfg.LoraSection(target_modules="qv").peft_target_modules() == ["q_proj", "v_proj"]
    assert len(cfg.LoraSection(target_modules="attention").peft_target_modules()) == 4
    assert cfg.LoraSection().peft_target_modules() == "all-linear"


def test_every_problem_is_reported_at_once_with_its_path():
    with pytest.raises(ConfigError) as info:
        cfg.build({
            "lora": {"r": 0, "rank": 8},
            "training": {"learning_rate": "fast", "epochs": -1, "optimizer": "adam"},
            "model": {"quantization": "int3"},
            "data": {"sources": ["missing/file.jsonl"]},
            "trainer": {},
        })
    found = problems(info.value)
    assert "greater than or equal to 1" in found["lora.r"]
    assert "unknown key" in found["lora.rank"] and "alpha" in found["lora.rank"]
    assert "valid number" in found["training.learning_rate"] and "'fast'" in found["training.learning_rate"]
    assert "greater than 0" in found["training.epochs"]
    assert "adamw_8bit" in found["training.optimizer"]
    assert "nf4" in found["model.quantization"]
    assert "unknown key" in found["trainer"] and "training" in found["trainer"]
    assert "missing/file.jsonl" in str(info.value)


def test_missing_dataset_and_model_are_errors():
    with pytest.raises(ConfigError) as info:
        cfg.build({"data": {"sources": ["./nowhere.jsonl"]}, "model": {"id": "./no-model"}})
    assert set(info.value.paths) == {"data.sources.0.path", "model.id"}


def test_unknown_key_in_a_list_item_names_the_item():
    with pytest.raises(ConfigError) as info:
        cfg.build({"data": {"sources": [{"path": "hubtune:data/invoices/train.jsonl", "spilt": "x"}]}})
    found = problems(info.value)
    assert "unknown key" in found["data.sources.0.spilt"] and "split" in found["data.sources.0.spilt"]


def test_bad_overrides_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError) as info:
        cfg.load(None, ["training.learning_rate"])
    assert "section.key=value" in str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rate: [1e-4\n")
    with pytest.raises(ConfigError) as info:
        cfg.load(bad)
    assert "line" in info.value.paths[0] and str(bad) in str(info.value)
    with pytest.raises(ConfigError):
        cfg.load(tmp_path / "absent.yaml")


def test_shipped_configs_validate():
    root = cfg.ASSETS.parent.parent
    shipped = [*(cfg.ASSETS / "configs").glob("*.yaml"), *(root / "examples").glob("*.yaml")]
    assert len(shipped) >= 3
    for path in shipped:
        cfg.load(path)


def test_validated_config_stays_typed():
    c = cfg.RunConfig()
    with pytest.raises(Exception):
        c.training.learning_rate = "high"
