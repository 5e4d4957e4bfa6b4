"""Axolotl configs in and out: the guide's QLoRA config translates key by key and trains through
`hubtune train`; keys hubtune cannot honour are listed; hubtune -> Axolotl -> hubtune is exact."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from hubtune import config as cfg
from hubtune.cli import main
from hubtune.interop import axolotl
from readme_blocks import section_blocks

ROOT = Path(__file__).resolve().parent.parent
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# The field guide's Axolotl QLoRA config, as it teaches it.
GUIDE = """\
base_model: meta-llama/Llama-3.1-8B-Instruct
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer

load_in_8bit: false
load_in_4bit: true
strict: false

datasets:
  - path: tatsu-lab/alpaca
    type: alpaca
dataset_prepared_path: last_run_prepared
val_set_size: 0.05
output_dir: ./outputs/qlora-out

adapter: qlora
lora_model_dir:

sequence_len: 2048
sample_packing: true
pad_to_sequence_len: true

lora_r: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target_modules:
  - q_proj
  - k_proj
  - v_proj
  - o_proj
  - gate_proj
  - up_proj
  - down_proj

wandb_project:
wandb_entity:

gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 3
optimizer: adamw_8bit
lr_scheduler: cosine
learning_rate: 0.0002

train_on_inputs: false
group_by_length: false
bf16: auto
fp16:
tf32: false

