"""Whose is this, and who asks: the app's sessions, what a user may read, run and act on, and its budgets.

Locally (`hubtune ui` on 127.0.0.1) the person at the page is the operator: every path and run is theirs.
On a shared Space (SPACE_ID set) the trusted party is the Space's owner; signed-in users and signed-out
visitors are not trusted:

- every action that reads data, runs a model or touches a run needs a signed-in user;
- data comes from Hub ids, the built-in assets, or the user's own uploads, never from a path on the server;
- a run is its owner's alone; a run without an owner (made with the CLI) is the operator's, never a visitor's;
- Hub calls act with the user's own token (hubtune.hub.acting_as), never the Space's;
- no code from a user's repo or config runs (model.trust_remote_code, data.scorer, Hub kernels).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hubtune import config as cfg
from hubtune import hub
from hubtune.errors import NotYoursError, SignInRequiredError
from hubtune.refs import ASSETS, RepoRef
from hubtune.runs import RunFolder

UPLOADS = ".uploads"  # under the runs root: one folder per user


@dataclass
class Session:
    """Who is using this browser session. Kept server-side (gr.State): the token never reaches the page."""

    token: str | None = field(default=None, repr=False)
    user: str | None = None

    @contextmanager
    def hub(self):
        """Hub calls inside act with this session's token, or with none: never the process's own."""
        with hub.acting_as(self.token):
            yield

    def iterate(self, generator):
        """A generator's items, each step run with this session's token (a streaming handler's steps may run
        in different threads, so the token is set per step rather than held across yields)."""
        items = iter(generator)
        while True:
            with self.hub():
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item


def operator() -> str | None:
    """The account that runs this app: the Space's owner (SPACE_AUTHOR_NAME, else SPACE_ID's namespace)."""
    space = os.environ.get("SPACE_ID") or ""
    return os.environ.get("SPACE_AUTHOR_NAME") or (space.split("/")[0] if "/" in space else None)


def safe_name(name: str) -> str:
    """A file or folder name with no path parts or odd characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "file"
    return cleaned[:100]


class Gate:
    """The answers for one app: its runs root, and whether it is a shared Space."""

    def __init__(self, root: Path, shared: bool):
        self.root = Path(root).resolve()
        self.shared = shared

    # ---- who asks ----------------------------------------------------------------------------------
    def require_user(self, session: Session, action: str) -> None:
        """On a shared Space, `action` needs a signed-in user."""
        if self.shared and not session.user:
            raise SignInRequiredError(f"Sign in with Hugging Face to {action}: on a shared Space every action "
                                      f"that reads data, runs a model or touches a run is done as its user.")

    def owns(self, run: RunFolder, user: str | None) -> bool:
        """Whether `user` may see and act on `run`. Locally, everyone at the page is the operator."""
        if not self.shared:
            return True
        owner = run.owner
        if owner is None:  # made outside the app (the CLI): the operator's
            return bool(user) and user == operator()
        return bool(user) and owner == user

    def run(self, path: str | Path, session: Session) -> Path:
        """A run path this session may act on: directly under the runs root, a run, and its own."""
        run = Path(path).resolve()
        if run.parent != self.root or not (run / RunFolder.CONFIG).is_file():
            raise NotYoursError(f"{Path(path).name} is not a run under {self.root}")
        self.require_user(session, "open a run")
        if not self.owns(RunFolder(run), session.user):
            raise NotYoursError(f"{run.name} belongs to another user; sign in as its owner")
        return run

    # ---- what they may read ------------------------------------------------------------------------
    def uploads(self, user: str | None) -> Path:
        """The folder that holds this user's uploads (the local operator's: `local`)."""
        return self.root / UPLOADS / safe_name(user or "local")

    def check_source(self, path: str, session: Session, what: str = "data") -> None:
        """On a shared Space: a Hub id, a built-in asset, or a file in the user's own uploads."""
        if not self.shared:
            return
        ref = RepoRef.parse(path)
        if ref.kind == "hub" or self._builtin(ref):
            return
        if ref.kind == "local" and session.user:
            mine = self.uploads(session.user).resolve()
            if mine in Path(path).resolve().parents:
                return
        raise NotYoursError(f"{what} {path!r}: on a shared Space, data comes from a Hub dataset id (owner/name) or "
                            f"a file you upload, not from a path on the server")

    def check_model(self, model_id: str) -> None:
        """On a shared Space: a Hub model id or a built-in asset."""
        ref = RepoRef.parse(model_id)
        if self.shared and not (ref.kind == "hub" or self._builtin(ref)):
            raise NotYoursError(f"model {model_id!r}: on a shared Space, the base model is a Hub model id "
                                f"(owner/name) or a built-in one (hubtune:tiny-llama), not a path on the server")

    def check_config(self, config: cfg.RunConfig, session: Session) -> None:
        """Everything a run config points at, for this session (see the module's rules)."""
        if not self.shared:
            return
        self.check_model(config.model.id)
        hub.check_remote_code(config.model.trust_remote_code, config.model.id)
        for i, source in enumerate(config.data.sources):
            self.check_source(source.path, session, f"data.sources[{i}]")
        if config.data.mix.source is not None:
            self.check_source(config.data.mix.source.path, session, "data.mix.source")
        if config.eval.test is not None:
            self.check_source(config.eval.test.path, session, "eval.test")
        regression = config.eval.regression_set
        if regression and not regression.startswith("evals:"):
            raise NotYoursError(f"eval.regression_set {regression!r}: on a shared Space, use a built-in set "
                                f"(evals:...) or none")
        if config.data.scorer is not None:
            raise NotYoursError("data.scorer runs a Python function named in the config; a shared Space runs no "
                                "code of its users: remove data.scorer, or score the data before uploading it")
        hub_code = [name for name, on in (("model.use_kernels", config.model.use_kernels),
                                          ("training.attention_kernel", config.training.attention_kernel)) if on]
        if hub_code:
            raise NotYoursError(f"{' and '.join(hub_code)}: kernels fetched from the Hub are code, and a shared Space "
                                f"runs no code its users choose; leave them out (transformers' own layers compute the same)")
        judge = config.eval.judge
        if judge and not judge.startswith(("http://", "https://")) and not RepoRef.parse(judge).is_hub:
            raise NotYoursError(f"eval.judge {judge!r}: on a shared Space, a judge is a base URL or a Hub model id, "
                                f"not a folder on the server")

    @staticmethod
    def _builtin(ref: RepoRef) -> bool:
        return ref.kind == "builtin" and ASSETS.resolve() in ref.path.resolve().parents
