"""Typed errors. Each carries what went wrong and how to fix it; the CLI prints
the message and exits with the class's code, with a traceback only when HUBTUNE_DEBUG=1.

Exit codes: 2 a problem to fix (config, data, model folder, paths), 3 a licence block or a regressed
run, 4 a run folder in use, 5 the Hub failing (run again later), 130 interrupted, 1 unexpected.
`translate` turns a foreign exception (out of memory, a Hub timeout, damaged weights, ...) into the
typed error with its fix, from one table (FOREIGN_ERRORS).
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class HubtuneError(Exception):
    """Base of every error hubtune raises on purpose. One error, two renderings: str(err) speaks the
    command line (flags, config keys, shell commands); `on_page`, when set, says the same in the page's
    words (the control to change). `page_text(err)` picks the page's."""

    exit_code = 2
    on_page: str | None = None

    def for_page(self, text: str) -> HubtuneError:
        """This error with its page rendering; returns itself, so `raise Err(cli).for_page(page)` reads."""
        self.on_page = text
        return self


def page_text(err: BaseException) -> str:
    """An error as the page shows it: its page rendering when it has one, else its message."""
    return getattr(err, "on_page", None) or str(err)


class ConfigError(HubtuneError):
    """One or more invalid settings. `problems` holds (path, message) pairs, all of them at once."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid run config{where} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  {path}: {message}" for path, message in problems]
        super().__init__("\n".join(lines))

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.problems]


class DataError(HubtuneError):
    """A dataset that cannot be read or used as configured (file, line, column, step)."""


class RewardError(HubtuneError):
    """A GRPO reward function that raised, or returned NaN, a non-number or the wrong count of scores."""

    def __init__(self, message: str, reward: str):
        self.reward = reward
        super().__init__(message)


class TrainingInterrupted(HubtuneError):
    """Training stopped by Ctrl-C or SIGTERM after saving a checkpoint it can resume from."""

    exit_code = 130


class EvalError(HubtuneError):
    """An evaluation that cannot run as asked (missing run files, unknown task, no evals folder)."""


class JudgeError(EvalError):
    """A judge endpoint that kept failing after its retries (down, too slow, or not answering chat completions)."""

    def __init__(self, message: str, endpoint: str | None = None):
        self.endpoint = endpoint
        super().__init__(message)


class HubAccessError(HubtuneError):
    """A Hub repo that cannot be read as configured. Carries the repo id, its type and the revision."""

    def __init__(self, message: str, repo_id: str, repo_type: str = "model", revision: str | None = None):
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.revision = revision
        super().__init__(message)


class RepoNotFoundError(HubAccessError):
    """No such repo, or a private one the token cannot see."""


class GatedRepoAccessError(HubAccessError):
    """A gated repo whose terms the token's account has not accepted (or no token at all)."""

    def __init__(self, message: str, repo_id: str, repo_type: str = "model", revision: str | None = None,
                 has_token: bool = False):
        self.has_token = has_token
        super().__init__(message, repo_id, repo_type, revision)


class RevisionNotFoundError(HubAccessError):
    """The repo exists but not at the requested branch, tag or commit."""


class HubUnreachableError(HubAccessError):
    """No network (or HF_HUB_OFFLINE=1) and the repo is not in the local cache."""


class LicenceBlocked(HubtuneError):
    """The licence gate stopped a run or a push. `verdict` holds the reasons and obligations."""

    exit_code = 3

    def __init__(self, message: str, verdict=None):
        self.verdict = verdict
        super().__init__(message)


class NamingRuleError(LicenceBlocked):
    """A derivative's repo name breaks a naming rule of the base licence (Llama 3.x: begin with "Llama")."""


class PushError(HubtuneError):
    """A push that could not be made; the run folder is untouched and the push can be retried."""


class RunLockedError(HubtuneError):
    """A run folder another live process is writing (a second `hubtune train` into the same output.dir)."""

    exit_code = 4

    def __init__(self, message: str, holder: dict | None = None):
        self.holder = holder or {}
        super().__init__(message)


