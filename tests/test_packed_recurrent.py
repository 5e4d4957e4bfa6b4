"""Packed rows through layers that carry a state from token to token: Nemotron-H's Mamba-2 layers restart at
each packed example (hubtune.context_parallel with a group of one, or seq_idx for mamba-ssm's kernels), and
the other families' recurrent mixers run per example or hand the kernels the boundaries (hubtune.recurrent);
packing is refused before training for the rest (RWKV, xLSTM)."""

from __future__ import annotations

import pytest
import torch
from transformers import GraniteMoeHybridConfig, LlamaConfig, NemotronHConfig, RwkvConfig

from context_parallel_same import each_alone, examples, grads, packed, tiny_nemotron_h
from hubtune import config as cfg
from hubtune import context_parallel as cp
from hubtune import recurrent
from hubtune.errors import ConfigError
from hubtune.train import check_against_model


def packed_logits_and_grads(model, rows):
    model.zero_grad()
    batch = packed(rows)
    tokens = (batch["labels"] != -100).sum()
    out = model(**batch, num_items_in_batch=tokens, use_cache=False)  # as TRL's SFTTrainer calls it
    out.loss.backward()
    return out.logits.detach(), out.loss.item(), grads(model)


def assert_packed_rows_equal(model, rows, alone, loss_alone, grads_alone):
    """The packed rows' logits, loss and every gradient are each_alone's, without and then with gradient
    checkpointing (which recomputes the layers in the backward pass)."""
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        logits, loss, got = packed_logits_and_grads(model, rows)
        torch.testing.assert_close(logits, alone, rtol=1e-5, atol=1e-5)
        assert loss == pytest.approx(loss_alone, rel=1e-6)
        assert got.keys() == grads_alone.keys()
        for name, grad in got.items():
            torch.testing.assert_close(grad, grads_alone[name], rtol=1e-4, atol=1e-5, msg=name)


def test_packed_rows_give_each_examples_own_logits_loss_and_gradients():
    """A tiny Nemotron-H (Mamba-2 chunks of 4 tokens, conv kernel 4, examples starting inside and across chunks):
    transformers' forward carries each example's Mamba state into the next (the gap below); with the blocks
    patched, every packed row's logits, the loss and all gradients are each example's run alone, gradient
    checkpointing (which recomputes the blocks in the backward pass) included."""
    model = tiny_nemotron_h()
    rows = examples()
    alone, loss_alone, grads_alone = each_alone(model, rows)
    leaked, _, _ = packed_logits_and_grads(model, rows)
    assert (leaked - alone).abs().max() > 0.1  # the state leaks without hubtune's forward
    with torch.no_grad():  # with a cache (generation: its left padding restarts position_ids too)
        cached = model(**packed(rows), use_cache=True).logits

    assert cp.keep_packed_examples_apart(model) == 2
    assert_packed_rows_equal(model, rows, alone, loss_alone, grads_alone)
    # One example per row (no restart after the first token) and forwards with a cache take transformers' own.
    with torch.no_grad():
        one = rows[2][1][None]
        torch.testing.assert_close(model(input_ids=one).logits, alone[2:, 3:], rtol=1e-5, atol=1e-5)
        assert torch.equal(model(**packed(rows), use_cache=True).logits, cached)