gradient_checkpointing: true
logging_steps: 10
warmup_steps: 50
weight_decay: 0.0
"""


def guide(**changes) -> dict:
    data = yaml.safe_load(GUIDE)
    data.update(changes)
    return data


def test_the_guides_config_translates_key_by_key():
    translation = axolotl.from_axolotl(guide())
    assert translation.unsupported == []
    c = translation.run_config()
    assert (c.model.id, c.model.quantization, c.model.double_quant, c.model.compute_dtype) == (
        "meta-llama/Llama-3.1-8B-Instruct", "nf4", True, "auto")
    assert (c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.target_modules) == (16, 32, 0.05, SEVEN)
    assert [s.path for s in c.data.sources] == ["tatsu-lab/alpaca"] and c.data.format == "alpaca"
    assert (c.data.val_set_size, c.data.max_seq_len, c.data.packing) == (0.05, 2048, True)
    t = c.training
    assert (t.epochs, t.micro_batch_size, t.gradient_accumulation_steps) == (3, 2, 4)
    assert (t.learning_rate, t.lr_scheduler, t.warmup_steps, t.optimizer) == (2e-4, "cosine", 50, "adamw_8bit")
    assert (t.gradient_checkpointing, t.weight_decay, t.logging_steps) == (True, 0.0, 10)
    assert c.output.dir == "./outputs/qlora-out"
    # Axolotl runs none of hubtune's extra data filters: the translation trains on the same rows.
    assert (c.data.near_dup_threshold, c.data.min_response_tokens, c.data.dedup_exact) == (None, 0, False)
    assert any("Alpaca prompt text" in n for n in translation.notes)


def test_axolotl_defaults_apply_where_the_file_is_silent():
    c = axolotl.from_axolotl({"base_model": "org/model", "adapter": "lora", "learning_rate": 1e-4,
                              "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True,
                              "datasets": [{"path": "org/chats", "type": "chat_template"}],
                              "warmup_steps": 0}).run_config()
    assert c.model.quantization == "none"  # lora without load_in_4bit: a 16-bit base
    assert (c.training.epochs, c.training.micro_batch_size, c.training.gradient_accumulation_steps) == (1, 1, 1)
    assert (c.data.val_set_size, c.data.max_seq_len, c.data.packing) == (0.0, 512, False)
    assert (c.lora.dropout, c.lora.target_modules, c.training.max_grad_norm) == (0.0, "all-linear", 1.0)
    assert (c.training.gradient_checkpointing, c.training.optimizer) == (False, "adamw_torch")
    assert c.data.format == "messages"


def test_dataset_types_and_column_fields():
    sharegpt = axolotl.from_axolotl(guide(datasets=[
        {"path": "org/convs", "type": "chat_template", "field_messages": "chats",
         "message_property_mappings": {"role": "from", "content": "value"}, "split": "dev", "name": "en"}]))
    c = sharegpt.run_config()
    assert (c.data.format, c.data.columns) == ("sharegpt", {"conversations": "chats"})
    assert (c.data.sources[0].split, c.data.sources[0].name) == ("dev", "en")
    completion = axolotl.from_axolotl(guide(datasets=[{"path": "org/books", "type": "completion", "field": "body"}]))
    assert (completion.run_config().data.format, completion.run_config().data.columns) == ("text", {"text": "body"})
    legacy = axolotl.from_axolotl(guide(datasets=[{"path": "org/convs", "type": "sharegpt", "conversation": "chatml"}]))
    assert legacy.run_config().data.format == "sharegpt" and legacy.unsupported == []


def write_guide(folder: Path, **changes) -> Path:
    data = guide(base_model="hubtune:tiny-llama", output_dir=str(folder / "run"), **changes)
    data["datasets"][0]["path"] = "hubtune:data/invoices/train.jsonl"
    path = folder / "axolotl.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def readme_commands() -> list[list[str]]:
    blocks = [body for kind, body in section_blocks("Axolotl configs") if kind == "bash"]
    return [shlex.split(line)[1:] for b in blocks for line in b.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A user's folder with hubtune's examples/ in it, as the README's commands expect."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", folder / "examples")
    return folder


@contextlib.contextmanager
def inside(folder: Path):
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def guide_run(workdir, one_torch_thread):
    """The README's `hubtune train examples/axolotl-qlora.yml ...`: the guide's config on the embedded
    base and data, one short optimizer step (the tiny base's context is 512 tokens)."""
    train = readme_commands()[0]
    assert train[:2] == ["train", "examples/axolotl-qlora.yml"] and "training.max_steps=2" in train
    out, err = io.StringIO(), io.StringIO()
    with inside(workdir), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(train)
    return code, out.getvalue(), err.getvalue(), workdir / "runs" / "axolotl-qlora"


def test_the_example_is_the_guides_config_on_the_embedded_base_and_data():
    example = yaml.safe_load((ROOT / "examples" / "axolotl-qlora.yml").read_text())
    assert example["base_model"] == "hubtune:tiny-llama"
    assert example["datasets"] == [{"path": "hubtune:data/invoices/train.jsonl", "type": "alpaca"}]
    same = {k: v for k, v in guide().items() if k not in ("base_model", "datasets", "output_dir")}
    assert {k: example[k] for k in same} == same


@pytest.mark.slow
def test_the_guides_config_trains_through_hubtune_train_and_shows_its_translation(guide_run):
    code, out, err, run = guide_run
    assert code == 0, err[-3000:]
    shown, _, rest = out.partition("\nnote: ")
    assert shown.startswith("Axolotl config ") and "translated to this hubtune run config:" in shown
    translated = cfg.RunConfig.model_validate(yaml.safe_load(shown.split(":\n", 1)[1]))
    assert translated == cfg.load(run / "config.yaml")  # the run trained exactly what was shown
    assert (translated.lora.r, translated.lora.alpha, translated.lora.target_modules) == (16, 32, SEVEN)
    assert (translated.data.packing, translated.data.val_set_size, translated.training.warmup_steps) == (True, 0.05, 50)
    assert (translated.training.optimizer, translated.training.lr_scheduler) == ("adamw_8bit", "cosine")
    assert "Alpaca prompt text" in rest and "run: runs/axolotl-qlora" in out
    assert re.search(r"^backend +hf \(auto: Unsloth needs a CUDA GPU", out, re.M)  # the run's console says which

    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_steps"] == 2 and summary["method"] == "qlora"
    assert summary["backend"]["name"] == "hf"
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], sorted(adapter["target_modules"])) == (16, 32, sorted(SEVEN))
    assert summary["eval_examples"] > 0 and summary["final_eval_loss"] != summary["initial_eval_loss"]
    # LoRA's B matrices start at zero: the warm-up's first non-zero learning rate moved every one of them.
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert len(lora_b) == 4 * 7 and all(w.abs().max() > 0 for w in lora_b)


