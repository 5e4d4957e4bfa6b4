"""Pull models and datasets from the Hub at a pinned revision, with typed errors.

Everything goes through the official `huggingface_hub` client, so HF_ENDPOINT, HF_TOKEN,
HF_HOME and HF_HUB_OFFLINE work as they do for every Hub tool. A local folder (or a
`hubtune:` asset) is used as it is and has no revision.

    resolve_model(config.model)             -> ResolvedModel(path, repo_id, revision_sha)
    download_dataset(config.data.sources[0]) -> (folder, revision_sha)   # read by hubtune.data.sources
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from hubtune.config import DataSource, ModelSection
from hubtune.errors import (
    GatedRepoAccessError,
    HubAccessError,
    HubUnreachableError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from hubtune.refs import RepoRef

# What training needs from a model repo, at the top level only: weights as safetensors, the
# config and the tokenizer. PyTorch .bin, GGUF, ONNX and `original/` duplicates stay on the Hub.
MODEL_FILES = [
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "merges.txt",
    "chat_template.jinja", "chat_template.json", "README.md", "LICENSE*", "USE_POLICY*", "NOTICE*",
]
REMOTE_CODE_FILES = ["*.py"]  # fetched only when model.trust_remote_code is on
DATA_FILES = ["*.json", "*.jsonl", "*.csv", "*.parquet", "*.json.gz", "*.jsonl.gz", "*.csv.gz", "README.md"]


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # local folder to load from
    repo_id: str | None  # Hub repo id, None for a local folder
    revision_sha: str | None  # the commit the files came from, None for a local folder


def hub_url(repo_id: str, repo_type: str = "model") -> str:
    from huggingface_hub import constants

    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]
    return f"{constants.ENDPOINT.rstrip('/')}/{prefix}{repo_id}"


def has_token() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())


def _network_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import OfflineModeIsEnabled

    errors: list[type[BaseException]] = [OfflineModeIsEnabled]
    for name in ("httpx2", "httpx"):  # the HTTP library behind huggingface_hub 2.x / 1.x
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


@contextmanager
def hub_errors(repo_id: str, repo_type: str = "model", revision: str | None = None):
    """Turn the client's errors about one repo into hubtune's, each with its fix."""
    from huggingface_hub import errors as hf

    what = "dataset" if repo_type == "dataset" else "model"
    url = hub_url(repo_id, repo_type)
    try:
        yield
    except hf.GatedRepoError:
        token = has_token()
        fix = ("The token in use (HF_TOKEN or `hf auth login`) belongs to an account that has not been "
               "granted access yet: accept the terms with that account, then retry."
               if token else
               "No Hugging Face token is set, so the Hub cannot tell that you accepted them: after accepting, "
               "set one with `export HF_TOKEN=hf_...` or `hf auth login`.")
        raise GatedRepoAccessError(
            f"{repo_id} is a gated {what}: its files are shared only with accounts that accepted its terms "
            f"on {url}. {fix}", repo_id, repo_type, revision, has_token=token) from None
    except hf.RevisionNotFoundError:
        raise RevisionNotFoundError(
            f"{what} {repo_id} has no revision {revision!r}: give an existing branch, tag or full commit sha "
            f"(see {url}/commits/main), or leave the revision unset to use main.",
            repo_id, repo_type, revision) from None
    except hf.RepositoryNotFoundError:
        from huggingface_hub import constants

        hint = "" if has_token() else " If it is private, set a token that can read it (HF_TOKEN or `hf auth login`)."
        raise RepoNotFoundError(
            f"{what} {repo_id} was not found on {constants.ENDPOINT}: check the id (owner/name) and that it is "
            f"a {what} repo.{hint}", repo_id, repo_type, revision) from None
    except _network_errors() as err:
        raise _unreachable(repo_id, repo_type, revision, err) from None


def _unreachable(repo_id: str, repo_type: str, revision: str | None, err: BaseException | None) -> HubUnreachableError:
    from huggingface_hub import constants

    at = f"{repo_id}@{revision or 'main'}"
    if constants.HF_HUB_OFFLINE:
        why = (f"HF_HUB_OFFLINE=1 is set and {at} is not in the local cache ({constants.HF_HUB_CACHE}); "
               f"unset HF_HUB_OFFLINE, or download it first while online "
               f"(`hf download {repo_id}{' --repo-type dataset' if repo_type == 'dataset' else ''}`).")
    else:
        why = (f"cannot reach the Hub at {constants.ENDPOINT} ({type(err).__name__ if err else 'offline'}) and "
               f"{at} is not in the local cache ({constants.HF_HUB_CACHE}); check the network "
               f"(and HF_ENDPOINT), or download it once while online.")
    return HubUnreachableError(why, repo_id, repo_type, revision)


def _snapshot(repo_id: str, repo_type: str, revision: str | None, allow: list[str],
              ignore: list[str] | None = None) -> tuple[str, str]:
    """Download the allowed files at a revision: (local folder, commit sha). Falls back to the
    cache when the Hub cannot be reached; raises hubtune's typed errors otherwise."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    with hub_errors(repo_id, repo_type, revision):
        try:
            info = HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision)
        except _network_errors() as err:
            try:
                path = snapshot_download(repo_id, repo_type=repo_type, revision=revision or "main",
                                         allow_patterns=allow, ignore_patterns=ignore, local_files_only=True)
            except LocalEntryNotFoundError:
                raise _unreachable(repo_id, repo_type, revision, err) from None
            return path, Path(path).name  # cache folders are named after their commit sha
        path = snapshot_download(repo_id, repo_type=repo_type, revision=info.sha,
                                 allow_patterns=allow, ignore_patterns=ignore)
        return path, info.sha


