"""A loopback Hugging Face Hub for tests: the part of the Hub HTTP API that huggingface_hub calls.

It keeps repos in memory as a chain of commits (full file snapshots), speaks the regular
(non-Xet) upload route (preupload, LFS batch + PUT, NDJSON commit), serves repo info with
card data and the gated flag, access checks (auth-check), tree listings, file resolution,
and whoami. Point the real client at it with HF_ENDPOINT (or constants.ENDPOINT) and HF_HUB_DISABLE_XET=1.

    hub = LoopbackHub(); hub.start()
    hub.add_user("alice", token="hf_alice")
    hub.seed("meta-llama/Llama-3.1-8B", {"config.json": b"{}"}, gated="manual")

It also emulates the Jobs API (POST /api/jobs/{namespace}, inspect, logs as server-sent events,
cancel): a submitted job is kept with the exact request the client sent (`hub.jobs[id].spec`), and
`hub.execute_job(id, ...)` runs its command here, in a fresh folder with the job's environment and
secrets, the way the Jobs runtime would in a container.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_THRESHOLD = 1024  # bytes; larger files and binary formats go through LFS, like the Hub's own rules
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".png", ".jpg", ".parquet", ".gguf", ".onnx", ".model")
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class QuietServer(ThreadingHTTPServer):
    """A client that hangs up before the reply (a test's timeout, a killed process) is expected here: its
    BrokenPipeError is not printed, where it would land in whichever test's captured stderr runs next."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, size: int) -> bool:
    return size > LFS_THRESHOLD or path.endswith(LFS_SUFFIXES)


def readme(body: str = "", **metadata) -> str:
    """A README.md (model or dataset card) with the given YAML front matter."""
    return f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n{body}\n"


def card_metadata(readme: bytes | None) -> dict | None:
    if not readme:
        return None
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme.decode("utf-8", "replace"), re.S)
    if not match:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


JOB_STAGES_DONE = ("COMPLETED", "CANCELED", "ERROR", "DELETED")


@dataclass
class Job:
    id: str
    namespace: str
    owner: str
    spec: dict  # the request body, as the client sent it
    stage: str = "SCHEDULING"
    message: str | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)  # (timestamp, line)
    created: str = ""

    def info(self) -> dict:
        spec = self.spec
        out = {"id": self.id, "createdAt": self.created, "owner": {"id": f"id-{self.owner}", "name": self.owner,
                                                                  "type": "user"},
               "command": spec.get("command"), "arguments": spec.get("arguments", []),
               "environment": spec.get("environment", {}),
               "secrets": {k: None for k in spec.get("secrets", {})},  # the Hub never returns secret values
               "flavor": spec.get("flavor"), "labels": spec.get("labels"),
               "status": {"stage": self.stage, "message": self.message}}
        if "timeoutSeconds" in spec:
            out["timeoutSeconds"] = spec["timeoutSeconds"]
        out["dockerImage" if "dockerImage" in spec else "spaceId"] = spec.get("dockerImage") or spec.get("spaceId")
        return out


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    message: str
    parent: str | None


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool = False
    gated: str | bool = False  # False, "auto" or "manual", as the Hub reports it
    granted: set[str] = field(default_factory=set)  # users who accepted a gated repo's terms
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    sdk: str | None = None  # a Space's SDK (gradio, docker, static)
    hardware: str | None = None  # a Space's requested hardware flavor

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            return self.commits.get(revision)
        return None