def test_the_readmes_convert_and_export_commands(workdir, capsys):
    convert, export = readme_commands()[1:]
    with inside(workdir):
        assert main(convert) == 0 and main(export) == 0
        converted = cfg.load("runs/from-axolotl.yaml")
        assert converted == axolotl.read("examples/axolotl-qlora.yml").run_config()
        back = axolotl.read("runs/invoices-axolotl.yml").run_config()
        assert back == cfg.load("examples/invoices.yaml")


def test_keys_hubtune_cannot_honour_are_listed_at_once_with_their_values_in_full(tmp_path, capsys):
    path = write_guide(tmp_path, unfrozen_parameters=["^lm_head.*"], s2_attention=True, relora=True,
                       special_tokens={"pad_token": "<|end_of_text|>", "sep_token": "<sep>"}, lora_model_dir=None,
                       plugins=["axolotl.integrations.grokfast.GrokfastPlugin"])
    data = yaml.safe_load(path.read_text())
    data["datasets"].append({"path": "org/oasst", "type": "oasst"})
    path.write_text(yaml.safe_dump(data))

    assert main(["train", str(path), "training.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "6 Axolotl keys hubtune cannot honour" in err
    for key in ("unfrozen_parameters", "s2_attention", "relora", "special_tokens.sep_token",
                "plugins", "datasets[1].type"):
        assert f"  {key}: " in err, (key, err)
    assert "unfrozen_parameters: [^lm_head.*]: Axolotl matches these against the names of the PEFT-wrapped" in err
    assert "special_tokens.sep_token: '<sep>'" in err
    assert "axolotl.integrations.grokfast.GrokfastPlugin: an Axolotl plugin" in err
    assert "'oasst': hubtune reads the types alpaca" in err and "..." not in err
    assert "--ignore-unsupported" in err
    assert not (tmp_path / "run").exists()  # nothing started

    out_file = tmp_path / "run.yaml"
    assert main(["config", "convert", str(path), "--out", str(out_file), "--ignore-unsupported"]) == 0
    written = out_file.read_text()
    assert "# ignored (--ignore-unsupported): s2_attention: True" in written
    converted = cfg.load(out_file)
    assert [s.path for s in converted.data.sources] == ["hubtune:data/invoices/train.jsonl"]
    assert converted.lora.target_modules == SEVEN
    assert converted.model.special_tokens == {"pad_token": "<|end_of_text|>"}


def test_a_hubtune_config_still_loads_as_one(tmp_path, capsys):
    # `hubtune train` tells the two apart by their keys; a hubtune config with an error stays a ConfigError.
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora:\n  r: 0\n")
    assert main(["train", str(bad)]) == 2
    assert "lora.r" in capsys.readouterr().err


RICH = {
    "model": {"id": "meta-llama/Llama-3.1-8B", "revision": "v1.0", "quantization": "none", "compute_dtype": "float16"},
    "lora": {"r": 8, "alpha": 8, "dropout": 0.1, "target_modules": "qv"},
    "data": {"sources": [{"path": "acme/chats", "split": "train", "name": "en", "revision": "abc123"}],
             "format": "sharegpt", "columns": {"conversations": "dialogue"}, "val_set_size": 0.1, "max_seq_len": 4096,
             "truncate": True, "packing": True, "near_dup_threshold": 0.9, "max_task_share": 0.5},
    "training": {"learning_rate": 1e-4, "epochs": 2, "max_steps": 300, "micro_batch_size": 4,
                 "gradient_accumulation_steps": 2, "lr_scheduler": "linear", "warmup_steps": 30,
                 "optimizer": "paged_adamw_32bit", "weight_decay": 0.01, "max_grad_norm": 1.0,
                 "gradient_checkpointing": False, "logging_steps": 5, "eval_steps": 50, "save_steps": 100,
                 "save_total_limit": 3, "seed": 7, "backend": "hf", "report_to": ["tensorboard", "wandb"]},
    "licence": {"use": "commercial", "acknowledge": ["acme/chats"]},
    "output": {"dir": "runs/rich"},
    "eval": {"few_shot_k": 0, "tasks": []},
}


@pytest.mark.parametrize("source", ["examples/invoices.yaml", "examples/llama-3.1-8b-qlora.yaml", "rich"])
def test_round_trip_hubtune_axolotl_hubtune(source, tmp_path, capsys):
    original_file = ROOT / source if source != "rich" else tmp_path / "rich.yaml"
    if source == "rich":
        original_file.write_text(yaml.safe_dump(RICH))
    original = cfg.load(original_file)
    exported_file, back_file = tmp_path / "axolotl.yml", tmp_path / "back.yaml"
    assert main(["config", "export", str(original_file), "--to", "axolotl", "--out", str(exported_file)]) == 0
    assert main(["config", "convert", str(exported_file), "--out", str(back_file)]) == 0
    assert cfg.load(back_file) == original

    exported = yaml.safe_load(exported_file.read_text())
    assert (exported["lora_r"], exported["lora_alpha"], exported["learning_rate"]) == (
        original.lora.r, original.lora.alpha, original.training.learning_rate)
    assert exported["num_epochs"] == original.training.epochs and exported["datasets"][0]["type"] in (
        "alpaca", "chat_template")
    block = exported.get("hubtune", {})
    # Axolotl's own keys carry these; only a preset's name (qv) is hubtune's alone.
    assert set(block.get("lora", {})) <= ({"target_modules"} if isinstance(original.lora.target_modules, str) and
                                          original.lora.target_modules != "all-linear" else set())
    assert not {"epochs", "learning_rate", "micro_batch_size"} & set(block.get("training", {}))
    if source == "rich":
        assert exported["adapter"] == "lora" and exported["fp16"] is True and exported["use_tensorboard"] is True
        assert exported["datasets"][0]["field_messages"] == "dialogue"
        assert block["training"]["report_to"] == ["tensorboard", "wandb"] and block["licence"]["use"] == "commercial"
        assert "kept under `hubtune:`" in capsys.readouterr().err


def test_round_trip_axolotl_hubtune_axolotl_hubtune(tmp_path):
    first = axolotl.from_axolotl(guide()).run_config()
    again = axolotl.from_axolotl(axolotl.to_axolotl(first)).run_config()
    assert again == first


@pytest.mark.slow
def test_export_of_a_run_folder_takes_row_formats_from_its_data_report(guide_run, tmp_path, capsys):
    _, _, _, run = guide_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "adapter"))
    # A config whose format is auto and whose data cannot be read here: only the run's report knows it.
    raw = yaml.safe_load((copy / "config.yaml").read_text())
    raw["data"].update(format="auto", sources=[{"path": "acme/offline-invoices"}])
    (copy / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["config", "export", str(copy), "--to", "axolotl"]) == 0
    exported = yaml.safe_load(capsys.readouterr().out)
    assert exported["datasets"] == [{"path": "acme/offline-invoices", "type": "alpaca"}]


