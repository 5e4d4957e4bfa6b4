"""Publish a run to the Hub: `hubtune push RUN --repo OWNER/NAME [--private] [--merged]`.

The licence gate runs again for publishing (and checks naming rules), then the adapter (or the
merged model), tokenizer, the base's licence files, card, loss curve, config and run record go up
in one commit. Files are staged in a temporary folder: the run folder is never written to, so a
failed push can simply be run again. The token is only ever sent as a header; a staged file that
contains it stops the push.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hubtune import card as cards
from hubtune import licence
from hubtune.errors import HubServiceError, PushError
from hubtune.runs import RunFolder

SKIP_FROM_ADAPTER = {"README.md"}  # peft writes a placeholder card; the run's card replaces it
PICKLES = (".bin", ".pt", ".pth", ".pkl")  # e.g. the trainer's training_args.bin: never published


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    url: str  # the repo's page
    commit_url: str
    commit_sha: str
    files: list[str]  # paths in the repo


def push(run_dir: str | Path, repo: str, *, private: bool = False, merged: bool = False, gguf: bool = False,
         acknowledge: list[str] | tuple[str, ...] = (), token: str | None = None) -> PushResult:
    """Push a finished run to `repo` (OWNER/NAME). Raises LicenceBlocked / NamingRuleError when the
    licences forbid it, PushError when the Hub refuses, with the fix in the message. `acknowledge`
    adds repo ids (or paths) to the run's own licence.acknowledge for this push. gguf: the files of
    `hubtune export RUN --format gguf` with their parity table, instead of the adapter."""
    from huggingface_hub import HfApi, constants, get_token

    from hubtune.hub import call

    _check_repo_id(repo)
    run = RunFolder.open(run_dir).require_finished()
    token = token or get_token()
    if not token:
        raise PushError(f"no Hugging Face token is set, so nothing can be pushed to {repo}: create a write token "
                        f"at {constants.ENDPOINT}/settings/tokens and set it with `export HF_TOKEN=hf_...` "
                        f"or `hf auth login`")
    base, datasets = cards.repo_licences(run)
    accepted = [*run.config.licence.acknowledge, *acknowledge]
    verdict = licence.gate_for_publishing(base, datasets, run.config.licence.use, accepted, repo)

    api = HfApi(token=token)
    what = "GGUF files" if gguf else "merged model" if merged else f"{run.summary.method} adapter"
    remove_stale_staging()
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}@{socket.gethostname()}-") as tmp:
        staged = Path(tmp)
        files = (stage_gguf(run, staged, repo, verdict, token=token) if gguf
                 else stage(run, staged, repo, verdict, merged, token=token))
        _refuse_secrets(staged, token)
        with push_errors(repo):
            url = call(api.create_repo, repo, private=private, exist_ok=True)
            # Not idempotent: retried on a server error only (a commit that timed out may have landed).
            info = call(api.upload_folder, idempotent=False,
                        repo_id=repo, folder_path=staged,
                        commit_message=f"hubtune: {what} of {run.summary.base_model}",
                        commit_description=_description(run, verdict))
    run.record_push(repo, str(url), info.oid)
    return PushResult(repo, str(url), info.commit_url, info.oid, files)


STAGING_PREFIX = "hubtune-push-"  # + PID@HOST- of the pushing process: a folder whose process is gone is stale


def remove_stale_staging(root: str | Path | None = None) -> list[Path]:
    """Delete staging folders left in the temp folder by pushes that were killed (a merged model is
    gigabytes). A folder of a process that still runs, or of another machine sharing the folder, stays."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*"):
        owner = folder.name[len(STAGING_PREFIX):].rpartition("-")[0]  # the rest is tempfile's random part
        pid, _, host = owner.partition("@")
        if folder.is_dir() and pid.isdigit() and host == socket.gethostname() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def stage(run: RunFolder, out: Path, repo: str, verdict, merged: bool = False,
          token: str | None = None) -> list[str]:
    """Lay out the repo's files in `out`: weights + tokenizer, the base's licence files, README.md,
    loss curve, run record."""
    if merged:
        from hubtune.merge import merge_into

        merge_into(run, out, dtype="float32")
    else:
        for f in sorted(run.adapter.iterdir()):
            if f.is_file() and f.name not in SKIP_FROM_ADAPTER and not f.name.endswith(PICKLES):
                shutil.copy2(f, out / f.name)
    curve = cards.loss_curve(run.metrics(), out / cards.LOSS_CURVE)
    for name, published in ((RunFolder.CONFIG, "training_config.yaml"), (RunFolder.SUMMARY, "training_summary.json"),
                            (RunFolder.METRICS, "training_metrics.jsonl"), (RunFolder.EVAL, "eval.json")):
        if (run.path / name).is_file():
            (out / published).write_text(without_local_paths(run, (run.path / name).read_text(encoding="utf-8")),
                                         encoding="utf-8")
    licence_files = copy_licence_files(run, out, token)
    ancestor_files = copy_ancestor_licence_files(verdict, out, token)
    cards.build_card(run, repo, verdict, merged, cards.LOSS_CURVE if curve else None,
                     licence_files=licence_files, ancestor_files=ancestor_files).save(out / "README.md")
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def stage_gguf(run: RunFolder, out: Path, repo: str, verdict, token: str | None = None) -> list[str]:
    """Lay out a GGUF repo in `out`: the exported files, the Modelfile, the parity record, the base's licence
    files and a card whose metadata says what the files are a quantization of."""
    from hubtune.export import RESULT
    from hubtune.export.card import gguf_card

    record = run.export_record
    if not record:
        raise PushError(f"{run.path} has no GGUF export to push: run `hubtune export {run.path} --format gguf` first")
    folder = Path(record["folder"])
    parity = record.get("parity")
    if not parity:
        raise PushError(f"the GGUF export in {folder} was made with --no-parity; export it again with the parity "
                        f"check (`hubtune export {run.path} --format gguf`) so the card can say it still does the task")
    failed = [q for q, r in parity["files"].items() if r["verdict"] == "fail"]
    if failed:
        raise PushError(f"the exported {', '.join(failed)} file(s) failed the parity check (see {folder / RESULT}); "
                        f"they are not published")
    names = [f["file"] for f in record["files"].values()] + ([record["lora"]["file"]] if record.get("lora") else [])
    for name in [*names, record.get("modelfile") or ""]:
        if name and not (folder / name).is_file():
            raise PushError(f"{folder / name} is missing: export the run again")
        if name:
            shutil.copy2(folder / name, out / name)
    (out / "gguf_parity.json").write_text(without_local_paths(run, (folder / RESULT).read_text(encoding="utf-8")),
                                          encoding="utf-8")
    (out / "training_summary.json").write_text(
        without_local_paths(run, (run.path / RunFolder.SUMMARY).read_text(encoding="utf-8")), encoding="utf-8")
    licence_files = copy_licence_files(run, out, token)
    gguf_card(run, repo, verdict, record, licence_files).save(out / "README.md")
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def without_local_paths(run: RunFolder, text: str) -> str:
    """A run record as published: local data files by their names (the card's), the run folder by its
    name; the folders of the machine that trained it stay on that machine."""
    from hubtune.refs import RepoRef

    names = {d.path: d.label for d in run.summary.datasets if RepoRef.parse(d.path).kind == "local"}
    names.update({s.path: RepoRef.parse(s.path).path.name for s in run.config.data.sources
                  if RepoRef.parse(s.path).kind == "local"})
    names[str(run.path.resolve())] = names[str(run.path)] = run.path.name
    for path in sorted(names, key=len, reverse=True):  # a folder after the files inside it
        text = text.replace(path, names[path])
    return text


