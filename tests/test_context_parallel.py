"""Context parallelism (training.context_parallel_size): checked before launch, launched on FSDP2 with
accelerate's ParallelismConfig, and Axolotl's context_parallel_size converted to it where it can be. The
split of a sequence over GPUs needs CUDA and several GPUs: these tests stop at the launch boundary."""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import LlamaConfig, MistralConfig, NemotronHConfig

from hubtune import config as cfg
from hubtune import distributed
from hubtune.errors import ConfigError, HubtuneError
from hubtune.hardware import Hardware
from hubtune.interop import axolotl
from hubtune.train import check_against_model, sft_args
from readme_blocks import section_blocks

CP = {"model": {"quantization": "none"}, "training": {"distributed": "fsdp", "context_parallel_size": 2}}
CPU = Hardware("cpu", torch.float32, "adamw_torch")


def test_what_context_parallelism_cannot_run_is_named_before_launch():
    with pytest.raises(ConfigError) as info:
        cfg.build({"training": {"context_parallel_size": 2, "method": "dpo", "kernels": "flash_attention_2"},
                   "data": {"packing": True}})
    text = str(info.value)
    for wanted in ("training.distributed: fsdp (not none)", "training.method: sft (not dpo)",
                   "training.kernels: auto, sdpa or liger (not flash_attention_2)", "data.packing: false",
                   "model.quantization: none (not nf4)"):
        assert wanted in text
    with pytest.raises(ConfigError, match="data.padding_free: auto or false"):
        cfg.build(cfg.merge(CP, {"data": {"padding_free": True}}))
    with pytest.raises(ConfigError, match="training.context_parallel_size"):
        cfg.build({"training": {"context_parallel_size": 0}})
    config = cfg.build(cfg.merge(CP, {"training": {"kernels": ["sdpa", "liger"]}}))
    assert config.training.context_parallel_size == 2


def test_the_trainer_gets_accelerates_parallelism_config_and_padding_to_whole_chunks(tmp_path, monkeypatch):
    config = cfg.build(CP)
    args = sft_args(config, CPU, tmp_path, has_eval=False)
    pc = args.parallelism_config
    assert (pc.cp_size, pc.cp_enabled, pc.cp_backend) == (2, True, "torch")
    # torch's load balancing cuts each row into 2 x cp chunks; padding_free off: rows keep their own mask.
    assert args.pad_to_multiple_of == 4 and not args.padding_free and not args.packing
    assert sft_args(cfg.build({}), CPU, tmp_path, has_eval=False).parallelism_config is None
    monkeypatch.setenv("WORLD_SIZE", "8")
    pc = distributed.parallelism_config(config.training)
    assert (pc.cp_size, pc.dp_shard_size, pc.total_size) == (2, 4, 8)
    assert pc.dp_shard_cp_dim_names == ["dp_shard", "cp"]  # FSDP2 shards the model over both
    assert distributed.parallelism_config(cfg.build({}).training) is None


def test_the_gpus_sharing_a_sequence_read_the_same_batches():
    plan = distributed.BatchPlan(micro_batch_size=2, gradient_accumulation_steps=4, processes=8, rows=640, epochs=1,
                                 max_steps=None, context_parallel=2)
    assert plan.data_parallel == 4 and plan.effective_batch_size == 32 and plan.steps_per_epoch == 20
    assert "x 8 processes / 2 per sequence (context parallelism)" in plan.describe()


def test_the_launch_is_fsdp2_on_a_multiple_of_the_group(monkeypatch):
    plan = distributed.plan_launch("fsdp", 4, context_parallel_size=2)
    assert plan.preset == distributed.PRESETS / "fsdp2.yaml"
    cmd = distributed.launch_command(plan, ["train", "run.yaml"])
    assert cmd[cmd.index("--config_file") + 1] == str(distributed.PRESETS / "fsdp2.yaml")
    assert distributed.plan_launch("fsdp", 4).preset == distributed.PRESETS / "fsdp.yaml"
    with pytest.raises(HubtuneError, match="multiple of it, got 3"):
        distributed.plan_launch("fsdp", 3, context_parallel_size=2)
    # accelerate's own launcher reads the preset as FSDP version 2.
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(plan.preset), "--num_processes", "4",
                                               "-m", "hubtune", "train", "run.yaml"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_a_launched_process_checks_its_gpus_and_launch(monkeypatch):
    training = cfg.build(CP).training
    distributed.check_context_parallel(cfg.build({}).training, "cpu")  # off: nothing to check
    with pytest.raises(ConfigError, match="needs CUDA"):
        distributed.check_context_parallel(training, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="does not divide the 3 process"):
        distributed.check_context_parallel(training, "cuda")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="launched with FSDP 1"):
        distributed.check_context_parallel(training, "cuda")
    monkeypatch.setenv("FSDP_VERSION", "2")
    distributed.check_context_parallel(training, "cuda")


def test_models_whose_layers_are_not_all_full_attention_are_refused_before_loading():
    config = cfg.build(CP)
    check_against_model(config, LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                            intermediate_size=128, num_hidden_layers=2))
    for model_config, kind in ((MistralConfig(sliding_window=4096), "sliding_attention"),
                               (NemotronHConfig(), "mamba")):
        with pytest.raises(ConfigError, match="training.context_parallel_size") as info:
            check_against_model(config, model_config)
        assert kind in str(info.value) and "full causal attention" in str(info.value)


AXOLOTL = {"base_model": "meta-llama/Llama-3.2-1B", "adapter": "lora", "lora_r": 8, "lora_alpha": 16,
           "datasets": [{"path": "mhenrichsen/alpaca_2k_test", "type": "alpaca"}], "sequence_len": 8192,
           "context_parallel_size": 2, "flash_attention": True}


def test_axolotls_context_parallel_size_converts_and_exports_back():
    translation = axolotl.from_axolotl(AXOLOTL)
    config = translation.run_config()
    t = config.training
    assert (t.context_parallel_size, t.distributed, t.kernels) == (2, "fsdp", ["sdpa"])
    assert any("runs as SDPA" in note for note in translation.notes)
    exported = axolotl.to_axolotl(config)
    assert exported["context_parallel_size"] == 2 and exported["fsdp"]
    assert axolotl.from_axolotl(exported).run_config() == config
    assert axolotl.from_axolotl(dict(AXOLOTL, context_parallel_size=1)).run_config().training.context_parallel_size == 1


@pytest.mark.parametrize("change,why", [
    ({"sample_packing": True}, "2 with sample_packing: true Axolotl's ring-flash-attention keeps the packed"),
    ({"adapter": "qlora", "load_in_4bit": True}, "2 with a 4- or 8-bit base"),
    ({"deepspeed": "deepspeed_configs/zero3.json"}, "2 with deepspeed-zero3"),
    ({"context_parallel_size": "two"}, "'two': give the number of GPUs"),
])
def test_what_hubtunes_context_parallelism_cannot_express_is_refused(change, why):
    refused = dict(axolotl.from_axolotl(dict(AXOLOTL, **change)).unsupported)
    assert why in refused["context_parallel_size"]


def test_the_docs_config_is_a_valid_context_parallel_run(tmp_path):
    (body,) = [body for lang, body in section_blocks("One sequence over several GPUs") if lang == "yaml"]
    config = cfg.build(yaml.safe_load(body))
    assert (config.training.context_parallel_size, config.training.distributed) == (2, "fsdp")
    args = sft_args(config, CPU, tmp_path, has_eval=False)
    assert args.parallelism_config.cp_size == 2 and args.pad_to_multiple_of == 4