def test_what_axolotl_cannot_express_is_an_error(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"val_set_size": 8, "format": "prompt_completion"}}))
    assert main(["config", "export", str(path), "--to", "axolotl"]) == 2
    err = capsys.readouterr().err
    assert "data.val_set_size: 8 rows" in err and "prompt_completion has no Axolotl dataset type" in err


@pytest.mark.parametrize("datasets,extra,named", [
    ([{"path": "org/prefs", "type": "chatml.intel"}, {"path": "org/kto", "type": "llama3.argilla"}], {"rl": "simpo"},
     ["org/prefs (type chatml.intel)", "org/kto (type llama3.argilla)"]),
    (None, {"pretraining_dataset": [{"path": "org/web", "type": "pretrain"}]}, ["pretraining_dataset"]),
])
def test_a_config_without_a_readable_dataset_is_refused_even_when_ignoring(datasets, extra, named, tmp_path, capsys):
    path = write_guide(tmp_path, **extra)
    data = yaml.safe_load(path.read_text())
    data["datasets"] = datasets
    path.write_text(yaml.safe_dump(data))
    for args in (["train", str(path), "--ignore-unsupported", "training.max_steps=1"],
                 ["config", "convert", str(path), "--ignore-unsupported", "--out", str(tmp_path / "c.yaml")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "hubtune never substitutes one" in err and all(n in err for n in named), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "c.yaml").exists()


def test_export_writes_hubtune_assets_as_references_never_as_package_paths(tmp_path, capsys):
    out = tmp_path / "axolotl.yml"
    assert main(["config", "export", str(ROOT / "examples" / "invoices.yaml"), "--to", "axolotl", "--out", str(out)]) == 0
    text = out.read_text()
    assert str(cfg.ASSETS) not in text and "site-packages" not in text
    exported = yaml.safe_load(text)
    assert exported["base_model"] == "hubtune:tiny-llama"
    assert exported["datasets"][0]["path"] == "hubtune:data/invoices/train.jsonl"
    err = capsys.readouterr().err
    assert "Axolotl cannot read: base_model: hubtune:tiny-llama; datasets[0].path: hubtune:data/invoices" in err


@pytest.mark.slow
def test_axolotl_keys_with_new_meanings_train_as_written(tmp_path, one_torch_thread, capsys):
    """An 8-bit base, ratio warm-up, per-epoch checkpoints and evaluations, a sliced split, a regex target, new special
    and end-of-turn tokens with a named chat template, Adam's betas: each reaches the trainer."""
    from hubtune.evaluation.generate import load_tuned

    path = tmp_path / "axolotl.yml"
    path.write_text(yaml.safe_dump({
        "base_model": "hubtune:tiny-llama", "adapter": "lora", "load_in_8bit": True, "lora_r": 4, "lora_alpha": 8,
        "lora_target_modules": r"model\.layers\.\d+\.self_attn\.(q|v)_proj",
        "datasets": [{"path": "hubtune:data/invoices/train.jsonl", "type": "alpaca", "split": "train[:2%]"}],
        "val_set_size": 0.25, "sequence_len": 384, "micro_batch_size": 4, "num_epochs": 2, "learning_rate": 1e-3,
        "warmup_ratio": 0.5, "saves_per_epoch": 2, "evals_per_epoch": 2, "adam_beta2": 0.95, "logging_steps": 1,
        "chat_template": "chatml", "special_tokens": {"eos_token": "<|im_end|>", "pad_token": "<|pad|>"},
        "eot_tokens": ["<|im_end|>", "<|tool|>"], "tf32": True, "flash_attention": False, "sdp_attention": True,
        "output_dir": str(tmp_path / "run")}))
    assert main(["train", str(path)]) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    assert "added to the vocabulary (the embedding and output head train with the adapter): <|im_end|>, <|pad|>, " \
           "<|tool|>" in out
    run = tmp_path / "run"
    config = cfg.load(run / "config.yaml")
    assert config.data.sources[0].split == "train[:2%]" and config.training.kernels == ["sdpa"]
    assert config.model.quantization == "int8" and "(int8)" in out
    report = json.loads((run / "data_report.json").read_text())
    assert report["sources"][0]["rows"] == 24  # 2% of the 1,200 rows, as `datasets` slices them
    saved = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))
    state = json.loads((run / "checkpoints" / f"checkpoint-{saved[-1]}" / "trainer_state.json").read_text())
    assert json.loads((run / "data_report.json").read_text())["train"] == 19  # 5 of the 24 held out
    assert state["max_steps"] == 10  # 19 rows in batches of 4: 5 steps an epoch, two epochs
    assert saved == [3, 6, 9, 10]  # 2 per epoch: every 1 / (2 x 2) of the 10 steps (rounded up), and the last
    assert [h["step"] for h in state["log_history"] if "eval_loss" in h] == [3, 6, 9, 10]
    rates = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert rates[:6] == sorted(rates[:6]) and rates[4] < 1e-3 and rates[5] == pytest.approx(1e-3)  # half: 5 steps
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == r"model\.layers\.\d+\.self_attn\.(q|v)_proj"
    assert "embed_tokens" in adapter["modules_to_save"]  # new rows trained (the tiny base ties its head to it)
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    embedding = next(w for name, w in weights.items() if "embed_tokens" in name)  # saved whole, grown by 3 rows
    model, tokenizer = load_tuned(run)
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == embedding.shape[0]
    new_ids = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|pad|>", "<|tool|>"])
    assert min(new_ids) >= embedding.shape[0] - 3 and embedding[new_ids].abs().sum() > 0
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


