"""What the buttons do: each handler calls the library (config, data, licence, publish, card, evaluation)
or the job runner, and turns every known error into a named message. No training, licence or card
logic lives here."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import yaml

from hubtune import config as cfg
from hubtune.data.limits import check_upload
from hubtune.data.pipeline import held_out_size
from hubtune.errors import ConfigError, HubtuneError, page_text
from hubtune.runs import RunFolder, Status
from hubtune.ui import hosting, views
from hubtune.ui.access import Gate, Session, safe_name
from hubtune.ui.jobs import Job, JobRunner
from hubtune.ui.views import without_server_paths

DEMO_MODEL = "hubtune:tiny-llama"
DEMO_DATA = "hubtune:data/invoices/train.jsonl"
GENERAL_DATA = "hubtune:data/general/train.jsonl"  # mixed in against forgetting, when the user turns it on
MIX_RATIO = 0.1

# Presets over the same run config the CLI uses: overrides on top of the chosen base config.
PRESETS = {
    "quick": ["training.max_steps=60", "training.logging_steps=5", "training.eval_steps=20", "training.save_steps=20"],
    "balanced": ["training.epochs=1", "training.logging_steps=10", "training.eval_steps=50", "training.save_steps=50"],
    "thorough": ["training.epochs=3", "training.logging_steps=10", "training.eval_steps=100",
                 "training.save_steps=100"],
}


def problem(err: BaseException) -> str:
    """A known error as a message; anything else with its type, so nothing reads as success."""
    text = page_text(err) if isinstance(err, HubtuneError) else f"{type(err).__name__}: {err}"
    return without_server_paths(f"**Problem:** {text}".replace("\n", "  \n"))


# ---- signing in ------------------------------------------------------------------------------------------
def sign_in(token: str | None) -> tuple[Session, str]:
    """A session for this token (typed, from the Space login, or the `hf auth login` / HF_TOKEN one)."""
    from huggingface_hub import HfApi, get_token

    typed = (token or "").strip()
    token = typed or (None if hosting.on_space() else get_token())
    if not token:
        where = "sign in with Hugging Face" if hosting.on_space() else "paste a token or run `hf auth login`"
        return Session(), (f"Not signed in: runs are recorded without an owner, and gated repos and pushes need a "
                           f"token ({where}).")
    try:
        me = HfApi(token=token).whoami()
    except Exception as err:  # offline, or a rejected token: say which, keep the token for local work
        reason = getattr(getattr(err, "response", None), "status_code", None)
        why = ("the Hub rejected this token" if reason in (401, 403) else
               f"could not reach the Hub ({type(err).__name__})")
        return Session(token=token), f"Token set, but {why}: pushes and gated repos may fail."
    source = "Hugging Face login" if hosting.on_space() else "the typed token" if typed else "the local login"
    return Session(token=token, user=me["name"]), f"Signed in as **{me['name']}** ({source})."


# ---- model and data ----------------------------------------------------------------------------------------
def source_of(dataset: str, upload: str | None, session: Session, root: Path) -> str:
    """The data source: an uploaded file (size-checked, copied under the runs root with a safe name), or the
    id or path typed."""
    if upload:
        src = Path(upload)
        size_mb = src.stat().st_size / 2**20
        if size_mb > hosting.UPLOAD_LIMIT_MB:
            raise HubtuneError(f"{src.name} is {size_mb:.0f} MB; uploads are limited to {hosting.UPLOAD_LIMIT_MB} MB. "
                               f"Put larger datasets on the Hub and give their id")
        if not src.name.lower().endswith((".jsonl", ".json", ".csv", ".parquet")):
            raise HubtuneError(f"{src.name}: upload a .jsonl, .json, .csv or .parquet file")
        check_upload(src)
        dest = upload_folder(session, root) / safe_name(src.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return str(dest)
    dataset = (dataset or "").strip()
    if not dataset:
        raise HubtuneError("give a dataset: a Hub dataset id (owner/name), a local file, or upload a file")
    return dataset


def upload_folder(session: Session, root: Path) -> Path:
    """Where this session's uploads wait until a run takes them (runs/.uploads/USER)."""
    return root / ".uploads" / safe_name(session.user or "local")


def named_uploads(text: str, session: Session, root: Path) -> str:
    """The run config as the page shows it: this session's uploads by their file names, not the server's
    folders (`with_upload_paths` turns the names back when the run starts)."""
    folder = str(upload_folder(session, root).resolve())
    return re.sub(re.escape(folder) + r"/([^\s/'\"]+)", r"\1", text)


def with_upload_paths(tree: dict, session: Session, root: Path) -> dict:
    """A run config's tree (as typed in the page) with each source named by a bare file name that this
    session uploaded pointing at that upload (see `named_uploads`)."""
    folder = upload_folder(session, root).resolve()
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    mix = data.get("mix") if isinstance(data.get("mix"), dict) else {}
    for s in [*(data.get("sources") or []), *([mix["source"]] if isinstance(mix.get("source"), dict) else [])]:
        path = s.get("path") if isinstance(s, dict) else None
        if isinstance(path, str) and "/" not in path and (folder / path).is_file():
            s["path"] = str(folder / path)
    return tree


