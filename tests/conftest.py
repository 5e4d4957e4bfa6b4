"""Shared fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

# The loopback Hub speaks the regular upload route, not Xet: set before huggingface_hub is used.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

# ---- the loopback Hub -------------------------------------------------------------------------
HUB_USER, HUB_TOKEN = "alice", "hf_alice_loopback_token_0123456789"
HUB_OTHER_USER, HUB_OTHER_TOKEN = "bob", "hf_bob_loopback_token_9876543210"


@pytest.fixture(scope="session")
def hub_server():
    """A Hub HTTP server on 127.0.0.1, port 0, for the whole session (see tests/hub_server.py)."""
    from hub_server import LoopbackHub

    server = LoopbackHub().start()
    server.add_user(HUB_USER, HUB_TOKEN, orgs=("alice-org",))
    server.add_user(HUB_OTHER_USER, HUB_OTHER_TOKEN)
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, tmp_path_factory, monkeypatch):
    """The loopback Hub, with the real huggingface_hub client pointed at it for one test:
    HF_ENDPOINT, a fresh cache, no token (use `hub_token` for one), Xet off, online."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hf-home")
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub_server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(cache / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(cache / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return hub_server


@pytest.fixture
def hub_token(hub, monkeypatch):
    """HF_TOKEN set to the loopback user's write token."""
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    return HUB_TOKEN


@pytest.fixture(scope="session")
def tiny_base_files() -> dict[str, bytes]:
    """The embedded tiny model's files, to seed Hub repos with (README.md left to each test)."""
    from hubtune.config import resolve_builtin

    folder = Path(resolve_builtin("hubtune:tiny-llama"))
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != "README.md"}



@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory) -> Path:
    """A LoRA adapter with non-zero weights on the embedded tiny model, saved with its tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtune.config import resolve_builtin

    base = resolve_builtin("hubtune:tiny-llama")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture
def make_run(tiny_adapter, tmp_path):
    """Build a finished run folder (the layout `hubtune.train` writes) around the tiny adapter."""
    import json
    import shutil

    from hubtune import config as cfg

    def build(base_model: str = "hubtune:tiny-llama", base_revision: str | None = None,
              datasets: tuple[str, ...] = ("hubtune:data/invoices/train.jsonl",), use: str = "personal",
              acknowledge: tuple[str, ...] = (), eval_json: dict | None = None, name: str = "run") -> Path:
        run = tmp_path / name
        shutil.copytree(tiny_adapter, run / "adapter")
        config = cfg.build({"model": {"id": base_model, "revision": base_revision, "quantization": "none"},
                            "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                            "data": {"sources": list(datasets)},
                            "training": {"max_steps": 6, "logging_steps": 1},
                            "licence": {"use": use, "acknowledge": list(acknowledge)},
                            "output": {"dir": str(run)}})
        (run / "config.yaml").write_text(config.to_yaml())
        losses = [2.9, 2.6, 2.2, 1.9, 1.7, 1.6]
        lines = [{"step": i + 1, "epoch": (i + 1) / 6, "loss": loss, "learning_rate": 2e-4, "tokens_per_second": 900.0}
                 for i, loss in enumerate(losses)] + [{"step": 6, "epoch": 1.0, "eval_loss": 1.8}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        summary = {"base_model": base_model, "base_revision": base_revision,
                   "datasets": [{"path": d, "revision": None, "split": "train"} for d in datasets],
                   "method": "lora", "trainable_parameters": 16384, "total_parameters": 2609664,
                   "global_steps": 6, "epochs": 1.0, "train_examples": 48, "final_eval_loss": 1.8,
                   "initial_eval_loss": 3.1, "duration_seconds": 12.5, "peak_memory_mb": {"process_rss": 800.0},
                   "hyperparameters": config.model_dump(mode="json"), "versions": {"peft": "0.21.2"}}
        (run / "summary.json").write_text(json.dumps(summary, indent=2))
        if eval_json is not None:
            (run / "eval.json").write_text(json.dumps(eval_json))
        return run

    return build


# ---- data: a byte-level BPE tokenizer trained here, with a chat template ----------------------
TEST_CHAT_TEMPLATE = (
    "{%- for message in messages -%}{%- if message['role'] == 'assistant' -%}{{ '<|assistant|>\n' }}"
    "{{ message['content'] + '</s>' }}{%- else -%}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory) -> Path:
    """A 600-token byte-level BPE (any text encodes) with <s>, </s>, <pad>, saved without a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hubtune.config import resolve_builtin

    corpus = Path(resolve_builtin("hubtune:data/invoices/train.jsonl")).read_text().splitlines()[:300]
    corpus += Path(resolve_builtin("hubtune:data/general/train.jsonl")).read_text().splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out = tmp_path_factory.mktemp("bpe") / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(out)
    return out


@pytest.fixture
def make_tokenizer(bpe_tokenizer_dir):
    """A fresh tokenizer each call (preparing data may set its chat template); template=None: none."""
    from transformers import AutoTokenizer

    def build(template: str | None = TEST_CHAT_TEMPLATE):
        tok = AutoTokenizer.from_pretrained(bpe_tokenizer_dir)
        tok.chat_template = template
        return tok

    return build


@pytest.fixture
def chat_tokenizer(make_tokenizer):
    return make_tokenizer()


@pytest.fixture
def chat_model_dir(bpe_tokenizer_dir, tmp_path) -> Path:
    """A folder holding only the test tokenizer with its chat template: enough for `hubtune data --model`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_tokenizer_dir)
    tok.chat_template = TEST_CHAT_TEMPLATE
    out = tmp_path / "chat-model"
    tok.save_pretrained(out)
    return out


# ---- evaluation: one real trained run shared by the eval tests ------------------------------------
@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and a busy machine does not stall them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory) -> Path:
    """A finished run of `hubtune.train`: the tiny base, QLoRA, 12 steps on 96 invoices; its config's
    eval section scores the invoice test set with short generations."""
    import torch

    import hubtune
    from hubtune import config as cfg
    from hubtune.config import resolve_builtin

    tmp = tmp_path_factory.mktemp("eval-run")
    rows = Path(resolve_builtin("hubtune:data/invoices/train.jsonl")).read_text().splitlines()[:96]
    (tmp / "invoices.jsonl").write_text("\n".join(rows) + "\n")
    config = cfg.build({
        "model": {"id": "hubtune:tiny-llama"},
        "data": {"sources": [str(tmp / "invoices.jsonl")], "val_set_size": 8, "max_seq_len": 384},
        "training": {"learning_rate": 3e-3, "max_steps": 12, "micro_batch_size": 8, "gradient_accumulation_steps": 1,
                     "warmup_steps": 2, "gradient_checkpointing": False, "logging_steps": 4, "save_steps": 100,
                     "eval_steps": 12},
        "eval": {"test": "hubtune:data/invoices/test.jsonl", "max_new_tokens": 48, "batch_size": 8},
        "output": {"dir": str(tmp / "run")},
    })
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return hubtune.train(config).path
    finally:
        torch.set_num_threads(threads)
