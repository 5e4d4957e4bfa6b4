"""Pull models and datasets from the Hub at a pinned revision, with typed errors.

Everything goes through the official `huggingface_hub` client, so HF_ENDPOINT, HF_TOKEN,
HF_HOME and HF_HUB_OFFLINE work as they do for every Hub tool. A local folder (or a
`hubtune:` asset) is used as it is and has no revision.

    resolve_model(config.model)             -> ResolvedModel(path, repo_id, revision_sha)
    download_dataset(config.data.sources[0]) -> (folder, revision_sha)   # read by hubtune.data.sources

Every Hub call has a timeout (HF_HUB_ETAG_TIMEOUT for metadata, HF_HUB_DOWNLOAD_TIMEOUT for the rest, in
seconds), and hubtune's own calls go through `call`, which retries what is safe to retry with exponential
backoff (HUBTUNE_HUB_RETRIES tries more, HUBTUNE_HUB_BACKOFF seconds before the first) and then raises a
typed error that names the endpoint and the setting.

huggingface_hub 2.x retries file transfers itself (`http_backoff` / `http_stream_backoff`: downloads, LFS
and Xet uploads), but not the API calls around them: repo_info, auth_check, list_repo_tree, create_repo and
create_commit send one request through the shared client and raise on a 5xx or 429 (its commit retry,
`retry_on_error`, is a parameter of a private function that HfApi.create_commit does not expose). `call`
covers those with the library's own policy: the statuses and the longest wait of `http_backoff`'s
defaults, and a 429's rate-limit reset read with `parse_ratelimit_headers`.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import yaml

from hubtune.config import DataSource, ModelSection
from hubtune.errors import (
    GatedRepoAccessError,
    HubAccessError,
    HubServiceError,
    HubUnreachableError,
    ModelFolderError,
    RemoteCodeRefusedError,
    RepoNotFoundError,
    RevisionNotFoundError,
    hub_timeout_setting,
    remote_code_message,
    translate,
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


# ---- whose token ---------------------------------------------------------------------------------------------
# The CLI acts with the process's token (HF_TOKEN, `hf auth login`). The app serves many people: each of its
# requests acts as its own user (`acting_as`), with that user's token or none, never the process's, and the
# shared download cache is used only after the Hub has said that this token may read the repo.
_acting: ContextVar[tuple[str | None] | None] = ContextVar("hubtune_acting_token", default=None)


@contextmanager
def acting_as(token: str | None):
    """Every Hub call inside acts with `token` (None: a signed-out user, who sends no token at all)."""
    reset = _acting.set((token or None,))
    try:
        yield
    finally:
        _acting.reset(reset)


def acting() -> bool:
    """Whether Hub calls act for a user of the app (see acting_as) rather than for this process."""
    return _acting.get() is not None


def token() -> str | bool | None:
    """The `token=` to give huggingface_hub: the acting user's, False (send none) for a signed-out user,
    or None (the process's own) outside the app."""
    acting_token = _acting.get()
    if acting_token is None:
        return None
    return acting_token[0] or False


def has_token() -> bool:
    from huggingface_hub import get_token

    given = token()
    return bool(given) if given is not None else bool(get_token())


def require_access(repo_id: str, repo_type: str = "model", revision: str | None = None) -> None:
    """For a user of the app: ask the Hub whether their token may read this repo's files (private and gated
    repos) before any cached copy is used, since a download at a commit sha returns cached files without
    asking. Outside the app, the Hub answers each download itself."""
    from huggingface_hub import HfApi

    if not acting():
        return
    with hub_errors(repo_id, repo_type, revision):
        try:
            call(HfApi(token=token()).auth_check, repo_id, repo_type=repo_type)
        except HubServiceError as err:
            raise _unreachable(repo_id, repo_type, revision, err) from None


# ---- timeouts and retries ---------------------------------------------------------------------------------
# huggingface_hub 2.4 gives its shared HTTP client no timeout; create_repo and create_commit use that
# default, and repo_info and the paginated tree listing pass `timeout=None`: a Hub that accepts the
# connection and never answers hangs them for ever (file downloads alone are bounded). A request hook on the
# client fills in the timeout each request lacks, from the library's own settings, read at request time.
_last = threading.local()  # the request this thread sent last, to name the endpoint of a garbled answer


def use_timeouts() -> None:
    """Give every request of huggingface_hub's shared client a timeout: the hook goes on the client the
    library hands out (its own, or one from a factory the user set), again whenever it has made a new one."""
    from huggingface_hub import get_session

    session = get_session()
    hooks = session.event_hooks
    if _bound_request not in hooks.get("request", []):
        session.event_hooks = {**hooks, "request": [*hooks.get("request", []), _bound_request]}


def _bound_request(request) -> None:
    from huggingface_hub import constants

    seconds = getattr(constants, hub_timeout_setting(request.method, request.url.path))
    given = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {k: seconds if given.get(k) is None else given[k]
                                     for k in ("connect", "read", "write", "pool")}
    _last.endpoint = f"{request.method} {request.url}"


def _backoff_defaults() -> tuple[tuple[int, ...], float]:
    """(statuses, longest wait in seconds) of huggingface_hub's own backoff, from its public signature."""
    import inspect

    from huggingface_hub.utils import http_backoff

    params = inspect.signature(http_backoff).parameters
    statuses = params["retry_on_status_codes"].default
    return ((statuses,) if isinstance(statuses, int) else tuple(statuses)), float(params["max_wait_time"].default)


RETRY_STATUSES, MAX_WAIT = _backoff_defaults()


def retry_wait(err: BaseException, attempt: int, base: float) -> float:
    """Seconds before try `attempt + 1`: a 429 that says when its rate limit resets waits that long, as
    huggingface_hub's backoff does; otherwise `base` doubling, at most the library's longest wait."""
    from huggingface_hub.utils import parse_ratelimit_headers

    response = getattr(err, "response", None)
    if response is not None and response.status_code == 429:
        limit = parse_ratelimit_headers(response.headers)
        if limit is not None and limit.remaining == 0:
            return float(limit.reset_in_seconds) + 1  # + 1 s against rounding, as the library does
    return min(base * 2 ** (attempt - 1), MAX_WAIT)


def _transient(err: BaseException) -> BaseException | None:
    """The Hub failure behind `err` that a later try may not meet (itself or what it was raised from)."""
    from huggingface_hub.errors import HfHubHTTPError

    for e in (err, err.__cause__):
        if e is None:
            continue
        if isinstance(e, HfHubHTTPError):
            if e.response is not None and e.response.status_code in RETRY_STATUSES:
                return e
        elif _answer_lost(e) or isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
            return e
    return None


def _answer_lost(err: BaseException) -> bool:
    """A timeout or a connection dropped mid-answer. A refused connection is not retried: the Hub is not
    there at all, and the cache fallback (or HubUnreachableError) says so at once."""
    try:
        import httpx2 as http  # huggingface_hub 2.x
    except ImportError:
        import httpx as http
    return isinstance(err, (http.TimeoutException, http.ReadError, http.WriteError, http.RemoteProtocolError))


def _setting(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def call(fn, *args, idempotent: bool = True, retries: int | None = None, **kwargs):
    """`fn(*args, **kwargs)`, a call to the Hub through huggingface_hub. A status huggingface_hub's backoff
    retries (5xx, 408, 429) is tried again; so are a timeout, a dropped connection and a garbled body when the
    call is idempotent (a commit is not: it may have landed). Waits HUBTUNE_HUB_BACKOFF seconds (default 1),
    doubling up to the library's longest wait (8), or a 429's rate-limit reset, between tries, at most
    HUBTUNE_HUB_RETRIES times (default 3); then raises the typed error of hubtune.errors."""
    use_timeouts()
    retries = int(_setting("HUBTUNE_HUB_RETRIES", 3)) if retries is None else retries
    wait = _setting("HUBTUNE_HUB_BACKOFF", 1.0)
    for attempt in range(1, retries + 2):
        _last.endpoint = None
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            cause = _transient(err)
            if cause is None:
                raise
            status = getattr(getattr(cause, "response", None), "status_code", None)
            if attempt <= retries and (idempotent or status is not None):
                time.sleep(retry_wait(cause, attempt, wait))
                continue
            typed = translate(cause, endpoint=getattr(_last, "endpoint", None) or "a Hub call", attempts=attempt)
            if typed is None:
                raise
            raise typed from cause


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):  # the HTTP library behind huggingface_hub 2.x / 1.x
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _network_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import OfflineModeIsEnabled

    return (OfflineModeIsEnabled, *_transport_errors())


@contextmanager
def hub_errors(repo_id: str, repo_type: str = "model", revision: str | None = None):
    """Turn the client's errors about one repo into hubtune's, each with its fix."""
    from huggingface_hub import errors as hf

    what = "dataset" if repo_type == "dataset" else "model"
    url = hub_url(repo_id, repo_type)
    use_timeouts()
    try:
        yield
    except hf.GatedRepoError:
        signed = has_token()
        if acting():
            fix = ("Your account has not been granted access yet: accept the terms with it, then retry." if signed
                   else "Sign in with the account that accepted them, then retry.")
        else:
            fix = ("The token in use (HF_TOKEN or `hf auth login`) belongs to an account that has not been "
                   "granted access yet: accept the terms with that account, then retry."
                   if signed else
                   "No Hugging Face token is set, so the Hub cannot tell that you accepted them: after accepting, "
                   "set one with `export HF_TOKEN=hf_...` or `hf auth login`.")
        raise GatedRepoAccessError(
            f"{repo_id} is a gated {what}: its files are shared only with accounts that accepted its terms "
            f"on {url}. {fix}", repo_id, repo_type, revision, has_token=signed) from None
    except hf.RevisionNotFoundError:
        raise RevisionNotFoundError(
            f"{what} {repo_id} has no revision {revision!r}: give an existing branch, tag or full commit sha "
            f"(see {url}/commits/main), or leave the revision unset to use main.",
            repo_id, repo_type, revision) from None
    except hf.RepositoryNotFoundError:
        from huggingface_hub import constants

        hint = ("" if has_token() else " If it is private, sign in with an account that can read it." if acting()
                else " If it is private, set a token that can read it (HF_TOKEN or `hf auth login`).")
        raise RepoNotFoundError(
            f"{what} {repo_id} was not found on {constants.ENDPOINT}: check the id (owner/name) and that it is "
            f"a {what} repo.{hint}", repo_id, repo_type, revision) from None
    except _network_errors() as err:
        raise _unreachable(repo_id, repo_type, revision, err) from None


def _unreachable(repo_id: str, repo_type: str, revision: str | None,
                 err: BaseException | None) -> HubAccessError | HubServiceError:
    from huggingface_hub import constants

    if isinstance(err, HubServiceError):  # the Hub answered badly or not in time: say which call, which setting
        return type(err)(f"{err} ({repo_id}@{revision or 'main'} is not in the local cache to fall back on.)",
                         err.endpoint, err.setting)

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
        require_access(repo_id, repo_type, revision)
        try:
            info = call(HfApi(token=token()).repo_info, repo_id, repo_type=repo_type, revision=revision)
        except (HubServiceError, *_network_errors()) as err:
            if acting():  # the Hub could not say whether this user may read the cached files
                raise _unreachable(repo_id, repo_type, revision, err) from None
            try:
                path = snapshot_download(repo_id, repo_type=repo_type, revision=revision or "main",
                                         allow_patterns=allow, ignore_patterns=ignore, local_files_only=True)
            except LocalEntryNotFoundError:
                raise _unreachable(repo_id, repo_type, revision, err) from None
            return path, Path(path).name  # cache folders are named after their commit sha
        # The library retries file downloads itself; `call` only names the endpoint when they give up.
        path = call(snapshot_download, repo_id, repo_type=repo_type, revision=info.sha, allow_patterns=allow,
                    ignore_patterns=ignore, retries=0, token=token())
        return path, info.sha


class RemoteCodeWarning(UserWarning):
    """model.trust_remote_code is on: the repo's Python code runs with this user's permissions."""


def on_shared_space() -> bool:
    """A Hugging Face Space (SPACE_ID is set there): many people share this machine, its tokens and its disk."""
    return bool(os.environ.get("SPACE_ID"))


def check_remote_code(trust_remote_code: bool, model: str) -> None:
    """Refuse model.trust_remote_code on a shared Space (another user's repo code would run beside every
    user's token and data); elsewhere allow it, with a warning."""
    if not trust_remote_code:
        return
    if on_shared_space():
        raise RemoteCodeRefusedError(
            f"{model}: model.trust_remote_code is refused on a shared Space: code from a model repo would run "
            f"beside every user's token and data. Set model.trust_remote_code: false (a model transformers "
            f"supports natively), or train with the CLI on your own machine.")
    import warnings

    warnings.warn(f"{model}: model.trust_remote_code is on, so the repo's Python code runs on this machine with "
                  f"your permissions; pin model.revision to the commit whose code you read", RemoteCodeWarning,
                  stacklevel=3)


def resolve_model(model: ModelSection) -> ResolvedModel:
    """The folder to load the base model from, pulled at the configured revision when it is a Hub id,
    and checked to hold what loading needs (see check_model_folder)."""
    ref = model.id
    check_remote_code(model.trust_remote_code, ref)
    parsed = RepoRef.parse(ref)
    if parsed.is_local:
        check_model_folder(parsed.path, model)
        return ResolvedModel(path=str(parsed.path), repo_id=None, revision_sha=None)
    allow = MODEL_FILES + (REMOTE_CODE_FILES if model.trust_remote_code else [])
    # Top-level files only: subfolders hold duplicates (onnx/, original/, gguf/).
    path, sha = _snapshot(ref, "model", model.revision, allow, ignore=["*/*"])
    if not any(Path(path).glob("*.safetensors")):
        raise HubAccessError(
            f"model {ref}@{sha[:12]} has no .safetensors weights; hubtune loads only safetensors "
            f"(no pickled .bin). Pick a revision or a repo that ships them.", ref, "model", model.revision)
    check_model_folder(path, model)
    return ResolvedModel(path=path, repo_id=ref, revision_sha=sha)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def check_model_folder(folder: str | Path, model: ModelSection) -> None:
    """Before any weight is loaded: config.json readable, no modelling code of its own unless trusted,
    safetensors weights whose headers and sizes agree, and tokenizer files. ModelFolderError otherwise."""
    from safetensors import SafetensorError, safe_open

    folder, name = Path(folder), model.id
    found = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
    whole = ("a model folder holds config.json, *.safetensors weights and the tokenizer files, as "
             "`save_pretrained` writes them: copy the complete folder, or give the model's Hub id")
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{name}: no config.json in {folder} (found: {found}); {whole}") from None
    except (ValueError, OSError) as err:
        raise ModelFolderError(f"{name}: {folder / 'config.json'} is not readable JSON ({err}); {whole}") from None
    _check_model_code(config, name, model.trust_remote_code)
    check_sizes(config, f"{name}: {folder / 'config.json'}")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ModelFolderError(f"{name}: no *.safetensors weights in {folder} (found: {found}); hubtune loads only "
                               f"safetensors (no pickled .bin); {whole}")
    for w in weights:
        try:
            with safe_open(str(w), framework="pt"):
                pass  # reads the header and checks that the file holds every tensor it lists
        except SafetensorError as err:
            raise ModelFolderError(f"{name}: {w} is damaged ({err}): it was cut short or is not safetensors. Copy "
                                   f"or download it again (a Hub model: delete it from the HF cache, "
                                   f"`hf cache scan` shows where).") from None
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelFolderError(f"{name}: no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)}; found: "
                               f"{found}); copy the tokenizer files from the model's repo into the folder")


SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
             "vocab_size", "head_dim")


