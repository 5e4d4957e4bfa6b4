"""Context parallelism (training.context_parallel_size, hubtune.context_parallel): checked before launch,
launched under DDP or FSDP2, measured on a 2-process CPU gloo mesh (tests/context_parallel_same.py: the loss
and gradients of one process over the whole rows, and a run that trains, checkpoints and resumes), and
Axolotl's context_parallel_size converted to it."""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import JambaConfig, LlamaConfig, MistralConfig, NemotronHConfig

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
        cfg.build({"training": {"context_parallel_size": 2, "method": "dpo", "kernels": "flash_attention_2"}})
    text = str(info.value)
    for wanted in ("training.distributed: ddp or fsdp (not none)", "training.method: sft (not dpo)",
                   "training.kernels: auto, sdpa or liger (not flash_attention_2)"):
        assert wanted in text
    with pytest.raises(ConfigError, match="under fsdp, or training.distributed: ddp"):
        cfg.build(cfg.merge(CP, {"model": {"quantization": "nf4"}}))
    with pytest.raises(ConfigError, match="training.context_parallel_size"):
        cfg.build({"training": {"context_parallel_size": 0}})
    config = cfg.build(cfg.merge(CP, {"training": {"kernels": ["sdpa", "liger"]}}))
    assert config.training.context_parallel_size == 2
    # Packed examples, a 4-bit base under DDP, and one FSDP2 shards as every process loads it.
    for change in ({"data": {"packing": True}}, {"training": {"distributed": "ddp"}, "model": {"quantization": "nf4"}},
                   {"model": {"quantization": "nf4", "quantize_experts": True}}):
        cfg.build(cfg.merge(CP, change))
    assert distributed.preset_path("fsdp", 2, whole_base=True).name == "fsdp2-quantized-experts.yaml"


def test_the_trainer_pads_rows_to_whole_chunks(tmp_path):
    config = cfg.build(cfg.merge(CP, {"data": {"packing": True}}))
    args = sft_args(config, CPU, tmp_path, has_eval=False)
    # accelerate is given no context-parallel mesh (its own drops every mask): hubtune's trainer splits the rows.
    assert args.parallelism_config is None and args.pad_to_multiple_of == 2 and args.packing


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


def test_a_launched_process_checks_its_launch(monkeypatch):
    training = cfg.build(CP).training
    distributed.check_context_parallel(cfg.build({}).training, "cpu")  # off: nothing to check
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="does not divide the 3 process"):
        distributed.check_context_parallel(training, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="launched with FSDP 1"):
        distributed.check_context_parallel(training, "cuda")
    distributed.check_context_parallel(cfg.build(cfg.merge(CP, {"training": {"distributed": "ddp"}})).training, "cpu")
    monkeypatch.setenv("FSDP_VERSION", "2")
    distributed.check_context_parallel(training, "cuda")


def test_models_with_layers_it_cannot_split_are_refused_before_loading():
    config = cfg.build(CP)
    check_against_model(config, LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                            intermediate_size=128, num_hidden_layers=2))
    check_against_model(config, NemotronHConfig())  # Mamba-2, attention, experts and MLPs: all split
    for model_config, kind in ((MistralConfig(sliding_window=4096), "sliding_attention"),
                               (JambaConfig(), "mamba")):
        with pytest.raises(ConfigError, match="training.context_parallel_size") as info:
            check_against_model(config, model_config)
        assert kind in str(info.value) and "Nemotron-H's Mamba-2 layers only" in str(info.value)


