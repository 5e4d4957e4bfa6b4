"""The model card of a run: Hub metadata (base model, licence, datasets, model-index) and a body
that says what was trained, on what, under which obligations, how well, and how to reproduce it.

    run = RunFolder.open("runs/20260101-120000").require_finished()
    card = build_card(run, "alice/Llama-invoices", verdict)   # a huggingface_hub.ModelCard
"""

from __future__ import annotations

from pathlib import Path

from hubtune.refs import is_hub_id
from hubtune.runs import EvalResult, RunFolder
from hubtune.tables import peak_memory_text

TEMPLATE = Path(__file__).parent / "templates" / "adapter_card.md"
LOSS_CURVE = RunFolder.LOSS_CURVE  # the same name in the run and in the pushed repo
LICENCE_FILE_PREFIXES = ("LICENSE", "USE_POLICY", "NOTICE")  # the base's files a push copies (any case)
TASK = "text-generation"


def eval_entries(result: EvalResult | None, default_dataset: str | None = None) -> list[dict]:
    """The metric entries of a run's eval.json (dataset as a Hub id or {name, type, config, revision}, where
    only a Hub dataset has a type; model: tuned, base or base_few_shot), normalised for the card."""
    out = []
    for e in result.metrics if result else []:
        dataset = e.dataset or default_dataset
        ds = dataset if isinstance(dataset, dict) else \
            {"type": dataset if dataset and is_hub_id(dataset) else None, "name": dataset or "unknown"}
        ds_type = ds.get("type") or ds.get("id")
        out.append({"name": e.name, "type": e.type, "value": e.value,
                    "ci95": e.ci95 if e.ci95 and len(e.ci95) == 2 else None,
                    "dataset_type": str(ds_type) if ds_type else None, "dataset_name": str(ds.get("name") or ds_type),
                    "dataset_config": ds.get("config"), "dataset_revision": ds.get("revision"),
                    "split": e.split or ds.get("split"), "model": e.model, "task_type": TASK})
    return out


def eval_results_from(result: EvalResult | None, default_dataset: str | None = None) -> list:
    """EvalResults for the card's model-index: the tuned model's metrics on Hub datasets from an eval.json.
    The model-index requires a Hub dataset id as the dataset type, so measures on local files, like those
    scored on the base model, are left for the body's table."""
    from huggingface_hub import EvalResult

    return [EvalResult(task_type=e["task_type"], dataset_type=e["dataset_type"], dataset_name=e["dataset_name"],
                       dataset_config=e["dataset_config"], dataset_split=e["split"],
                       dataset_revision=e["dataset_revision"], metric_type=e["type"], metric_name=e["name"],
                       metric_value=e["value"])
            for e in eval_entries(result, default_dataset) if e["model"] == "tuned" and e["dataset_type"]]


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


def card_data(run: RunFolder, repo_id: str, verdict, merged: bool = False):
    """The card's metadata: what the Hub indexes and what `ModelCard.load(...).data` gives back."""
    from huggingface_hub import ModelCardData

    summary = run.summary
    base = verdict.findings[0].repo
    licences = base.licences
    extra = {}
    if licences and licences[0] == "other":
        extra = {"license_name": base.license_name, "license_link": base.license_link}
    method = summary.method
    hub_datasets = [d.path for d in summary.datasets if is_hub_id(d.path)]
    results = eval_results_from(run.eval, default_dataset=hub_datasets[0] if hub_datasets else None)
    return ModelCardData(
        # The licensed model: for a pre-quantized base, the original its card names.
        base_model=base.ref if is_hub_id(base.ref) else None,
        base_model_relation="finetune" if merged else "adapter",
        library_name="transformers" if merged else "peft",
        license=licences[0] if licences else None,  # the base's own licence id, as its card gives it
        datasets=hub_datasets or None,
        tags=["hubtune", method, *(["lora"] if method != "lora" else []), "trl", summary.training_method,
              *(["unsloth"] if (summary.backend or {}).get("name") == "unsloth" else [])],
        pipeline_tag=TASK,
        model_name=repo_id.split("/")[-1] if results else None,
        eval_results=results or None,
        **{k: v for k, v in extra.items() if v},
    )