def data_config(model: str, source: str | None, fmt: str = "auto", columns: str = "", use: str = "personal",
                base: cfg.RunConfig | None = None, mix: bool | None = None,
                declared: list[cfg.RightsDeclaration] | None = None) -> cfg.RunConfig:
    """The run config with this model and data on top of `base` (the demo config for the embedded model).
    `mix`: general data mixed in (None: as the base config has it for its own data, off for other data);
    `declared`: the uploader's rights declarations for their files."""
    from hubtune.demo import DEMO_CONFIG

    if not source:
        raise HubtuneError("no dataset to train on: type a Hub dataset id or a file path, or upload a file")
    if base is None:
        base = cfg.load(DEMO_CONFIG) if model.strip() == DEMO_MODEL else cfg.RunConfig()
    tree = base.model_dump(mode="json")
    tree["model"]["id"] = model.strip()
    same_data = [s["path"] for s in tree["data"]["sources"]] == [source]
    tree["data"]["sources"] = tree["data"]["sources"] if same_data else [{"path": source}]
    if not same_data:
        tree["eval"]["test"] = None  # the demo's test set belongs to the demo data
        # A share of a small file holds out a handful of rows: at least FEW_HELD_OUT where the file allows.
        try:
            rows = _local_rows(cfg.DataSource(path=source))
        except ValueError:  # no such file: data_config's own validation below says so
            rows = None
        if rows is not None:
            tree["data"]["val_set_size"] = held_out_size(rows, tree["data"]["val_set_size"])
    if mix is None:
        mix = same_data and tree["data"]["mix"]["ratio"] > 0  # never silently on for the user's own data
    tree["data"]["mix"] = ({"source": tree["data"]["mix"]["source"] or {"path": GENERAL_DATA}, "ratio": MIX_RATIO}
                           if mix else {"source": None, "ratio": 0.0})
    tree["licence"]["declared"] = [d.model_dump() for d in declared or []]
    tree["data"]["format"] = fmt or "auto"
    mapping = parse_columns(columns)
    if mapping:
        tree["data"]["columns"] = mapping
    tree["licence"]["use"] = use
    return cfg.build(tree)


def parse_columns(text: str) -> dict[str, str]:
    """`output=answer, instruction=question` as a dict."""
    mapping = {}
    for pair in filter(None, (p.strip() for p in (text or "").split(","))):
        field, sep, column = pair.partition("=")
        if not sep:
            raise HubtuneError(f"column mapping {pair!r}: write FIELD=COLUMN, e.g. output=answer")
        mapping[field.strip()] = column.strip()
    return mapping


def inspect_data(model: str, dataset: str, upload: str | None, fmt: str, columns: str, use: str,
                 session: Session, root: Path, gate: Gate | None = None, mix: bool | None = None,
                 rights: bool = False) -> dict:
    """First rows, detected format, licence verdict, access to gated repos and the data report. Each part
    that fails says why in its own place; the others still show. With a gate (the app), only what this
    session may read. A rejected upload leaves no data chosen (source None): nothing falls back to another
    dataset behind the user's back."""
    out = {"rows": [], "format": "", "licence": "", "access": "", "report": "", "histogram": [], "pairs": [],
           "source": None, "training_on": "", "warnings": [], "shape": None}
    try:
        if gate is not None:
            gate.require_user(session, "check data")
            gate.check_model(model)
        source = source_of(dataset, upload, session, root)
        if gate is not None:
            gate.check_source(source, session)
        config = data_config(model, source, fmt, columns, use, mix=mix,
                             declared=declarations(source, rights, session, root))
    except (HubtuneError, OSError) as err:
        out["format"] = problem(err)
        rejected = f"{Path(upload).name} was rejected" if upload else "no dataset"
        out["training_on"] = f"**Nothing to train on:** {rejected}. {problem(err).removeprefix('**Problem:** ')}"
        return out
    out["source"] = source
    out["rows"], out["format"] = _preview(config)
    out["licence"] = without_server_paths(_licence(config))
    out["access"] = without_server_paths(_access(config, session))
    report, out["report"], out["histogram"], out["pairs"] = _report(config)
    out["training_on"] = training_on(config, root, report)
    out["shape"] = views.data_shape(report) if report else None
    return out


def declarations(source: str | None, rights: bool, session: Session, root: Path) -> list[cfg.RightsDeclaration]:
    """The page's "I hold the rights to use and publish this file" tick, for an uploaded file: who, when,
    and the hash of the bytes it covers."""
    from datetime import datetime, timezone

    from hubtune.refs import file_sha256

    if not (rights and source and is_upload(source, root)):
        return []
    return [cfg.RightsDeclaration(file=Path(source).name, sha256=file_sha256(source), by=session.user,
                                  at=datetime.now(timezone.utc).isoformat(timespec="seconds"))]


def is_upload(path: str, root: Path) -> bool:
    p = Path(path)
    return p.is_file() and (root / ".uploads").resolve() in p.resolve().parents