@pytest.mark.slow
def test_two_processes_compute_what_one_does_and_a_run_trains_and_resumes(tmp_path):
    """tests/context_parallel_same.py on a 2-process gloo mesh: a tiny Nemotron-H over packed rows split in two
    gives the loss and gradients of every example run alone in one process (and a row shorter than the Mamba
    conv's reach, 2 tokens a process); then a hubtune run of it on packed
    invoices under DDP, stopped after step 2 and resumed to step 3."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "same.pt"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), str(Path(__file__).parent / "context_parallel_same.py"),
                           str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = torch.load(out)
    assert result["mixers"] == 2 and result["attention"] == "hubtune_context_parallel"
    (ref_loss, ref_grads), (loss, grads) = result["reference"], result["split"]
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    # Every weight's gradient, the Mamba mixers' (conv1d, dt_bias, A_log, D, in/out projections) among them;
    # measured 3e-7 apart. Without the state passed between the halves they are 4e-3 apart, without the conv's
    # left context 0.2.
    assert sorted(grads) == sorted(ref_grads) and len(grads) == 35
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    # A row of 4 tokens, 2 a process: the conv's left context reaches before the first half (zeros there).
    (ref_loss, ref_grads), (loss, grads) = result["short"]
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    # The run: each batch a packed row of several examples, each process half of it, in training and evaluation.
    seen = json.loads((tmp_path / "seen.json").read_text())
    batches = seen["batches"]  # [examples in each row..., training?, tokens of the whole batch, of a chunk's row]
    assert all(documents > 1 and tokens == 2 * half * len(docs) for *docs, _, tokens, half in batches
               for documents in docs)
    # Tokens seen: the batches the group read, once (a padding token at most per row is not counted).
    trained = [tokens for *_, training, tokens, _ in batches if training]
    assert sum(trained[:2]) - 2 <= seen["tokens_seen"][1] <= sum(trained[:2])
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert "resuming from checkpoint-2" in proc.stdout
    assert {p.name for p in (run / "checkpoints" / "checkpoint-2").glob("rng_state_*.pth")} == {
        "rng_state_0.pth", "rng_state_1.pth"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_steps"] == 3 and summary["final_eval_loss"] < summary["initial_eval_loss"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


AXOLOTL = {"base_model": "meta-llama/Llama-3.2-1B", "adapter": "lora", "lora_r": 8, "lora_alpha": 16,
           "datasets": [{"path": "mhenrichsen/alpaca_2k_test", "type": "alpaca"}], "sequence_len": 8192,
           "context_parallel_size": 2, "flash_attention": True}


def test_axolotls_context_parallel_size_converts_and_exports_back():
    translation = axolotl.from_axolotl(AXOLOTL)
    config = translation.run_config()
    t = config.training
    assert (t.context_parallel_size, t.distributed, t.kernels) == (2, "ddp", ["sdpa"])
    assert any("runs as SDPA" in note for note in translation.notes)
    # With packing, a 4-bit base (each GPU holds it whole, as Axolotl without fsdp) or under FSDP2.
    packed = axolotl.from_axolotl(dict(AXOLOTL, sample_packing=True, adapter="qlora", load_in_4bit=True))
    assert not packed.unsupported and packed.run_config().data.packing
    assert any("packed examples kept apart" in note for note in packed.notes)
    sharded = axolotl.from_axolotl(dict(AXOLOTL, fsdp_version=2, fsdp_config={"offload_params": False}))
    assert sharded.run_config().training.distributed == "fsdp"
    for config in (config, packed.run_config(), sharded.run_config()):
        exported = axolotl.to_axolotl(config)
        assert exported["context_parallel_size"] == 2
        assert axolotl.from_axolotl(exported).run_config() == config
    assert axolotl.from_axolotl(dict(AXOLOTL, context_parallel_size=1)).run_config().training.context_parallel_size == 1


@pytest.mark.parametrize("change,why", [
    ({"adapter": "qlora", "load_in_4bit": True, "fsdp_version": 2, "fsdp_config": {"offload_params": False}},
     "2 with fsdp and a 4- or 8-bit base"),
    ({"deepspeed": "deepspeed_configs/zero3.json"}, "2 with deepspeed-zero3"),
    ({"rl": "dpo"}, "2 with rl: dpo"),
    ({"context_parallel_size": "two"}, "'two': give the number of GPUs"),
])
def test_what_hubtunes_context_parallelism_cannot_express_is_refused(change, why):
    refused = dict(axolotl.from_axolotl(dict(AXOLOTL, **change)).unsupported)
    assert why in refused["context_parallel_size"]


def test_the_docs_config_is_a_valid_context_parallel_run(tmp_path):
    (body,) = [body for lang, body in section_blocks("One sequence over several GPUs") if lang == "yaml"]
    config = cfg.build(yaml.safe_load(body))
    assert (config.training.context_parallel_size, config.training.distributed) == (2, "ddp")
    assert config.data.packing
    args = sft_args(config, CPU, tmp_path, has_eval=False)
    assert args.parallelism_config is None and args.pad_to_multiple_of == 2


def test_four_chunks_computed_in_order_give_each_examples_own_logits(monkeypatch):
    """Context parallelism over 4 chunks, computed one after the other in this process: each chunk's gathers
    read what the chunks before it computed (later chunks' keys are masked, their tensors unused), so the
    Mamba-2 state crosses whole chunks (an example spanning three: each chunk's decay composed) as on 4 GPUs.
    The packed rows' logits are each example's own, run alone."""
    from context_parallel_same import examples, packed, tiny_nemotron_h

    from hubtune import context_parallel as cp

    model = tiny_nemotron_h().eval()
    rows = examples()
    with torch.no_grad():
        alone = torch.stack([torch.cat([model(input_ids=e[None]).logits[0] for e in row]) for row in rows])
    cp.prepare(model)
    computed, calls = {}, {}

    def in_order(tensor, split, dim):
        call = calls[split.rank] = calls.get(split.rank, -1) + 1
        computed.setdefault(call, {})[split.rank] = tensor
        return torch.cat([computed[call].get(q, torch.zeros_like(tensor)) for q in range(split.size)], dim=dim)

    monkeypatch.setattr(cp, "gather", in_order)
    chunks = []
    with torch.no_grad():
        for rank in range(4):
            local, split = cp.split_batch(packed(rows), None, rank, 4)
            with cp.computing(split):
                chunks.append(model(**local).logits)
    assert len(computed) == 3 * 2 + 2 * 1  # conv tails, states and decays of 2 Mamba layers; keys, values
    torch.testing.assert_close(torch.cat(chunks, dim=1), alone, rtol=1e-4, atol=1e-5)
