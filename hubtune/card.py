"""The model card of a run: Hub metadata (base model, licence, datasets, model-index) and a body
that says what was trained, on what, under which obligations, how well, and how to reproduce it.

    run = read_run("runs/20260101-120000")
    card = build_card(run, "alice/Llama-invoices", verdict)   # a huggingface_hub.ModelCard
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from hubtune.config import (
    DataSource,
    LicenceSection,
    LoraSection,
    ModelSection,
    TrainingSection,
)
from hubtune.errors import HubtuneError

TEMPLATE = Path(__file__).parent / "templates" / "adapter_card.md"
LOSS_CURVE = "loss_curve.png"
TASK = "text-generation"


@dataclass
class RunRecord:
    """What a finished run folder holds, typed where the card needs it."""

    path: Path
    summary: dict
    model: ModelSection
    lora: LoraSection
    training: TrainingSection
    licence: LicenceSection
    sources: list[DataSource]
    metrics: list[dict]
    eval: dict | list | None

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def base_model(self) -> str:
        return self.summary.get("base_model") or self.model.id

    @property
    def base_revision(self) -> str | None:
        return self.summary.get("base_revision")

    @property
    def datasets(self) -> list[dict]:
        """[{path, revision, split}] as the run recorded them."""
        recorded = self.summary.get("datasets")
        if recorded:
            return [d if isinstance(d, dict) else {"path": d} for d in recorded]
        return [{"path": s.path, "revision": s.revision, "split": s.split} for s in self.sources]


def read_run(run_dir: str | Path) -> RunRecord:
    """Read a finished run folder; each missing piece is named with the way to produce it."""
    path = Path(run_dir)
    needed = {"config.yaml": "the resolved run config", "summary.json": "written when training finishes",
              "adapter/adapter_config.json": "the saved adapter"}
    missing = [f"{name} ({why})" for name, why in needed.items() if not (path / name).is_file()]
    if missing:
        raise HubtuneError(f"{path} is not a finished run folder: missing {', '.join(missing)}. "
                           f"Train with `hubtune train CONFIG`, or finish it with `hubtune train --resume {path}`")
    raw = yaml.safe_load((path / "config.yaml").read_text()) or {}
    metrics_file = path / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()] \
        if metrics_file.is_file() else []
    eval_file = path / "eval.json"
    sources = (raw.get("data") or {}).get("sources") or []
    return RunRecord(
        path=path,
        summary=json.loads((path / "summary.json").read_text()),
        model=ModelSection.model_validate(raw.get("model") or {}),
        lora=LoraSection.model_validate(raw.get("lora") or {}),
        training=TrainingSection.model_validate(raw.get("training") or {}),
        licence=LicenceSection.model_validate(raw.get("licence") or {}),
        sources=[DataSource.model_validate({"path": s} if isinstance(s, str) else s) for s in sources],
        metrics=metrics,
        eval=json.loads(eval_file.read_text()) if eval_file.is_file() else None,
    )


def is_hub_id(ref: str) -> bool:
    from hubtune.hub import is_local

    return not is_local(ref)


def eval_entries(eval_json: dict | list | None, default_dataset: str | None = None) -> list[dict]:
    """The numeric metric entries of an eval.json, normalised to {name, type, value, ci95, dataset_type,
    dataset_name, ..., split, model}. Accepts {"metrics": [{name, type, value, ci95, dataset, split, model}]}
    (dataset as a Hub id or {name, type, config, revision}, where only a Hub dataset has a type; model:
    tuned, base or base_few_shot), a bare list of such entries, {"metrics": {name: value}, "dataset": ...},
    or {task: {"metrics": {name: value}}}."""
    if not eval_json:
        return []
    if isinstance(eval_json, dict) and "metrics" in eval_json:
        entries = eval_json["metrics"]
        if isinstance(entries, dict):  # {name: value}
            entries = [{"name": k, "value": v, "dataset": eval_json.get("dataset")} for k, v in entries.items()]
    elif isinstance(eval_json, list):
        entries = eval_json
    else:  # {task: {"metrics": {name: value}}}
        entries = [{"name": name, "value": value, "dataset": task}
                   for task, block in eval_json.items() if isinstance(block, dict)
                   for name, value in (block.get("metrics") or {}).items()]
    out = []
    for e in entries:
        if not isinstance(e, dict):
            continue
        value = e.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        dataset = e.get("dataset") or default_dataset
        ds = dataset if isinstance(dataset, dict) else \
            {"type": dataset if dataset and is_hub_id(dataset) else None, "name": dataset or "unknown"}
        ds_type = ds.get("type") or ds.get("id")
        ci = e.get("ci95")
        out.append({"name": e.get("name"), "type": str(e.get("type") or e.get("name")), "value": value,
                    "ci95": ci if isinstance(ci, list) and len(ci) == 2 else None,
                    "dataset_type": str(ds_type) if ds_type else None, "dataset_name": str(ds.get("name") or ds_type),
                    "dataset_config": ds.get("config"), "dataset_revision": ds.get("revision"),
                    "split": e.get("split") or ds.get("split"), "model": e.get("model") or "tuned",
                    "task_type": e.get("task_type", TASK)})
    return out


def eval_results_from(eval_json: dict | list | None, default_dataset: str | None = None) -> list:
    """EvalResults for the card's model-index: the tuned model's metrics on Hub datasets from an eval.json.
    The model-index requires a Hub dataset id as the dataset type, so measures on local files, like those
    scored on the base model, are left for the body's table."""
    from huggingface_hub import EvalResult

    return [EvalResult(task_type=e["task_type"], dataset_type=e["dataset_type"], dataset_name=e["dataset_name"],
                       dataset_config=e["dataset_config"], dataset_split=e["split"],
                       dataset_revision=e["dataset_revision"], metric_type=e["type"], metric_name=e["name"],
                       metric_value=e["value"])
            for e in eval_entries(eval_json, default_dataset) if e["model"] == "tuned" and e["dataset_type"]]


