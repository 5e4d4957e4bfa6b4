"""Shared fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

# Under pytest-xdist each worker is one of the machine's cores: one torch thread per process (the
# worker's and those it starts), or the workers' thread pools fight over the cores and all slow down.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The loopback Hub speaks the regular upload route, not Xet: set before huggingface_hub is used.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

SHARED_RUN = {"trained_run", "eval_run", "make_run"}  # fixtures over the session's real training run


def pytest_collection_modifyitems(config, items):
    """A test that needs the session's trained run is slow (the first one pays for the training). Tests
    marked gpu need a CUDA device: skipped, saying so, on a machine without one."""
    for item in items:
        if SHARED_RUN & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from huggingface_hub import constants, hf_api

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
    # The module's functions (huggingface_hub.file_exists, which peft calls, ...) are methods of one HfApi made
    # at import, which read the endpoint then.
    monkeypatch.setattr(hf_api.api, "endpoint", hub_server.url)
    return hub_server


@pytest.fixture(scope="session")
def fault_proxy(hub_server):
    """The fault-injecting proxy (tests/fault_proxy.py) in front of the loopback Hub, for the session."""
    from fault_proxy import FaultProxy

    proxy = FaultProxy(hub_server.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def faulty_hub(hub, fault_proxy, monkeypatch):
    """The loopback Hub reached through the fault proxy, with no faults yet (add them with
    `fault_proxy.fault(...)`), one-second timeouts and two quick retries."""
    from huggingface_hub import constants, hf_api

    fault_proxy.clear()
    fault_proxy.seen.clear()
    monkeypatch.setenv("HF_ENDPOINT", fault_proxy.url)
    monkeypatch.setattr(constants, "ENDPOINT", fault_proxy.url)
    monkeypatch.setattr(hf_api.api, "endpoint", fault_proxy.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        fault_proxy.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    monkeypatch.setenv("HUBTUNE_HUB_RETRIES", "2")
    monkeypatch.setenv("HUBTUNE_HUB_BACKOFF", "0.05")
    yield hub
    fault_proxy.clear()


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
def untied_tiny_base(tmp_path_factory) -> Path:
    """The tiny base saved with an output head of its own (not tied to the embedding), tokenizer included."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from hubtune.config import resolve_builtin

    source = Path(resolve_builtin("hubtune:tiny-llama"))
    model = AutoModelForCausalLM.from_pretrained(source, tie_word_embeddings=False)
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    folder = tmp_path_factory.mktemp("untied")
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture
def make_run(eval_run, tmp_path):
    """A finished run folder: a copy of the real session run (`eval_run`), re-pointed at another base,
    datasets and licence settings through the run folder's own types, for card, push and licence tests."""
    import shutil

    from hubtune import config as cfg
    from hubtune.runs import DatasetRecord, EvalResult, RunFolder

    def build(base_model: str = "hubtune:tiny-llama", base_revision: str | None = None,
              datasets: tuple[str, ...] = ("hubtune:data/invoices/train.jsonl",), use: str = "personal",
              acknowledge: tuple[str, ...] = (), eval_json: dict | None = None, name: str = "run") -> Path:
        dest = tmp_path / name
        shutil.copytree(eval_run, dest, ignore=shutil.ignore_patterns(
            "eval*", "human_eval*", "README.md", "loss_curve.png", ".lock", "checkpoints"))
        run = RunFolder(dest)
        tree = run.config.model_dump(mode="json")
        tree["model"].update(id=base_model, revision=base_revision)
        tree["data"]["sources"] = list(datasets)
        tree["licence"] = {"use": use, "acknowledge": list(acknowledge)}
        tree["output"]["dir"] = str(dest)
        (dest / RunFolder.CONFIG).write_text(cfg.build(tree).to_yaml())
        run.write_summary(run.summary.model_copy(update={
            "base_model": base_model, "base_revision": base_revision,
            "datasets": [DatasetRecord(path=d) for d in datasets]}))
        if eval_json is not None:  # the sections given, on top of what every eval.json holds
            run.write_eval(EvalResult.model_validate({"run": str(dest), "created": "2026-01-01T00:00:00+00:00",
                                                      "settings": {}, "data": {}, **eval_json}))
        return dest

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