def copy_licence_files(run: RunFolder, out: Path, token: str | None = None) -> list[str]:
    """Copy the base's top-level LICENSE*, USE_POLICY* and NOTICE* files, at the revision the run
    trained on, into `out`: Llama (§1.b.i), Gemma (§3.1), the RAIL family (§4(b)), Qwen (§3(a)) and
    others require a copy of the licence with every derivative. Returns the names copied."""
    from hubtune.hub import hub_errors
    from hubtune.refs import RepoRef

    def wanted(name: str) -> bool:
        return "/" not in name and name.upper().startswith(cards.LICENCE_FILE_PREFIXES)

    base, revision = run.summary.base_model, run.summary.base_revision
    ref = RepoRef.parse(base)
    if ref.is_local:
        folder = ref.path
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and wanted(p.name)) if folder.is_dir() else []
        for name in names:
            shutil.copy2(folder / name, out / name)
        return names
    from huggingface_hub import HfApi, hf_hub_download

    with hub_errors(base, "model", revision):
        names = sorted(p for p in HfApi(token=token).list_repo_files(base, revision=revision) if wanted(p))
        for name in names:
            shutil.copyfile(hf_hub_download(base, name, revision=revision, token=token), out / name)
    return names


ANCESTOR_LICENCES = "licences"  # ancestors' licence files go to licences/OWNER--NAME/ in the pushed repo


