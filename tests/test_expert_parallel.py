"""Expert parallelism (training.expert_parallel_size): transformers' own (DistributedConfig with ep_size, tokens
exchanged all-to-all, FSDP2 on the other weights), checked before launch, and Axolotl's ExpertParallelPlugin
converted to it; LoRA on the experts held per process (hubtune.expert_lora), over a 16-bit or an NVFP4 base. The
slow tests run it on this machine's CPUs, 2 processes over gloo; GPUs and NCCL are not exercised."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import LlamaConfig, Qwen3MoeConfig

from hubtune import config as cfg
from hubtune import distributed
from hubtune.errors import ConfigError, HubtuneError
from hubtune.interop import axolotl
from hubtune.train import check_against_model
from readme_blocks import section_blocks

EP = {"model": {"quantization": "none"}, "training": {"distributed": "ddp", "expert_parallel_size": 4},
      "lora": {"target_modules": "attention"}}
ROOT = Path(__file__).resolve().parent.parent
QWEN_MOE = Qwen3MoeConfig(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2)


def test_what_expert_parallelism_cannot_run_is_named_before_launch():
    with pytest.raises(ConfigError) as info:
        cfg.build({"training": {"expert_parallel_size": 2, "distributed": "fsdp", "method": "kto"},
                   "lora": {"target_parameters": ["mlp.experts.gate_up_proj"], "target_modules": []}})
    text = str(info.value)
    for wanted in ("training.distributed: ddp (not fsdp)", "training.method: sft (not kto)",
                   "model.quantization: none (not nf4)"):
        assert wanted in text
    assert "target_parameters" not in text  # LoRA on the experts is held per process (hubtune.expert_lora)
    with pytest.raises(ConfigError, match="expert and context parallelism are not combined"):
        cfg.build(cfg.merge(EP, {"training": {"context_parallel_size": 2, "distributed": "fsdp"}}))
    assert cfg.build(EP).training.expert_parallel_size == 4


def test_the_base_loads_with_transformers_expert_parallel_plan(monkeypatch):
    assert distributed.expert_parallel_config(cfg.build({}).training) is None
    monkeypatch.setenv("WORLD_SIZE", "8")
    dc = distributed.expert_parallel_config(cfg.build(EP).training)
    # Experts over 4 GPUs, each pair of groups holding the same experts; every GPU reads its own batches.
    assert (dc.ep_size, dc.fsdp_size, dc.tp_size, dc.efsdp_size, dc.dp_size) == (4, 8, 1, 2, 8)
    assert dc.ep_implementation == "all_to_all" and dc.enable_expert_parallel


def test_the_model_needs_an_expert_plan_and_experts_that_split_evenly():
    config = cfg.build(EP)
    check_against_model(config, QWEN_MOE)  # 8 experts over 4 GPUs
    with pytest.raises(ConfigError, match="8 experts per layer do not split evenly over 3 GPUs"):
        check_against_model(cfg.build(cfg.merge(EP, {"training": {"expert_parallel_size": 3}})), QWEN_MOE)
    with pytest.raises(ConfigError, match="no expert-parallel plan for LlamaConfig"):
        check_against_model(config, LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                intermediate_size=128, num_hidden_layers=2))


def test_the_launch_is_plain_processes_on_a_multiple_of_the_group(monkeypatch):
    plan = distributed.plan_launch("ddp", 8, expert_parallel_size=4)
    assert plan.preset == distributed.PRESETS / "ddp.yaml" and plan.num_processes == 8
    with pytest.raises(HubtuneError, match="expert_parallel_size 4 spreads the experts over that many GPUs"):
        distributed.plan_launch("ddp", 6, expert_parallel_size=4)
    training = cfg.build(EP).training
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="does not divide the 2 process"):
        distributed.check_expert_parallel(training, "cuda")
    monkeypatch.setenv("WORLD_SIZE", "8")
    distributed.check_expert_parallel(training, "cuda")
    # LoRA on the experts: each process holds its own experts' factors, so no copies of an expert.
    with pytest.raises(ConfigError, match="4 with lora.target_parameters needs every process to hold experts of its "
                                          "own, and this launch has 8 processes"):
        distributed.check_expert_parallel(training, "cuda", lora_on_experts=True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    distributed.check_expert_parallel(training, "cuda", lora_on_experts=True)


def test_each_process_keeps_its_experts_of_pefts_factors():
    """PEFT's factors over a stack of E experts (lora_A [E·r, in] expert by expert, lora_B [out, r·E] rank by rank):
    a process's share gives its experts' deltas, and the shares gather back into the whole factors."""
    import torch

    from hubtune import expert_lora

    experts, r, out, inp = 8, 3, 5, 7
    a, b = torch.randn(experts * r, inp), torch.randn(out, r * experts)
    rows = [expert_lora.local_rows(a, experts, start, 4) for start in (0, 4)]
    columns = [expert_lora.local_columns(b, experts, start, 4) for start in (0, 4)]
    assert torch.equal(torch.cat(rows), a) and torch.equal(expert_lora.whole_columns(columns, experts), b)
    # PEFT's delta per expert (ParamWrapper.get_delta_weight), from the whole factors and from the second share.
    whole = torch.einsum("o r e, e r i -> e o i", b.reshape(out, r, experts), a.reshape(experts, r, inp))
    share = torch.einsum("o r e, e r i -> e o i", columns[1].reshape(out, r, 4), rows[1].reshape(4, r, inp))
    torch.testing.assert_close(share, whole[4:])


def test_what_peft_adapts_otherwise_than_a_regex_names_is_said():
    """GLM-5.2's regex (Axolotl's example) names its dense and shared MLPs' gate_proj, up_proj and down_proj;
    PEFT 0.21 maps those names onto the routed experts' stacked parameters on this architecture, and the run
    says which layers the regex names get no LoRA."""
    import warnings

    import torch
    from peft import get_peft_model
    from transformers import GlmMoeDsaConfig, AutoModelForCausalLM

    from hubtune.train import lora_config, regex_layers_moved

    glm = GlmMoeDsaConfig(vocab_size=902, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                          num_hidden_layers=2, first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=2,
                          num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16,
                          qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, index_topk=16, index_head_dim=16,
                          index_n_heads=2)
    example = yaml.safe_load((ROOT / "tests/data/axolotl_examples/glm_moe_dsa/glm-5.2-nvfp4-lora.yaml").read_text())
    lora = axolotl.from_axolotl(example).run_config().lora
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(glm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = get_peft_model(skeleton, lora_config(lora, model_config=glm, model=skeleton), low_cpu_mem_usage=True)
    line = regex_layers_moved(adapted, lora)
    assert line.startswith("lora.target_regex matches 6 linear layer(s) PEFT leaves without LoRA "
                           "(model.layers.0.mlp.gate_proj, ")
    assert "gate_up_proj': 32}" in line  # the fused pair at twice lora.r
    assert regex_layers_moved(adapted, lora.model_copy(update={"target_regex": None})) is None


AXOLOTL = """\
base_model: Qwen/Qwen3-30B-A3B-Instruct-2507
plugins:
  - axolotl.integrations.expert_parallel.ExpertParallelPlugin