class LaunchError(HubtuneError):
    """Processes of a multi-process run failed; the message names each by its rank, with its error. The
    exit code is that of the first error (1 when a process was killed)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class PeerStoppedError(HubtuneError):
    """Another process of a multi-process run stopped, and this one lost its connection to it."""

    exit_code = 1


class DiskFullError(HubtuneError):
    """The disk holding the run folder filled up while training wrote to it. The run stays resumable from
    its last complete checkpoint once space is freed."""

    exit_code = 5

    def __init__(self, message: str, folder: str, needed_bytes: int | None = None, free_bytes: int | None = None):
        self.folder = folder
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        super().__init__(message)


class JobError(HubtuneError):
    """A Hugging Face Job that cannot be submitted as asked (licence, token permission, timeout, local files),
    or a job id the Hub does not know."""


class HubServiceError(HubtuneError):
    """The Hub did not answer usefully after retries: a server error, a garbled body, no answer in time, or
    no connection. Carries the endpoint (method and URL) and the setting that bounds the call; running the
    same command again later usually works."""

    exit_code = 5

    def __init__(self, message: str, endpoint: str | None = None, setting: str | None = None):
        self.endpoint = endpoint
        self.setting = setting
        super().__init__(message)


class HubTimeoutError(HubServiceError):
    """A Hub call that got no answer within its timeout (HF_HUB_ETAG_TIMEOUT or HF_HUB_DOWNLOAD_TIMEOUT)."""


class HubServerError(HubServiceError):
    """A Hub call answered with a server error (5xx) or rate limit (429) on every try."""


class HubBadResponseError(HubServiceError):
    """A Hub call answered with a body that is not the JSON it should be (a proxy or the Hub garbled it)."""


class ModelFolderError(HubtuneError):
    """A base model folder that cannot be loaded as it is: no config.json, damaged weights, no tokenizer,
    or modelling code of its own that model.trust_remote_code does not allow to run."""


class RemoteCodeRefusedError(ModelFolderError):
    """model.trust_remote_code on a shared Space, where no code from a user's repo may run."""


class SignInRequiredError(HubtuneError):
    """An action of the app on a shared Space that needs a signed-in user."""


class NotYoursError(HubtuneError):
    """A run, upload or path on a shared Space that belongs to someone else, or to no one the user may act as."""


class BudgetError(HubtuneError):
    """An input over one of the app's limits (upload size, rows, line length, queued runs)."""


class TemplateError(DataError):
    """A chat template that fails, or runs past its time or output budget, when rendered."""


class OutOfMemoryError(HubtuneError):
    """The accelerator ran out of memory; the message lists the settings that lower the need."""


class OutputPathError(HubtuneError):
    """An output path that cannot or may not be written (a folder, unwritable, an input, someone else's file)."""


class ExportError(HubtuneError):
    """An export that cannot be made as asked: llama.cpp missing or failing, an architecture or tokenizer
    its converter does not know, an output folder in the way."""


class ParityError(ExportError):
    """An exported file that no longer does the task: its score fell below the adapter's beyond the stated
    tolerance, or its generations do not stop as the adapter's do. `parity` holds the measured table."""

    exit_code = 3

    def __init__(self, message: str, parity: dict | None = None):
        self.parity = parity or {}
        super().__init__(message)


# ---- foreign exceptions -> typed errors ---------------------------------------------------------------
# One table for every exception hubtune does not raise itself but can explain: the CLI (and the UI) turn
# what escapes into the first typed error whose row matches. Rows match by class through sys.modules, so
# this module imports neither torch nor the HTTP client; context (the run config, the Hub endpoint being
# called, how many tries were made) sharpens the fix where the caller knows it.

HUB_RETRIES_SETTING = "HUBTUNE_HUB_RETRIES"


def _instance(err: BaseException, module: str, name: str) -> bool:
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(err, cls)


def hub_timeout_setting(method: str, path: str) -> str:
    """The huggingface_hub setting that bounds a request: metadata (HEAD, GET /api/...) or the rest
    (file downloads, uploads, commits)."""
    if method == "HEAD" or (method == "GET" and "/api/" in path):
        return "HF_HUB_ETAG_TIMEOUT"
    return "HF_HUB_DOWNLOAD_TIMEOUT"


