"""A base saved already quantized (as Unsloth's `...-bnb-4bit` repos are): it loads as saved, trains
on CPU, and its licence gate, card and naming rule follow the original model its card names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hub_server import readme
from safetensors.torch import load_file
from data_rows import invoice_lines, tiny_run_config

from hubtune.cli import main
from hubtune.config import resolve_builtin
from hubtune.interop import prequantized

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

QUANTIZED, ORIGINAL, DATA = "unsloth/tiny-llama-bnb-4bit", "meta-llama/Llama-3.1-8B", "acme/invoices"


@pytest.fixture(scope="session")
def quantized_folder(tmp_path_factory) -> Path:
    """The embedded tiny base loaded in 4 bits (NF4, double quantization) by bitsandbytes on CPU and
    saved with save_pretrained: what an unsloth/...-bnb-4bit repo holds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    base = resolve_builtin("hubtune:tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16))  # saved as Unsloth's repos are: bfloat16 compute
    out = tmp_path_factory.mktemp("bnb-4bit") / "model"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def test_bitsandbytes_4bit_serialises_on_cpu(quantized_folder):
    saved = prequantized.quantization_config(quantized_folder)
    assert saved["quant_method"] == "bitsandbytes" and saved["bnb_4bit_quant_type"] == "nf4"
    assert prequantized.describe(saved) == "bitsandbytes nf4 (double quantization)"
    weights = load_file(quantized_folder / "model.safetensors")
    assert weights["model.layers.0.self_attn.q_proj.weight"].dtype == torch.uint8
    assert prequantized.quantization_config(resolve_builtin("hubtune:tiny-llama")) is None


def test_it_loads_as_saved_without_quantizing_twice(quantized_folder):
    from bitsandbytes.nn import Linear4bit

    from hubtune import config as cfg
    from hubtune.hardware import detect
    from hubtune.train import load_base

    # fp4 is configured, but the saved nf4 codes are what load: nothing is quantized again.
    section = cfg.ModelSection(id=str(quantized_folder), quantization="fp4")
    model = load_base(str(quantized_folder), section, detect(section), for_training=False)
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, Linear4bit) and layer.weight.quant_type == "nf4"
    assert layer.compute_dtype == torch.float32  # the machine's compute dtype, not the saved bfloat16
    saved = load_file(quantized_folder / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(layer.weight.data.cpu().reshape(saved.shape), saved)


@pytest.fixture
def seeded(hub, quantized_folder, tiny_base_files):
    files = {p.name: p.read_bytes() for p in quantized_folder.iterdir() if p.is_file()}
    hub.seed(QUANTIZED, {**files, "README.md": readme("4-bit NF4 copy.", base_model=ORIGINAL, license="llama3.1",
                                                       tags=["unsloth", "bnb-4bit"])})
    hub.seed(ORIGINAL, {"README.md": readme(license="llama3.1")}, gated="manual")  # its card is all that is read
    hub.seed(DATA, {"README.md": readme(license="cc-by-4.0"), "train.jsonl": "\n".join(invoice_lines(48)) + "\n"},
             repo_type="dataset")
    return hub


def test_the_licence_check_follows_the_original(seeded, capsys):
    assert main(["check", QUANTIZED, "--use", "commercial", "--publish", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    base = verdict["repos"][0]
    assert (base["repo"], base["licence"], base["gated"]) == (ORIGINAL, "llama3.1", "manual")
    assert verdict["name_rules"][0]["repo"] == ORIGINAL and "Llama" in verdict["name_rules"][0]["rule"]
    assert any("Built with Llama" in o for o in verdict["obligations"])


def test_it_trains_on_cpu_and_its_push_carries_the_originals_licence(seeded, hub_token, tmp_path, capsys,
                                                                     one_torch_thread):
    from huggingface_hub import HfApi, ModelCard

    tiny_run_config(tmp_path / "run.yaml", DATA, 3, tmp_path / "run", model={"id": QUANTIZED},
                    data={"val_set_size": 8}, training={"micro_batch_size": 8, "learning_rate": 2e-3, "eval_steps": 3})
    assert main(["train", str(tmp_path / "run.yaml")]) == 0, capsys.readouterr().err[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["base_model"] == QUANTIZED and summary["method"] == "qlora"
    assert summary["base_quantization"] == "bitsandbytes nf4 (double quantization)"
    assert summary["licence"]["repos"][0]["repo"] == ORIGINAL
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    capsys.readouterr()

    # The original's naming rule applies: a Llama 3.1 derivative's name begins with "Llama".
    assert main(["push", str(run), "--repo", "alice/tiny-invoices"]) == 3
    assert "Llama" in capsys.readouterr().err
    assert main(["push", str(run), "--repo", "alice/Llama-tiny-invoices"]) == 0
    card = ModelCard.load("alice/Llama-tiny-invoices")
    assert card.data.license == "llama3.1" and card.data.base_model == ORIGINAL
    assert "Built with Llama" in card.text and QUANTIZED in card.text
    assert "adapter_model.safetensors" in HfApi().list_repo_files("alice/Llama-tiny-invoices")


def test_fine_tunes_that_are_not_quantized_copies_keep_their_own_licence(hub, capsys):
    # Its card names a base_model too, but its config.json holds no quantization_config.
    hub.seed("acme/Llama-3.1-8B-legal", {"config.json": "{}", "README.md": readme(
        license="apache-2.0", base_model="meta-llama/Llama-3.1-8B")})
    assert main(["check", "acme/Llama-3.1-8B-legal", "--json"]) == 0
    repo = json.loads(capsys.readouterr().out)["repos"][0]
    assert (repo["repo"], repo["licence"]) == ("acme/Llama-3.1-8B-legal", "apache-2.0")


def test_a_gated_fine_tune_is_judged_by_its_own_card_without_access(hub, capsys):
    # Its card names a base_model too, but its config.json cannot be read without access: no following.
    hub.seed("meta-llama/Llama-3.1-8B-Instruct", {"config.json": "{}", "README.md": readme(
        license="llama3.1", base_model="meta-llama/Llama-3.1-8B")}, gated="manual")
    assert main(["check", "meta-llama/Llama-3.1-8B-Instruct", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["repos"][0]["repo"] == "meta-llama/Llama-3.1-8B-Instruct"