def copy_ancestor_licence_files(verdict, out: Path, token: str | None = None) -> list[dict]:
    """Copy the licence files of every ancestor of the base (its `base_model` chain) whose licence requires
    a copy with each derivative, at the revision it was read at, into licences/OWNER--NAME/. Returns, per
    ancestor, {"ref", "revision", "files", "clauses", "missing"} for the card (`missing`: why nothing was
    copied, when nothing was)."""
    from huggingface_hub import hf_hub_download

    from hubtune.errors import HubtuneError
    from hubtune.hub import hub_errors
    from hubtune.refs import is_hub_id

    copied, done = [], set()
    for _how, a in verdict.findings[0].repo.ancestors():
        terms = [t for t in [*a.terms, *(licence.LICENCES.get(i) for i, _ in a.text_licences)] if t is not None]
        clauses = list(dict.fromkeys(t.at(t.copy_required) for t in terms if t.copy_required))
        if a.ref in done or not clauses or not is_hub_id(a.ref) or a.source != "hub":
            continue
        done.add(a.ref)
        entry = {"ref": a.ref, "revision": a.revision_sha, "files": [], "clauses": clauses, "missing": None}
        folder = out / ANCESTOR_LICENCES / a.ref.replace("/", "--")
        for name in a.files:
            try:
                with hub_errors(a.ref, "model", a.revision_sha):
                    path = hf_hub_download(a.ref, name, revision=a.revision_sha, token=token)
            except HubtuneError as err:
                entry["missing"] = str(err).split(". ")[0]
                continue
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / name)
            entry["files"].append(f"{ANCESTOR_LICENCES}/{folder.name}/{name}")
        if not entry["files"] and not entry["missing"]:
            entry["missing"] = "; ".join(a.unread) or "it holds no licence file"
        copied.append(entry)
    return copied