def build_card(run: RunFolder, repo_id: str, verdict, merged: bool = False, loss_curve_file: str | None = LOSS_CURVE,
               licence_files: list[str] | None = None, ancestor_files: list[dict] | None = None):
    """The full ModelCard (metadata + body rendered from the package's Jinja template).
    `licence_files`: the base's licence files the repo carries ([] none; None not staged yet);
    `ancestor_files`: those of the base's ancestors (see publish.copy_ancestor_licence_files)."""
    from huggingface_hub import ModelCard, constants

    data = card_data(run, repo_id, verdict, merged)
    s, config = run.summary, run.config
    findings = verdict.findings
    base_finding = findings[0]
    hub = constants.ENDPOINT.rstrip("/")
    datasets = []
    for d, f in zip(s.datasets, findings[1:] + [None] * len(s.datasets)):  # repo_licences' order: the summary's
        declared = f.repo.declared if f else None
        datasets.append({"ref": d.label, "url": f"{hub}/datasets/{d.path}" if is_hub_id(d.path) else None,
                         "revision": d.revision_sha or d.revision,  # the commit the rows were read at
                         "sha256": d.sha256, "role": {"task": "task data", "mix": "general data mixed in"}[d.role],
                         "rows": d.train_rows, "split": d.split, "licence": f.repo.licence if f else "unknown",
                         "declared": declared})
    hw = s.hardware
    details = f" ({hw['compute_dtype']})" if hw.get("compute_dtype") else ""
    return ModelCard.from_template(
        data, template_path=str(TEMPLATE),
        repo_id=repo_id, title=repo_id.split("/")[-1], merged=merged,
        base_ref=s.base_model, base_is_hub=is_hub_id(s.base_model), hub=hub,
        linearized=config.model.linearized_experts,
        nvfp4=(s.base_quantization or "").startswith("modelopt NVFP4") or
        (s.base_quantization or "").endswith("with NVFP4 experts"),
        fp8_with_nvfp4_experts=(s.base_quantization or "").endswith("with NVFP4 experts"),
        base_revision=s.base_revision, base_licence=base_finding.repo.licence,
        base_licence_link=base_finding.repo.license_link or _link(base_finding),
        licence_files=licence_files, base_revision_short=(s.base_revision or "")[:12],
        licence_copy_clauses=[t.at(t.copy_required) for t in base_finding.terms if t.copy_required],
        method={"lora": "LoRA", "qlora": "QLoRA"}[s.method],
        datasets=datasets, built_with=verdict.attributions, obligations=verdict.obligations,
        lineage=base_finding.repo.chains(), conditions=verdict.conditions, ancestor_files=ancestor_files or [],
        named_copies=_named_copies(base_finding.repo),
        verdict=verdict.verdict, use=verdict.use,
        lora=config.lora, training=config.training, model_section=config.model,
        trainable=s.trainable_parameters, total=s.total_parameters,
        steps=s.global_steps, epochs=s.epochs, train_examples=s.train_examples, eval_examples=s.eval_examples,
        duration=s.duration_seconds, final_eval_loss=s.final_eval_loss,
        initial_eval_loss=s.initial_eval_loss, hardware=f"{hw.get('device_name') or hw.get('device', '?')}{details}",
        optimizer=hw.get("optimizer") or config.training.optimizer,  # `auto` as the hardware resolved it
        peak_memory=peak_memory_text(s.peak_memory_mb).removeprefix("peak memory "), versions=s.versions,
        loss_curve=loss_curve_file,
        eval_rows=eval_entries(run.eval, (data.datasets or [None])[0]),
        training_method=s.training_method, method_settings=s.method_settings or {},
        held_out=held_out_rows(s.held_out), method_names=METHOD_NAMES,
        usage=usage(run),
        selection=s.selection,
    )


