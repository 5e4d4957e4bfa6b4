"""GGUF export: the Ollama Modelfile's Go template, llama.cpp's converter on the tiny base, and the parity check
of a real trained run through llama.cpp."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hubtune.config import resolve_builtin

TINY = Path(resolve_builtin("hubtune:tiny-llama"))

# Go's text/template, as Ollama runs a Modelfile's TEMPLATE over .Messages.
GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

func main() {
	var in struct {
		Template string
		Messages []Message
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(in.Template))
	if err := t.Execute(os.Stdout, map[string]any{"Messages": in.Messages}); err != nil {
		panic(err)
	}
}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "Read the invoice below.\n\nInvoice no. 1 - 2 Oak Cup at $3.50 each."}],
    [{"role": "system", "content": "You extract prices."}, {"role": "user", "content": "Total of \"$2.00\" {{ x }}?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye\t!"}],
]


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is missing: `apt-get install -y golang-go` (.ci/run installs it)")
    folder = tmp_path_factory.mktemp("gorender")
    (folder / "main.go").write_text(GO_RENDER)
    subprocess.run([go, "build", "-o", str(folder / "render"), str(folder / "main.go")], check=True, cwd=folder,
                   env={"HOME": str(Path.home()), "PATH": "/usr/bin:/bin", "GOCACHE": str(folder / "cache"),
                        "GO111MODULE": "off"})

    def render(template: str, messages: list[dict]) -> str:
        data = {"Template": template, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
        return subprocess.run([str(folder / "render")], input=json.dumps(data), capture_output=True, text=True,
                              check=True).stdout

    return render


def _template(modelfile_text: str) -> str | None:
    found = re.search(r'^TEMPLATE """(.*?)"""$', modelfile_text, re.S | re.M)
    return found.group(1) if found else None


# A ChatML family (system role, no BOS in the template) and a Llama-3-like one (BOS and headers).
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
          "m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# System folded into the first user turn: not a sequence of wrapped messages.
FOLDED = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + (messages[0]['content'] + '\\n\\n' "
          "if loop.index0 == 1 and messages[0]['role'] == 'system' else '') + m['content'] + ' [/INST]' }}"
          "{% elif m['role'] == 'assistant' %}{{ m['content'] + '</s>' }}{% endif %}{% endfor %}")


@pytest.mark.parametrize("template", [None, CHATML, LLAMA3], ids=["tiny-llama", "chatml", "llama3-like"])
def test_modelfile_template_renders_the_tokenizers_prompt(go_render, template):
    from transformers import AutoTokenizer

    from hubtune.export.modelfile import modelfile

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    if template:
        tokenizer.chat_template = template
    text = modelfile("model-q8_0.gguf", tokenizer, ["</s>"])
    go_template = _template(text)
    assert go_template, text
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert go_render(go_template, messages) == expected
    assert "FROM ./model-q8_0.gguf" in text and 'PARAMETER stop "</s>"' in text


def test_modelfile_without_a_template_it_cannot_derive_says_so():
    from transformers import AutoTokenizer

    from hubtune.export.modelfile import modelfile

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    tokenizer.chat_template = FOLDED
    text = modelfile("m.gguf", tokenizer, ["</s>"])
    assert _template(text) is None and "no Go template was" in text


@pytest.mark.slow
def test_tiny_base_converts_with_template_and_stop_token_in_metadata(tmp_path):
    from hubtune.export import convert

    folder = tmp_path / "model"
    shutil.copytree(TINY, folder)
    assert convert.prepare_model_folder(folder) == {"chat_template": "generation markers removed"}
    out = convert.convert(folder, tmp_path / "tiny-q8_0.gguf", "q8_0", convert.pre_tokenizer(folder))
    meta = convert.gguf_metadata(out)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["tokenizer.ggml.add_bos_token"] is False
    template = meta["tokenizer.chat_template"]
    assert "{% generation %}" not in template and "endgeneration" not in template and "<|assistant|>" in template


def test_unknown_quant_and_format_are_clear_errors(trained_run):
    from hubtune.errors import ExportError
    from hubtune.export import export

    run, _ = trained_run
    with pytest.raises(ExportError, match="choose from f16, q8_0, q4_k_m"):
        export(run.path, quants=["q5_k_s"])
    with pytest.raises(ExportError, match="hubtune exports gguf"):
        export(run.path, fmt="onnx")


@pytest.fixture(scope="module")
def llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is missing: `python -m hubtune.export.toolchain install` builds it once per "
                    "machine (make install runs it)")
    return llama_cpp


def test_export_runs_in_llama_cpp_like_the_adapter_and_pushes_with_its_table(trained_run, llama_cpp, tmp_path,
                                                                             hub, hub_token):
    """f16, q8_0 and q4_k_m files of a real trained run: llama.cpp loads them, tokenizes every prompt as
    transformers does, and f16 / q8_0 score within the adapter's interval and stop as it does; then
    `push --gguf` publishes them as a quantization of the pushed adapter, with the parity table."""
    import gguf
    from huggingface_hub import ModelCard, snapshot_download

    import hubtune
    from hubtune.export import export
    from hubtune.export.report import format_parity, parity_markdown

    shutil.copytree(trained_run[0].path, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    run = hubtune.RunFolder(tmp_path / "run")
    out = tmp_path / "export"
    result = export(run.path, out=out, quants=["f16", "q8_0", "q4_k_m"], limit=16)
    parity = result["parity"]
    assert parity["n"] == 16 and parity["dataset"]["name"] == "hubtune:data/invoices/test.jsonl"
    for quant in ("f16", "q8_0", "q4_k_m"):
        path = out / result["files"][quant]["file"]
        assert gguf.GGUFReader(str(path)).get_field("general.architecture").contents() == "llama"
        row = parity["files"][quant]
        assert row["tokens_identical"] == 16, row
        assert row["exact_match"]["n"] == 16 and row["exact_match"]["ci95"] is not None
    for quant in ("f16", "q8_0"):
        assert parity["files"][quant]["verdict"] == "pass", parity["files"][quant]
        assert parity["files"][quant]["agreement"] >= 0.5
    assert result["merge"]["max_logit_difference"] < 1e-3
    assert (out / "Modelfile").read_text().startswith("# Ollama") and f"FROM ./{result['files']['f16']['file']}" in \
        (out / "Modelfile").read_text()
    assert json.loads((out / "export.json").read_text())["parity"]["files"].keys() == {"f16", "q8_0", "q4_k_m"}
    assert (run.path / "export.json").is_file()
    text = format_parity(result)
    assert "f16 GGUF (llama.cpp)" in text and "tolerance:" in text
    assert parity_markdown(result).count("\n") == 5  # header, rule, adapter and three files
    from hubtune.ui.handlers import export_view

    assert parity_markdown(result) in export_view(run)  # the Runs tab of the web app shows the same table

    # Published: the adapter first, then its GGUF files, whose card names the adapter as what they quantize.
    data = [s.path for s in run.config.data.sources]  # a local file with no licence: acknowledged, as a user would
    hubtune.push(run.path, "alice/tiny-invoices", acknowledge=data)
    pushed = hubtune.push(run.path, "alice/tiny-invoices-GGUF", gguf=True, acknowledge=data)
    files = set(Path(snapshot_download("alice/tiny-invoices-GGUF", token=False)).rglob("*.gguf"))
    assert {f.name for f in files} == {f["file"] for f in result["files"].values()}
    assert {"Modelfile", "gguf_parity.json", "README.md"} <= set(pushed.files)
    card = ModelCard.load("alice/tiny-invoices-GGUF")
    assert (card.data.base_model, card.data.base_model_relation) == ("alice/tiny-invoices", "quantized")
    assert "gguf" in card.data.tags and parity_markdown(result).splitlines()[2] in card.text
    assert "vllm serve" in card.text


def test_adapter_only_export_applies_the_lora_gguf_over_the_base_in_llama_cpp(trained_run, llama_cpp, tmp_path):
    """`--adapter-only`: convert_lora_to_gguf writes the adapter alone, the base goes to f16 unmerged, and
    llama.cpp (lora_path) answers like the adapter, where the base alone does not."""
    import gguf
    from transformers import AutoTokenizer

    import hubtune
    from hubtune.export import export
    from hubtune.export import parity as checks

    shutil.copytree(trained_run[0].path, tmp_path / "run", ignore=shutil.ignore_patterns(".lock", "export*"))
    run = hubtune.RunFolder(tmp_path / "run")
    out = tmp_path / "export"
    result = export(run.path, out=out, quants=["f16"], adapter_only=True, limit=8)
    assert "merge" not in result and result["adapter_only"]
    lora, base = out / result["lora"]["file"], out / result["files"]["f16"]["file"]
    assert lora.name == "run-lora-f16.gguf"
    reader = gguf.GGUFReader(str(lora))
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("adapter.type").contents() == "lora"
    assert gguf.GGUFReader(str(base)).get_field("general.type").contents() != "adapter"
    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./{base.name}" in modelfile and f"ADAPTER ./{lora.name}" in modelfile

    row = result["parity"]["files"]["f16"]
    assert row["tokens_identical"] == 8 and row["verdict"] == "pass", row
    # The adapter is what makes llama.cpp answer like the run: the base GGUF alone agrees with it less.
    prompts, _, _ = checks.test_prompts(run, 8)
    adapter = checks.adapter_generations(run, prompts)
    tokenizer = AutoTokenizer.from_pretrained(run.adapter)
    alone = checks.gguf_generations(base, tokenizer, prompts, run.config.eval.max_new_tokens)
    assert checks.agreement(alone.answers, adapter.answers) < row["agreement"]
