"""What the pages show, read from run folders through RunFolder: progress and ETA, the loss chart's
rows, the runs table, config diffs, the annotated config. Plain data in, plain data out: no Gradio."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import BaseModel

from hubtune import config as cfg
from hubtune.distributed import BatchPlan
from hubtune.progress import Figures, clock
from hubtune.runs import RunFolder, Status
from hubtune.tables import peak_memory_text
from hubtune.ui.jobs import LOG, tail

LIVE = (Status.QUEUED, Status.RUNNING, Status.EVALUATING)


# ---- which runs a user sees: hubtune.ui.access.Gate.owns ---------------------------------------------
def run_choices(runs: list[RunFolder]) -> list[tuple[str, str]]:
    """(label, path) pairs for a dropdown: name and status."""
    return [(f"{r.path.name} ({r.status.value})", str(r.path)) for r in runs]


def runs_table(runs: list[RunFolder]) -> list[list]:
    """One row per run: name, status, owner, base, steps, held-out loss, error."""
    rows = []
    for r in runs:
        try:
            base = r.config.model.id
        except Exception as err:  # a hand-edited config.yaml: say so in the row, keep listing
            base = f"(unreadable config: {str(err).splitlines()[0]})"
        summary = r.summary
        metrics = r.metrics()
        step = summary.global_steps if summary else (metrics[-1]["step"] if metrics else 0)
        losses = [m["eval_loss"] for m in metrics if m.get("eval_loss") is not None]
        rows.append([r.path.name, r.status.value, r.owner or "", base, step,
                     round(losses[-1], 4) if losses else None, r.error or ""])
    return rows


# ---- progress: the console's model (hubtune.progress.Figures), read from the run's metrics rows ----------
def total_steps(run: RunFolder, figures: Figures | None = None) -> tuple[int | None, bool]:
    """(optimizer steps the run will take, whether that is exact). The Trainer's own total once training
    has logged a row; before that max_steps, or the epochs over the prepared training rows (the batch
    plan training uses, on one process) once data preparation has written them."""
    if figures is not None and figures.total:
        return figures.total, True
    t = run.config.training
    if t.max_steps:
        return t.max_steps, True
    rows = run.data_report.get("train")
    if not rows:
        return None, False
    plan = BatchPlan(t.micro_batch_size, t.gradient_accumulation_steps, 1, rows, t.epochs, None)
    return plan.total_steps, not run.config.data.packing and t.distributed == "none"


def progress(run: RunFolder, place: int | None = None, memory: dict | None = None) -> dict:
    """Everything the progress line shows, as numbers and one sentence."""
    status = run.status
    figures = Figures.from_rows(run.metrics())
    total, exact = total_steps(run, figures)
    summary = run.summary
    step = summary.global_steps if summary else (figures.step if figures else 0)
    f = figures or Figures(step, total, None, None, None, None)
    out = {"run": run.path.name, "status": status.value, "step": step, "total": total, "exact_total": exact,
           "fraction": min(step / total, 1.0) if total else None,
           "loss": f.loss, "eval_loss": f.eval_loss, "tokens_per_second": f.tokens_per_second,
           "eta_seconds": f.eta if status == Status.RUNNING else None,
           "learning_rate": f.learning_rate, "epoch": f.epoch,
           "peak_memory_mb": summary.peak_memory_mb if summary else (memory or {}),
           "place": place, "error": run.error if status == Status.FAILED else None}
    out["line"] = progress_line(out)
    return out


def progress_line(p: dict) -> str:
    status = p["status"]
    if status == "queued":
        where = f"number {p['place']} in the queue" if p.get("place") else "waiting for a free device"
        return f"**{p['run']}**: queued, {where}"
    if status == "failed":
        return f"**{p['run']}**: failed: {p['error']}"
    total = f"{'' if p['exact_total'] else '~'}{p['total']}" if p["total"] else "?"
    parts = [f"**{p['run']}**: {status}", f"step {p['step']}/{total}"]
    if p["fraction"] is not None:
        parts[-1] += f" ({p['fraction']:.0%})"
    if p["loss"] is not None:
        parts.append(f"loss {p['loss']:.4f}")
    if p["eval_loss"] is not None:
        parts.append(f"held-out loss {p['eval_loss']:.4f}")
    if p["tokens_per_second"]:
        parts.append(f"{p['tokens_per_second']:,.0f} tokens/s")
    if status == "running":
        parts.append(f"ETA {clock(p['eta_seconds'])}" if p["eta_seconds"] is not None else "ETA: measuring")
    if memory := peak_memory_text(p.get("peak_memory_mb")):
        parts.append(memory)
    if status == "interrupted":
        parts.append("stopped with a checkpoint: Resume continues it")
    return " · ".join(parts)


def process_memory_mb(pid: int | None) -> dict:
    """Peak resident memory of a live process (Linux /proc), and its GPU memory where nvidia-smi says."""
    if not pid:
        return {}
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["process RAM"] = int(line.split()[1]) / 1024
    except OSError:
        return {}
    try:
        import subprocess

        rows = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=5).stdout
        used = [float(m) for p, m in (r.split(",") for r in rows.splitlines() if "," in r) if int(p) == pid]
        if used:
            out["GPU"] = sum(used)
    except (OSError, ValueError, subprocess.SubprocessError):
        pass  # no NVIDIA GPU here
    return out


# ---- the loss chart ---------------------------------------------------------------------------------
def loss_points(runs: list[RunFolder], label_runs: bool = False) -> list[dict]:
    """Rows of {step, loss, curve}: "training loss" and "held-out loss", named by run when overlaid."""
    points = []
    for r in runs:
        prefix = f"{r.path.name}: " if label_runs else ""
        for m in r.metrics():
            if m.get("loss") is not None:
                points.append({"step": m["step"], "loss": m["loss"], "curve": f"{prefix}{TRAINING_LOSS}"})
            if m.get("eval_loss") is not None:
                points.append({"step": m["step"], "loss": m["eval_loss"], "curve": f"{prefix}{HELD_OUT_LOSS}"})
            # Preference methods: the share of pairs won; GRPO: each reward's mean (hubtune.callbacks.MetricsFile).
            for key, value in m.items():
                if key == "rewards/accuracies" or (key.startswith("rewards/") and key.endswith("/mean")):
                    name = "preference accuracy" if key == "rewards/accuracies" else f"reward {key.split('/')[1]}"
                    points.append({"step": m["step"], "loss": value, "curve": f"{prefix}{name}"})
    return points


TRAINING_LOSS, HELD_OUT_LOSS = "training loss", "held-out loss"


def chart_caption(points: list[dict]) -> str:
    train = sum(1 for p in points if p["curve"].endswith(TRAINING_LOSS))
    held = sum(1 for p in points if p["curve"].endswith(HELD_OUT_LOSS))
    caption = f"{train} training-loss points, {held} held-out-loss points"
    rewards = len(points) - train - held
    return caption + (f", {rewards} reward points" if rewards else "")


def log_tail(run: RunFolder, n: int = 15) -> str:
    return "\n".join(tail(run.path / LOG, n))


# ---- configs ------------------------------------------------------------------------------------------
def config_diff(a: RunFolder, b: RunFolder) -> str:
    """The two runs' resolved configs as a unified diff (output.dir left out: it always differs)."""
    def lines(run: RunFolder) -> list[str]:
        tree = run.config.model_dump(mode="json")
        tree.pop("output", None)
        return yaml.safe_dump(tree, sort_keys=False).splitlines(keepends=True)

    diff = "".join(difflib.unified_diff(lines(a), lines(b), a.path.name, b.path.name))
    return diff or f"{a.path.name} and {b.path.name} have the same settings"


def annotated_yaml(config: cfg.RunConfig) -> str:
    """The whole config as YAML, every field followed by its one-line description: the advanced editor."""
    out: list[str] = []
    _emit(config, out, 0)
    return "\n".join(out) + "\n"


def _emit(section: BaseModel, out: list[str], depth: int) -> None:
    pad = "  " * depth
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        note = f"  # {field.description}" if field.description else ""
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:{note}")
            _emit(value, out, depth + 1)
            continue
        dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else _plain(value)
        text = yaml.safe_dump({name: dumped}, default_flow_style=True, width=10_000).strip()
        text = text[1:-1] if text.startswith("{") else text  # {key: value} -> key: value
        out.append(f"{pad}{text}{note}")


def _plain(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