@pytest.fixture(scope="session")
def family_model(bpe_tokenizer_dir, tmp_path_factory):
    """family key -> a folder holding a tiny random model of that family with its real chat template and special
    tokens (tests/family_models.py), built once per session."""
    from family_models import build_family_model

    built: dict[str, Path] = {}

    def get(key: str) -> Path:
        if key not in built:
            built[key] = build_family_model(key, bpe_tokenizer_dir, tmp_path_factory.mktemp("family") / key)
        return built[key]

    return get


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


class Snapshot:
    """A TrainerCallback (built lazily: transformers loads on first use) that keeps every trainable
    parameter, every plain base parameter, and the saved state of every frozen 4-bit base layer under
    LoRA (the 4-bit codes plus quantization constants), before and after training."""

    @staticmethod
    def callback():
        import torch
        from transformers import TrainerCallback

        def take(model):
            params = {n: p.detach().clone() for n, p in model.named_parameters()
                      if p.requires_grad or p.dtype != torch.uint8}
            layers = {}
            for name, module in model.named_modules():
                if hasattr(module, "base_layer") and hasattr(module.base_layer, "in_features"):
                    layers[name] = {k: v.detach().clone() for k, v in module.base_layer.state_dict().items()}
            return params, layers

        class Taken(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                self.before, self.layers_before = take(model)
                self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

            def on_train_end(self, args, state, control, model=None, **kwargs):
                self.after, self.layers_after = take(model)

        return Taken()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One real finished run of `hubtune.train` shared by the training, evaluation, card and push tests:
    the tiny base, QLoRA, 12 steps on 96 invoices, with a snapshot of the weights before and after;
    its config's eval section scores the invoice test set with short generations."""
    import torch

    import hubtune
    from data_rows import tiny_config

    config = tiny_config(
        tmp_path_factory.mktemp("eval-run"), rows=96, data={"val_set_size": 8},
        training={"learning_rate": 3e-3, "max_steps": 12, "micro_batch_size": 8, "warmup_steps": 2,
                  "logging_steps": 2, "save_steps": 100, "eval_steps": 12},
        eval={"test": "hubtune:data/invoices/test.jsonl", "max_new_tokens": 48, "batch_size": 8})
    snapshot = Snapshot.callback()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return hubtune.train(config, callbacks=[snapshot]), snapshot
    finally:
        torch.set_num_threads(threads)


# ---- the UI in a real browser: Debian's Chromium, driven by Playwright ------------------------------
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright launches Debian's Chromium (Playwright's own download cannot work offline),
    headless, without the background networking that keeps calling hosts this network refuses."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run installs it)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True,
            "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run"]}


@pytest.fixture
def ui_app(tmp_path):
    """The app on 127.0.0.1 (a free port) over a fresh runs root; its jobs are stopped afterwards."""
    from hubtune.ui import build_app

    root = tmp_path / "runs"
    app = build_app(root)
    app.queue(default_concurrency_limit=4).launch(server_name="127.0.0.1", server_port=None,
                                                   prevent_thread_lock=True, quiet=True)
    app.root = root
    yield app
    app.runner.close()
    for running in list(app.runner.running.values()):  # the subprocesses this app started, by pid
        running.process.terminate()
        running.process.wait(timeout=60)
    app.close()
@pytest.fixture(scope="session")
def eval_run(trained_run) -> Path:
    return trained_run[0].path


# ---- the CLI, in this process ----------------------------------------------------------------------
@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `hubtune ARGS...` through the real entry point (hubtune.cli.main) in this process: the same
    parsing, error mapping and exit codes as the installed command, without a new interpreter paying
    ~5 s of imports. Settings that huggingface_hub reads at import time (HF_HUB_OFFLINE) need a subprocess."""
    from types import SimpleNamespace

    from hubtune.cli import main

    def run(*args, env: dict | None = None, cwd=None):
        capsys.readouterr()
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            if cwd is not None:
                m.chdir(cwd)
            code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run