NEW_KEYS = {
    "model": {"id": "acme/base", "quantization": "int8", "special_tokens": {"pad_token": "<|pad|>"},
              "added_tokens": ["<|eot|>"], "router_aux_loss": True},
    "lora": {"target_regex": r"model\.layers\.\d+\.mlp\.\w+_proj", "target_parameters": ["experts.down_proj"],
             "modules_to_save": ["lm_head"], "use_rslora": True},
    "data": {"sources": [{"path": "acme/chats", "split": "train[10%:60%]"}], "format": "messages",
             "chat_template": "chatml"},
    "training": {"warmup_ratio": 0.1, "saves_per_epoch": 4, "evals_per_epoch": 2, "tf32": "auto",
                 "kernels": ["flash_attention_2", "liger"], "distributed": "deepspeed-zero2", "adam_beta2": 0.95,
                 "optimizer": "adafactor"},
}


def test_new_settings_export_as_axolotl_keys_and_read_back_exactly():
    original = cfg.build(NEW_KEYS)
    exported = axolotl.to_axolotl(original)
    assert axolotl.from_axolotl(exported).run_config() == original
    # Only hubtune's own choices ride under `hubtune:` (gradient_checkpointing: auto has no Axolotl spelling).
    assert set(exported["hubtune"]["training"]) == {"gradient_checkpointing"}
    assert not exported.get("hubtune", {}).get("model") and not exported.get("hubtune", {}).get("lora")
    assert (exported["load_in_8bit"], exported["special_tokens"], exported["tokens"]) == (
        True, {"pad_token": "<|pad|>"}, ["<|eot|>"])
    assert exported["lora_target_modules"] == NEW_KEYS["lora"]["target_regex"] and exported["peft_use_rslora"]
    assert exported["model_config"] == {"output_router_logits": True}
    assert (exported["warmup_ratio"], exported["saves_per_epoch"], exported["evals_per_epoch"]) == (0.1, 4, 2)
    assert exported["attn_implementation"] == "flash_attention_2"
    assert exported["plugins"] == ["axolotl.integrations.liger.LigerPlugin"]
    assert exported["deepspeed"] == "deepspeed_configs/zero2.json"
    # Under FSDP an 8-bit base runs on hubtune's FSDP2 launch in which every process loads it whole (so does
    # torchao's low-bit AdamW); under ZeRO-3 it is refused, and so is an optimizer whose states hubtune's FSDP1
    # launch of a 16-bit base cannot shard (hubtune refuses both at launch).
    fsdp = axolotl.to_axolotl(cfg.build({**NEW_KEYS, "training": {**NEW_KEYS["training"], "distributed": "fsdp"}}))
    assert (fsdp["fsdp_config"]["fsdp_version"], fsdp["fsdp_config"]["fsdp_cpu_ram_efficient_loading"]) == (2, False)
    back = axolotl.from_axolotl({**fsdp, "optimizer": "adamw_torch_4bit"})
    assert not back.unsupported and back.run_config().training.optimizer == "adamw_torch_4bit"
    refused = dict(axolotl.from_axolotl({**fsdp, "load_in_8bit": False, "optimizer": "adamw_torch_4bit"}).unsupported)
    assert "'adamw_torch_4bit' under fsdp: torchao's 4-bit states shard with FSDP2's" in refused["optimizer"]
    zero3 = axolotl.to_axolotl(cfg.build({**NEW_KEYS, "training": {**NEW_KEYS["training"],
                                                                   "distributed": "deepspeed-zero3"}}))
    assert "True under deepspeed-zero3: ZeRO-3 partitions" in dict(axolotl.from_axolotl(zero3).unsupported)["load_in_8bit"]
    assert exported["datasets"][0]["split"] == "train[10%:60%]" and exported["chat_template"] == "chatml"