def _endpoint(err: BaseException, context: dict) -> str | None:
    for owner in (err, getattr(err, "response", None)):
        try:
            request = owner.request  # httpx raises RuntimeError when an exception holds no request
            return f"{request.method} {request.url}"
        except (AttributeError, RuntimeError):
            continue
    return context.get("endpoint")


def _tries(context: dict) -> str:
    n = context.get("attempts")
    return f" on {n} tries ({HUB_RETRIES_SETTING}={n - 1})" if n and n > 1 else ""


def _is_hub_timeout(err: BaseException, context: dict) -> bool:
    return _instance(err, "httpx2", "TimeoutException") or _instance(err, "httpx", "TimeoutException")


def _hub_timeout(err: BaseException, context: dict) -> HubtuneError:
    from huggingface_hub import constants

    endpoint = _endpoint(err, context) or "a Hub call"
    method, _, url = endpoint.partition(" ")
    setting = hub_timeout_setting(method, url)
    seconds = getattr(constants, setting)
    return HubTimeoutError(
        f"the Hub did not answer {endpoint} within {seconds} s ({setting}={seconds}){_tries(context)}: it is down or "
        f"slow from here. Try again later, or give it more time with `export {setting}=60`.", endpoint, setting)


def _is_hub_server_error(err: BaseException, context: dict) -> bool:
    response = getattr(err, "response", None)
    return (_instance(err, "huggingface_hub.errors", "HfHubHTTPError") and response is not None
            and (response.status_code >= 500 or response.status_code in (408, 429)))


def _hub_server_error(err: BaseException, context: dict) -> HubtuneError:
    status = err.response.status_code
    endpoint = _endpoint(err, context)
    said = (getattr(err, "server_message", None) or err.response.reason_phrase or "").strip().splitlines()
    busy = "is rate-limiting this token" if status == 429 else "is failing"
    return HubServerError(
        f"the Hub answered {endpoint} with {status} ({said[0][:200] if said else 'no message'}){_tries(context)}: "
        f"it {busy} right now. Run the same command again later (more tries: `export {HUB_RETRIES_SETTING}=6`).",
        endpoint, HUB_RETRIES_SETTING)


def _is_hub_unreachable(err: BaseException, context: dict) -> bool:
    return _instance(err, "httpx2", "TransportError") or _instance(err, "httpx", "TransportError")


def _hub_unreachable(err: BaseException, context: dict) -> HubtuneError:
    from huggingface_hub import constants

    endpoint = _endpoint(err, context) or f"the Hub at {constants.ENDPOINT}"
    return HubServiceError(
        f"cannot reach {endpoint} ({type(err).__name__}: {err}){_tries(context)}: check the network, a proxy "
        f"(HTTPS_PROXY) and HF_ENDPOINT, then run the same command again.", endpoint, "HF_ENDPOINT")


def _is_garbled(err: BaseException, context: dict) -> bool:
    # Only for a Hub call the caller names: a file that is not UTF-8 is a data problem, reported where it is read.
    return bool(context.get("endpoint")) and type(err).__name__ in ("UnicodeDecodeError", "JSONDecodeError")


def _garbled(err: BaseException, context: dict) -> HubtuneError:
    endpoint = context.get("endpoint") or "a Hub call"
    return HubBadResponseError(
        f"the Hub answered {endpoint} with a body that is not JSON ({type(err).__name__}: {err}){_tries(context)}: "
        f"the Hub or a proxy between here and it garbled the answer. Run the same command again later; if it "
        f"persists, check HTTPS_PROXY and HF_ENDPOINT.", endpoint, "HF_ENDPOINT")


def _is_oom(err: BaseException, context: dict) -> bool:
    return (_instance(err, "torch", "OutOfMemoryError")
            or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
                and ("cuda" in str(err).lower() or "mps" in str(err).lower())))


