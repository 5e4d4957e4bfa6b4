"""A run as GGUF files through llama.cpp's own converters.

The adapter is merged in float32 into the base's original weights (never into a de-quantized 4-bit copy,
whatever the run trained on), the merged folder is converted by convert_hf_to_gguf at f16 or q8_0, and
q4_k_m is quantized from the f16 file by llama.cpp's own quantizer. `--adapter-only` converts the LoRA
adapter alone with convert_lora_to_gguf (for llama.cpp's --lora over a base GGUF), plus that base at f16.
The GGUF metadata carries the chat template the run trained with (stripped of transformers' `generation`
markers, which only mark training targets and which other template engines reject) and its stop tokens.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from hubtune.errors import ExportError
from hubtune.export import toolchain

QUANTS = ("f16", "q8_0", "q4_k_m")
CONVERTED = ("f16", "q8_0")  # written by the converter itself; the others are quantized from f16
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")

# BPE pre-tokenizers that llama.cpp's converter cannot name from its hash table, matched by the exact
# pre_tokenizer spec of tokenizer.json. hubtune:tiny-llama isolates each whitespace character and each
# digit before GPT-2's byte-level split, so its merges never span a space or a digit, and llama.cpp's
# gpt-2 pre-tokenizer (which keeps " word" and "123" together) yields the same tokens. Every export
# checks that claim on its test prompts (parity: tokens_identical).
_TINY_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "\\s"}, "behavior": "Isolated", "invert": False},
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
KNOWN_PRE_TOKENIZERS = [(_TINY_PRE, "gpt-2")]


def strip_generation_markers(template: str) -> str:
    return _GENERATION_TAG.sub("", template)


def prepare_model_folder(folder: Path) -> dict:
    """Make a merged model folder ready for the converter: the chat template without `generation` markers,
    and no BOS or EOS added by the tokenizer beyond what the template writes (chat prompts in transformers
    are tokenized without them, so llama.cpp must not add them either). Returns what was changed."""
    changes = {}
    jinja = folder / "chat_template.jinja"
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if jinja.is_file():
        text = jinja.read_text()
        if _GENERATION_TAG.search(text):
            jinja.write_text(strip_generation_markers(text))
            changes["chat_template"] = "generation markers removed"
    elif isinstance(config.get("chat_template"), str) and _GENERATION_TAG.search(config["chat_template"]):
        config["chat_template"] = strip_generation_markers(config["chat_template"])
        changes["chat_template"] = "generation markers removed"
    if not jinja.is_file() and not config.get("chat_template"):
        raise ExportError(f"{folder} has no chat template: a GGUF without one cannot be prompted the way the "
                          f"run was trained; train with data.chat_template: default")
    config["add_bos_token"] = False
    config["add_eos_token"] = False
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return changes


def pre_tokenizer(folder: Path, given: str | None = None) -> str | None:
    """The llama.cpp pre-tokenizer to name when the converter's hash table does not know the tokenizer."""
    if given:
        return given
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    spec = json.loads(tokenizer_file.read_text()).get("pre_tokenizer")
    return next((name for known, name in KNOWN_PRE_TOKENIZERS if known == spec), None)


def convert(model_dir: Path, out_file: Path, outtype: str, pre: str | None = None) -> Path:
    """convert_hf_to_gguf on a transformers model folder; outtype f32, f16, bf16 or q8_0."""
    runner = Path(__file__).with_name("_run_converter.py")
    cmd = [sys.executable, str(runner), str(toolchain.converter_dir()), str(model_dir), str(out_file), outtype]
    done = subprocess.run(cmd + ([pre] if pre else []), capture_output=True, text=True)
    if done.returncode == 0 and out_file.is_file():
        return out_file
    err = done.stderr
    if "HUBTUNE-UNSUPPORTED-ARCHITECTURE" in err:
        arch = err.split("HUBTUNE-UNSUPPORTED-ARCHITECTURE", 1)[1].split()[0]
        raise ExportError(f"llama.cpp {toolchain.LLAMA_CPP_COMMIT[:9]} cannot convert the architecture {arch}; "
                          f"export the merged model with `hubtune merge` and serve it with transformers or vLLM")
    if "HUBTUNE-UNKNOWN-PRE-TOKENIZER" in err:
        raise ExportError("llama.cpp's converter does not recognise this tokenizer's pre-tokenizer (its hash is not in "
                          "convert_hf_to_gguf's table). If you know which llama.cpp pre-tokenizer matches it, pass "
                          "--pre-tokenizer NAME (llama-bpe, qwen2, gpt-2, ...): the export then checks on every test "
                          "prompt that llama.cpp tokenizes exactly as transformers does")
    raise ExportError(f"llama.cpp's converter failed on {model_dir} ({outtype}): {err.strip()[-1500:]}")


def quantize(source: Path, out_file: Path, quant: str) -> Path:
    """A k-quant from an f16 GGUF through llama.cpp's own quantizer (llama_model_quantize)."""
    import ctypes

    llama_cpp = toolchain.llama_cpp()
    ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out_file).encode(), ctypes.byref(params))
    if rc != 0 or not out_file.is_file():
        raise ExportError(f"llama.cpp could not quantize {source.name} to {quant} (code {rc})")
    return out_file


def convert_adapter(adapter_dir: Path, base_dir: Path, out_file: Path) -> Path:
    """convert_lora_to_gguf: the LoRA adapter as a GGUF that llama.cpp applies over the base's GGUF."""
    script = toolchain.converter_dir() / "convert_lora_to_gguf.py"
    cmd = [sys.executable, str(script), str(adapter_dir), "--base", str(base_dir), "--outfile", str(out_file),
           "--outtype", "f16"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=script.parent)
    if done.returncode != 0 or not out_file.is_file():
        raise ExportError(f"llama.cpp's adapter converter failed on {adapter_dir}: {done.stderr.strip()[-1500:]}")
    return out_file


def gguf_metadata(path: Path) -> dict:
    """A few fields of a GGUF file's metadata, read with the gguf package."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key in ("general.architecture", "general.file_type", "tokenizer.chat_template", "tokenizer.ggml.pre",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.add_bos_token"):
        field = reader.get_field(key)
        if field is not None:
            out[key] = field.contents()
    return out