experts_implementation: grouped_mm
expert_parallel_size: 4
datasets:
  - path: mhenrichsen/alpaca_2k_test
    type: alpaca
sequence_len: 2048
adapter: lora
lora_r: 32
lora_alpha: 16
lora_target_modules: [q_proj, k_proj, v_proj, o_proj]
micro_batch_size: 1
learning_rate: 0.0003
"""


def test_axolotls_expert_parallel_plugin_converts_and_exports_back():
    translation = axolotl.from_axolotl(yaml.safe_load(AXOLOTL))
    config = translation.run_config()
    assert (config.training.expert_parallel_size, config.training.distributed) == (4, "ddp")
    assert any("spreads each MoE layer's experts over 4 GPUs" in note for note in translation.notes)
    exported = axolotl.to_axolotl(config)
    assert exported["expert_parallel_size"] == 4
    assert exported["plugins"] == ["axolotl.integrations.expert_parallel.ExpertParallelPlugin"]
    assert axolotl.from_axolotl(exported).run_config() == config


def test_lora_on_the_experts_converts_held_per_gpu():
    data = dict(yaml.safe_load(AXOLOTL), lora_target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                lora_dropout=0.0)
    translation = axolotl.from_axolotl(data)
    assert not translation.unsupported, translation.unsupported
    config = translation.run_config()
    assert config.lora.target_parameters == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    assert (config.training.expert_parallel_size, config.training.distributed) == (4, "ddp")
    assert any("each GPU holds and trains the LoRA of its own experts" in note and "launch exactly 4 GPUs" in note
               for note in translation.notes)
    assert axolotl.from_axolotl(axolotl.to_axolotl(config)).run_config() == config
    # Over an NVFP4 base (as Axolotl's GLM-5.2 example): hubtune.nvfp4 reads each GPU's share of the experts.
    nvfp4 = axolotl.from_axolotl(dict(data, dsv4_fp4_grouped_mode="nvfp4"))
    assert not nvfp4.unsupported and nvfp4.run_config().training.expert_parallel_size == 4
    assert any("over an NVFP4 base: each of 4 GPUs reads its share" in note for note in nvfp4.notes)
    assert not any("shards the other weights with FSDP2" in note for note in nvfp4.notes)


def test_deepep_buffers_and_a_capacity_that_cannot_bind_are_noted():
    data = dict(yaml.safe_load(AXOLOTL), expert_parallel_num_nvl_bytes=4 << 30, expert_parallel_token_capacity=8192)
    translation = axolotl.from_axolotl(data)
    assert not translation.unsupported
    assert any("expert_parallel_num_nvl_bytes: settings of DeepEP's kernels" in n for n in translation.notes)
    assert any("expert_parallel_token_capacity 8192: no expert can receive" in n for n in translation.notes)
    off = axolotl.from_axolotl(dict(yaml.safe_load(AXOLOTL), expert_parallel_size=1, expert_parallel_num_nvl_bytes=1))
    assert not off.unsupported and off.run_config().training.expert_parallel_size == 1


@pytest.mark.parametrize("change,why", [
    ({"expert_parallel_token_capacity": 1024}, "4 with expert_parallel_token_capacity 1024: below micro_batch_size"),
    ({"plugins": []}, "4 without axolotl.integrations.expert_parallel.ExpertParallelPlugin"),
    ({"adapter": "qlora", "load_in_4bit": True}, "4 with a 4- or 8-bit base"),
    ({"deepspeed": "deepspeed_configs/zero3.json"}, "4 with deepspeed-zero3"),
])
def test_what_hubtunes_expert_parallelism_cannot_express_is_refused(change, why):
    refused = dict(axolotl.from_axolotl(dict(yaml.safe_load(AXOLOTL), **change)).unsupported)
    assert why in refused["expert_parallel_size"]


def test_the_docs_config_is_a_valid_expert_parallel_run():
    (body,) = [body for lang, body in section_blocks("Experts over several GPUs") if lang == "yaml"]
    config = cfg.build(yaml.safe_load(body))
    assert (config.training.expert_parallel_size, config.training.distributed) == (4, "ddp")
    assert config.model.experts_implementation == "grouped_mm" and not config.lora.target_parameters
    check_against_model(config, QWEN_MOE)


# ---- two processes on this machine's CPUs (gloo), a tiny Qwen3-MoE base ---------------------------------------
@pytest.fixture(scope="module")
def moe_base(tmp_path_factory):
    """A tiny Qwen3-MoE (8 experts per layer) with tiny-llama's tokenizer and card."""
    import shutil

    import torch
    from transformers import Qwen3MoeForCausalLM

    folder = tmp_path_factory.mktemp("moe") / "base"
    torch.manual_seed(0)
    config = Qwen3MoeConfig(**{**QWEN_MOE.to_dict(), "vocab_size": 902, "max_position_embeddings": 1024})
    Qwen3MoeForCausalLM(config).save_pretrained(folder)
    tiny = cfg.resolve_builtin("hubtune:tiny-llama")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md"):
        shutil.copy(f"{tiny}/{name}", folder / name)
    return folder