def loss_curve(metrics: list[dict], out: Path) -> Path | None:
    """Training and held-out loss against the step, as a PNG; None when nothing was logged."""
    train = [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]
    held = [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]
    if not train and not held:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="training loss", color="#1f77b4")
    if held:
        ax.plot(*zip(*held), "o-", label="held-out loss", color="#ff7f0e")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, format="png", metadata={"Software": None})
    return out


def card_data(run: RunRecord, repo_id: str, verdict, merged: bool = False):
    """The card's metadata: what the Hub indexes and what `ModelCard.load(...).data` gives back."""
    from huggingface_hub import ModelCardData

    base = verdict.findings[0].repo
    licences = base.licences
    extra = {}
    if licences and licences[0] == "other":
        extra = {"license_name": base.license_name, "license_link": base.license_link}
    method = run.summary.get("method") or ("lora" if run.model.quantization == "none" else "qlora")
    hub_datasets = [d["path"] for d in run.datasets if is_hub_id(d["path"])]
    results = eval_results_from(run.eval, default_dataset=hub_datasets[0] if hub_datasets else None)
    return ModelCardData(
        base_model=run.base_model if is_hub_id(run.base_model) else None,
        base_model_relation="finetune" if merged else "adapter",
        library_name="transformers" if merged else "peft",
        license=licences[0] if licences else None,  # the base's own licence id, as its card gives it
        datasets=hub_datasets or None,
        tags=["hubtune", method, *(["lora"] if method != "lora" else []), "trl", "sft"],
        pipeline_tag=TASK,
        model_name=repo_id.split("/")[-1] if results else None,
        eval_results=results or None,
        **{k: v for k, v in extra.items() if v},
    )


def build_card(run: RunRecord, repo_id: str, verdict, merged: bool = False, loss_curve_file: str | None = LOSS_CURVE):
    """The full ModelCard (metadata + body rendered from the package's Jinja template)."""
    from huggingface_hub import ModelCard, constants

    data = card_data(run, repo_id, verdict, merged)
    s = run.summary
    findings = verdict.findings
    base_finding = findings[0]
    hub = constants.ENDPOINT.rstrip("/")
    dataset_findings = {f.repo.ref: f for f in findings[1:]}
    datasets = []
    for d in run.datasets:
        f = dataset_findings.get(d["path"])
        datasets.append({"ref": d["path"], "url": f"{hub}/datasets/{d['path']}" if is_hub_id(d["path"]) else None,
                         "revision": d.get("revision"),  # as trained; a later card read may differ
                         "split": d.get("split"), "licence": f.repo.licence if f else "unknown"})
    return ModelCard.from_template(
        data, template_path=str(TEMPLATE),
        repo_id=repo_id, title=repo_id.split("/")[-1], merged=merged,
        base_ref=run.base_model, base_is_hub=is_hub_id(run.base_model), hub=hub,
        base_revision=run.base_revision, base_licence=base_finding.repo.licence,
        base_licence_link=base_finding.repo.license_link or _link(base_finding),
        method={"lora": "LoRA", "qlora": "QLoRA"}.get(s.get("method") or "", "LoRA"),
        datasets=datasets, built_with=verdict.attributions, obligations=verdict.obligations,
        verdict=verdict.verdict, use=verdict.use,
        lora=run.lora, training=run.training, model_section=run.model,
        trainable=s.get("trainable_parameters"), total=s.get("total_parameters"),
        steps=s.get("global_steps"), epochs=s.get("epochs"), train_examples=s.get("train_examples"),
        duration=s.get("duration_seconds"), final_eval_loss=s.get("final_eval_loss"),
        initial_eval_loss=s.get("initial_eval_loss"), hardware=_hardware(s.get("hardware")),
        optimizer=_optimizer(s.get("hardware"), run.training.optimizer),
        peak_memory=s.get("peak_memory_mb"), versions=s.get("versions") or {},
        loss_curve=loss_curve_file,
        eval_rows=eval_entries(run.eval, (data.datasets or [None])[0]),
    )


def _hardware(hw) -> str | None:
    if isinstance(hw, dict):
        details = ", ".join(str(hw[k]) for k in ("compute_dtype",) if hw.get(k))
        return f"{hw.get('device_name') or hw.get('device', '?')}" + (f" ({details})" if details else "")
    return str(hw) if hw else None


def _optimizer(hw, configured: str) -> str:
    """The optimizer the run used: `auto` is resolved from the hardware the run recorded."""
    return (hw.get("optimizer") if isinstance(hw, dict) else None) or configured


def _link(finding) -> str | None:
    terms = [t for t in finding.repo.terms if t is not None]
    return terms[0].link if terms else None


def write_card(run_dir: str | Path, repo_id: str, verdict=None, merged: bool = False) -> Path:
    """Write README.md and the loss curve into `run_dir` (for a look before pushing); returns the card path."""
    run = read_run(run_dir)
    if verdict is None:
        verdict = publishing_verdict(run)
    curve = loss_curve(run.metrics, run.path / LOSS_CURVE)
    card = build_card(run, repo_id, verdict, merged, LOSS_CURVE if curve else None)
    out = run.path / "README.md"
    card.save(out)
    return out


def publishing_verdict(run: RunRecord):
    """The licence verdict for publishing this run's adapter, without the naming check."""
    from hubtune import licence

    model = licence.read_licence(run.base_model, "model", run.base_revision)
    datasets = [licence.read_licence(d["path"], "dataset", d.get("revision")) for d in run.datasets]
    return licence.licence_verdict(model, datasets, run.licence.use, publish=True)
