"""The model card: metadata that round-trips through huggingface_hub, the body, the loss curve."""

from __future__ import annotations

import struct

import pytest
from hub_server import readme
from huggingface_hub import ModelCard, metadata_load

from hubtune import card as cards
from hubtune.errors import HubtuneError
from hubtune.runs import EvalResult, RunFolder

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

EVAL = {"metrics": [
    {"name": "exact_match", "type": "exact_match", "value": 0.72, "dataset": "acme/invoices", "split": "test",
     "ci95": [0.58, 0.83]},
    {"name": "token_f1", "type": "f1", "value": 0.9, "dataset": {"name": "Invoices", "type": "acme/invoices"},
     "split": "test", "model": "tuned"},
    {"name": "exact_match", "type": "exact_match", "value": 0.05, "dataset": "acme/invoices", "split": "test",
     "model": "base"},
    # A local file has a name but no Hub dataset type: the body's table shows it, the model-index cannot.
    {"name": "regression set accuracy", "type": "accuracy", "value": 0.95, "ci95": [0.83, 0.99],
     "dataset": {"name": "evals:regression/general_mc.jsonl"}, "split": "test", "model": "tuned"},
]}


def evaluated(sections: dict) -> EvalResult:
    return EvalResult(run="runs/x", created="2026-01-01T00:00:00+00:00", settings={}, data={}, **sections)


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_eval_results_from_the_shapes_an_eval_writes():
    results = cards.eval_results_from(evaluated(EVAL))
    assert [(r.dataset_type, r.dataset_name, r.dataset_split, r.metric_type, r.metric_value) for r in results] == [
        ("acme/invoices", "acme/invoices", "test", "exact_match", 0.72),
        ("acme/invoices", "Invoices", "test", "f1", 0.9)]
    assert cards.eval_results_from(None) == [] and cards.eval_results_from(evaluated({"metrics": []})) == []


def test_loss_curve_png(tmp_path):
    out = cards.loss_curve([{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 2.5}],
                           tmp_path / "curve.png")
    assert png_size(out) == (600, 350)
    assert cards.loss_curve([{"step": 1, "learning_rate": 1e-4}], tmp_path / "none.png") is None


@pytest.fixture
def llama_run(hub, make_run):
    sha = hub.seed("meta-llama/Llama-3.1-8B", {"README.md": readme(license="llama3.1")}, gated="manual")
    hub.seed("acme/invoices", {"README.md": readme(license="cc-by-4.0")}, repo_type="dataset")
    return make_run(base_model="meta-llama/Llama-3.1-8B", base_revision=sha, datasets=("acme/invoices",),
                    use="research", eval_json=EVAL), sha


def test_card_metadata_round_trips(llama_run, tmp_path):
    run_dir, sha = llama_run
    run = RunFolder.open(run_dir)
    card = cards.build_card(run, "alice/Llama-3.1-8B-invoices", cards.publishing_verdict(run))
    path = tmp_path / "README.md"
    card.save(path)

    data = ModelCard.load(path).data
    assert data.base_model == "meta-llama/Llama-3.1-8B"
    assert data.base_model_relation == "adapter" and data.library_name == "peft"
    assert data.license == "llama3.1" and data.datasets == ["acme/invoices"]
    assert data.pipeline_tag == "text-generation"
    assert set(data.tags) >= {"hubtune", "lora", "trl", "sft"}
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in data.eval_results] == [
        ("exact_match", 0.72, "test"), ("f1", 0.9, "test")]
    meta = metadata_load(path)
    assert meta["model-index"][0]["name"] == "Llama-3.1-8B-invoices"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.72

    body = card.text
    assert "**Built with Llama**" in body
    assert "Llama 3.1 Community License" in body and "use-policy" in body
    assert f'AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.1-8B", revision="{sha}")' in body
    assert 'PeftModel.from_pretrained(base, "alice/Llama-3.1-8B-invoices")' in body
    assert "![Training and held-out loss](loss_curve.png)" in body
    assert "| acme/invoices | test | exact_match | tuned | 0.7200 | [0.5800, 0.8300] |" in body
    assert ("| evals:regression/general_mc.jsonl | test | regression set accuracy | tuned | 0.9500 | "
            "[0.8300, 0.9900] |") in body
    assert "| acme/invoices | test | exact_match | base | 0.0500 |" in body
    assert f"{run.summary.initial_eval_loss:.4f} before, {run.summary.final_eval_loss:.4f} after" in body
    assert "cc-by-4.0" in body and "training_config.yaml" in body


