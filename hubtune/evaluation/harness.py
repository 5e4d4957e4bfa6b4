"""lm-evaluation-harness tasks on an in-memory model (the PEFT adapter over its base, or the base).

Tasks are harness names (hellaswag, arc_easy, ... where the Hub is reachable) or the project's own
tasks in evals/tasks/*.yaml, whose local data paths (`hubtune:...`, `evals:...`, or relative to the
YAML file) are resolved here so the harness reads them offline.
"""

from __future__ import annotations

import difflib
import logging
from functools import lru_cache
from pathlib import Path

import yaml

from hubtune.refs import resolve_builtin
from hubtune.errors import EvalError
from hubtune.progress import silenced_stderr, verbose
from hubtune.evaluation.scoring import evals_dir

EVALS_PREFIX = "evals:"


def local_tasks() -> dict[str, Path]:
    """Task name -> YAML file, for the tasks shipped in evals/tasks/."""
    found = {}
    for path in sorted((evals_dir() / "tasks").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        if isinstance(spec, dict) and "task" in spec:
            found[spec["task"]] = path
    return found


def _resolve_data_path(ref: str, folder: Path) -> str:
    if ref.startswith(EVALS_PREFIX):
        return str(evals_dir() / ref[len(EVALS_PREFIX):])
    resolved = Path(resolve_builtin(ref))
    return str(resolved if resolved.is_absolute() else folder / resolved)


def local_task_spec(path: Path) -> dict:
    """A task YAML as an inline harness config with its data files made absolute."""
    spec = yaml.safe_load(path.read_text())
    files = (spec.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        spec["dataset_kwargs"]["data_files"] = {k: _resolve_data_path(v, path.parent) for k, v in files.items()}
    elif isinstance(files, str):
        spec["dataset_kwargs"]["data_files"] = _resolve_data_path(files, path.parent)
    for ref in ([files] if isinstance(files, str) else list((files or {}).values())):
        if not Path(_resolve_data_path(ref, path.parent)).is_file():
            raise EvalError(f"{path}: data file {ref!r} not found")
    return spec


def _import_harness():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise EvalError(f"harness tasks need lm-eval: pip install 'hubtune[eval]' ({err})") from None
    return lm_eval, TaskManager


@lru_cache(maxsize=2)
def task_manager(include_defaults: bool):
    """The harness's task index over evals/tasks/ (plus its own tasks when a name needs them)."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    _, TaskManager = _import_harness()
    return TaskManager(include_path=str(evals_dir() / "tasks"), include_defaults=include_defaults)


def check_tasks(tasks: list[str]) -> None:
    """Raise EvalError naming every task that is neither in evals/tasks/ nor known to the harness."""
    _import_harness()
    local = local_tasks()
    others = [t for t in tasks if t not in local]
    if not others:
        return
    known = set(task_manager(True).all_tasks)
    unknown = [t for t in others if t not in known]
    if unknown:
        hints = [f"{t} (did you mean {', '.join(m)}?)" if (m := difflib.get_close_matches(t, known | set(local), 3))
                 else t for t in unknown]
        raise EvalError(f"unknown harness task(s): {'; '.join(hints)}. Local tasks: {', '.join(sorted(local))}; "
                        f"`lm-eval ls tasks` lists the harness's own")


def multiple_choice_task(name: str, data_file: Path) -> dict:
    """An inline harness task over {context, choices, label} rows: the answer is the choice with the
    highest log-likelihood after `context + " "` (the harness's `acc`), on the raw text."""
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{context}}",
            "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}", "target_delimiter": " ",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}


def resolve_specs(tasks: list[str | dict]) -> dict[str, str | dict]:
    """Task name -> what the harness is given: a local task's inline config, an inline config as
    passed, or a harness task name."""
    local = local_tasks()
    return {(t["task"] if isinstance(t, dict) else t): t if isinstance(t, dict) else
            local_task_spec(local[t]) if t in local else t for t in tasks}


def run_harness(model, tokenizer, tasks: list[str | dict], *, limit: int | None = None, batch_size: int,
                chat_template: str = "auto") -> dict[str, dict]:
    """Run harness tasks: names (evals/tasks/ or the harness's own) or inline task configs.

    Returns {task: {"output_type", "n", "chat_template", "metrics": {name: value}, "stderr": {...},
    "ci95": {name: [lower, upper]}, "dataset": {"path", "config", "split"}, "per_doc": {"doc_ids": [...],
    "scores": {name: [value per doc]}}}}. The intervals come from the per-document scores: Wilson
    for 0/1 scores, a bootstrap for graded ones.
    chat_template: "auto" renders generation tasks through the model's chat template and scores
    multiple-choice tasks on the raw text; "always" / "never" force one way for every task.
    """
    lm_eval, _ = _import_harness()
    from lm_eval.models.huggingface import HFLM

    specs = resolve_specs(tasks)
    names = list(specs)
    output_types = {n: s.get("output_type", "generate_until") for n, s in specs.items() if isinstance(s, dict)}
    manager = task_manager(any(isinstance(s, str) for s in specs.values()))

    def with_template(name: str) -> bool:
        if chat_template != "auto":
            return chat_template == "always"
        return output_types.get(name) == "generate_until"

    show = verbose()
    with silenced_stderr(show):  # lm-eval's notices about being handed a loaded model
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    out: dict[str, dict] = {}
    for templated in (True, False):
        group = [specs[n] for n in names if with_template(n) == templated]
        if not group:
            continue
        try:
            with silenced_stderr(show):  # its per-request bars and the `git describe` it runs
                results = lm_eval.simple_evaluate(model=lm, tasks=group, task_manager=manager, limit=limit,
                                                  apply_chat_template=templated, log_samples=True, bootstrap_iters=1000,
                                                  verbosity="WARNING" if show else "ERROR")
        except (KeyError, ValueError) as err:
            raise EvalError(f"harness task(s) {[n for n in names if with_template(n) == templated]}: {err}; "
                            f"local tasks: {', '.join(sorted(local_tasks())) or 'none'}") from None
        for task, values in results["results"].items():
            out[task] = _task_result(task, values, results, output_types.get(task), templated)
    return out


def _task_result(task: str, values: dict, results: dict, output_type: str | None, templated: bool) -> dict:
    from hubtune.evaluation.intervals import summarize

    metrics = {k.split(",")[0]: v for k, v in values.items()
               if "," in k and not k.split(",")[0].endswith("_stderr") and isinstance(v, (int, float))}
    stderr = {k.split(",")[0].removesuffix("_stderr"): v for k, v in values.items()
              if k.split(",")[0].endswith("_stderr") and isinstance(v, (int, float))}
    samples = sorted(results.get("samples", {}).get(task, []), key=lambda s: s["doc_id"])
    scores: dict[str, list[float]] = {}
    for key in values:
        metric, _, filter_key = key.partition(",")
        if metric not in metrics or not filter_key:
            continue
        per_doc = [s.get(metric) for s in samples if s.get("filter") == filter_key]
        if per_doc and all(isinstance(v, (int, float)) for v in per_doc):  # bool counts as 0/1
            scores[metric] = [float(v) for v in per_doc]
    doc_ids = sorted({s["doc_id"] for s in samples})
    config = results.get("configs", {}).get(task, {})
    return {"output_type": output_type or config.get("output_type"),
            "n": results.get("n-samples", {}).get(task, {}).get("effective"), "chat_template": templated,
            "metrics": metrics, "stderr": stderr,
            "ci95": {m: summarize(v)["ci95"] for m, v in scores.items()},
            "dataset": {"path": config.get("dataset_path"), "config": config.get("dataset_name"),
                        "split": config.get("test_split") or config.get("validation_split")},
            "per_doc": {"doc_ids": doc_ids, "scores": scores}}
