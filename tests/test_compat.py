"""Each workaround in hubtune/compat.py against the upstream behaviour it corrects. When one of these
fails after an upgrade, upstream changed: check the workaround is still needed, then update or remove
it and its MEASURED versions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hubtune import compat
from hubtune import config as cfg


def cpu_has_avx512_bf16() -> bool:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in text


@pytest.fixture(scope="module")
def tiny_4bit():
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    return lambda: AutoModelForCausalLM.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama"), dtype=torch.float32,
                                                        quantization_config=quant)


def test_trl_still_casts_the_adapters_of_a_quantized_model_to_bf16(tiny_4bit, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model = get_peft_model(tiny_4bit(), LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    tokenizer = AutoTokenizer.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama"))
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                               "completion": [{"role": "assistant", "content": "hello"}]}])
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=rows,
                         args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1))
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.bfloat16}, (
        "TRL no longer casts adapters to bf16: compat.restore_adapter_dtype may be removed")
    assert compat.restore_adapter_dtype(trainer.model, torch.float32) == len(trainable)
    assert {p.dtype for p in trainable} == {torch.float32}
    assert compat.restore_adapter_dtype(trainer.model, torch.float32) == 0  # nothing left to correct


@pytest.mark.skipif(not cpu_has_avx512_bf16(), reason="the repack happens only on CPUs with AVX512-BF16")
def test_bitsandbytes_still_repacks_4bit_weights_at_a_no_grad_forward(tiny_4bit):
    ids = torch.tensor([[1, 5, 9, 14]])

    def quantized_state(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == torch.uint8}

    drifting = tiny_4bit()
    before = quantized_state(drifting)
    with torch.no_grad():
        drifting(ids)
    after = quantized_state(drifting)
    assert any(not torch.equal(before[n], after[n]) or before[n].shape != after[n].shape for n in before), (
        "bitsandbytes no longer repacks 4-bit weights on AVX512-BF16 CPUs: compat.keep_4bit_weights_exact may go")

    kept = tiny_4bit()
    assert compat.keep_4bit_weights_exact(kept) > 0
    before = quantized_state(kept)
    with torch.no_grad():
        kept(ids)
    assert all(torch.equal(before[n], p) for n, p in quantized_state(kept).items())


def test_the_repack_switch_still_exists_where_it_matters(tiny_4bit):
    import bitsandbytes as bnb

    model = tiny_4bit()
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(hasattr(m, "support_avx512bf16_for_cpu") for m in layers), (
        "bitsandbytes renamed its AVX512-BF16 switch: update compat.keep_4bit_weights_exact")



def test_llama4s_causal_lm_still_hides_its_backbone_from_base_model():
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    from hubtune.compat import reachable_backbone

    model = Llama4ForCausalLM(Llama4TextConfig(vocab_size=64, hidden_size=32, intermediate_size=32,
                                               intermediate_size_mlp=32, num_hidden_layers=1, num_attention_heads=2,
                                               num_key_value_heads=1, head_dim=16, num_local_experts=2))
    assert model.base_model is model  # fails once transformers fixes base_model_prefix: remove the workaround
    assert reachable_backbone(model) and model.base_model is model.model
    assert not reachable_backbone(model)


def test_peft_param_wrappers_over_a_parametrized_weight_still_leave_their_proxy_and_read_a_stale_weight():
    # Both faults lora_on_parametrized_experts corrects per wrapper; tests/test_experts.py trains through the
    # corrected wrappers (the chain stays one long, every LoRA factor gets a gradient).
    assert compat._param_wrapper_faults() == {"proxy_left", "stale_inner"}


def test_peft_still_misses_the_adapters_keys_under_fsdp1():
    """Under FSDP1 PEFT 0.21 finds no adapter key and loads none, and a module trained in full inside a unit
    (modules_to_save) fails the checkpoint's save with a KeyError (compat.peft_keys_under_nested_fsdp): the
    2-process FSDP1 run in tests/test_distributed.py checkpoints and resumes the adapter and such a module through
    the Trainer with the corrections."""
    import peft
    import peft.peft_model
    from peft.tuners import tuners_utils

    faults = ["inner_names", "prefix_dropped", "trained_in_full_inner_names"]
    assert compat._peft_under_fsdp1_faults() == set(faults)
    try:
        assert compat.peft_keys_under_nested_fsdp() == faults
        assert compat.peft_keys_under_nested_fsdp() == faults  # once
        assert compat._peft_under_fsdp1_faults() == set(faults)  # upstream, as it was
    finally:
        tuners_utils._get_tuner_state_dict_key_prefixes = tuners_utils._get_tuner_state_dict_key_prefixes.upstream
        peft.set_peft_model_state_dict = peft.set_peft_model_state_dict.upstream
        peft.get_peft_model_state_dict = peft.peft_model.get_peft_model_state_dict = \
            peft.get_peft_model_state_dict.upstream


def test_modules_trained_in_full_save_and_load_under_fsdp1_names():
    """With the corrections, a module trained in full inside a nested FSDP1 unit is saved under PEFT's own key and
    loaded back, on a model wrapped as FSDP1 names and keys it."""
    import peft
    import peft.peft_model
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners import tuners_utils

    model = get_peft_model(torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))),
                           LoraConfig(r=1, target_modules=["0.0"], modules_to_save=["0.1"], init_lora_weights=False))
    expected = {k: v.clone() for k, v in peft.get_peft_model_state_dict(model).items()}
    model.base_model.model[0] = compat._AsFSDP1.wrap(model.base_model.model[0])
    wrapped = compat._AsFSDP1.wrap(model)
    try:
        compat.peft_keys_under_nested_fsdp()
        saved = peft.get_peft_model_state_dict(wrapped)
        assert set(saved) == set(expected) and "base_model.model.0.1.weight" in saved
        peft.set_peft_model_state_dict(model, {k: torch.full_like(v, 3.0) for k, v in saved.items()})
        assert all((p == 3.0).all() for n, p in model.named_parameters() if "modules_to_save" in n)
    finally:
        tuners_utils._get_tuner_state_dict_key_prefixes = tuners_utils._get_tuner_state_dict_key_prefixes.upstream
        peft.set_peft_model_state_dict = peft.set_peft_model_state_dict.upstream
        peft.get_peft_model_state_dict = peft.peft_model.get_peft_model_state_dict = \
            peft.get_peft_model_state_dict.upstream