def check_sizes(config: dict, where: str) -> None:
    """A config.json's sizes are positive whole numbers: 0 or -40 layers would divide by zero deep in a
    model's code, or give a negative memory estimate."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    bad = [f"{k}: {text[k]!r}" for k in SIZE_KEYS
           if text.get(k) is not None and (isinstance(text[k], bool) or not isinstance(text[k], int) or text[k] < 1)]
    if bad:
        raise ModelFolderError(f"{where}: {'; '.join(bad)}: each must be a positive whole number. The file is damaged "
                               f"or hand-edited: restore it from the model's repo")


def _check_model_code(config: dict, name: str, trust_remote_code: bool) -> None:
    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type, auto_map = config.get("model_type"), config.get("auto_map") or {}
    if model_type in CONFIG_MAPPING or trust_remote_code:
        return  # transformers' own code for this architecture (an auto_map is then not needed)
    if auto_map:
        names = [n for v in auto_map.values() for n in (v if isinstance(v, list) else [v]) if isinstance(n, str)]
        code = sorted({n.split("--")[-1].split(".")[0] + ".py" for n in names})  # "repo--module.Class" too
        raise ModelFolderError(remote_code_message(name, f" ({', '.join(code)}, named by auto_map in config.json)"))
    raise ModelFolderError(f"{name}: config.json has model_type {model_type!r}, which transformers {__version__} does "
                           f"not know and the repo ships no code for; upgrade transformers, or check the folder "
                           f"(config.json needs a model_type such as \"llama\")")


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
            info = call(HfApi(token=token()).repo_info, repo_id, repo_type=repo_type, revision=revision)
        except (HubServiceError, *_network_errors()) as err:
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
        HfApi(token=token()).auth_check(repo_id, repo_type=repo_type)
    except hf.GatedRepoError:
        return "denied"
    except (hf.HfHubHTTPError, *_network_errors()):
        return None
    return "granted"


@dataclass
class RepoTexts:
    """A repo's README.md and top-level licence texts at one revision, and what could not be read."""

    readme: str | None
    files: dict[str, str]  # file name -> text (LICENSE*, NOTICE*, USE_POLICY*, the license_link file)
    unread: list[str]  # "LICENSE: why", for texts that exist but could not be read