def _oom(err: BaseException, context: dict) -> HubtuneError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if context.get("fix"):
        fixes = [context["fix"]]
    elif (config := context.get("config")) is not None and (found := _fit_search(config)):
        fixes = [found]
    elif config is not None:
        t, d, m = config.training, config.data, config.model
        effective = t.micro_batch_size * t.gradient_accumulation_steps
        fixes = [f"lower training.micro_batch_size (now {t.micro_batch_size}) and raise "
                 f"training.gradient_accumulation_steps to keep the effective batch of {effective}",
                 f"lower data.max_seq_len (now {d.max_seq_len})"]
        if t.gradient_checkpointing is False:
            fixes.append("turn on training.gradient_checkpointing (now off; ~20% slower, far less activation memory)")
        elif t.gradient_checkpointing == "auto":
            fixes.append("set training.gradient_checkpointing: true (now auto, which leaves it off when the estimate "
                         "says memory allows; ~20% slower, far less activation memory)")
        if m.quantization == "none":
            fixes.append("load the base in 4 bits with model.quantization: nf4 (now none)")
        if not d.packing and d.max_seq_len > 512:
            fixes.append("or keep data.max_seq_len and drop the longest rows with data.max_length_percentile: 99")
    else:
        fixes = ["lower training.micro_batch_size (raise training.gradient_accumulation_steps to keep the batch)",
                 "lower data.max_seq_len", "turn on training.gradient_checkpointing",
                 "load the base in 4 bits (model.quantization: nf4)"]
    return OutOfMemoryError(f"out of accelerator memory ({first}). To fit: " + "; ".join(fixes) + ".")