def test_card_for_a_licence_given_as_other(hub, make_run, tmp_path):
    hub.seed("Qwen/Qwen2.5-tiny", {"README.md": readme(license="other", license_name="qwen",
                                                         license_link="https://example.org/qwen/LICENSE")})
    run = RunFolder.open(make_run(base_model="Qwen/Qwen2.5-tiny", datasets=("hubtune:data/invoices/train.jsonl",)))
    card = cards.build_card(run, "alice/qwen-invoices", cards.publishing_verdict(run))
    card.save(tmp_path / "README.md")
    meta = metadata_load(tmp_path / "README.md")
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other", "qwen", "https://example.org/qwen/LICENSE")
    assert "datasets" not in meta  # local data is named in the body, not as Hub datasets
    assert "Built with Qwen" in card.text and "model-index" not in meta


def test_card_for_a_local_base_and_write_card(make_run):
    run_dir = make_run()
    path = cards.write_card(run_dir, "alice/tiny-invoices")
    meta = metadata_load(path)
    assert "base_model" not in meta and meta["license"] == "apache-2.0" and meta["library_name"] == "peft"
    assert png_size(run_dir / "loss_curve.png") == (600, 350)
    text = path.read_text()
    assert "resolve_builtin(\"hubtune:tiny-llama\")" in text and "No evaluation results" in text


def test_an_unfinished_run_names_what_is_missing(tmp_path):
    
    with pytest.raises(HubtuneError, match="not a run folder"):
        RunFolder.open(tmp_path)
    (tmp_path / "config.yaml").write_text("{}")
    with pytest.raises(HubtuneError, match="summary.json .*hubtune train --resume"):
        RunFolder.open(tmp_path).require_finished()


@pytest.mark.parametrize("training, quantization, rows", [
    ({"method": "kto", "desirable_weight": 1.5, "undesirable_weight": 0.5}, "nf4",
     ["Kahneman-Tversky Optimization (KTO)", "| Desirable / undesirable weight | 1.5 / 0.5 |",
      "| Method | QLoRA (NF4 4-bit base, double quantization) |"]),
    ({"method": "grpo", "grpo": {"loss_type": "dr_grpo", "top_k": 2}}, "int8",
     ["| Loss (TRL's loss_type) | dr_grpo |", "the 2 likeliest tokens", "`exact_match` (1.0)",
      "| Method | LoRA (8-bit base, bitsandbytes LLM.int8()) |"]),
])
def test_card_names_the_methods_own_settings(make_run, training, quantization, rows):
    """The card's training table carries what the method record holds (methods.settings_record of the
    run's own config), and an 8-bit base is not called a 4-bit one."""
    from hubtune import config as cfg
    from hubtune import methods

    run_dir = make_run()
    run = RunFolder(run_dir)
    tree = run.config.model_dump(mode="json")
    tree["training"].update(training)
    tree["model"]["quantization"] = quantization
    config = cfg.build(tree)
    (run_dir / RunFolder.CONFIG).write_text(config.to_yaml())
    run.write_summary(run.summary.model_copy(update={
        "training_method": training["method"], "method_settings": methods.settings_record(config)}))
    text = cards.write_card(run_dir, "alice/tiny-invoices").read_text()
    for row in rows:
        assert row in text
    assert "INT8 4-bit" not in text