def _link_path(repo_id: str, repo_type: str, link: str | None) -> str | None:
    """The file inside the repo a card's `license_link` points to (`LICENSE`, or a Hub URL of this repo's
    blob/resolve), else None: a link elsewhere is not the repo's to pin."""
    if not link:
        return None
    if "://" not in link:
        return link.lstrip("./") or None
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]
    m = re.search(rf"/{prefix}{re.escape(repo_id)}/(?:blob|resolve|raw)/[^/]+/(.+)$", link)
    return m.group(1) if m else None


def repo_texts(repo_id: str, repo_type: str = "model", revision: str | None = None,
               license_link: str | None = None) -> RepoTexts:
    """README.md, the top-level LICENSE* / LICENCE* / NOTICE* / USE_POLICY* / COPYING* files and the file a
    relative `license_link` names, at `revision` (a commit sha, so that the texts match the pinned card).
    Never raises for a text it cannot read (a gated repo without access, the Hub unreachable): it says so
    in `unread`."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub import errors as hf
    from huggingface_hub.hf_api import RepoFile

    from hubtune.errors import HubtuneError
    from hubtune.licence_texts import MAX_TEXT_CHARS, wanted

    out = RepoTexts(None, {}, [])
    try:  # the top level only: a dataset may hold many thousands of files below it
        with hub_errors(repo_id, repo_type, revision):
            require_access(repo_id, repo_type, revision)
            names = [e.path for e in call(lambda: list(HfApi(token=token()).list_repo_tree(
                repo_id, repo_type=repo_type, revision=revision, recursive=False))) if isinstance(e, RepoFile)]
    except (HubtuneError, hf.HfHubHTTPError) as err:
        out.unread.append(f"its file list: {err}")
        return out
    linked = _link_path(repo_id, repo_type, license_link)
    picked = [n for n in names if wanted(n)] + ([linked] if linked and not wanted(linked) else [])
    for name in dict.fromkeys(["README.md", *picked]):
        if name not in names and "/" not in name:
            continue
        try:
            with hub_errors(repo_id, repo_type, revision):
                path = call(hf_hub_download, repo_id, name, repo_type=repo_type, revision=revision, token=token())
        except hf.EntryNotFoundError:
            out.unread.append(f"{name}: not in the repo (named by license_link)")
            continue
        except (HubtuneError, hf.HfHubHTTPError, OSError) as err:
            out.unread.append(f"{name}: {err}")
            continue
        text = Path(path).read_bytes()[: MAX_TEXT_CHARS * 4].decode("utf-8", "replace")
        if name == "README.md":
            out.readme = text
        else:
            out.files[name] = text
    return out


def folder_texts(folder: Path, license_link: str | None = None) -> RepoTexts:
    """The same for a local folder."""
    from hubtune.licence_texts import MAX_TEXT_CHARS, wanted

    out = RepoTexts(None, {}, [])
    if not folder.is_dir():
        return out
    linked = _link_path("", "model", license_link) if license_link and "://" not in license_link else None
    for p in sorted(folder.iterdir()):
        if p.is_file() and (wanted(p.name) or p.name == "README.md" or p.name == linked):
            text = p.read_bytes()[: MAX_TEXT_CHARS * 4].decode("utf-8", "replace")
            if p.name == "README.md":
                out.readme = text
            else:
                out.files[p.name] = text
    return out