def _fit_search(config) -> str | None:
    """The memory estimate's fit search for this run on this CUDA device (hubtune.fit.oom_advice); None
    where it cannot say (no CUDA device, an architecture it does not know), and the settings to lower
    are listed instead."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        from hubtune import fit

        return fit.oom_advice(config, torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # advice never hides the error it explains
        return None


def _is_corrupt_weights(err: BaseException, context: dict) -> bool:
    return _instance(err, "safetensors._safetensors_rust", "SafetensorError") or (
        type(err).__name__ == "SafetensorError")


def _corrupt_weights(err: BaseException, context: dict) -> HubtuneError:
    where = f" in {context['model']}" if context.get("model") else ""
    return ModelFolderError(f"a .safetensors weights file{where} is damaged ({err}): it was cut short or is not "
                            f"safetensors. Download it again (for a Hub model, delete its folder in the HF cache; "
                            f"`hf cache scan` lists them).")


def _is_unsafe_pickle(err: BaseException, context: dict) -> bool:
    import pickle

    return isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err)


def _unsafe_pickle(err: BaseException, context: dict) -> HubtuneError:
    import re

    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    what = f" (it would build {found.group(1)})" if found else ""
    return ModelFolderError(f"a pickled weights file was refused{what}: it holds objects beyond plain tensors, "
                            f"which is how a pickle runs code when loaded. Use safetensors weights from a source you "
                            f"trust; hubtune does not load such a file.")


def _is_remote_code(err: BaseException, context: dict) -> bool:
    return isinstance(err, ValueError) and "trust_remote_code" in str(err)


def _remote_code(err: BaseException, context: dict) -> HubtuneError:
    return ModelFolderError(remote_code_message(context.get("model") or "this model"))


def remote_code_message(model: str, detail: str = "") -> str:
    import os

    if os.environ.get("SPACE_ID"):
        return (f"{model} needs modelling code of its own{detail}; a shared Space runs no code from model repos "
                f"(its users' tokens and data live beside it). Train it with the CLI on your own machine, or pick a "
                f"model that transformers supports natively.")
    return (f"{model} needs modelling code of its own{detail}, and model.trust_remote_code is off. Turning it on "
            f"runs that Python code on this machine with your permissions: read the repo's *.py files first, pin "
            f"model.revision to the commit you read, then set model.trust_remote_code: true.")


def _is_missing_model_file(err: BaseException, context: dict) -> bool:
    return ((isinstance(err, OSError) and "does not appear to have a file named" in str(err))
            or (isinstance(err, ValueError) and str(err).startswith("Unrecognized model in")))


def _missing_model_file(err: BaseException, context: dict) -> HubtuneError:
    first = str(err).splitlines()[0]
    return ModelFolderError(f"{first}: a base model folder needs config.json, safetensors weights and tokenizer "
                            f"files; copy the complete folder (or use the Hub id).")


_PATH_ERRNOS = {"EACCES", "EPERM", "EROFS", "EISDIR", "ENOTDIR"}


def _is_path_error(err: BaseException, context: dict) -> bool:
    import errno

    return (isinstance(err, OSError) and getattr(err, "filename", None) is not None
            and errno.errorcode.get(err.errno or 0) in _PATH_ERRNOS)


def _path_error(err: BaseException, context: dict) -> HubtuneError:
    return OutputPathError(f"{err.filename}: {err.strerror}; choose a path this user can read and write "
                           f"(a file, not a folder, under a folder that exists).")


# What gloo and NCCL say in the surviving processes when another process of the group is gone.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer",
              "remote process exited or there was a network error")


def _is_peer_gone(err: BaseException, context: dict) -> bool:
    text = str(err)
    return (isinstance(err, RuntimeError) and any(phrase in text for phrase in _PEER_GONE)
            and any(backend in text.lower() for backend in ("gloo", "nccl")))


def _peer_gone(err: BaseException, context: dict) -> HubtuneError:
    phrase = next(phrase for phrase in _PEER_GONE if phrase in str(err))
    backend = "NCCL" if "nccl" in str(err).lower() else "gloo"
    return PeerStoppedError(f"another process of this run stopped first, so this one could not go on ({backend}: "
                            f"{phrase}). The launch's report names that process by rank and why it stopped; once "
                            f"that is fixed, continue from the last checkpoint with `hubtune train --resume "
                            f"RUN_FOLDER --num-processes N`.")


def _is_recursion(err: BaseException, context: dict) -> bool:
    return isinstance(err, RecursionError)


def _recursion(err: BaseException, context: dict) -> HubtuneError:
    return DataError("a value is nested too deeply to process (RecursionError): find the row with deeply "
                     "nested lists or objects and flatten or remove it.")


# (what is translated, does it match, the typed error with its fix). First match wins: Hub errors come
# before the generic OSError rows because huggingface_hub's HTTP errors are OSErrors too.
Row = tuple[str, Callable[[BaseException, dict], bool], Callable[[BaseException, dict], "HubtuneError"]]
FOREIGN_ERRORS: tuple[Row, ...] = (
    ("torch.OutOfMemoryError (CUDA / MPS out of memory)", _is_oom, _oom),
    ("httpx TimeoutException (a Hub call without an answer)", _is_hub_timeout, _hub_timeout),
    ("HfHubHTTPError 5xx / 408 / 429", _is_hub_server_error, _hub_server_error),
    ("httpx TransportError (no connection to the Hub)", _is_hub_unreachable, _hub_unreachable),
    ("JSONDecodeError / UnicodeDecodeError of a Hub answer", _is_garbled, _garbled),
    ("safetensors SafetensorError (damaged weights)", _is_corrupt_weights, _corrupt_weights),
    ("pickle UnpicklingError from torch.load(weights_only=True)", _is_unsafe_pickle, _unsafe_pickle),
    ("ValueError asking for trust_remote_code", _is_remote_code, _remote_code),
    ("transformers: a model folder without config.json (OSError / ValueError)", _is_missing_model_file,
     _missing_model_file),
    ("OSError on a path: permission, a folder for a file, read-only", _is_path_error, _path_error),
    ("RecursionError (deeply nested data)", _is_recursion, _recursion),
    ("RuntimeError of gloo / NCCL: another process of the run is gone", _is_peer_gone, _peer_gone),
)


def translate(err: BaseException, **context) -> HubtuneError | None:
    """The typed error for `err` (itself when it already is one), or None when no row of the table knows it.
    Context: config (the RunConfig), endpoint ("GET url"), attempts, model, fix (replaces the listed fixes)."""
    if isinstance(err, HubtuneError):
        return err
    for _, matches, build in FOREIGN_ERRORS:
        if matches(err, context):
            typed = build(err, context)
            typed.__cause__ = err
            return typed
    return None