def _check_repo_id(repo: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        why = f"is not a valid repo id: {err}. Use OWNER/NAME, e.g. alice/Llama-3.1-8B-invoices"
        raise PushError(f"--repo {repo!r} {why}").for_page(f"The Repo box's {repo!r} {why}") from None
    if repo.count("/") != 1:
        why = "needs an owner: use OWNER/NAME (your user name or an organisation)"
        raise PushError(f"--repo {repo!r} {why}").for_page(f"The Repo box's {repo!r} {why}")


def _refuse_secrets(folder: Path, token: str) -> None:
    for f in folder.rglob("*"):
        if f.is_file() and token.encode() in f.read_bytes():
            raise PushError(f"{f.name} would publish the Hugging Face token; remove it from the run folder "
                            f"before pushing")


def _description(run: RunFolder, verdict) -> str:
    s = run.summary
    parts = [f"base: {s.base_model}" + (f"@{s.base_revision}" if s.base_revision else ""),
             f"data: {', '.join(d.label for d in s.datasets)}",
             f"steps: {s.global_steps}",
             f"licence verdict for {verdict.use} use: {verdict.verdict}"]
    return "\n".join(parts)


@contextmanager
def push_errors(repo: str):
    """The client's errors while writing to `repo`, as PushError with the fix (401, 403, others)."""
    from huggingface_hub.errors import HfHubHTTPError

    from hubtune.hub import hub_errors, hub_url

    owner = repo.split("/")[0]
    again = "The run folder is unchanged: fix this and run the same push again."
    try:
        with hub_errors(repo, "model"):
            yield
    except HubServiceError as err:
        raise type(err)(f"{err} Pushing to {repo}: the run folder is unchanged; if {hub_url(repo)}/commits/main does "
                        f"not show the commit, run the same push again.", err.endpoint, err.setting) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise PushError(f"the Hub rejected the token (401) while pushing to {repo}: set a valid write token "
                            f"with `export HF_TOKEN=hf_...` or `hf auth login`. {again}") from None
        if status == 403:
            raise PushError(f"the token's account may not write to {owner!r} (403): push to your own namespace or an "
                            f"organisation you belong to, with a token that has write access. {again}") from None
        raise PushError(f"the Hub refused the push to {repo} ({status}: {err.server_message or err}). "
                        f"{again}") from None
    except (OSError, RuntimeError, ValueError) as err:
        raise PushError(f"the push to {repo} failed: {err}. {again}") from None


def suggested_repo(run: RunFolder, owner: str | None, verdict=None) -> str:
    """A repo id for publishing a run: OWNER/<base name>-<run name>, renamed to follow the licences'
    naming rules (a Llama 3.1 derivative's name begins with "Llama")."""
    import re

    from hubtune.card import publishing_verdict

    run.require_finished()
    base = run.summary.base_model.rstrip("/").split("/")[-1].removeprefix("hubtune:")
    stem = run.path.name if run.path.name.startswith(base) else f"{base}-{run.path.name}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:90]
    verdict = verdict or publishing_verdict(run)
    for _ref, pattern, *_ in verdict.name_rules:
        if not re.match(pattern, name):
            name = licence._suggest(pattern, name)
    return f"{owner or 'OWNER'}/{name}"


def check_target(repo: str, token: str | None = None, verdict=None) -> str:
    """Check a push target before any GPU time is spent on the run that will go there: the repo id is
    valid, follows the naming rules in `verdict` (a licence.Verdict), and the token may write to its
    namespace. Returns the token's account name; raises NamingRuleError or PushError with the fix."""
    import re

    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from hubtune.errors import NamingRuleError
    from hubtune.hub import hub_errors

    _check_repo_id(repo)
    owner, name = repo.split("/")
    for ref, pattern, words, *_ in (verdict.name_rules if verdict else []):
        if not re.match(pattern, name):
            raise NamingRuleError(f"cannot publish to {repo}: the run derives from {ref}, whose licence says {words}. "
                                  f"Use a name like {owner}/{licence._suggest(pattern, name)}", verdict)
    token = token or get_token()
    if not token:
        raise PushError(f"no Hugging Face token is set, so the run could not be pushed to {repo}: sign in, or create "
                        f"a write token at {constants.ENDPOINT}/settings/tokens")
    try:
        with hub_errors(repo, "model"):
            me = HfApi(token=token).whoami()
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        raise PushError(f"the Hub rejected the token ({status}) when checking the push target {repo}: use a valid "
                        f"write token") from None
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PushError(f"the token of {me['name']} is read-only, so nothing can be pushed to {repo}: use a token "
                        f"with write access ({constants.ENDPOINT}/settings/tokens)")
    namespaces = {me["name"], *(o["name"] for o in me.get("orgs") or [])}
    if owner not in namespaces:
        raise PushError(f"{me['name']} cannot write to {owner!r}: push to {me['name']}/{name} or to an "
                        f"organisation the account belongs to ({', '.join(sorted(namespaces))})")
    return me["name"]