class LoopbackHub:
    """The server and its state. Every request and its token is logged in `requests`."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens: dict[str, str] = {}  # token -> user name
        self.token_auth: dict[str, dict] = {}  # token -> whoami-v2 "auth.accessToken" (role, fineGrained)
        self.jobs: dict[str, Job] = {}
        self.orgs: dict[str, set[str]] = {}  # org -> members
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, token)
        self.uploaded_bodies: list[bytes] = []  # every request body received, for secret scans
        self.fail_next: dict[str, int] = {}  # endpoint name -> HTTP status to answer once
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._counter = 0

    # ---- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "LoopbackHub":
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = QuietServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # ---- seeding ------------------------------------------------------------------------------
    def add_user(self, name: str, token: str, orgs: tuple[str, ...] = (), role: str = "write",
                 fine_grained: dict | None = None) -> None:
        """role: read | write | fineGrained (then `fine_grained` is whoami-v2's {global, scoped} grants)."""
        self.tokens[token] = name
        self.token_auth[token] = {"displayName": f"{name}-token", "role": role,
                                  **({"fineGrained": fine_grained} if fine_grained is not None else {})}
        for org in orgs:
            self.orgs.setdefault(org, set()).add(name)

    def create(self, repo_id: str, repo_type: str = "model", private: bool = False,
               gated: str | bool = False) -> Repo:
        with self.lock:
            key = (repo_type, repo_id)
            if key not in self.repos:
                repo = Repo(repo_id, repo_type, private=private, gated=gated)
                self._commit(repo, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                             "initial commit", "main")
                self.repos[key] = repo
            return self.repos[key]

    def seed(self, repo_id: str, files: dict[str, bytes | str], repo_type: str = "model",
             gated: str | bool = False, private: bool = False, message: str = "upload",
             branch: str = "main", tag: str | None = None) -> str:
        """Add (or update) files in one commit; returns the commit sha."""
        repo = self.create(repo_id, repo_type, private=private, gated=gated)
        with self.lock:
            repo.gated = gated
            repo.private = private
            data = {p: c.encode() if isinstance(c, str) else c for p, c in files.items()}
            sha = self._commit(repo, data, message, branch)
            if tag:
                repo.refs[tag] = sha
            return sha

    def grant(self, repo_id: str, user: str, repo_type: str = "model") -> None:
        self.repos[(repo_type, repo_id)].granted.add(user)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        repo = self.repos[(repo_type, repo_id)]
        commit = repo.resolve(revision)
        return {p: self._content(c) for p, c in commit.files.items()} if commit else {}

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        return len(self.repos[(repo_type, repo_id)].commits)

    def _commit(self, repo: Repo, changes: dict[str, bytes | None], message: str, branch: str,
                parent: str | None = None) -> str:
        parent = parent or repo.refs.get(branch)
        files = dict(repo.commits[parent].files) if parent else {}
        for path, content in changes.items():
            if content is None:
                files.pop(path, None)
                for p in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                    del files[p]
            else:
                files[path] = self._store(path, content)
        self._counter += 1
        sha = hashlib.sha1(f"{repo.repo_id}:{self._counter}:{time.time_ns()}:{message}".encode()).hexdigest()
        repo.commits[sha] = Commit(sha, files, message, parent)
        repo.refs[branch] = sha
        return sha

    def _store(self, path: str, content: bytes) -> bytes:
        """Files are kept inline; LFS ones as a pointer to the LFS store, like git."""
        if is_lfs(path, len(content)):
            oid = hashlib.sha256(content).hexdigest()
            self.lfs[oid] = content
            return b"lfs:" + oid.encode()
        return b"raw:" + content

    def _content(self, stored: bytes) -> bytes:
        return self.lfs[stored[4:].decode()] if stored.startswith(b"lfs:") else stored[4:]

    # ---- the Jobs runtime -----------------------------------------------------------------------
    def execute_job(self, job_id: str, workdir: Path, bin_dir: Path, machine_env: dict[str, str],
                    timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a submitted job's command here: `uv run --with SPEC... CMD ARGS` becomes CMD ARGS from
        `bin_dir` (this environment stands in for the one uv would build), with only the job's
        environment and secrets on top of `machine_env`, in the empty folder `workdir`."""
        job = self.jobs[job_id]
        command = list(job.spec["command"])
        if command[:2] == ["uv", "run"]:
            command = command[2:]
            while command and command[0] in ("--with", "--python"):
                command = command[2:]
        env = {**machine_env, **job.spec.get("environment", {}), **job.spec.get("secrets", {})}
        job.stage = "RUNNING"
        workdir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=timeout)
        with self.lock:
            for line in (proc.stdout + proc.stderr).splitlines():
                job.logs.append((_timestamp(), line))
            if job.stage == "RUNNING":
                job.stage = "COMPLETED" if proc.returncode == 0 else "ERROR"
                job.message = None if proc.returncode == 0 else f"exit code {proc.returncode}"
        return proc

    # ---- access -------------------------------------------------------------------------------
    def user_of(self, token: str | None) -> str | None:
        return self.tokens.get(token) if token else None

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, set()))

    def can_read(self, repo: Repo, user: str | None) -> bool:
        return not repo.private or self.can_write(user, repo.repo_id.split("/")[0])


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        self.status, self.message, self.code = status, message, code


class _Handler(BaseHTTPRequestHandler):
    state: LoopbackHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # ---- plumbing -----------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.state.uploaded_bodies.append(body)
        return body

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, data, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        token = self._token()
        self.state.requests.append((method, path, token))
        try:
            for name, m, pattern, fn in ROUTES:
                match = re.fullmatch(pattern, path) if m == method or (m == "GET" and method == "HEAD") else None
                if match:
                    status = self.state.fail_next.pop(name, None)
                    if status:
                        raise HubError(status, f"{name} failed on purpose (test fault injection)")
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    with self.state.lock:
                        fn(self, method, query, token, **args)
                    return
            raise HubError(404, f"no route for {method} {path}")
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if method == "HEAD":
                self._send(err.status, b"", headers, head=True)
            else:
                self._json(err.status, {"error": err.message}, headers)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # ---- helpers ------------------------------------------------------------------------------
    def _repo(self, repo_type: str, repo_id: str, token: str | None) -> Repo:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or not self.state.can_read(repo, self.state.user_of(token)):
            raise HubError(401 if token is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _writable(self, repo_type: str, repo_id: str, token: str | None) -> Repo:
        user = self.state.user_of(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        repo = self._repo(repo_type, repo_id, token)
        if not self.state.can_write(user, repo_id.split("/")[0]):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _entry(self, path: str, stored: bytes) -> dict:
        content = self.state._content(stored)
        entry = {"type": "file", "path": path, "size": len(content)}
        if stored.startswith(b"lfs:"):
            pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{stored[4:].decode()}\n"
                       f"size {len(content)}\n")
            entry["oid"] = git_blob_sha1(pointer.encode())
            entry["lfs"] = {"oid": stored[4:].decode(), "size": len(content), "pointerSize": len(pointer)}
        else:
            entry["oid"] = git_blob_sha1(content)
        return entry

    # ---- routes -------------------------------------------------------------------------------
    def whoami(self, method, query, token):
        user = self.state.user_of(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"name": o, "type": "org"} for o, members in self.state.orgs.items() if user in members]
        self._json(200, {"type": "user", "name": user, "orgs": orgs,
                         "auth": {"type": "access_token", "accessToken": self.state.token_auth[token]}})

    # ---- Jobs ---------------------------------------------------------------------------------
    def _job_user(self, token, namespace) -> str:
        user = self.state.user_of(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if not self.state.can_write(user, namespace):
            raise HubError(403, f"You don't have the rights to run jobs under {namespace}")
        return user

    def _job(self, token, namespace, job_id) -> Job:
        self._job_user(token, namespace)
        job = self.state.jobs.get(job_id)
        if job is None or job.namespace != namespace:
            raise HubError(404, f"Job {job_id} not found")
        return job

    def create_job(self, method, query, token, namespace):
        from huggingface_hub import JobHardware

        user = self._job_user(token, namespace)
        spec = json.loads(self._body() or b"{}")
        problems = []
        if not isinstance(spec.get("command"), list) or not all(isinstance(c, str) for c in spec["command"]):
            problems.append("command must be a list of strings")
        if not (spec.get("dockerImage") or spec.get("spaceId")):
            problems.append("dockerImage or spaceId is required")
        if spec.get("flavor") not in [h.value for h in JobHardware]:
            problems.append(f"unknown flavor {spec.get('flavor')!r}")
        for key in ("environment", "secrets"):
            if not all(isinstance(v, str) for v in (spec.get(key) or {}).values()):
                problems.append(f"{key} values must be strings")
        if "timeoutSeconds" in spec and not isinstance(spec["timeoutSeconds"], int):
            problems.append("timeoutSeconds must be an integer")
        if problems:
            raise HubError(400, "; ".join(problems))
        job_id = hashlib.sha1(f"job:{len(self.state.jobs)}:{time.time_ns()}".encode()).hexdigest()[:24]
        job = Job(job_id, namespace, user, spec, created=_timestamp())
        self.state.jobs[job_id] = job
        self._json(200, job.info())

    def list_jobs(self, method, query, token, namespace):
        self._job_user(token, namespace)
        self._json(200, [j.info() for j in self.state.jobs.values() if j.namespace == namespace])

    def inspect_job(self, method, query, token, namespace, job_id):
        self._json(200, self._job(token, namespace, job_id).info())

    def job_logs(self, method, query, token, namespace, job_id):
        job = self._job(token, namespace, job_id)
        lines = job.logs[-int(query["tail"][0]):] if "tail" in query else job.logs
        body = "".join(f"data: {json.dumps({'data': line, 'timestamp': ts})}\n\n" for ts, line in lines)
        self._send(200, body.encode(), content_type="text/event-stream")

    def cancel_job(self, method, query, token, namespace, job_id):
        job = self._job(token, namespace, job_id)
        if job.stage not in JOB_STAGES_DONE:
            job.stage, job.message = "CANCELED", "canceled by the user"
        self._send(200, b"")

    def create_repo(self, method, query, token):
        body = json.loads(self._body() or b"{}")
        user = self.state.user_of(token)
        namespace = body.get("organization") or user
        repo_type = body.get("type") or "model"
        repo_id = f"{namespace}/{body['name']}"
        url = f"{self.state.url}/{PREFIX[repo_type]}{repo_id}"
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if not self.state.can_write(user, namespace):
            raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
        if (repo_type, repo_id) in self.state.repos:
            self._json(409, {"error": "You already created this repo", "url": url})
            return
        if repo_type == "space" and body.get("sdk") not in SPACE_SDKS:
            raise HubError(400, f"a Space needs an sdk, one of {', '.join(SPACE_SDKS)}")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo = self.state.create(repo_id, repo_type, private=private)
        repo.sdk = body.get("sdk")
        repo.hardware = body.get("hardware")
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, method, query, token):
        body = json.loads(self._body() or b"{}")
        try:
            card_metadata(body.get("content", "").encode())
        except yaml.YAMLError as err:
            self._json(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
            return
        self._json(200, {"errors": [], "warnings": []})

    def repo_info(self, method, query, token, type, repo_id, revision="main"):
        repo = self._repo(type, repo_id, token)
        commit = self._commit_at(repo, revision)
        readme = commit.files.get("README.md")
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id,
            "author": repo_id.split("/")[0], "sha": commit.sha, "private": repo.private,
            "gated": repo.gated, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }
        if repo.repo_type == "space":
            info.update(sdk=repo.sdk, runtime=self._runtime(repo))
        meta = card_metadata(self.state._content(readme)) if readme else None
        if meta is not None:
            info["cardData"] = meta
        self._json(200, info)

    def _runtime(self, repo: Repo) -> dict:
        return {"stage": "BUILDING", "hardware": {"current": None, "requested": repo.hardware},
                "storage": None, "gcTimeout": None, "replicas": {"current": 1, "requested": 1}}

    def space_hardware(self, method, query, token, repo_id):
        repo = self._writable("space", repo_id, token)
        flavor = json.loads(self._body() or b"{}").get("flavor")
        if flavor not in SPACE_HARDWARE:
            raise HubError(400, f"unknown hardware {flavor!r}; one of {', '.join(SPACE_HARDWARE)}")
        repo.hardware = flavor
        self._json(200, self._runtime(repo))

    def space_runtime(self, method, query, token, repo_id):
        self._json(200, self._runtime(self._repo("space", repo_id, token)))
    def auth_check(self, method, query, token, type, repo_id, write=None):
        """What `HfApi.auth_check` asks: may this token read (or write) the repo's files?"""
        repo = self._repo(type, repo_id, token)
        user = self.state.user_of(token)
        if write and not self.state.can_write(user, repo_id.split("/")[0]):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        if repo.gated and user not in repo.granted:
            raise HubError(401 if token is None else 403,
                           f"Access to {repo_id} is restricted. You must have access to it and be authenticated.",
                           "GatedRepo")
        self._json(200, {"ok": True})

    def tree(self, method, query, token, type, repo_id, revision, path=""):
        repo = self._repo(type, repo_id, token)
        commit = self._commit_at(repo, revision)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries, folders = [], set()
        for p in sorted(commit.files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "path": folder, "oid": git_blob_sha1(folder.encode())})
            if recursive or len(rest) == 1:
                entries.append(self._entry(p, commit.files[p]))
        if prefix and not entries:
            raise HubError(404, f"{path} does not exist at {revision}", "EntryNotFound")
        self._json(200, entries)

    def resolve(self, method, query, token, repo_id, revision, path, prefix=""):
        repo_type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix]
        repo = self._repo(repo_type, repo_id, token)
        if repo.gated and self.state.user_of(token) not in repo.granted:
            raise HubError(401 if token is None else 403,
                           f"Access to {repo_id} is restricted. You must have access to it and be authenticated.",
                           "GatedRepo")
        commit = self._commit_at(repo, revision)
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound")
        stored = commit.files[path]
        content = self.state._content(stored)
        etag = stored[4:].decode() if stored.startswith(b"lfs:") else git_blob_sha1(content)
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if stored.startswith(b"lfs:"):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(content))})
        self._send(200, content, headers, head=method == "HEAD", content_type="application/octet-stream")

    def preupload(self, method, query, token, type, repo_id, revision):
        repo = self._writable(type, repo_id, token)
        body = json.loads(self._body())
        commit = repo.resolve(revision)
        out = []
        for f in body["files"]:
            lfs = is_lfs(f["path"], f["size"])
            existing = commit.files.get(f["path"]) if commit else None
            oid = None
            if existing is not None:
                content = self.state._content(existing)
                oid = hashlib.sha256(content).hexdigest() if lfs else git_blob_sha1(content)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": out, "commitOid": commit.sha if commit else None})

    def lfs_batch(self, method, query, token, repo_id, prefix=""):
        repo_type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix]
        self._writable(repo_type, repo_id, token)
        body = json.loads(self._body())
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:
                entry["actions"] = {"upload": {"href": f"{self.state.url}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def lfs_upload(self, method, query, token, oid):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "sha256 of the uploaded content does not match the oid")
        self.state.lfs[oid] = data
        self._send(200, b"")

    def commit(self, method, query, token, type, repo_id, revision):
        repo = self._writable(type, repo_id, token)
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        branch = unquote(revision)
        head = repo.refs.get(branch)
        if header.get("parentCommit") and header["parentCommit"] != head:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        changes: dict[str, bytes | None] = {}
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                changes[value["path"]] = self.state.lfs[value["oid"]]
            elif key in ("deletedFile", "deletedFolder"):
                changes[value["path"]] = None
        sha = self.state._commit(repo, changes, header["summary"], branch)
        self._json(200, {"success": True, "commitOid": sha,
                         "commitUrl": f"{self.state.url}/{PREFIX[type]}{repo_id}/commit/{sha}"})


SPACE_SDKS = ("gradio", "docker", "static")
SPACE_HARDWARE = ("cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "a10g-small", "a10g-large",
                  "a100-large", "h100")
_TYPE = r"(?P<type>model|dataset|space)s"
_ID = r"(?P<repo_id>[\w.-]+/[\w.-]+)"
_RES_PREFIX = r"(?P<prefix>datasets/|spaces/)?"


ROUTES = [
    ("whoami", "GET", r"/api/whoami-v2", _Handler.whoami),
    ("job-create", "POST", r"/api/jobs/(?P<namespace>[\w.-]+)", _Handler.create_job),
    ("job-list", "GET", r"/api/jobs/(?P<namespace>[\w.-]+)", _Handler.list_jobs),
    ("job-inspect", "GET", r"/api/jobs/(?P<namespace>[\w.-]+)/(?P<job_id>[0-9a-f]+)", _Handler.inspect_job),
    ("job-logs", "GET", r"/api/jobs/(?P<namespace>[\w.-]+)/(?P<job_id>[0-9a-f]+)/logs", _Handler.job_logs),
    ("job-cancel", "POST", r"/api/jobs/(?P<namespace>[\w.-]+)/(?P<job_id>[0-9a-f]+)/cancel", _Handler.cancel_job),
    ("create", "POST", r"/api/repos/create", _Handler.create_repo),
    ("validate-yaml", "POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("space-hardware", "POST", rf"/api/spaces/{_ID}/hardware", _Handler.space_hardware),
    ("space-runtime", "GET", rf"/api/spaces/{_ID}/runtime", _Handler.space_runtime),
    ("info", "GET", rf"/api/{_TYPE}/{_ID}", _Handler.repo_info),
    ("info", "GET", rf"/api/{_TYPE}/{_ID}/revision/(?P<revision>.+)", _Handler.repo_info),
    ("auth-check", "GET", rf"/api/{_TYPE}/{_ID}/auth-check(?P<write>/write)?", _Handler.auth_check),
    ("tree", "GET", rf"/api/{_TYPE}/{_ID}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", _Handler.tree),
    ("preupload", "POST", rf"/api/{_TYPE}/{_ID}/preupload/(?P<revision>.+)", _Handler.preupload),
    ("commit", "POST", rf"/api/{_TYPE}/{_ID}/commit/(?P<revision>.+)", _Handler.commit),
    ("lfs-batch", "POST", rf"/{_RES_PREFIX}{_ID}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("lfs-upload", "PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", _Handler.lfs_upload),
    ("resolve", "GET", rf"/{_RES_PREFIX}{_ID}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", _Handler.resolve),
]