def _local_rows(source: cfg.DataSource, limit_mb: float = 50) -> int | None:
    """How many rows a local file or built-in asset holds (None when unreadable, or too large to count here)."""
    from hubtune.data.sources import iter_source_rows, locate

    try:
        files, _ = locate(source)
        if sum(f.stat().st_size for f in files) > limit_mb * 2**20:
            return None
        return sum(1 for _ in iter_source_rows(source, files, True, []))
    except (HubtuneError, OSError, ValueError):
        return None


def training_on(config: cfg.RunConfig, root: Path, report: dict | None = None) -> str:
    """What will train, in one line: "Training on: my_labels.jsonl, 60 rows, uploaded ..."."""
    from hubtune.refs import RepoRef, data_label, file_sha256

    parts = []
    for s in config.data.sources:
        ref = RepoRef.parse(s.path)
        how = ("uploaded" if is_upload(s.path, root) else {"builtin": "built in", "local": "a local file",
                                                          "hub": f"Hub dataset, split {s.split}"}[ref.kind])
        read = next((r for r in (report or {}).get("sources", []) if r["path"] == s.path), None)
        count = read["rows"] if read else _local_rows(s) if ref.kind != "hub" else None
        rows = f", {count} rows" if count is not None else ""
        sha = file_sha256(ref.path) if ref.kind == "local" else None
        parts.append(f"**{data_label(s.path)}**{rows}, {how}" + (f" (sha256 {sha[:12]})" if sha else ""))
    line = "Training on: " + "; ".join(parts)
    for d in config.licence.declared:
        line += f" · rights declared by {d.by or 'you (not signed in)'} at {d.at}"
    mix = config.data.mix
    if mix.source is not None and mix.ratio > 0:
        from hubtune.licence import read_licence

        line += (f" · {mix.ratio:.0%} general data mixed in: {data_label(mix.source.path)} "
                 f"({read_licence(mix.source.path, 'dataset').licence})")
    else:
        line += " · no general data mixed in"
    test = ("the held-out rows are the test set" if config.eval.test is None
            else f"test set: {data_label(config.eval.test.path)}")
    if report:
        line += (f"  \n{report['train']} rows for training ({report.get('mixed', 0)} of them general), "
                 f"{report['eval']} held out; {test}")
        line += "".join(f"  \n**Warning:** {views.page_keys(w)}" for w in report.get("warnings") or [])
    else:
        v = config.data.val_set_size
        held = "nothing held out" if not v else f"{v:.0%} of the rows held out" if v < 1 else f"{v:g} rows held out"
        line += f"  \n{held} (Advanced settings: data → val_set_size); {test}"
    return line


def _preview(config: cfg.RunConfig) -> tuple[list[dict], str]:
    from hubtune.data.formats import resolve_format
    from hubtune.data.sources import read_source

    source = config.data.sources[0]
    try:
        rows = read_source(source, config.data.skip_bad_rows).rows
        if not rows:
            return [], f"**Problem:** {source.path} holds no rows (split {source.split!r})"
        fmt = resolve_format(rows[0], config.data.format, config.data.columns, source.path)
    except Exception as err:
        return [], problem(err)
    shown = [{k: _short(v) for k, v in r.items()} for r in rows[:5]]
    mapping = ", ".join(f"{k} <- {v}" for k, v in config.data.columns.items()) or "columns used as named"
    how = "detected" if config.data.format == "auto" else "as set"
    hint = {"preference": "; preference pairs: choose the method dpo, orpo or kto on the Train tab",
            "kto": "; labelled answers: choose the method kto on the Train tab"}.get(fmt, "")
    return shown, f"**{len(rows)} rows**, format **{fmt}** ({how}); {mapping}{hint}"


def _short(value, n: int = 160) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    return text if len(text) <= n else text[:n] + "…"


def _licence(config: cfg.RunConfig) -> str:
    from hubtune import licence

    try:
        verdict = publish_verdict(config)
    except Exception as err:
        return problem(err)
    lines = [f"**Licence verdict: {verdict.verdict}** for {verdict.use} use, publishing included", ""]
    lines += ["| repo | type | licence | gated | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {f.repo.ref} | {f.repo.repo_type} | {f.repo.licence} | {f.repo.gated or 'no'} | {f.verdict} |"
              for f in verdict.findings]
    chains = [c for f in verdict.findings for c in f.repo.chains()]
    if chains:
        lines += ["", "Lineage (every ancestor's terms apply):"] + [f"- {c}" for c in chains]
    lines += ["", "Reasons:"] + [f"- {r}" for r in verdict.reasons]
    if verdict.conditions:
        lines += ["", "Allowed once you have done this (confirm by acknowledging the repo):"]
        lines += [f"- {c}" for c in verdict.conditions]
    if verdict.obligations:
        lines += ["", "Obligations the card will carry:"] + [f"- {o}" for o in verdict.obligations]
    return "\n".join(lines)