def _two_processes_env() -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_lora_on_experts_split_over_two_processes_trains_as_one_process(moe_base, tmp_path, monkeypatch):
    """`hubtune train` with the experts split over 2 processes (gloo) and LoRA on them as well as on attention: each
    process holds and trains its own experts' factors, and the run equals one process over the same batches (the
    held-out loss before training, so the split forward; both steps' losses, with the gradient norm clipping at 0.01
    over the whole adapter; the gathered adapter); a checkpoint keeps the optimizer per process, so another
    process count is refused. (tests/ep_lora_steps.py resumes from such a checkpoint.)"""
    import json

    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from data_rows import invoice_file
    from hubtune.runs import RunFolder
    from hubtune.train import check_resumable, train

    run_dir = tmp_path / "run"
    config = {"model": {"id": str(moe_base), "quantization": "none"},
              "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.0, "r": 4,
                       "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]},
              "data": {"sources": [str(invoice_file(tmp_path / "invoices.jsonl", 24))], "val_set_size": 4,
                       "max_seq_len": 384},
              "training": {"max_steps": 2, "save_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                           "warmup_steps": 0, "logging_steps": 1, "gradient_checkpointing": False,
                           "learning_rate": 1e-3, "max_grad_norm": 0.01, "distributed": "ddp",
                           "expert_parallel_size": 2},
              "eval": {"tasks": [], "regression_set": None}, "output": {"dir": str(run_dir)}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    hubtune = str(Path(sys.executable).parent / "hubtune")
    proc = subprocess.run([hubtune, "train", str(path), "--num-processes", "2"], cwd=tmp_path,
                          env=_two_processes_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())
    assert "effective batch 4 (2 per device x 1 accumulation x 2 processes)" in out
    assert "experts 4 of 8 per layer in each process (expert parallelism over 2" in out  # read off the weights
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("optimizer-*")) == ["optimizer-rank0-of-2.pt",
                                                                      "optimizer-rank1-of-2.pt"]
    split = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()

    # One process, the same 4 rows a step (2 from each process above), the whole experts.
    one = cfg.merge(config, {"training": {"distributed": "none", "expert_parallel_size": 1, "micro_batch_size": 4},
                             "output": {"dir": str(tmp_path / "one")}})
    reference = train(cfg.build(one))
    whole = load_file(reference.adapter / "adapter_model.safetensors")
    assert sorted(split) == sorted(whole)  # the names and shapes of PEFT's adapter, experts whole
    for name, value in whole.items():
        assert split[name].shape == value.shape, name
        torch.testing.assert_close(split[name], value, rtol=1e-3, atol=1e-5)
    assert split["base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight"].shape == (4 * 8, 64)

    def losses(lines):
        return [(row["step"], row.get("loss", row.get("eval_loss"))) for row in map(json.loads, lines)]

    expected = losses((reference.path / "metrics.jsonl").read_text().splitlines())
    assert [step for step, _ in losses(metrics)] == [step for step, _ in expected] == [0, 1, 2, 2]
    assert [v for _, v in losses(metrics)] == pytest.approx([v for _, v in expected], abs=1e-5)

    # Another process count is refused before any weight loads; the same count goes on.
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="saved by 2 processes"):
        check_resumable(RunFolder.open(run_dir), cfg.load(path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_resumable(RunFolder.open(run_dir), cfg.load(path))
    # The adapter loads on the base loaded whole, experts included, and changes its logits.
    base = AutoModelForCausalLM.from_pretrained(moe_base, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 200, 300, 17]])
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, str(run_dir / "adapter"))(ids).logits
    assert (after - before).abs().max() > 1e-4


