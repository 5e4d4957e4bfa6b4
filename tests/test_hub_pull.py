"""Pulling models and datasets through the real huggingface_hub client from the loopback Hub."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from hub_server import readme

from hubtune.config import DataSource, ModelSection, resolve_builtin
from hubtune.errors import (
    DataError,
    GatedRepoAccessError,
    HubAccessError,
    HubUnreachableError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from hubtune.data.sources import read_source
from hubtune.hub import ResolvedModel, resolve_model


def hub_resolve(repo, revision=None):
    return resolve_model(ModelSection(id=repo, revision=revision))


@pytest.fixture
def two_revisions(hub, tiny_base_files):
    """A model repo with two commits; the second changes config.json and adds duplicates to skip."""
    repo = "acme/tiny-two-revisions"
    first = hub.seed(repo, {**tiny_base_files, "README.md": readme(license="apache-2.0")})
    config = json.loads(tiny_base_files["config.json"])
    second = hub.seed(repo, {"config.json": json.dumps({**config, "rms_norm_eps": 1e-5}),
                             "pytorch_model.bin": b"\x80pickle" * 200, "model.gguf": b"GGUF" * 300,
                             "onnx/model.onnx": b"onnx" * 300, "original/params.json": "{}",
                             "modeling_custom.py": "raise SystemExit('remote code ran')\n"})
    return repo, first, second


def test_pull_at_a_pinned_revision(two_revisions, tiny_base_files):
    repo, first, second = two_revisions
    pinned = resolve_model(ModelSection(id=repo, revision=first))
    assert pinned.repo_id == repo and pinned.revision_sha == first
    assert Path(pinned.path, "config.json").read_bytes() == tiny_base_files["config.json"]
    assert Path(pinned.path, "model.safetensors").read_bytes() == tiny_base_files["model.safetensors"]

    latest = resolve_model(ModelSection(id=repo))  # main resolves to its current commit sha
    assert latest.revision_sha == second
    assert json.loads(Path(latest.path, "config.json").read_text())["rms_norm_eps"] == 1e-5


def test_pull_downloads_only_what_training_needs(two_revisions):
    repo, _, second = two_revisions
    got = sorted(p.name for p in Path(resolve_model(ModelSection(id=repo)).path).rglob("*") if p.is_file())
    assert "model.safetensors" in got and "tokenizer.json" in got and "config.json" in got
    for skipped in ("pytorch_model.bin", "model.gguf", "model.onnx", "params.json", "modeling_custom.py"):
        assert skipped not in got


def test_remote_code_is_fetched_only_when_turned_on(two_revisions):
    repo, _, _ = two_revisions
    on = resolve_model(ModelSection(id=repo, trust_remote_code=True))
    assert Path(on.path, "modeling_custom.py").is_file()


def test_a_tag_resolves_to_its_commit(hub, tiny_base_files):
    sha = hub.seed("acme/tagged", tiny_base_files, tag="v1.0")
    hub.seed("acme/tagged", {"config.json": "{}"})
    assert hub_resolve("acme/tagged", "v1.0").revision_sha == sha



def test_local_folder_and_builtin_have_no_revision():
    local = resolve_model(ModelSection(id="hubtune:tiny-llama"))
    assert local == ResolvedModel(path=resolve_builtin("hubtune:tiny-llama"), repo_id=None, revision_sha=None)


def test_gated_repo_without_a_token(hub, tiny_base_files):
    hub.seed("meta-llama/Llama-gated", tiny_base_files, gated="manual")
    with pytest.raises(GatedRepoAccessError) as err:
        hub_resolve("meta-llama/Llama-gated")
    e = err.value
    assert (e.repo_id, e.repo_type, e.has_token) == ("meta-llama/Llama-gated", "model", False)
    msg = str(e)
    assert "meta-llama/Llama-gated" in msg and f"{hub.url}/meta-llama/Llama-gated" in msg
    assert "HF_TOKEN" in msg and "hf auth login" in msg and "No Hugging Face token is set" in msg


def test_gated_repo_with_a_token_that_has_no_access(hub, hub_token, tiny_base_files):
    hub.seed("meta-llama/Llama-gated-2", tiny_base_files, gated="auto")
    with pytest.raises(GatedRepoAccessError) as err:
        hub_resolve("meta-llama/Llama-gated-2")
    assert err.value.has_token is True
    assert "accept the terms" in str(err.value) and "not been granted" in str(err.value)


def test_gated_repo_once_access_is_granted(hub, hub_token, tiny_base_files):
    sha = hub.seed("meta-llama/Llama-gated-3", tiny_base_files, gated="manual")
    hub.grant("meta-llama/Llama-gated-3", "alice")
    assert hub_resolve("meta-llama/Llama-gated-3").revision_sha == sha


def test_missing_repo(hub):
    with pytest.raises(RepoNotFoundError) as err:
        hub_resolve("acme/does-not-exist")
    assert err.value.repo_id == "acme/does-not-exist"
    assert "was not found" in str(err.value) and "HF_TOKEN" in str(err.value)


def test_missing_revision(two_revisions):
    repo, _, _ = two_revisions
    with pytest.raises(RevisionNotFoundError) as err:
        hub_resolve(repo, "no-such-branch")
    assert err.value.revision == "no-such-branch" and repo in str(err.value)
    assert "no revision 'no-such-branch'" in str(err.value)


def test_repo_without_safetensors_is_refused(hub):
    hub.seed("acme/pickles-only", {"config.json": "{}", "pytorch_model.bin": b"\x80" * 100})
    with pytest.raises(HubAccessError, match="no .safetensors weights"):
        hub_resolve("acme/pickles-only")


def test_offline_uses_the_cache_and_says_what_is_missing(two_revisions, monkeypatch):
    from huggingface_hub import constants

    repo, first, _ = two_revisions
    online = hub_resolve(repo, first)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_resolve(repo, first) == online  # served from the cache
    with pytest.raises(HubUnreachableError) as err:
        hub_resolve("acme/never-downloaded")
    assert "HF_HUB_OFFLINE=1" in str(err.value) and "hf download acme/never-downloaded" in str(err.value)


def test_no_network(hub, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    with pytest.raises(HubUnreachableError) as err:
        hub_resolve("acme/anything")
    assert dead in str(err.value) and "cache" in str(err.value)


# ---- datasets ---------------------------------------------------------------------------------
def rows(n: int, tag: str) -> str:
    return "".join(json.dumps({"instruction": f"{tag} {i}", "output": str(i)}) + "\n" for i in range(n))


def test_dataset_by_hub_id_config_and_split(hub):
    card = readme(license="cc-by-4.0", configs=[
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.jsonl"},
                                                   {"split": "test", "path": "data/test-*.jsonl"}]},
        {"config_name": "hard", "data_files": [{"split": "train", "path": "hard/*.jsonl"}]}])
    sha = hub.seed("acme/qa", {"README.md": card, "data/train-00000.jsonl": rows(5, "train"),
                               "data/test-00000.jsonl": rows(2, "test"), "hard/all.jsonl": rows(3, "hard")},
                   repo_type="dataset")
    train = read_source(DataSource(path="acme/qa"))
    assert train.revision_sha == sha and [r["instruction"] for r in train.rows] == [f"train {i}" for i in range(5)]
    assert train.origins[0].endswith("train-00000.jsonl, line 1")  # Hub rows point at their file and line
    test = read_source(DataSource(path="acme/qa", split="test", revision=sha))
    assert [r["instruction"] for r in test.rows] == ["test 0", "test 1"]
    hard = read_source(DataSource(path="acme/qa", name="hard"))
    assert [r["instruction"] for r in hard.rows] == ["hard 0", "hard 1", "hard 2"]
    with pytest.raises(DataError, match="no split 'validation'.*available: train, test"):
        read_source(DataSource(path="acme/qa", split="validation"))
    with pytest.raises(DataError, match="no config 'easy'"):
        read_source(DataSource(path="acme/qa", name="easy"))


def test_dataset_by_naming_convention(hub):
    hub.seed("acme/plain", {"train.csv": "a,b\n1,2\n", "validation.csv": "a,b\n3,4\n"}, repo_type="dataset")
    got = read_source(DataSource(path="acme/plain", split="validation"))
    assert got.rows == [{"a": "3", "b": "4"}] and got.origins[0].endswith("validation.csv, line 2")


def test_missing_dataset_repo(hub):
    with pytest.raises(RepoNotFoundError) as err:
        read_source(DataSource(path="acme/no-data"))
    assert err.value.repo_type == "dataset" and "dataset acme/no-data" in str(err.value)


def test_local_dataset_file_and_folder(tmp_path):
    (tmp_path / "train.jsonl").write_text(rows(3, "x"))
    (tmp_path / "test.jsonl").write_text(rows(1, "y"))
    one = read_source(DataSource(path=str(tmp_path / "test.jsonl")))
    assert [r["instruction"] for r in one.rows] == ["y 0"] and one.revision_sha is None
    folder = read_source(DataSource(path=str(tmp_path)))
    assert [r["instruction"] for r in folder.rows] == ["x 0", "x 1", "x 2"]  # the train split only
    builtin = read_source(DataSource(path="hubtune:data/invoices/train.jsonl"))
    assert len(builtin.rows) > 100


def test_retries_follow_huggingface_hubs_own_backoff():
    """The statuses, the longest wait and a 429's rate-limit reset are huggingface_hub's (http_backoff's
    defaults, parse_ratelimit_headers), applied to the API calls the library sends only once."""
    import inspect

    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import http_backoff

    from hubtune import hub

    defaults = inspect.signature(http_backoff).parameters
    assert set(hub.RETRY_STATUSES) == set(defaults["retry_on_status_codes"].default) >= {429, 500, 503}
    request = httpx2.Request("GET", "https://huggingface.co/api/models/acme/x")

    def failure(status: int, headers: dict | None = None) -> HfHubHTTPError:
        return HfHubHTTPError(f"{status}", response=httpx2.Response(status, headers=headers, request=request))

    limited = failure(429, {"RateLimit": '"api";r=0;t=55', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'})
    assert hub.retry_wait(limited, 1, 1.0) == 56.0  # the reset, + 1 s as the library waits
    assert hub.retry_wait(failure(429), 1, 1.0) == 1.0  # no reset given: the backoff
    assert [hub.retry_wait(failure(503), n, 1.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