def test_seq_idx_for_mamba_ssm_is_built_from_position_ids_and_handed_to_the_kernels(monkeypatch):
    """Where mamba-ssm's and causal-conv1d's CUDA kernels run, the block hands the mixer seq_idx (each token's
    example, from 0, int32, as Axolotl's get_seq_idx), which transformers' mixer passes on to the kernels it
    calls. The kernels cannot run here: they are stood in for by recorders at the point where transformers
    calls them, which is as far as this test reaches."""
    from transformers.models.nemotron_h import modeling_nemotron_h as nh

    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [5, 6, 0, 1, 2, 3, 0, 1, 0]])
    assert cp.seq_idx(positions).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 0, 1, 1, 1, 1, 2, 2, 3]]
    assert cp.seq_idx(positions).dtype == torch.int32
    mask = torch.tensor([[1] * 7 + [0, 0], [1] * 9])  # padding keeps the example before it: non-decreasing
    assert cp.seq_idx(positions, mask)[0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]

    model = tiny_nemotron_h()
    cp.keep_packed_examples_apart(model)
    monkeypatch.setattr(cp, "kernels_keep_examples_apart", lambda: True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # the kernel branch, on this CPU
    handed = []

    def fused(zxbcdt, *args, seq_idx=None, **kwargs):  # mamba_split_conv1d_scan_combined, in training
        handed.append(("fused", seq_idx))
        return torch.zeros(*zxbcdt.shape[:2], model.config.hidden_size)

    def conv(x, weight, bias=None, activation=None, seq_idx=None, **kwargs):  # causal_conv1d_fn, in evaluation
        handed.append(("conv", seq_idx))
        return x

    def scan(x, *args, seq_idx=None, **kwargs):  # mamba_chunk_scan_combined, in evaluation
        handed.append(("scan", seq_idx))
        return torch.zeros_like(x)

    monkeypatch.setattr(nh, "mamba2_split_conv1d_scan_combined", fused)
    monkeypatch.setattr(nh, "causal_conv1d_fn", conv)
    monkeypatch.setattr(nh, "mamba2_chunk_scan", scan)
    batch = packed(examples())
    expected = cp.seq_idx(batch["position_ids"])
    model(**batch, use_cache=False)
    model.eval()
    with torch.no_grad():
        model(**batch, use_cache=False)
    assert [kind for kind, _ in handed] == ["fused", "fused", "conv", "scan", "conv", "scan"]
    for _, given in handed:
        assert torch.equal(given, expected)


SMALL = {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 48, "initializer_range": 0.1, "dtype": "float32"}
DELTA = {"head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
         "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4, "num_hidden_layers": 3,
         "layer_types": ["linear_attention", "full_attention", "linear_attention"]}
EXPERTS = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
MAMBA2 = {"mamba_d_state": 8, "mamba_d_conv": 4, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_n_groups": 2,
          "mamba_chunk_size": 4}
CONV = {"layer_types": ["conv", "full_attention", "conv"], "num_hidden_layers": 3, "conv_L_cache": 4}
# Tiny members of each family that hubtune keeps apart through its recurrent mixers (hubtune.recurrent): both
# layer kinds, conv windows of 4 tokens (Falcon-H1: Mamba-2 chunks of 4), examples starting inside and across.
FAMILIES = {
    "qwen3_next": ("Qwen3NextConfig", {**DELTA, **EXPERTS, "shared_expert_intermediate_size": 16}),
    "qwen3_5_text": ("Qwen3_5TextConfig", DELTA),
    "qwen3_5_moe_text": ("Qwen3_5MoeTextConfig", {**DELTA, **EXPERTS, "shared_expert_intermediate_size": 16}),
    "lfm2": ("Lfm2Config", CONV),
    "lfm2_moe": ("Lfm2MoeConfig", {**CONV, **EXPERTS, "num_dense_layers": 1}),
    "falcon_h1": ("FalconH1Config", {"num_hidden_layers": 2, "head_dim": 8, "mamba_d_ssm": 32, "mamba_n_heads": 4,
                                     "mamba_d_head": 8, "mamba_d_state": 8, "mamba_n_groups": 2, "mamba_d_conv": 4,
                                     "mamba_chunk_size": 4}),
    "kimi_linear": ("KimiLinearConfig", {"num_hidden_layers": 3, "num_key_value_heads": 4,
                                         "layer_types": ["linear_attention", "full_attention", "linear_attention"],
                                         "mlp_layer_types": ["dense", "sparse", "dense"], "num_experts_per_tok": 2,
                                         "num_local_experts": 4, "moe_intermediate_size": 16, "linear_head_dim": 8,
                                         "linear_num_heads": 4, "kv_lora_rank": 16, "qk_rope_head_dim": 8,
                                         "qk_nope_head_dim": 8, "v_head_dim": 16, "pad_token_id": 0,
                                         "bos_token_id": 1, "eos_token_id": 2}),
    "jamba": ("JambaConfig", {"num_hidden_layers": 3, "attn_layer_period": 2, "attn_layer_offset": 1,
                              "expert_layer_period": 2, "expert_layer_offset": 0, "num_experts": 4,
                              "num_experts_per_tok": 2, "mamba_d_state": 8, "mamba_d_conv": 4, "mamba_expand": 2,
                              "mamba_dt_rank": 8, "use_mamba_kernels": False}),
    "bamba": ("BambaConfig", {**MAMBA2, "num_hidden_layers": 3, "attn_layer_indices": [1]}),
    "granitemoehybrid": ("GraniteMoeHybridConfig", {**MAMBA2, "num_hidden_layers": 3, "num_local_experts": 4,
                                                    "num_experts_per_tok": 2,
                                                    "layer_types": ["mamba", "attention", "mamba"]}),
    "zamba2": ("Zamba2Config", {"num_hidden_layers": 2, "layers_block_type": ["mamba", "hybrid"], "mamba_d_state": 8,
                                "mamba_d_conv": 4, "mamba_headdim": 8, "mamba_ngroups": 2, "chunk_size": 4,
                                "n_mamba_heads": 8, "attention_head_dim": 16, "num_mem_blocks": 1}),
    "zamba": ("ZambaConfig", {"num_hidden_layers": 3, "layers_block_type": ["linear_attention", "hybrid", "hybrid"],
                              "mamba_d_state": 8, "mamba_d_conv": 4, "n_mamba_heads": 2, "attention_head_dim": 8,
                              "mamba_dt_rank": 8, "use_mamba_kernels": False}),
    "olmo_hybrid": ("OlmoHybridConfig", {**DELTA, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
    "minimax": ("MiniMaxConfig", {"num_hidden_layers": 3, "head_dim": 8, "block_size": 4, "num_local_experts": 4,
                                  "num_experts_per_tok": 2,
                                  "layer_types": ["linear_attention", "full_attention", "linear_attention"]}),
    "recurrent_gemma": ("RecurrentGemmaConfig", {"num_hidden_layers": 3, "lru_width": 32, "conv1d_width": 4,
                                                 "block_types": ["recurrent", "attention", "recurrent"],
                                                 "attention_window_size": 64}),
    # Pure Mamba models: no attention; their forward drops position_ids (hubtune reads them before it does).
    "mamba2": ("Mamba2Config", {"num_hidden_layers": 2, "state_size": 8, "num_heads": 8, "head_dim": 8,
                                "n_groups": 2, "conv_kernel": 4, "chunk_size": 4, "expand": 2}),
    "mamba": ("MambaConfig", {"num_hidden_layers": 2, "state_size": 8, "conv_kernel": 4, "expand": 2,
                              "use_mambapy": False}),
    "falcon_mamba": ("FalconMambaConfig", {"num_hidden_layers": 2, "state_size": 8, "conv_kernel": 4, "expand": 2}),
}


def tiny_config(family):
    import transformers

    name, fields = FAMILIES[family]
    return getattr(transformers, name)(**{**SMALL, **fields})


def tiny(family):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family)).float()
    assert model.config.model_type == family
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_rows_keep_examples_apart_in_other_recurrent_families(family):
    """Each family's recurrent mixers (Gated DeltaNet, short convolutions, Mamba and Mamba-2, Kimi's KDA, MiniMax's
    lightning attention, RecurrentGemma's conv and RG-LRU), run on
    each packed example alone with a fresh state, whether position_ids reach the layers or only the model (Granite
    4.0's hybrids, Zamba, the pure Mamba models, which also take position_ids only to drop them): the packed rows' logits, loss and gradients are each example's
    run alone, gradient checkpointing included; transformers' forward carries the state over (the gap below)."""
    model = tiny(family)
    rows = examples()
    alone, loss_alone, grads_alone = each_alone(model, rows)
    leaked, _, _ = packed_logits_and_grads(model, rows)
    assert (leaked - alone).abs().max() > 0.05  # the state leaks without hubtune's forward
    assert recurrent.packing_problem(model.config) is None

    assert cp.keep_packed_examples_apart(model) == (3 if family == "zamba" else 2)  # Zamba: a Mamba per hybrid
    assert_packed_rows_equal(model, rows, alone, loss_alone, grads_alone)
    if family in ("mamba", "mamba2", "falcon_mamba"):
        # TRL's fused loss calls the backbone itself, with position_ids (which the model's forward drops).
        batch = {key: value for key, value in packed(rows).items() if key != "labels"}
        with torch.no_grad():
            hidden = model.backbone(**batch, use_cache=False).last_hidden_state
            torch.testing.assert_close(model.lm_head(hidden), alone, rtol=1e-5, atol=1e-5)


def test_granite_attention_keeps_packed_examples_apart():
    """Granite 4.0's model builds its attention mask without position_ids, so packed examples attend to the ones
    before them even with no Mamba layer (Granite 4.0 Micro); hubtune builds the mask with them."""
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(GraniteMoeHybridConfig(**SMALL, **MAMBA2, num_hidden_layers=2,
                                                                    layer_types=["attention", "attention"])).float()
    rows = examples()
    with torch.no_grad():
        alone = torch.stack([torch.cat([model(input_ids=e[None], use_cache=False).logits[0] for e in row])
                             for row in rows])
        assert (model(**packed(rows), use_cache=False).logits - alone).abs().max() > 0.1
        assert cp.keep_packed_examples_apart(model) == 0
        torch.testing.assert_close(model(**packed(rows), use_cache=False).logits, alone, rtol=1e-5, atol=1e-5)


def _record(handed, kind, result):
    def kernel(*args, **kwargs):
        handed.append((kind, args[0].shape, {k: kwargs.get(k) for k in ("cu_seqlens", "seq_idx")}))
        return result(*args)

    return kernel


def conv(x, *rest):
    return x


def delta(q, k, v, *rest):
    return torch.zeros_like(v), None


# The kernels transformers calls in each family's mixer (its module's names), as recorders, and which boundaries
# each must be given.
HANDOVER = {
    **{family: {"causal_conv1d_fn": ("seq_idx", conv), "torch_chunk_gated_delta_rule": ("cu_seqlens", delta)}
       for family in ("qwen3_5_text", "olmo_hybrid")},
    "kimi_linear": {"causal_conv1d_fn": ("seq_idx", conv), "chunk_kimi_delta_attention": ("cu_seqlens", delta)},
    "lfm2": {"causal_conv1d_fn": ("seq_idx", conv)},
    **{family: {"causal_conv1d_fn": ("seq_idx", conv), "mamba2_chunk_scan": ("seq_idx", lambda x, *_: torch.zeros_like(x))}
       for family in ("falcon_h1", "bamba", "granitemoehybrid", "zamba2", "mamba2")},
}


@pytest.mark.parametrize("family", sorted(HANDOVER))
def test_boundaries_are_handed_to_the_kernels_on_cuda(family, monkeypatch):
    """Where FLA's, causal-conv1d's and mamba-ssm's CUDA kernels run, each mixer gets the batch as one row of its
    examples with their boundaries (cu_seqlens for FLA's delta rules, which want a batch of one; seq_idx for the
    convolutions and Mamba-2's scan), which transformers' mixer passes on to its kernels. The kernels cannot run
    here: recorders stand in for them where transformers calls them, which is as far as this test reaches."""
    import importlib

    model = tiny(family).eval()
    module = importlib.import_module(type(model).__module__)
    cp.keep_packed_examples_apart(model)
    monkeypatch.setattr(recurrent, "kernels_take_boundaries", lambda mixer: True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # the kernel branch, on this CPU
    handed = []
    for name, (_, result) in HANDOVER[family].items():
        monkeypatch.setattr(module, name, _record(handed, name, result))
    batch = packed(examples())
    with torch.no_grad():
        model(**batch, use_cache=False)
    flat = cp.seq_idx(batch["position_ids"].reshape(1, -1))  # each row's examples numbered after the last's
    starts = torch.cat([torch.nonzero(torch.diff(flat[0], prepend=flat[0, :1] - 1)).flatten(),
                        torch.tensor([flat.shape[1]])])
    assert sorted({name for name, *_ in handed}) == sorted(HANDOVER[family]) and len(handed) == 2 * len(HANDOVER[family])
    for name, shape, given in handed:
        boundary = HANDOVER[family][name][0]
        assert shape[0] == 1 and flat.shape[1] in shape  # one row of all examples
        if boundary == "seq_idx":
            assert torch.equal(given["seq_idx"], flat.to(torch.int32))
        else:  # (transformers passes each kernel only the arguments its signature names)
            assert torch.equal(given["cu_seqlens"], starts) and given["cu_seqlens"].dtype == torch.int64


TINY = {"num_hidden_layers": 2, "hidden_size": 64, "vocab_size": 64}


def nemotron_h():
    return NemotronHConfig(layers_block_type=["linear_attention", "full_attention", "mlp"], vocab_size=64)


@pytest.mark.parametrize("model_config, layers", [
    (RwkvConfig(**TINY), "RWKV")])
def test_other_state_space_and_linear_attention_layers_are_named(model_config, layers):
    why = recurrent.packing_problem(model_config)
    assert why.startswith(f"the model's {layers}") and f"(only for {recurrent.AWARE_IN_WORDS})" in why


def test_packing_is_refused_for_other_state_space_and_linear_attention_models():
    model_config = RwkvConfig(**TINY, context_length=2048)
    config = cfg.build({"model": {"id": "hubtune:tiny-llama"}, "data": {"sources": ["x.jsonl"], "packing": True},
                        "lora": {"dropout": 0.0}},
                       check_paths=False)
    with pytest.raises(ConfigError) as err:
        check_against_model(config, model_config)
    assert dict(err.value.problems) == {"data.packing": (
        f"true packs several examples into each row, but {recurrent.packing_problem(model_config)}; set "
        f"data.packing: false (base: hubtune:tiny-llama)")}
    padding_free = config.model_copy(update={"data": config.data.model_copy(update={"packing": False,
                                                                                     "padding_free": True})})
    with pytest.raises(ConfigError, match="data.padding_free: false"):
        check_against_model(padding_free, model_config)
    unpacked = config.model_copy(update={"data": config.data.model_copy(update={"packing": False})})
    check_against_model(unpacked, model_config)


def test_packing_is_allowed_where_examples_stay_apart():
    config = cfg.build({"model": {"id": "hubtune:tiny-llama"}, "data": {"sources": ["x.jsonl"], "packing": True},
                        "lora": {"dropout": 0.0}},
                       check_paths=False)
    check_against_model(config, nemotron_h())  # its Mamba-2 layers restart at each packed example
    for family in FAMILIES:  # and these families' recurrent mixers (hubtune.recurrent)
        check_against_model(config, tiny_config(family))
    check_against_model(config, LlamaConfig(vocab_size=64, hidden_size=32))
    # Granite 4.0 Micro: the hybrid family's config, all attention layers.
    assert recurrent.stateful_layers(GraniteMoeHybridConfig(num_hidden_layers=2, layer_types=["attention", "attention"])) is None
    assert recurrent.model_type_of("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16") == "nemotron_h"
    assert recurrent.packing_problem_by_name("Qwen/Qwen3.5-27B") is None
    assert recurrent.packing_problem_by_name("ibm-granite/granite-4.0-h-small") is None
    assert recurrent.packing_problem_by_name("RWKV/rwkv-4-169m-pile").startswith(
        "RWKV/rwkv-4-169m-pile is a rwkv model")
    assert recurrent.packing_problem_by_name("meta-llama/Llama-3.1-8B") is None


def packed_run(tmp_path, base, targets) -> list[float]:
    """hubtune.train, 1 step and evaluations, on packed invoices (rows of several examples) with gradient
    checkpointing; the held-out losses."""
    import json

    from data_rows import invoice_file, tiny_tree

    from hubtune.train import train

    config = cfg.build(tiny_tree(invoice_file(tmp_path / "rows.jsonl", 10), tmp_path / "run",
                                 model={"id": str(base), "quantization": "none"}, lora={"target_modules": targets},
                                 data={"packing": True, "max_seq_len": 512, "val_set_size": 2},
                                 training={"max_steps": 1, "eval_steps": 1, "micro_batch_size": 2,
                                           "learning_rate": 1e-2, "gradient_checkpointing": True}))
    train(config, run_dir=tmp_path / "run")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return [m["eval_loss"] for m in metrics if "eval_loss" in m]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["nemotron_h", "qwen3_5_text"])
def test_a_packed_run_trains_with_its_examples_apart(tmp_path, monkeypatch, family):
    """hubtune.train on packed invoices, no context parallelism: every batch is a packed row of several examples,
    and the recurrent layers compute them apart (Nemotron-H's Mamba-2 through hubtune's scan with a group of one,
    Qwen3.5's Gated DeltaNet once per example)."""
    from context_parallel_same import saved_base
    from transformers import AutoModelForCausalLM

    seen = []
    if family == "nemotron_h":
        model, targets, forward = tiny_nemotron_h(902), ["q_proj", "v_proj", "in_proj"], cp.mamba2_forward

        def recorded(mixer, hidden_states, split):
            assert split.size == 1
            seen.append((int(split.documents.max()), torch.is_grad_enabled()))
            return forward(mixer, hidden_states, split)

        monkeypatch.setattr(cp, "mamba2_forward", recorded)
    else:
        model_config = tiny_config(family)
        model_config.vocab_size = 902  # the tiny base's tokenizer
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(model_config).float()
        targets, forward = ["q_proj", "v_proj", "in_proj_qkv"], recurrent.by_example

        def recorded(original, hidden_states, examples, *args, **kwargs):
            seen.append((int(examples.max()) + 1, torch.is_grad_enabled()))
            return forward(original, hidden_states, examples, *args, **kwargs)

        monkeypatch.setattr(recurrent, "by_example", recorded)
    losses = packed_run(tmp_path, saved_base(model, tmp_path / "base"), targets)
    assert losses and all(loss == loss and loss < 20 for loss in losses)
    # Two recurrent layers per forward, each recomputed once in the backward pass; evaluation without gradients.
    assert seen and all(examples_in_row > 1 for examples_in_row, _ in seen)
    assert {grad for _, grad in seen} == {True, False}