@pytest.mark.slow
def test_lora_on_split_experts_steps_and_resumes_as_the_whole_model(moe_base, tmp_path):
    """Both ways the experts split over 2 processes, transformers' (a 16-bit base) and hubtune.nvfp4's (the same
    weights in ModelOpt's NVFP4 layout, as Axolotl's GLM-5.2 example asks): LoRA on them starts from, steps (two
    AdamW steps, the clip acting on the whole adapter's norm) and gathers to what the whole base does, and a model
    resumed from a checkpoint (adapter gathered, optimizer per process) steps to the same factors
    (tests/ep_lora_steps.py)."""
    from nvfp4_checkpoint import write

    folder = tmp_path / "nvfp4"
    write(moe_base, folder, tmp_path / "sixteen")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", str(ROOT / "tests" / "ep_lora_steps.py"), str(moe_base),
                           str(folder), str(tmp_path / "checkpoints")],
                          env=_two_processes_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The two processes write at once: one's line can run into the other's, so each figure is read as a number.
    number = r"(\d+\.\d+(?:e[-+]\d+)?)"
    lines = re.findall(rf"rank (\d) (16-bit|nvfp4): experts (\d) of 8 per layer in each process \(expert parallelism "
                       rf"over 2, tokens exchanged all-to-all(; the NVFP4 experts read in part)?\); (\d+) expert "
                       rf"factors of (\d+); start {number}; losses {number} {number} whole {number} {number}; "
                       rf"gradient {number}; norm {number} whole {number}; resumed {number}; gathered {number}",
                       proc.stdout)
    assert sorted((rank, kind) for rank, kind, *_ in lines) == [("0", "16-bit"), ("0", "nvfp4"), ("1", "16-bit"),
                                                               ("1", "nvfp4")], proc.stdout[-3000:]
    for _, kind, held, read_in_part, experts, factors, start, *figures in lines:
        first, second, whole_first, whole_second, gradient, norm, whole_norm, resumed, gathered = map(float, figures)
        assert (held, experts, factors) == ("4", "8", "16")  # 2 layers x 2 stacks x (A, B); q and v the rest
        assert bool(read_in_part) == (kind == "nvfp4")
        assert float(start) == 0 and resumed == 0  # the whole adapter's share; resumed bit for bit
        assert (first, second) == pytest.approx((whole_first, whole_second), abs=1e-5) and second < first
        assert gradient < 1e-6 and norm == pytest.approx(whole_norm, rel=1e-5) and norm > 0.01
        assert gathered < 5e-5