def resolve_model(model: ModelSection) -> ResolvedModel:
    """The folder to load the base model from, pulled at the configured revision when it is a Hub id."""
    ref = model.id
    parsed = RepoRef.parse(ref)
    if parsed.is_local:
        return ResolvedModel(path=str(parsed.path), repo_id=None, revision_sha=None)
    allow = MODEL_FILES + (REMOTE_CODE_FILES if model.trust_remote_code else [])
    # Top-level files only: subfolders hold duplicates (onnx/, original/, gguf/).
    path, sha = _snapshot(ref, "model", model.revision, allow, ignore=["*/*"])
    if not any(Path(path).glob("*.safetensors")):
        raise HubAccessError(
            f"model {ref}@{sha[:12]} has no .safetensors weights; hubtune loads only safetensors "
            f"(no pickled .bin). Pick a revision or a repo that ships them.", ref, "model", model.revision)
    return ResolvedModel(path=path, repo_id=ref, revision_sha=sha)


def download_dataset(source: DataSource) -> tuple[Path, str]:
    """The data files of a Hub dataset at its revision: (local folder, commit sha). Which files belong
    to the source's config and split is decided by the data reader, as for a local folder."""
    folder, sha = _snapshot(source.path, "dataset", source.revision, DATA_FILES)
    return Path(folder), sha


def read_card_metadata(readme: Path) -> dict | None:
    """YAML front matter of a README.md (a model or dataset card), or None when absent or unreadable."""
    from huggingface_hub import metadata_load

    if not readme.is_file():
        return None
    try:
        return metadata_load(readme)
    except (ValueError, UnicodeDecodeError, yaml.YAMLError):
        return None


@dataclass(frozen=True)
class RepoCard:
    """What the licence gate needs to know about a repo: its card metadata and gated status."""

    metadata: dict
    gated: bool | str | None  # False, "auto" or "manual"; None when unknown (offline)
    revision_sha: str | None


def repo_card(repo_id: str, repo_type: str = "model", revision: str | None = None) -> RepoCard:
    """Card metadata and gated flag of a Hub repo; offline, the cached README.md if there is one."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    with hub_errors(repo_id, repo_type, revision):
        try:
            info = HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision)
        except _network_errors() as err:
            try:
                readme = hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=revision or "main",
                                         local_files_only=True)
            except LocalEntryNotFoundError:
                raise _unreachable(repo_id, repo_type, revision, err) from None
            return RepoCard(read_card_metadata(Path(readme)) or {}, None, None)
        data = info.card_data.to_dict() if info.card_data is not None else {}
        return RepoCard(data, info.gated, info.sha)


def gated_access(repo_id: str, repo_type: str = "model") -> str | None:
    """Whether the token in use may read a gated repo's files: "granted", "denied" (the token's
    account has not been granted access) or "no token"; None when the Hub cannot be asked."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf

    if not has_token():
        return "no token"
    try:
        HfApi().auth_check(repo_id, repo_type=repo_type)
    except hf.GatedRepoError:
        return "denied"
    except (hf.HfHubHTTPError, *_network_errors()):
        return None
    return "granted"
