"""How the recipe uses the machine: the config's auto settings resolved per device and base."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hubtune import config as cfg
from hubtune.config import resolve_builtin
from hubtune.errors import ConfigError
from hubtune.hardware import Hardware
from hubtune.memory import reference_config
from hubtune.levers import Levers, checkpointing_needed, recipe_levers
from hubtune.train import sft_args

TINY = resolve_builtin("hubtune:tiny-llama")
CPU = Hardware("cpu", torch.float32, "adamw_torch")


def test_on_a_cpu_auto_means_sdpa_padded_grouped_batches_and_no_checkpointing(tmp_path):
    config = cfg.RunConfig()
    levers = recipe_levers(config, CPU, TINY)
    assert levers == Levers(attention="sdpa", liger=False, padding_free=False, gradient_checkpointing=False)
    args = sft_args(config, CPU, tmp_path, has_eval=True, levers=levers)
    # each step's examples sorted by length into its micro-batches (the default accumulates 4)
    assert args.train_sampling_strategy == "batch_rebalance" and not args.padding_free
    assert not args.gradient_checkpointing and not args.use_liger_kernel
    assert args.max_length == config.data.max_seq_len


def test_on_cuda_auto_takes_flash_attention_and_liger_when_they_are_installed(monkeypatch):
    # flash-attn and liger-kernel build only against CUDA, so "installed" is what find_spec answers here
    import importlib.util

    installed = {"flash_attn", "liger_kernel"}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in installed else real(name, *a))
    cuda = Hardware("cuda", torch.bfloat16, "paged_adamw_8bit")
    config = cfg.build({"training": {"gradient_checkpointing": True}})  # explicit: auto would ask the GPU its size
    assert recipe_levers(config, cuda, TINY) == Levers("flash_attention_2", liger=True, padding_free=True,
                                                       gradient_checkpointing=True)
    installed.clear()
    assert recipe_levers(config, cuda, TINY) == Levers("sdpa", liger=False, padding_free=False,
                                                       gradient_checkpointing=True)


def test_checkpointing_auto_follows_the_memory_estimate(tmp_path):
    from hubtune import memory

    folder = tmp_path / "llama-8b"
    folder.mkdir()
    (folder / "config.json").write_bytes(reference_config("Llama-3.1-8B").read_bytes())
    config = cfg.build({"model": {"id": str(folder)}, "data": {"max_seq_len": 512}})
    settings = replace(memory.Settings.from_run_config(config), gradient_checkpointing=False)
    without = memory.estimate(memory.read_architecture(str(folder)), settings).total
    # Off when the run without it takes at most 80% of the device, on otherwise.
    assert not checkpointing_needed(config, str(folder), "cuda", device_bytes=int(without / 0.79))
    assert checkpointing_needed(config, str(folder), "cuda", device_bytes=int(without / 0.81))
    assert recipe_levers(cfg.build({"model": {"id": str(folder)}, "training": {"gradient_checkpointing": True}}),
                         CPU, str(folder)).gradient_checkpointing


def test_explicit_settings_win_and_contradictions_are_named(tmp_path):
    liger = recipe_levers(cfg.build({"training": {"kernels": "liger"}, "data": {"padding_free": True}}), CPU, TINY)
    assert liger.liger and liger.attention == "sdpa" and liger.padding_free
    args = sft_args(cfg.build({"data": {"padding_free": True}}), CPU, tmp_path, has_eval=False, levers=liger)
    assert args.padding_free and args.max_length is None  # over-long examples were dropped by the data step
    with pytest.raises(ConfigError, match="data.padding_free"):
        recipe_levers(cfg.build({"data": {"padding_free": True, "truncate": True}}), CPU, TINY)
    packed = sft_args(cfg.build({"data": {"packing": True}}), CPU, tmp_path, has_eval=False, levers=liger)
    assert packed.packing and packed.packing_strategy == "bfd" and packed.train_sampling_strategy == "random"


def test_the_config_fields_are_documented_and_validated():
    with pytest.raises(ConfigError, match="training.kernels"):
        cfg.build({"training": {"kernels": "triton"}})
    with pytest.raises(ConfigError, match="training.gradient_checkpointing"):
        cfg.build({"training": {"gradient_checkpointing": "sometimes"}})
    for section, name in ((cfg.TrainingSection, "kernels"), (cfg.TrainingSection, "group_by_length"),
                          (cfg.DataSection, "padding_free"), (cfg.DataSection, "packing_strategy")):
        assert section.model_fields[name].description
    assert Path(TINY, "config.json").is_file()
