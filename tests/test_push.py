"""`hubtune push` against the loopback Hub with the real client: one commit, identical files back,
licence and naming refusals, retry after a failure, and no token anywhere it should not be."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HUB_TOKEN
from hub_server import readme
from huggingface_hub import ModelCard, snapshot_download

import hubtune
from hubtune.cli import main
from hubtune.errors import LicenceBlocked, NamingRuleError, PushError

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"}
RECORD_FILES = {"README.md", "loss_curve.png", "training_config.yaml", "training_summary.json",
                "training_metrics.jsonl", "eval.json"}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def llama_run(hub, make_run):
    sha = hub.seed("meta-llama/Llama-3.1-push", {"README.md": readme(license="llama3.1")})
    hub.seed("acme/invoices-push", {"README.md": readme(license="cc-by-4.0")}, repo_type="dataset")
    run = make_run(base_model="meta-llama/Llama-3.1-push", base_revision=sha, datasets=("acme/invoices-push",),
                   use="research", eval_json={"metrics": [{"name": "exact_match", "type": "exact_match",
                                                           "value": 0.75, "dataset": "acme/invoices-push",
                                                           "split": "test"}]})
    (run / "adapter" / "training_args.bin").write_bytes(b"\x80\x04pickle")  # what the trainer leaves there
    return run


def test_push_then_download_gives_identical_files(hub, hub_token, llama_run):
    repo = "alice/Llama-3.1-invoices"
    result = hubtune.push(llama_run, repo)
    assert result.url == f"{hub.url}/{repo}" and result.commit_sha in result.commit_url
    assert hub.commit_count(repo) == 2  # the repo's initial commit, then everything in one commit

    pulled = Path(snapshot_download(repo, token=False))
    got = folder_bytes(pulled)
    assert set(got) == {".gitattributes", *ADAPTER_FILES, "chat_template.jinja", *RECORD_FILES}
    assert set(result.files) == set(got) - {".gitattributes"}
    for name in ADAPTER_FILES:
        assert got[name] == (llama_run / "adapter" / name).read_bytes()
    # The run's record, with this machine's folders replaced by names (the run's, the data files').
    for published, kept in (("training_config.yaml", "config.yaml"), ("training_summary.json", "summary.json")):
        assert got[published] == (llama_run / kept).read_text().replace(str(llama_run), llama_run.name).encode()
        assert str(llama_run.parent).encode() not in got[published]
    assert "training_args.bin" not in got and got["loss_curve.png"][:4] == b"\x89PNG"

    card = ModelCard.load(repo)  # through the Hub, as a visitor would read it
    assert (card.data.license, card.data.base_model, card.data.library_name) == (
        "llama3.1", "meta-llama/Llama-3.1-push", "peft")
    assert card.data.datasets == ["acme/invoices-push"]
    assert card.data.eval_results[0].metric_value == 0.75


def test_the_token_never_lands_anywhere(hub, hub_token, llama_run):
    repo = "alice/Llama-3.1-no-secrets"
    before = folder_bytes(llama_run)
    seen = len(hub.uploaded_bodies)  # the session's Hub also received other tests' requests (a job's secrets)
    hubtune.push(llama_run, repo)
    token = HUB_TOKEN.encode()
    for name, content in hub.files(repo).items():
        assert token not in content, name
    assert len(hub.uploaded_bodies) > seen and all(token not in body for body in hub.uploaded_bodies[seen:])
    after = folder_bytes(llama_run)
    assert token not in after.pop("state.json") and after == {k: v for k, v in before.items() if k != "state.json"}
    # The run only records the push: its status, repo and commit.
    run = hubtune.RunFolder(llama_run)
    assert run.status == hubtune.Status.PUSHED and run.state()["pushes"][0]["repo"] == repo


def test_naming_rule_refusal_creates_nothing(hub, hub_token, llama_run, capsys):
    with pytest.raises(NamingRuleError) as err:
        hubtune.push(llama_run, "alice/invoices-8B")
    assert 'must begin with "Llama"' in str(err.value) and "alice/Llama-invoices-8B" in str(err.value)
    assert ("model", "alice/invoices-8B") not in hub.repos
    assert main(["push", str(llama_run), "--repo", "alice/invoices-8B"]) == 3
    assert "must begin with" in capsys.readouterr().err


def test_licence_block_refuses_publishing(hub, hub_token, make_run):
    hub.seed("acme/base-nc", {"README.md": readme(license="mit")})
    hub.seed("acme/nc-push", {"README.md": readme(license="cc-by-nc-4.0")}, repo_type="dataset")
    run = make_run(base_model="acme/base-nc", datasets=("acme/nc-push",), use="commercial")
    with pytest.raises(LicenceBlocked, match="acme/nc-push .*does not permit commercial use"):
        hubtune.push(run, "alice/nc-adapter")
    assert ("model", "alice/nc-adapter") not in hub.repos


def test_failed_push_leaves_the_run_untouched_and_can_be_retried(hub, hub_token, llama_run):
    repo = "alice/Llama-3.1-retry"
    before = folder_bytes(llama_run)
    hub.fail_next["commit"] = 422  # refused for good (a 5xx is retried: tests/test_hub_faults.py)
    with pytest.raises(PushError, match="run the same push again"):
        hubtune.push(llama_run, repo)
    assert folder_bytes(llama_run) == before
    assert hub.commit_count(repo) == 1  # created, nothing committed
    hubtune.push(llama_run, repo)
    assert hub.commit_count(repo) == 2 and "adapter_model.safetensors" in hub.files(repo)


def test_private_push(hub, hub_token, llama_run):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    hubtune.push(llama_run, "alice/Llama-3.1-private", private=True)
    assert HfApi().model_info("alice/Llama-3.1-private").private is True
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("alice/Llama-3.1-private", token=False)


def test_push_without_a_token(hub, llama_run):
    with pytest.raises(PushError, match="no Hugging Face token is set.*HF_TOKEN.*hf auth login"):
        hubtune.push(llama_run, "alice/Llama-3.1-x")


def test_push_to_a_namespace_the_token_cannot_write(hub, hub_token, llama_run):
    with pytest.raises(PushError, match="may not write to 'bob'"):
        hubtune.push(llama_run, "bob/Llama-3.1-x")


@pytest.mark.parametrize("bad", ["no-owner", "alice/bad name", "alice/x/y"])
def test_invalid_repo_id(hub, hub_token, llama_run, bad):
    with pytest.raises(PushError, match="OWNER/NAME"):
        hubtune.push(llama_run, bad)


def test_cli_push_prints_the_url(hub, hub_token, make_run, capsys):
    run = make_run()
    assert main(["push", str(run), "--repo", "alice-org/tiny-invoices"]) == 0
    assert f"{hub.url}/alice-org/tiny-invoices" in capsys.readouterr().out


def test_merged_push_equals_base_plus_adapter(hub, hub_token, tiny_base_files, make_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sha = hub.seed("acme/tiny-base", {**tiny_base_files, "README.md": readme(license="apache-2.0")})
    run = make_run(base_model="acme/tiny-base", base_revision=sha)
    hubtune.push(run, "alice/tiny-merged", merged=True)
    pulled = Path(snapshot_download("alice/tiny-merged", token=False))
    assert (pulled / "model.safetensors").is_file() and not (pulled / "adapter_config.json").exists()
    assert ModelCard.load(pulled / "README.md").data.library_name == "transformers"

    ids = torch.tensor([[1, 5, 9, 14, 3]])
    local_base = hubtune.config.resolve_builtin("hubtune:tiny-llama")
    merged = AutoModelForCausalLM.from_pretrained(pulled, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(local_base, dtype=torch.float32)
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local_base, dtype=torch.float32),
                                         str(run / "adapter"))
    with torch.no_grad():
        diff = (merged(ids).logits - unmerged(ids).logits).abs().max().item()
        moved = (merged(ids).logits - plain(ids).logits).abs().max().item()
    assert diff < 1e-4 and moved > 1e-3


def test_local_data_without_a_licence_needs_an_explicit_acknowledgement_to_publish(hub, hub_token, make_run,
                                                                                   tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    run = make_run(datasets=(str(data),))
    with pytest.raises(LicenceBlocked, match="--acknowledge mine.jsonl on") as refused:
        hubtune.push(run, "alice/tiny-own-data")
    assert str(tmp_path) not in str(refused.value)  # the file by its name, never this machine's folders
    # The name the message shows is the name the flag takes.
    assert main(["push", str(run), "--repo", "alice/tiny-own-data", "--acknowledge", "mine.jsonl"]) == 0
    assert "alice/tiny-own-data" in capsys.readouterr().out
    published = b"".join(hub.files("alice/tiny-own-data").values())
    assert str(tmp_path).encode() not in published and b"mine.jsonl" in published
