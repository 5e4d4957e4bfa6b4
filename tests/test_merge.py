"""`hubtune merge`: a standalone model whose logits match the adapter on its base."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from hubtune.cli import main
from hubtune.config import resolve_builtin
from hubtune.errors import HubtuneError
from hubtune.merge import merge
import readme_blocks

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

BASE = resolve_builtin("hubtune:tiny-llama")
PROMPT = "INVOICE #123\nSteel Bolt x2 @ $4.25\nHex Nut x10 @ $0.15"


def logits(model, folder) -> torch.Tensor:
    ids = AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def saved_dtypes(folder: Path) -> set[str]:
    dtypes = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            dtypes |= {SAFETENSORS_DTYPES.get(st.get_slice(k).get_dtype(), st.get_slice(k).get_dtype())
                       for k in st.keys()}
    return dtypes


def test_the_readme_merge_matches_the_adapter_on_its_base_in_float32(make_run, tmp_path, monkeypatch, capsys):
    (command,) = [ln for lang, body in readme_blocks.section_blocks("Merging an adapter into its base")
                  if lang == "bash" for ln in body.splitlines() if ln.strip()]
    run = make_run(name="runs/readme")
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:]) == 0
    out = tmp_path / "merged" / "readme"
    assert "merged hubtune:tiny-llama + runs/readme into merged/readme (float32)" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("adapter_*"))  # standalone: no adapter files, no PEFT needed to load it

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not hasattr(merged.config, "quantization_config")
    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    plain = logits(base, out)
    adapted = logits(PeftModel.from_pretrained(base, str(run / "adapter")), out)
    assert (logits(merged, out) - adapted).abs().max() < 1e-4
    assert (adapted - plain).abs().max() > 1e-3  # the adapter changes something, so the match means something

    card = (out / "README.md").read_text()
    assert "base_model_relation: finetune" in card and "merged into the base weights" in card
    assert "saved the merged weights in float32" in card and "runs/readme" not in card.split("---")[1]


def test_the_saved_dtype_is_the_one_asked_or_the_bases(make_run, tmp_path):
    run = make_run()
    result = merge(run, tmp_path / "bf16", dtype="bfloat16")
    assert result.dtype == "bfloat16" and saved_dtypes(result.path) == {"bfloat16"}
    auto = merge(run, tmp_path / "auto")
    base_dtype = str(AutoConfig.from_pretrained(BASE).dtype).removeprefix("torch.")
    assert auto.dtype == base_dtype and saved_dtypes(auto.path) == {base_dtype}
    assert not auto.warnings


@pytest.fixture(scope="module")
def four_bit_base(tmp_path_factory) -> Path:
    """The tiny base as a pre-quantized repo would hold it: 4-bit NF4 weights and a quantization_config."""
    from transformers import BitsAndBytesConfig

    out = tmp_path_factory.mktemp("bnb-4bit") / "tiny-llama-bnb-4bit"
    model = AutoModelForCausalLM.from_pretrained(BASE, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(BASE).save_pretrained(out)
    return out


def test_a_4bit_only_base_is_dequantized_with_a_clear_warning(make_run, four_bit_base, tmp_path, capsys):
    run = make_run(base_model=str(four_bit_base), acknowledge=(str(four_bit_base),), name="on-4bit")
    out = tmp_path / "merged"
    assert main(["merge", str(run), "--out", str(out), "--dtype", "float32"]) == 0
    err = capsys.readouterr().err
    assert "warning: only a 4-bit base is available" in err and "4-bit rounding" in err
    assert "only a 4-bit base is available" in (out / "README.md").read_text()

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not hasattr(merged.config, "quantization_config") and saved_dtypes(out) == {"float32"}
    dequantized = AutoModelForCausalLM.from_pretrained(four_bit_base).dequantize().to(torch.float32)
    adapted = logits(PeftModel.from_pretrained(dequantized, str(run / "adapter")), out)
    assert (logits(merged, out) - adapted).abs().max() < 1e-4


def test_merge_refuses_an_unfinished_run_or_a_used_folder(make_run, tmp_path):
    run = make_run()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(HubtuneError, match="not empty"):
        merge(run, taken)
    (run / "summary.json").unlink()
    with pytest.raises(HubtuneError, match="not a finished run"):
        merge(run, tmp_path / "new")