def publish_verdict(config: cfg.RunConfig):
    """The licence verdict for training on this config's data and publishing the result: every dataset that
    reaches training (the general data mixed in too), uploads with the uploader's declaration."""
    from hubtune import licence

    return licence.licence_verdict(
        licence.read_licence(config.model.id, "model", config.model.revision),
        licence.dataset_licences(config.data.trained_sources(), config.licence.declared), config.licence.use,
        publish=True)


def _access(config: cfg.RunConfig, session: Session) -> str:
    """Whether the signed-in account can read each Hub repo's files (gated ones need granted access)."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    from hubtune.hub import hub_url
    from hubtune.refs import is_hub_id

    repos = [(config.model.id, "model")] + [(s.path, "dataset") for s in config.data.sources]
    lines = []
    for repo, kind in repos:
        if not is_hub_id(repo):
            lines.append(f"- {repo}: local or built in, nothing to request")
            continue
        try:
            info = HfApi(token=session.token).repo_info(repo, repo_type=kind)
            files = [s.rfilename for s in info.siblings or []]
            if info.gated and files:
                get_hf_file_metadata(hf_hub_url(repo, files[0], repo_type=kind), token=session.token)
            granted = f" (gated: {session.user or 'this token'} has access)" if info.gated else ""
            lines.append(f"- {repo}: readable{granted}")
        except Exception as err:
            name = type(err).__name__
            if name == "GatedRepoError":
                who = session.user or "you (not signed in)"
                lines.append(f"- {repo}: **gated, and {who} has no access yet**: request it on {hub_url(repo, kind)}")
            elif name == "RepositoryNotFoundError":
                lines.append(f"- {repo}: **not found** (or private to another account)")
            else:
                lines.append(f"- {repo}: **could not check** ({name}: {str(err).splitlines()[0] if str(err) else ''})")
    return "**Access**\n\n" + "\n".join(lines)


def _report(config: cfg.RunConfig) -> tuple[dict | None, str, list[dict], list[dict]]:
    from hubtune import data
    from hubtune.data.report import STEP_LABELS

    try:
        tokenizer = data.load_tokenizer(config.model.id, config.model.revision, config.model.trust_remote_code)
        report = data.prepare(config.data, tokenizer, seed=config.training.seed).report
    except Exception as err:
        return None, problem(err), [], []
    lines = ["| step | removed | left |", "|---|---:|---:|", f"| rows read | | {report['total']} |"]
    lines += [f"| {STEP_LABELS.get(s['step'], s['step'])} | {s['removed']} | {s['left']} |" for s in report["steps"]]
    summary = (f"Kept **{report['kept']} of {report['total']}**: {report['train']} for training, {report['eval']} "
               f"held out" + (f" ({report['mixed']} general rows mixed in)" if report.get("mixed") else ""))
    histogram = [{"tokens": b["tokens"], "examples": b["count"]} for b in report["lengths"]["histogram"]]
    pairs = [{"similarity": round(p["similarity"], 3), "kept": p["kept"]["text"][:200],
              "removed": p["removed"]["text"][:200]} for p in report["near_duplicate_examples"]]
    threshold = report["settings"].get("near_dup_threshold")
    pairs_note = (f"{len(pairs)} closest near-duplicate pairs below" if pairs else
                  f"No near-duplicate pairs at similarity {threshold}" if threshold else "Near-duplicate check is off")
    from hubtune.families import suggestion

    family = suggestion((report.get("chat_template") or {}).get("family"))
    removed = [f"- {STEP_LABELS.get(step, step)}, first removed: " + "; ".join(
                   f"`{without_server_paths(ex['origin'])}`: {ex['text'][:80]!r}" for ex in shown)
               for step, shown in (report.get("removed_examples") or {}).items() if shown]
    warnings = [f"**Warning:** {views.page_keys(w)}" for w in report.get("warnings") or []]
    text = "\n\n".join([summary + f". {pairs_note}.", *([family] if family else []), "\n".join(lines),
                         "\n".join(removed), "  \n".join(warnings)])
    return report, without_server_paths(text), histogram, pairs


def try_prompting(model: str, source: str, fmt: str, columns: str, use: str, limit: int | None = 20) -> str:
    """The base zero-shot and few-shot on the test set, before training: the number a fine-tune must beat."""
    from hubtune.evaluation.baseline import score_prompting

    try:
        result = score_prompting(data_config(model, source, fmt, columns, use), limit=int(limit or 20))
    except Exception as err:
        return problem(err)
    rows = ["| prompt | exact match | token F1 |", "|---|---:|---:|"]
    for name, label in (("base", "base, zero-shot"), ("base_few_shot", f"base, {result['few_shot_k']}-shot")):
        if name in result:
            scores = result[name]
            rows.append(f"| {label} | {scores['exact_match']['mean']:.2f} | {scores['token_f1']['mean']:.2f} |")
    sample = (result.get("base_few_shot") or result["base"])["samples"][0]
    return (f"**{result['line']}**\n\n" + "\n".join(rows) +
            f"\n\nExample: expected `{sample['reference'][:120]}`, the best prompt gave `{sample['answer'][:120]}`")


# ---- the run config -----------------------------------------------------------------------------------------
def compose_config(model: str, source: str | None, preset: str, epochs: float | None, max_steps: int | None,
                   learning_rate: float | None, use: str, fmt: str = "auto", columns: str = "",
                   mix: bool | None = None, declared: list[cfg.RightsDeclaration] | None = None,
                   method: str = "sft", root: Path | None = None, shape: dict | None = None) -> tuple[str, str]:
    """(annotated YAML for the advanced editor, message): model and data, the preset, then the fields set here.
    The message holds the memory estimate, the steps and, with the runs `root`, the duration on this device
    (views.duration_estimate; `shape`: the checked data's)."""
    try:
        config = data_config(model, source, fmt, columns, use, mix=mix, declared=declared)
        overrides = list(PRESETS.get(preset, []))
        if epochs:
            overrides.append(f"training.epochs={epochs}")
        if max_steps:
            overrides.append(f"training.max_steps={int(max_steps)}")
        elif preset != "quick":
            overrides.append("training.max_steps=null")
        if learning_rate:
            overrides.append(f"training.learning_rate={learning_rate}")
        if method and method != "sft":
            overrides.append(f"training.method={method}")
        config = cfg.build(config.model_dump(mode="json"), overrides)
    except (HubtuneError, ValueError) as err:
        return "", problem(err)
    if root is not None:
        steps = views.duration_estimate(config, root, shape)
    else:
        steps = (f"{config.training.max_steps} steps" if config.training.max_steps else
                 f"{config.training.epochs:g} epochs (the step count follows from the rows kept)")
    return views.annotated_yaml(config), (
        f"{hosting.memory_estimate_line(config)}  \n**This run:** {steps}.  \nThe same run on the command line: "
        f"save the settings under Advanced as `run.yaml` (its copy button), then `hubtune train run.yaml`")


def parse_config(text: str, session: Session | None = None, root: Path | None = None) -> cfg.RunConfig:
    """The advanced settings as a run config; with a session, its uploads named by their file names."""
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise HubtuneError(f"the advanced settings are not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise HubtuneError("the advanced settings must be a YAML mapping (model:, data:, training:, ...)")
    if session is not None and root is not None:
        tree = with_upload_paths(tree, session, root)
    return cfg.build(tree, source="the advanced settings")


def run_name(config: cfg.RunConfig) -> str:
    base = safe_name(config.model.id.rstrip("/").split("/")[-1].removeprefix("hubtune:"))
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_training(config_text: str, push_to: str, session: Session, runner: JobRunner,
                   root: Path, gate: Gate | None = None) -> tuple[str | None, str]:
    """Check the config, the licences and the push target; create the run folder (queued, with its owner)
    and queue `hubtune train`. Returns (run path, message)."""
    from hubtune import licence
    from hubtune.publish import check_target

    try:
        config = parse_config(config_text, session, root)
        if gate is not None:
            gate.check_config(config, session)
        verdict = licence.gate_for_training(config)
        if push_to and push_to.strip():
            check_target(push_to.strip(), session.token, publish_verdict(config))
        runner.check_room(session.user)
        path = root / run_name(config)
        while path.exists():
            path = path.with_name(path.name + "-1")
        path.mkdir(parents=True)
        config = _with_uploads(config, path, root)
        config = cfg.build(config.model_dump(mode="json"), [f"output.dir={path}"])
        RunFolder.create(path, config, owner=session.user)
        runner.submit(Job(path, "train", owner=session.user, token=session.token))
    except (HubtuneError, OSError) as err:
        return None, problem(err)
    waiting = "starting now" if runner.place(path) is None else f"number {runner.place(path)} in the queue"
    note = f" Licence: {verdict.verdict}." if verdict.verdict != "allow" else ""
    return str(path), f"Queued **{path.name}** ({waiting}).{note}"


def _with_uploads(config: cfg.RunConfig, run: Path, root: Path) -> cfg.RunConfig:
    """Uploaded files move under the run (run/uploads/NAME), so the run holds the data it was trained on."""
    uploads = (root / ".uploads").resolve()
    tree = config.model_dump(mode="json")
    for s in tree["data"]["sources"]:
        p = Path(s["path"])
        if p.is_file() and uploads in p.resolve().parents:
            dest = run / RunFolder.UPLOADS / safe_name(p.name)
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(p, dest)
            s["path"] = str(dest)
    return cfg.build(tree)


def resume_run(run: str, session: Session, runner: JobRunner) -> str:
    folder = RunFolder(run)
    status = folder.status
    if runner.is_active(folder.path):  # queued, or launched and not yet marked running: no second job
        return f"**{folder.path.name}** already has a job queued or starting: wait for it"
    if status not in (Status.INTERRUPTED, Status.FAILED):
        return f"**{folder.path.name}** is {status.value}: only an interrupted or failed run can be resumed"
    try:
        runner.submit(Job(folder.path, "train", owner=folder.owner, token=session.token))
    except HubtuneError as err:
        return problem(err)
    place = runner.place(folder.path)
    waiting = f"number {place} in the queue" if place else "starting now"
    return f"Resuming **{folder.path.name}** from its last checkpoint, {waiting}"


def evaluate_run(run: str, limit: int | None, session: Session, runner: JobRunner) -> str:
    folder = RunFolder(run)
    if folder.summary is None:
        return f"**{folder.path.name}** is {folder.status.value}: finish training before evaluating"
    options = ["--limit", str(int(limit))] if limit else []
    try:
        runner.submit(Job(folder.path, "eval", owner=folder.owner, token=session.token, options=options))
    except HubtuneError as err:
        return problem(err)
    return f"Evaluating **{folder.path.name}** in the background (`hubtune eval {' '.join(options)}`)"


def delete_run(run: str, confirmed: bool, runner: JobRunner, root: Path) -> str:
    folder = RunFolder(run)
    if not confirmed:
        return "Tick the box to confirm: deleting a run removes its folder, adapter and checkpoints"
    if runner.is_active(folder.path):
        return f"**{folder.path.name}** is {folder.status.value}: stop it before deleting it"
    if root.resolve() not in folder.path.resolve().parents:
        return f"{folder.path} is not under {root}; nothing deleted"
    shutil.rmtree(folder.path)
    return f"Deleted {folder.path.name}"


# ---- evaluation results -------------------------------------------------------------------------------------
def eval_view(run: str) -> tuple[str, list[dict]]:
    """The eval report (base / few-shot / tuned side by side, the regression verdict) and sample answers."""
    import json

    from hubtune.evaluation.report import format_report

    folder = RunFolder(run)
    result = folder.eval
    extra = checkpoint_view(folder) + export_view(folder)
    if result is None:
        return f"{folder.path.name} has not been evaluated yet ({folder.status.value}){extra}", []
    verdict = ("**REGRESSED** on the regression set" if result.regressed else
               "no regression on the regression set")
    versus = ((result.task or {}).get("versus_best_prompt") or {}).get("line", "")
    text = f"{verdict}. {versus}\n\n```text\n{format_report(result)}\n```{extra}"
    samples = []
    answers = folder.answers
    if answers.is_file():
        for line in answers.read_text(encoding="utf-8").splitlines()[:10]:
            row = json.loads(line)
            question = "\n".join(m["content"] for m in row["prompt"] if m["role"] != "system")
            samples.append({"prompt": question[:300], "reference": row["reference"],
                            **{m: a for m, a in row["answers"].items()}})
    return text, samples


def checkpoint_view(folder: RunFolder) -> str:
    """training.select's table: every checkpoint's scores and the step the run kept."""
    summary = folder.summary
    selection = summary.selection if summary else None
    if not selection:
        return ""
    rows = ["| step | held-out loss | exact match | regression accuracy (base) | kept |", "|---|---|---|---|---|"]
    for c in selection["checkpoints"]:
        loss, em, reg = c.get("eval_loss"), c.get("exact_match"), c.get("regression")
        cells = [str(c["step"]), "" if loss is None else f"{loss:.4f}", f"{em['mean']:.3f}" if em else "",
                 f"{reg['accuracy']:.3f} ({reg['base']:.3f})" if reg else "",
                 "yes" if c["step"] == selection["chosen_step"] else ""]
        rows.append("| " + " | ".join(cells) + " |")
    return (f"\n\n**Checkpoints** (`training.select: {selection['select']}`): kept step {selection['chosen_step']} "
            f"of {selection.get('last_step', '?')}\n\n" + "\n".join(rows))


def export_view(folder: RunFolder) -> str:
    """The run's last GGUF export: its files and the parity table."""
    from hubtune.export.report import parity_markdown

    record = folder.export_record
    if not record or "parity" not in record:
        return ""
    out = Path(record["folder"])  # named from the run, never by its path on the server
    where = out.name if out.parent.resolve() == folder.path.resolve() else f"{out.name} (outside the run)"
    return (f"\n\n**GGUF export** in `{where}` (llama.cpp `{record['llama_cpp']['commit'][:9]}`; files on the "
            f"Export tab)\n\n"
            + parity_markdown(record))


# ---- merging and exporting -----------------------------------------------------------------------------------
# Both run as jobs (`hubtune merge`, `hubtune export`) through the runner, never in the app's process: they load
# the base in full precision and, for GGUF, run every test prompt through llama.cpp and PyTorch.
EXPORT_JOBS = ("merge", "export")


def merge_run(run: str, dtype: str, session: Session, runner: JobRunner) -> str:
    """Queue `hubtune merge RUN --out RUN/merged-DTYPE`: the adapter folded into the base's original weights."""
    from hubtune.merge import DTYPES
    from hubtune.merge import RESULT as MERGED

    folder = RunFolder(run)
    if folder.summary is None:
        return f"**{folder.path.name}** is {folder.status.value}: finish training before merging"
    if runner.is_active(folder.path):
        return f"**{folder.path.name}** already has a job queued or running: wait for it to end"
    dtype = dtype if dtype in DTYPES else "auto"
    out = folder.path / f"merged-{dtype}"
    record = folder.read_json(MERGED) or {}
    if record.get("folder") and Path(record["folder"]) == out.resolve() and out.is_dir():
        return f"**{folder.path.name}** is already merged ({dtype}): its files are below, ready to download"
    shutil.rmtree(out, ignore_errors=True)  # what a merge that did not finish left
    return _queue(folder, "merge", ["--out", str(out), "--dtype", dtype], session, runner,
                  f"merging its adapter in float32 into the base's original weights (saved as {dtype})")


def export_run(run: str, quant: str, limit: int | None, session: Session, runner: JobRunner) -> str:
    """Queue `hubtune export RUN --format gguf --quant Q`: merge, convert, then the parity check in llama.cpp."""
    from hubtune.export import convert, toolchain

    folder = RunFolder(run)
    if folder.summary is None:
        return f"**{folder.path.name}** is {folder.status.value}: finish training before exporting"
    if quant not in convert.QUANTS:
        return f"**Problem:** precision {quant!r}: choose one of {', '.join(convert.QUANTS)}"
    try:
        toolchain.llama_cpp()  # the job would fail on it after minutes of merging: say so now
    except HubtuneError as err:
        return problem(err)
    if runner.is_active(folder.path):
        return f"**{folder.path.name}** already has a job queued or running: wait for it to end"
    options = ["--format", "gguf", "--quant", quant, "--out", str(folder.export_dir)]
    options += ["--limit", str(int(limit))] if limit else []
    prompts = f"the first {int(limit)}" if limit else "all its"
    return _queue(folder, "export", options, session, runner,
                  f"merging, converting to {quant}, then {prompts} test prompts through llama.cpp and the adapter")


def _queue(folder: RunFolder, kind: str, options: list[str], session: Session, runner: JobRunner, what: str) -> str:
    try:
        runner.submit(Job(folder.path, kind, owner=folder.owner, token=session.token, options=options))
    except HubtuneError as err:
        return problem(err)
    place = runner.place(folder.path)
    return f"**{folder.path.name}**: {what}; {f'number {place} in the queue' if place else 'started'}"


def export_status(run: str, runner: JobRunner) -> str:
    """What the run's merge or export job is doing, or how the last one ended."""
    from hubtune.ui.jobs import RECORD

    folder = RunFolder(run)
    job = runner.job(folder.path)
    if job is not None:
        place = runner.place(folder.path)
        doing = f"number {place} in the queue" if place else "running"
        return f"`hubtune {job.kind}` on **{folder.path.name}**: {doing} (its log below)"
    record = folder.read_json(RECORD) or {}
    if record.get("kind") not in EXPORT_JOBS or record.get("exit_code") is None:
        return ""
    if record["exit_code"] == 0:
        return f"`hubtune {record['kind']}` on **{folder.path.name}** finished at {record['ended']}"
    error = (record.get("error") or "no message").replace(str(folder.path), folder.path.name)  # no server paths
    return problem(HubtuneError(f"`hubtune {record['kind']}` on {folder.path.name} failed at {record['ended']}: "
                                f"{error}"))


def merge_view(run: str) -> tuple[str, list[str]]:
    """The run's last merge, in words (the largest logit difference first), and its files to download."""
    from hubtune.merge import RESULT as MERGED

    folder = RunFolder(run)
    record = folder.read_json(MERGED)
    if not record:
        return "Not merged yet.", []
    difference = record.get("max_logit_difference")
    text = (f"Merged into **{record['base']}** in float32, saved in {record['dtype']}. Largest logit difference "
            f"between the merged model and the adapter over the same base, on {record.get('logit_prompts', 0)} "
            f"held-out prompts: **{difference:.2e}**" if difference is not None else
            f"Merged into **{record['base']}** in float32, saved in {record['dtype']} (no held-out prompts to "
            f"compare the logits on)")
    text += "".join(f"  \n**Warning:** {w}" for w in record.get("warnings") or [])
    return text, _downloads(folder, Path(record["folder"]).glob("*"))


def gguf_view(run: str) -> tuple[str, list[str]]:
    """The run's last GGUF export: the parity table, and its files (GGUF, Modelfile, record) to download."""
    from hubtune.export import RESULT as EXPORTED
    from hubtune.export.report import parity_markdown

    folder = RunFolder(run)
    record = folder.read_json(EXPORTED)
    if not record:
        return "Not exported yet.", []
    out = Path(record["folder"])
    names = [f["file"] for f in record["files"].values()]
    names += [record["lora"]["file"]] if record.get("lora") else []
    names += [n for n in (record.get("modelfile"), EXPORTED) if n]
    text = f"GGUF ({', '.join(record['files'])}) by llama.cpp `{record['llama_cpp']['commit'][:9]}`"
    if "parity" not in record:
        return text + ": exported **without** the parity check", _downloads(folder, (out / n for n in names))
    parity = record["parity"]
    text += (f". Parity on {parity['n']} prompts of {parity['dataset']['name']} ({parity['split']}), greedy, up to "
             f"{parity['max_new_tokens']} new tokens:\n\n{parity_markdown(record)}")
    if "merge" in record:
        text += (f"\n\nLargest logit difference, merged (float32) vs adapter over the same base: "
                 f"{record['merge']['max_logit_difference']:.2e}")
    text += f"\n\nTolerance: {parity['tolerance']}"
    return text, _downloads(folder, (out / n for n in names))


def _downloads(folder: RunFolder, files) -> list[str]:
    """Files to download: only the run's own, inside its folder (a record naming a path elsewhere gives none)."""
    inside = folder.path.resolve()
    return sorted(str(f) for f in files if f.is_file() and inside in f.resolve().parents)


# ---- chat ----------------------------------------------------------------------------------------------------
class ModelCache:
    """The last run's tuned model, kept loaded between chat turns (one at a time: memory is finite)."""

    def __init__(self):
        self.key = None
        self.value = None
        self.lock = threading.Lock()

    def get(self, run: RunFolder):
        from hubtune.evaluation import load_tuned

        weights = run.adapter / "adapter_model.safetensors"
        key = (str(run.path), weights.stat().st_mtime if weights.exists() else None)
        with self.lock:
            if key != self.key:
                self.value, self.key = None, None
                self.value = load_tuned(run.path)
                self.key = key
            return self.value


def chat(run: str, prompt: str, cache: ModelCache, max_new_tokens: int = 128, base_turns: list | None = None,
         tuned_turns: list | None = None, system: str = "", temperature: float = 0.0, top_p: float = 1.0):
    """The next turn of two conversations, one with the base (adapter off), one with the tuned adapter: each
    goes on from its own earlier answers, after the same system prompt. Streams as it generates: yields
    (base conversation, tuned conversation), lists of {"role", "content"} messages."""
    from hubtune.evaluation.generate import stream_answer

    base_turns, tuned_turns = list(base_turns or []), list(tuned_turns or [])
    if not (prompt or "").strip():
        yield base_turns, tuned_turns + [{"role": "assistant", "content": "Type a prompt first."}]
        return
    folder = RunFolder(run)
    if folder.summary is None:
        note = f"**{folder.path.name}** is {folder.status.value}: chat needs a finished run"
        yield base_turns, tuned_turns + [{"role": "assistant", "content": note}]
        return
    head = [{"role": "system", "content": system.strip()}] if (system or "").strip() else []
    asked = {"role": "user", "content": prompt}
    base_turns.append(asked)
    tuned_turns.append(asked)
    settings = dict(max_new_tokens=int(max_new_tokens or 128), temperature=float(temperature or 0),
                    top_p=float(top_p or 1.0))
    try:
        model, tokenizer = cache.get(folder)
        answer = ""
        with cache.lock, model.disable_adapter():  # one generation at a time: the adapter switch is shared
            for answer in stream_answer(model, tokenizer, head + _plain(base_turns), **settings):
                yield base_turns + [{"role": "assistant", "content": answer}], tuned_turns
        base_turns.append({"role": "assistant", "content": answer})
        answer = ""
        with cache.lock:
            for answer in stream_answer(model, tokenizer, head + _plain(tuned_turns), **settings):
                yield base_turns, tuned_turns + [{"role": "assistant", "content": answer}]
    except Exception as err:
        yield base_turns, tuned_turns + [{"role": "assistant", "content": problem(err)}]


def _plain(turns: list) -> list[dict]:
    """A chat box's messages as the chat template takes them: role and text (the box hands its messages back
    with the content as a list of typed parts)."""
    def text(content) -> str:
        if isinstance(content, str):
            return content
        parts = content if isinstance(content, list) else [content]
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)
    return [{"role": t["role"], "content": text(t["content"])}
            for t in (t if isinstance(t, dict) else {"role": t.role, "content": t.content} for t in turns)]


# ---- publishing ----------------------------------------------------------------------------------------------
def publish_defaults(run: str, session: Session) -> tuple[str, str]:
    """(repo id prefilled to follow the licence's naming rule, the card preview)."""
    from hubtune.publish import suggested_repo

    try:
        folder = RunFolder(run).require_finished()
        repo = suggested_repo(folder, session.user)
    except Exception as err:
        return "", problem(err)
    return repo, card_preview(run, repo)


def card_preview(run: str, repo: str) -> str:
    from hubtune.card import build_card, publishing_verdict

    try:
        folder = RunFolder(run).require_finished()
        card = build_card(folder, repo or "OWNER/NAME", publishing_verdict(folder), loss_curve_file=None)
    except Exception as err:
        return problem(err)
    return f"```yaml\n{card.data.to_yaml()}\n```\n\n{card.text}"


def publish(run: str, repo: str, private: bool, session: Session, acknowledge: str = "") -> str:
    from hubtune.publish import push

    if not session.token:
        return "**Refused:** no token. Sign in (or paste a write token) to publish."
    accepted = [a.strip() for a in (acknowledge or "").split(",") if a.strip()]
    try:
        result = push(run, (repo or "").strip(), private=private, token=session.token, acknowledge=accepted)
    except Exception as err:
        return problem(err).replace("**Problem:**", "**Refused:**")
    return f"Published {len(result.files)} files in one commit: [{result.url}]({result.url})"
