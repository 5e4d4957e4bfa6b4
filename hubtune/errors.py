"""Typed errors. Each carries what went wrong and how to fix it; the CLI prints
the message and exits with the class's code, with a traceback only when HUBTUNE_DEBUG=1."""

from __future__ import annotations


class HubtuneError(Exception):
    """Base of every error hubtune raises on purpose."""

    exit_code = 2


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