METHOD_NAMES = {"sft": "supervised fine-tuning (SFT)", "dpo": "Direct Preference Optimization (DPO)",
                "orpo": "Odds Ratio Preference Optimization (ORPO)", "kto": "Kahneman-Tversky Optimization (KTO)",
                "grpo": "Group Relative Policy Optimization (GRPO)"}
MEASURE_NAMES = {"accuracy": "preference accuracy (implicit reward favours chosen)", "margin": "reward margin",
                 "likelihood_accuracy": "likelihood preference (higher log-prob per token for chosen)"}


def held_out_rows(held_out: dict | None) -> list[dict]:
    """The method's own measure before and after training, one row per measure, for the card's table."""
    if not held_out:
        return []
    before, after = held_out.get("before") or {}, held_out["after"]
    rows = []
    if "preference" in after:
        b, a = before.get("preference") or {}, after["preference"]
        rows += [{"name": MEASURE_NAMES[k], "before": b.get(k), "after": a[k], "count": f"{a['pairs']} pairs"}
                 for k in MEASURE_NAMES if k in a]
    for name, value in (after.get("rewards") or {}).items():
        rows.append({"name": f"reward {name} (greedy answers)", "before": (before.get("rewards") or {}).get(name),
                     "after": value, "count": f"{after.get('prompts')} prompts"})
    return rows


def usage(run: RunFolder) -> dict:
    """What the card's "How to use" needs to render a prompt the way training did and stop where the model
    learned to: the family, the ids generation stops on, where a system prompt goes, the thinking switch."""
    chat = run.data_report.get("chat_template") or {}
    system = chat.get("system_prompt", "")
    return {"family": chat.get("family"), "stop_ids": chat.get("stop_token_ids") or [],
            "end_of_turn": chat.get("end_of_turn"),
            "fold": "first" if system.startswith("folded into the first") else
                    "last" if system.startswith("folded into the last") else None,
            "thinking": chat.get("thinking") is not None and chat.get("family") == "Qwen3"}


def _named_copies(repo) -> list[dict]:
    """Licences the card text of the base (or of an ancestor) says it derives from, with no repo to copy
    their files from, whose text must go with every derivative: {"name", "clause", "link", "quote"}."""
    from hubtune.licence_terms import family_terms, lookup

    out, seen = [], set()
    for r in [repo, *(a for _, a in repo.ancestors())]:
        for claim in (r.card.claims if r.card else []):
            if claim.kind != "lineage":
                continue
            for i in claim.licences:
                t = lookup(i) or family_terms(i)
                if t is not None and t.copy_required and t.id not in seen:
                    seen.add(t.id)
                    out.append({"name": t.name, "clause": t.at(t.copy_required), "link": t.link, "quote": claim.quote})
    return out


def _link(finding) -> str | None:
    terms = [t for t in finding.repo.terms if t is not None]
    return terms[0].link if terms else None


def write_card(run_dir: str | Path, repo_id: str, verdict=None, merged: bool = False) -> Path:
    """Write README.md and the loss curve into `run_dir` (for a look before pushing); returns the card path."""
    run = RunFolder.open(run_dir).require_finished()
    if verdict is None:
        verdict = publishing_verdict(run)
    curve = loss_curve(run.metrics(), run.path / LOSS_CURVE)
    card = build_card(run, repo_id, verdict, merged, LOSS_CURVE if curve else None)
    card.save(run.card)
    return run.card


def publishing_verdict(run: RunFolder):
    """The licence verdict for publishing this run's adapter, without the naming check."""
    from hubtune import licence

    model, datasets = repo_licences(run)
    return licence.licence_verdict(model, datasets, run.config.licence.use, publish=True)


def repo_licences(run: RunFolder):
    """The licences of the run's base and datasets, read at the commits the run used."""
    from hubtune import licence

    s = run.summary
    recorded = (s.licence or {}).get("repos") or [{}]
    pins = {a["repo"]: a["revision"] for a in recorded[0].get("ancestors", []) if a.get("revision")}
    model = licence.read_licence(s.base_model, "model", s.base_revision, pins=pins)
    datasets = licence.dataset_licences([(d, d.role) for d in s.datasets], run.config.licence.declared)
    return model, datasets
