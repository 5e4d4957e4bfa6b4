"""The memory estimate against published peak-memory measurements of other stacks, each within ±25%.

Each anchor names its source (repository, file, commit), the settings it was measured with, and the figure
(the largest memory PyTorch allocated during training). hubtune's estimate is given the same settings:
the method, the adapted modules, batch x the longest sequence, checkpointing, the optimizer, and how the
loss is computed (TRL's fused head, or the whole vocabulary in float32 as plain transformers and LitGPT do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from hubtune import memory
from hubtune.memory import GB, GIB, Settings, architecture, estimate, reference_config

LLAMA_2_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
              "max_position_embeddings": 4096}  # meta-llama/Llama-2-7b-hf config.json


def shipped(name: str) -> memory.Architecture:
    return architecture(json.loads(reference_config(name).read_text()), name)


@dataclass(frozen=True)
class Anchor:
    source: str  # repository, file and commit of the published figure
    model: str
    settings: Settings
    figure: float
    unit: float  # GB or GiB, as published

    def architecture(self) -> memory.Architecture:
        return architecture(LLAMA_2_7B, self.model) if self.model == "Llama-2-7b" else shipped(self.model)


# PEFT's method comparison: Llama-3.2-3B in bfloat16 on one L40S, MetaMathQA, batch 4 of at most 768 tokens,
# no checkpointing, torch AdamW, adapters kept in float32, transformers' own float32 loss.
PEFT = Settings(method="lora", seq_len=768, micro_batch=4, lora_dropout=0.0, target_modules="qv",
                gradient_checkpointing=False, optimizer="adamw_torch", loss="float32")
PEFT_RESULTS = "huggingface/peft method_comparison/MetaMathQA/results/"
# LitGPT's resource tables (tutorials/resource-tables.md, 2023-10-20, 1 x A100 40GB, bf16-true): finetune/lora.py
# with r 8 on queries and values, dropout 0.05, no checkpointing, AdamW; Alpaca, whose longest example is
# 1,304 Llama 2 tokens; cross-entropy over the whole vocabulary.
LITGPT = Settings(method="lora", seq_len=1304, micro_batch=1, lora_r=8, lora_dropout=0.05, target_modules="qv",
                  gradient_checkpointing=False, optimizer="adamw_torch", loss="float32")
LITGPT_TABLE = "Lightning-AI/litgpt tutorials/resource-tables.md @4839345a97a0a90bc5f2361664b04d665c9a0e89"

ANCHORS = {
    "peft lora r32 q,v": Anchor(
        f"{PEFT_RESULTS}lora--llama-3.2-3B-rank32.json @0a179c1e8659ab4f7df0369b9b03943cfe470ff1",
        "Llama-3.2-3B", Settings(**{**PEFT.__dict__, "lora_r": 32}), 22_273_851_392 / GB, GB),
    "peft lora r64 q,v": Anchor(
        f"{PEFT_RESULTS}lora--llama-3.2-3B-rank64.json @18e07f189c06cbc6472e4e3ec180358319de8175",
        "Llama-3.2-3B", Settings(**{**PEFT.__dict__, "lora_r": 64}), 22_540_189_696 / GB, GB),
    "peft lora r10 mlp": Anchor(
        f"{PEFT_RESULTS}lora--llama-3.2-3B-rank10-target-mlp.json @1948110ce61086030772abf36aa9396c5c3e6739",
        "Llama-3.2-3B", Settings(**{**PEFT.__dict__, "lora_r": 10,
                                    "target_modules": ["gate_proj", "up_proj", "down_proj"]}), 24_712_839_168 / GB, GB),
    "peft full fine-tuning": Anchor(
        f"{PEFT_RESULTS}full-finetuning--llama-3.2-3B-lr_0.00001.json @0a179c1e8659ab4f7df0369b9b03943cfe470ff1",
        "Llama-3.2-3B", Settings(**{**PEFT.__dict__, "method": "full"}), 37_241_225_216 / GB, GB),
    "litgpt 7B lora, micro-batch 1": Anchor(LITGPT_TABLE, "Llama-2-7b", LITGPT, 21.30, GB),
    "litgpt 7B lora, micro-batch 2": Anchor(LITGPT_TABLE, "Llama-2-7b",
                                            Settings(**{**LITGPT.__dict__, "micro_batch": 2}), 29.07, GB),
    "litgpt 7B nf4": Anchor(LITGPT_TABLE, "Llama-2-7b",
                            Settings(**{**LITGPT.__dict__, "method": "qlora", "double_quant": False}), 14.14, GB),
    "litgpt 7B nf4-dq": Anchor(LITGPT_TABLE, "Llama-2-7b", Settings(**{**LITGPT.__dict__, "method": "qlora"}),
                               13.84, GB),
    "litgpt 13B lora": Anchor(LITGPT_TABLE, "Llama-2-13b-hf", LITGPT, 38.12, GB),
    "litgpt 13B nf4": Anchor(LITGPT_TABLE, "Llama-2-13b-hf",
                             Settings(**{**LITGPT.__dict__, "method": "qlora", "double_quant": False}), 23.14, GB),
    "litgpt 13B nf4-dq": Anchor(LITGPT_TABLE, "Llama-2-13b-hf", Settings(**{**LITGPT.__dict__, "method": "qlora"}),
                                22.55, GB),
    # torchtune's Llama 3.1 8B QLoRA recipe on one RTX 4090: r 8 on all linear layers, dropout 0, activation
    # checkpointing, batch 2 of packed 2,048-token rows, fused chunked loss.
    "torchtune 8B qlora": Anchor("pytorch/torchtune README.md (Llama 3.1 8B QLoRA, 1 x RTX 4090)", "Llama-3.1-8B",
                                 Settings(seq_len=2048, micro_batch=2, lora_r=8, lora_dropout=0.0), 7.4, GIB),
    # Axolotl's GLM-4.5-Air QLoRA example on one 80 GB GPU: NF4 base with its stacked experts quantized too
    # (quantize_moe_experts), r 16 on q/k/v/o, dropout 0, checkpointing, packed rows of 2,048 tokens, micro-batch
    # 2, bitsandbytes' 8-bit AdamW, Cut Cross Entropy's chunked loss.
    "axolotl glm-4.5-air qlora": Anchor(
        "axolotl-ai-cloud/axolotl examples/glm45/README.md @067b021c8b87a9e5e380b9173c704cf7340e30f5 "
        "(QLoRA, 1x80GB @ ~63.4GiB/GPU; examples/glm45/glm-45-air-qlora.yaml)", "GLM-4.5-Air",
        Settings(seq_len=2048, micro_batch=2, lora_r=16, lora_dropout=0.0,
                 target_modules=["q_proj", "v_proj", "k_proj", "o_proj"], optimizer="adamw_8bit",
                 expert_quantization="nf4"), 63.4, GIB),
}


@pytest.mark.parametrize("name", ANCHORS)
def test_the_estimate_lands_within_a_quarter_of_the_published_peak(name):
    anchor = ANCHORS[name]
    got = estimate(anchor.architecture(), anchor.settings).total / anchor.unit
    assert abs(got - anchor.figure) <= 0.25 * anchor.figure, (
        f"{name}: {got:.2f} against {anchor.figure:.2f} ({anchor.source})")


def test_there_are_a_dozen_anchors_from_several_stacks():
    assert len(ANCHORS) >= 12
    stacks = {a.source.split()[0] for a in ANCHORS.values()}
    assert stacks >= {"huggingface/peft", "Lightning-AI/litgpt", "pytorch/torchtune"}


def test_full_fine_tuning_holds_the_larger_of_gradients_and_activations():
    a = shipped("Llama-3.2-3B")
    s = ANCHORS["peft full fine-tuning"].settings
    got = estimate(a, s).breakdown
    params = a.parameters()["total"]
    activations = sum(v for k, v in got.items() if k.startswith(("activations", "logits")))
    weights, optimizer = got["weights: 16-bit"], got["optimizer states (adamw_torch)"]
    assert weights == 2 * params and optimizer == 4 * params
    tensors = weights + optimizer + max(2 * params, activations)
    assert sum(v for k, v in got.items() if not k.startswith("framework")) == tensors
    short = Settings(**{**s.__dict__, "seq_len": 64, "micro_batch": 1})  # few activations: the gradients dominate
    small = estimate(a, short).breakdown
    assert small["gradients, beyond the activations freed by then"] > 0


def test_the_float32_loss_holds_the_whole_vocabulary():
    a = shipped("Llama-3.2-3B")
    fused = estimate(a, Settings(gradient_checkpointing=False))
    unfused = estimate(a, Settings(gradient_checkpointing=False, loss="float32"))
    tokens = 2 * 1024
    assert unfused.total - fused.total > tokens * a.vocab * 8 * 0.95  # float32 log-probabilities and their gradient
    assert fused.notes and not unfused.notes


def test_adapters_on_queries_and_values_alone_save_less_than_on_every_linear_layer():
    a = shipped("Llama-3.1-8B")
    for method in ("qlora", "lora"):
        qv = memory.layer_activation_bytes(a, Settings(method=method, target_modules="qv", lora_dropout=0), 1024)
        every = memory.layer_activation_bytes(a, Settings(method=method, lora_dropout=0), 1024)
        assert qv < 0.9 * every, (method, qv, every)
