"""The memory estimate: parameter counts from real config.json files, the anchors it must land near,
the activation coefficients against a measurement, suggestions, `hubtune estimate` and the warning
training gives before loading."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hubtune import config as cfg
from hubtune import fit, memory, trained
from hubtune.memory import GIB, Settings, architecture, estimate, reference_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.stem for p in (ROOT / "hubtune" / "assets" / "model_configs").glob("*.json"))
# Totals the model cards and the checkpoints give, in billions.
PUBLISHED = {"Llama-3.2-1B": 1.24, "Llama-3.2-3B": 3.21, "Llama-3.1-8B": 8.03, "Llama-2-13b-hf": 13.02,
             "Llama-3.1-70B": 70.55, "Mistral-7B-v0.3": 7.25, "Qwen2.5-7B-Instruct": 7.62, "Qwen3-8B": 8.19,
             "gemma-2-9b": 9.24, "gemma-3-1b-it": 1.00, "gemma-3-4b-it": 4.30, "Phi-3-mini-4k-instruct": 3.82,
             "phi-4": 14.66, "Qwen3-30B-A3B": 30.53, "Mixtral-8x7B-v0.1": 46.70,
             "GLM-4.5-Air": 106.85}  # GLM-4.5-Air's card: 106B, and a multi-token-prediction layer transformers does not build


def arch(name: str) -> memory.Architecture:
    return architecture(json.loads(reference_config(name).read_text()), name)


def within(value: float, anchor: float, tolerance: float = 0.25) -> bool:
    return abs(value - anchor) <= tolerance * anchor


def test_every_reference_config_is_counted_exactly_as_transformers_builds_it():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    assert set(CONFIGS) == set(PUBLISHED)
    for name in CONFIGS:
        config = AutoConfig.for_model(**json.loads(reference_config(name).read_text()))
        with torch.device("meta"):  # shapes only, no memory
            vision = "vision_config" in config.to_dict()
            model = (AutoModelForImageTextToText if vision else AutoModelForCausalLM).from_config(config)
        built = sum(p.numel() for p in model.parameters())
        counted = arch(name).parameters()["total"]
        assert counted == built, name
        names = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)
                 if not n.startswith(("model.vision_tower.", "model.multi_modal_projector."))}
        assert trained.parameter_shapes(arch(name)) == names, name  # as unfrozen_parameters' patterns name them
        assert round(counted / 1e9, 2) == PUBLISHED[name], name


def test_families_read_their_own_quirks():
    assert arch("Llama-3.2-1B").tied_embeddings and not arch("Llama-3.1-8B").tied_embeddings
    assert [m.bias for m in arch("Qwen2.5-7B-Instruct").linears[:4]] == [True, True, True, False]
    assert [m.name for m in arch("phi-4").linears] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    gemma3 = arch("gemma-3-4b-it")  # text_config leaves heads to transformers' defaults
    assert (gemma3.heads, gemma3.kv_heads, gemma3.head_dim, gemma3.vocab) == (8, 4, 256, 262208)
    assert gemma3.vision_params > 0.4e9
    assert arch("Llama-3.1-8B").lora_parameters(8, "all-linear") == 20_971_520
    assert arch("Llama-3.1-8B").lora_parameters(16, "qv") == 32 * 16 * (4096 + 4096 + 4096 + 1024)


def test_llama31_8b_qlora_lands_near_torchtunes_measurement():
    """torchtune, one RTX 4090: Llama-3.1-8B QLoRA, r 8 on all linear layers, activation checkpointing,
    batch 2 of packed 2,048-token sequences, LoRA dropout 0 (its recipe's default): 7.4 GiB peak."""
    anchor = Settings(seq_len=2048, micro_batch=2, lora_r=8, lora_dropout=0.0, target_modules="all-linear",
                      gradient_checkpointing=True)
    got = estimate(arch("Llama-3.1-8B"), anchor).total_gib
    assert within(got, 7.4), got
    with_dropout = estimate(arch("Llama-3.1-8B"), replace(anchor, lora_dropout=0.05)).total_gib
    assert within(with_dropout, 7.4) and with_dropout > got


def test_the_guide_table_lands_near_the_guides_qlora_column():
    rows = {r["row"]: r for r in memory.guide_table()}
    for row, guide in {"1B-3B": 4, "7B-8B": 8, "13B": 14, "70B": 40}.items():
        assert rows[row]["qlora"]["guide_gb"] == guide
        assert within(rows[row]["qlora"]["estimate_gb"], guide), rows[row]
    assert rows["70B"]["full"]["guide_gb"] is None and rows["70B"]["full"]["estimate_gb"] > 400


def test_each_part_moves_the_way_it_should():
    a = arch("Llama-3.1-8B")
    base = estimate(a, Settings())
    weights = next(k for k in base.breakdown if k.startswith("weights"))
    no_dq = estimate(a, Settings(double_quant=False))
    # 32-bit absmax per 64 weights (0.5 bit) against 8-bit plus a constant per 256 blocks (0.127 bit)
    saved = (no_dq.breakdown[weights] - base.breakdown[weights]) / a.parameters()["decoder_linear"]
    assert saved == pytest.approx((32 - 8 - 32 / 256) / 64 / 8, rel=1e-6)
    full_acts = estimate(a, Settings(gradient_checkpointing=False))
    assert full_acts.total > base.total + 5 * GIB
    assert estimate(a, Settings(optimizer="adamw_torch")).total > base.total
    assert estimate(a, Settings(method="lora")).total > 2 * base.total
    fp16 = estimate(a, Settings(compute_dtype="float16"))  # float32 embeddings, head, norms and residuals
    assert fp16.total - base.total > 2 * a.parameters()["embeddings"] * 2 * 0.99
    assert "whole, in float32, they would take 1.05 GB" in base.notes[0]
    assert sum(base.breakdown.values()) == base.total


@pytest.mark.slow
def test_the_activation_coefficients_match_a_measurement():
    """One Llama layer of hidden 1024, built and prepared as hubtune trains it (4-bit base, LoRA on all
    linear layers, dropout 0.05, bfloat16 autocast): the bytes autograd saves per token."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import activation_memory

    tokens = 128
    measured = activation_memory.per_layer_per_token("qlora", 1024, tokens)
    inter, heads, kv = activation_memory.WIDTHS[1024]
    layer = architecture({"model_type": "llama", "hidden_size": 1024, "intermediate_size": inter,
                          "num_hidden_layers": 1, "num_attention_heads": heads, "num_key_value_heads": kv,
                          "vocab_size": 1024}, "probe")
    predicted = memory.layer_activation_bytes(layer, Settings(), tokens) / tokens
    assert within(predicted, measured, 0.1), (predicted, measured)


def test_a_run_that_does_not_fit_gets_the_nearest_settings_that_do():
    a = arch("Llama-3.1-8B")
    big = Settings(seq_len=4096, micro_batch=8, gradient_checkpointing=False, optimizer="adamw_torch")
    report = fit.fit_report(a, big, "T4")
    assert not report["fits"] and report["compute_dtype"] == "float16"
    tip = report["suggestion"]
    assert tip["total_gb"] * 1e9 <= 15_360 * 2**20
    assert "gradient checkpointing" in tip["change"] and tip["settings"]["micro_batch"] < 8
    # the effective batch stays the same
    assert tip["settings"]["micro_batch"] * tip["settings"]["gradient_accumulation"] == 8 * 4
    assert fit.fit_report(a, Settings(), "H100 80GB") == {
        "gpu": "H100 80GB", "gpu_gib": 79.6, "compute_dtype": "bfloat16", "fits": True, "suggestion": None,
        "total_gb": round(estimate(a, Settings()).total_gb, 2)}
    seventy = fit.fit_report(arch("Llama-3.1-70B"), Settings(method="lora"), "A100 80GB")["suggestion"]
    assert "4 bits" in seventy["change"] and seventy["settings"]["method"] == "qlora"


def test_an_unknown_architecture_is_named_plainly():
    with pytest.raises(memory.UnknownArchitecture, match="does not know the architecture MambaForCausalLM"):
        architecture({"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 768}, "state-spaces")
    with pytest.raises(memory.HubtuneError, match="unknown GPU 'V100'"):
        memory.gpu_spec("V100")


# ---- the command line -------------------------------------------------------------------------------
@pytest.fixture
def hubtune(capsys):
    """`hubtune ARGS...` in this process: (exit code, stdout)."""
    from hubtune.cli import main

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        return code, capsys.readouterr().out

    return run


def test_estimate_prints_the_breakdown_and_which_gpus_fit(tmp_path, hubtune):
    folder = tmp_path / "llama-8b"
    folder.mkdir()
    (folder / "config.json").write_bytes(reference_config("Llama-3.1-8B").read_bytes())
    code, out = hubtune("estimate", str(folder), "--lora-r", "8", "--batch", "2", "--seq-len", "2048")
    assert code == 0
    assert "8.03B parameters" in out and "micro-batch 2 x 2048 tokens" in out
    for part in ("weights: NF4", "LoRA adapters (r 8, 21.0M parameters)", "optimizer states (paged_adamw_8bit)",
                 "checkpointed layer inputs", "framework", "total"):
        assert part in out, part
    assert "RTX 4090 (24 GiB): fits" in out

    code, out = hubtune("estimate", str(folder), "--gpu", "T4", "--batch", "8", "--seq-len", "4096",
                        "--no-gradient-checkpointing", "--json")
    assert code == 3
    got = json.loads(out)
    assert got["fits"] is False and got["suggestion"]["total_gb"] < 16.1
    assert got["total_gb"] > 16 and got["settings"]["compute_dtype"] == "float16"
    assert set(got["breakdown_gb"]) >= {"gradients", "optimizer states (paged_adamw_8bit)"}


def test_estimate_reads_a_run_config_and_lets_flags_override_it(tmp_path, hubtune):
    run = tmp_path / "run.yaml"
    run.write_text("model:\n  id: hubtune:tiny-llama\nlora:\n  r: 4\ndata:\n  max_seq_len: 256\n"
                   "training:\n  micro_batch_size: 4\n")
    got = json.loads(hubtune("estimate", str(run), "--json")[1])
    assert got["settings"]["lora_r"] == 4 and got["settings"]["seq_len"] == 256 and got["settings"]["micro_batch"] == 4
    assert got["parameters"]["total"] == 1_944_384 and got["fits"]["T4"] is True
    flagged = json.loads(hubtune("estimate", str(run), "--lora-r", "32", "--method", "lora", "--json")[1])
    assert flagged["settings"]["lora_r"] == 32 and flagged["settings"]["method"] == "lora"


def test_estimate_table_prints_the_guide_beside_its_own_figures(hubtune):
    code, out = hubtune("estimate", "--table")
    assert code == 0
    lines = out.splitlines()
    row = next(line for line in lines if line.startswith("7B-8B"))
    assert "/ 60" in row and "/ 16" in row and "/ 8" in row and "Llama-3.1-8B 8.03B" in row
    assert "/ cluster" in next(line for line in lines if line.startswith("70B"))


def test_estimate_reads_only_config_json_from_the_hub_at_a_revision(hub):
    first = hub.seed("acme/llama-8b-like", {"config.json": reference_config("Llama-3.1-8B").read_text(),
                                            "model.safetensors": b"\0" * 2048})
    hub.seed("acme/llama-8b-like", {"config.json": reference_config("Llama-3.2-1B").read_text()})
    pinned = memory.read_architecture("acme/llama-8b-like", first)
    assert pinned.parameters()["total"] == 8_030_261_248
    assert memory.read_architecture("acme/llama-8b-like").parameters()["total"] == 1_235_814_400
    from huggingface_hub import constants

    cached = {p.name for p in Path(constants.HF_HUB_CACHE).rglob("*") if p.is_file() and "snapshots" in p.parts}
    assert cached == {"config.json"}  # the weights were never fetched
    with pytest.raises(memory.HubtuneError, match="acme/nope was not found"):
        memory.read_architecture("acme/nope")


def test_training_warns_before_loading_when_the_estimate_exceeds_the_gpu(tmp_path):
    from hubtune import config as cfg

    folder = tmp_path / "llama-8b"
    folder.mkdir()
    (folder / "config.json").write_bytes(reference_config("Llama-3.1-8B").read_bytes())
    config = cfg.build({"model": {"id": str(folder)}, "data": {"max_seq_len": 2048},
                        "training": {"micro_batch_size": 4}})
    warning = fit.device_warning(config, str(folder), device_bytes=9 * 10**9)
    assert "exceeds this GPU's 9.0 GB" in warning and "try micro-batch" in warning
    assert fit.device_warning(config, str(folder), device_bytes=80 * 10**9) is None
    assert fit.device_warning(config, str(folder)) is None  # no GPU here: nothing to compare with


# ---- the README section -------------------------------------------------------------------------
@pytest.mark.slow  # a new interpreter runs the whole command
def test_the_readme_section_runs_and_shows_the_real_output(hubtune):
    import shlex

    import readme_blocks

    blocks = readme_blocks.section_blocks("Will it fit? Memory and speed")
    commands = [line for lang, body in blocks if lang == "bash" for line in body.splitlines() if line]
    shown = [body.rstrip("\n") for lang, body in blocks if lang == "text"]
    assert len(commands) == 2 and len(shown) == 2
    for command, text in zip(commands, shown):
        args = shlex.split(command)
        assert args[0] == "hubtune"
        code, out = hubtune(*args[1:])
        assert code == 0
        assert out.rstrip("\n") == text, command
    (python,) = [body for lang, body in blocks if lang == "python"]
    result = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7.98 GiB True"


def test_out_of_memory_advice_comes_from_the_fit_search(tmp_path):
    """What a run that ran out of memory is told: the nearest settings the estimate gives at least a fifth
    less than this run's estimate, on this device."""
    folder = tmp_path / "Llama-3.1-8B"
    folder.mkdir()
    (folder / "config.json").write_text(reference_config("Llama-3.1-8B").read_text())
    config = cfg.build({"model": {"id": str(folder), "quantization": "none"}, "data": {"max_seq_len": 4096},
                        "training": {"micro_batch_size": 8, "gradient_checkpointing": False}})
    advice = fit.oom_advice(config, 24 * GIB)
    assert advice and ("gradient checkpointing" in advice or "micro-batch" in advice), advice
    before = estimate(arch("Llama-3.1-8B"), Settings.from_run_config(config)).total
    after = float(advice.rsplit("estimated ", 1)[1].split(" GB")[0]) * 1e9
    assert after <= min(24 * GIB, 0.8 * before)
    assert fit.oom_advice(cfg.build({"model": {"id": str(tmp_path)}}), 24 * GIB) is None  # no config.json


def test_a_config_saved_with_infinity_reads_as_transformers_loads_it(tmp_path):
    """transformers writes Nemotron-H's time_step_limit (0, inf) as {"__float__": "Infinity"}; read as a float,
    the config builds (it used to stop `hubtune train` in the check of whether to checkpoint activations)."""
    import math

    from transformers import NemotronHConfig

    NemotronHConfig(time_step_limit=(0.0, math.inf)).save_pretrained(tmp_path)
    assert '"__float__": "Infinity"' in (tmp_path / "config.json").read_text()
    config, _ = memory.read_config(str(tmp_path))
    assert config["time_step_limit"] == [0.0, math.inf]
    with pytest.raises(memory.UnknownArchitecture, match="Mamba-2"):
        memory.architecture(config)
