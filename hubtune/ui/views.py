"""What the pages show, read from run folders through RunFolder: progress and ETA, the loss chart's
rows, the runs table, config diffs, the annotated config. Plain data in, plain data out: no Gradio."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml
from pydantic import BaseModel

from hubtune import config as cfg
from hubtune.distributed import BatchPlan
from hubtune.progress import Figures, clock, held_out_text
from hubtune.runs import RunFolder, Status, list_runs
from hubtune.tables import peak_memory_text
from hubtune.ui.jobs import CONTINUES, LOG, STARTS, tail

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
                     round(losses[-1], 4) if losses else None, page_words(r.page_error or "", r)])
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
           "loss": f.loss, "eval_loss": f.eval_loss, "eval_step": f.eval_step, "tokens_per_second": f.tokens_per_second,
           "eta_seconds": f.eta if status == Status.RUNNING else None,
           "learning_rate": f.learning_rate, "epoch": f.epoch,
           "peak_memory_mb": summary.peak_memory_mb if summary else (memory or {}),
           "place": place,
           "error": (page_words(run.page_error or "", run) or None) if status in (Status.FAILED, Status.INTERRUPTED)
           else None}
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
        parts.append(held_out_text(p["eval_loss"], p.get("eval_step"), p["step"]))
    if p["tokens_per_second"]:
        parts.append(f"{p['tokens_per_second']:,.0f} tokens/s")
    if status == "running":
        parts.append(f"ETA {clock(p['eta_seconds'])}" if p["eta_seconds"] is not None else "ETA: measuring")
    if memory := peak_memory_text(p.get("peak_memory_mb")):
        parts.append(memory)
    if status == "interrupted":
        parts.append(p.get("error") or "stopped with a checkpoint: Resume continues it")
    return " · ".join(parts)


# ---- before Start: how long it will take -----------------------------------------------------------------
def data_shape(report: dict) -> dict:
    """What the duration estimate needs of a data report: its sources, training rows, mean example length."""
    return {"sources": [s["path"] for s in report.get("sources", [])], "train": report["train"],
            "mean_tokens": (report.get("lengths", {}).get("example_tokens") or {}).get("mean")}


def duration_estimate(config: cfg.RunConfig, root: Path, shape: dict | None = None) -> str:
    """The run's steps and its duration on this device: steps x tokens per step / tokens per second, the
    pace measured by this machine's latest run of the same base, else the GPU's nominal figure (said so),
    else none yet. `shape`: data_shape of the checked data, when it is this config's."""
    from hubtune.distributed import BatchPlan
    from hubtune.progress import clock

    t = config.training
    paths = [s.path for s in config.data.sources]
    shape = shape if shape and shape["sources"] == paths else _earlier_shape(config, root)
    if not t.max_steps and not shape:
        return f"{t.epochs:g} epochs; the step count and the duration follow once the data is checked"
    plan = BatchPlan(t.micro_batch_size, t.gradient_accumulation_steps, 1, (shape or {}).get("train") or 0, t.epochs,
                     t.max_steps)
    steps = f"{plan.total_steps} steps" + ("" if t.max_steps else f" ({t.epochs:g} epochs of {shape['train']} rows)")
    if config.data.packing or not (shape or {}).get("mean_tokens"):
        tokens, per = config.data.max_seq_len, ("packed to" if config.data.packing else "at most") + " max_seq_len"
    else:
        tokens, per = shape["mean_tokens"], "the data's mean"
    per_step = plan.effective_batch_size * tokens
    try:
        pace = measured_pace(config, root) or nominal_pace(config)
    except Exception as err:  # an unreadable base config: the steps alone
        return f"{steps}; no duration estimate ({type(err).__name__}: {str(err).splitlines()[0]})"
    if pace is None:
        where = "the CPU" if device_name() == "cpu" else device_name()
        return (f"{steps}; no duration estimate yet: nothing measured for {config.model.id} on {where}; the "
                f"first run here measures its pace, and later ones get an estimate")
    return (f"{steps}, about {clock(pace.seconds(plan.total_steps, per_step))} of training on this device "
            f"({per_step:,.0f} tokens per step: {plan.effective_batch_size} rows x {tokens:,.0f} tokens, {per}; "
            f"at {pace.tokens_per_second:,.0f} tokens/s, {pace.source})")


def _earlier_shape(config: cfg.RunConfig, root: Path) -> dict | None:
    """The data shape of this machine's latest run on the same data."""
    paths = [s.path for s in config.data.sources]
    for run in list_runs(root):
        report = run.data_report
        if report and [s["path"] for s in report.get("sources", [])] == paths:
            return data_shape(report)
    return None


def device_name() -> str:
    """This machine's training device as a run's summary records it (hardware.describe): the GPU or "cpu"."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def measured_pace(config: cfg.RunConfig, root: Path):
    """Tokens per second of this machine's latest run of the same base, method and quantization (on this
    device, where its summary says which)."""
    from hubtune.progress import Throughput

    device = device_name()
    same = (config.model.id, config.model.quantization, config.training.method)
    for run in list_runs(root):
        try:
            c = run.config
        except Exception:  # a hand-edited config.yaml: not a figure to trust
            continue
        summary = run.summary
        if (c.model.id, c.model.quantization, c.training.method) != same or (
                summary and summary.hardware.get("device_name") != device):
            continue
        if pace := Throughput.from_rows(run.metrics(), f"measured: the median of run {run.path.name} on this device"):
            return pace
    return None


def nominal_pace(config: cfg.RunConfig):
    """The GPU's data-sheet figure (hubtune.gpus), for a base this machine has not trained yet; None on a
    CPU or a GPU hubtune has no figure for."""
    import torch

    from hubtune.gpus import by_device_name
    from hubtune.jobs import nominal_tokens_per_second
    from hubtune.progress import Throughput

    name = device_name()
    # A CPU has no data-sheet figure worth the name (small models there are bound by overheads, not FLOPs).
    gpu = None if name == "cpu" else by_device_name(name, torch.cuda.get_device_properties(0).total_memory / 2**20)
    if gpu is None:
        return None
    return Throughput(nominal_tokens_per_second(config, gpu),
                      f"rough: the {gpu.name}'s nominal {gpu.tflops:g} TFLOP/s at the usual share fine-tuning "
                      f"reaches, not measured here; a first run measures it")


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


# ---- the page's words for what the command line writes --------------------------------------------------
# An uploaded file's copy on the server (runs/.uploads/USER/NAME, runs/RUN/uploads/NAME): the page names it
# by NAME, as the card does; the server's folders are not the user's business.
_UPLOAD_PATH = re.compile(r"(?:/[^\s'\"`/|]+)*/\.?uploads/(?:[^\s'\"`/|]+/)?([^\s'\"`/|]+)")
_HEADER = re.compile(r"^\$ hubtune (train|eval|merge|export) (?:--resume )?\S+(.*?)(?:  # (.*))?$")


def without_server_paths(text: str) -> str:
    return _UPLOAD_PATH.sub(r"\1", text)


_CONFIG_KEY = re.compile(r"\b(model|data|training|eval|licence|output)\.([a-z_]+)\b")


def page_keys(text: str) -> str:
    """Config keys in a message (`data.val_set_size`) as where the page has them: "Advanced settings: data →
    val_set_size". Only real keys: `data.jsonl` stays a file name."""
    def where(found: re.Match) -> str:
        try:
            cfg.field_at(found.group(0))
        except (KeyError, AttributeError, TypeError):
            return found.group(0)
        return f"Advanced settings: {found.group(1)} → {found.group(2)}"
    return _CONFIG_KEY.sub(where, text)


def page_words(text: str, run: RunFolder) -> str:
    """A run's text as the page shows it: its folder by the run's name, uploads by their file names."""
    for folder in {str(run.path.resolve()), str(run.path)}:
        text = text.replace(folder, run.path.name)
    return without_server_paths(text)


def page_log(run: RunFolder, n: int = 15) -> str:
    """The last n lines of the run's log in the page's words: each job's command line as what it does, the
    error that ended the run as the page renders it (hubtune.errors.page_text), no server paths."""
    text = "\n".join(_job_line(line) for line in tail(run.path / LOG, 4 * n))
    for cli, page in run.page_renderings:
        text = text.replace(f"error: {cli}", page)
    return "\n".join(page_words(text, run).split("\n")[-n:])


def _job_line(line: str) -> str:
    found = _HEADER.match(line)
    if not found:
        return line
    kind, options, what = found.groups()
    if kind in ("merge", "export"):
        return {"merge": "▶ Merging the adapter into the base", "export": "▶ Exporting to GGUF"}[kind]
    if kind == "eval":
        limit = re.search(r"--limit (\d+)", options)
        return f"▶ Evaluating{f' on at most {limit.group(1)} test examples' if limit else ''}"
    if what == STARTS:
        return "▶ Training starts (a new run)"
    if what and what.startswith(CONTINUES):
        return f"▶ Resuming from the checkpoint at {what.removeprefix(CONTINUES).strip()}"
    return "▶ Training"


def log_tail(run: RunFolder, n: int = 15) -> str:
    return page_log(run, n)


# ---- configs ------------------------------------------------------------------------------------------
def config_diff(a: RunFolder, b: RunFolder) -> str:
    """The two runs' resolved configs as a unified diff (output.dir left out: it always differs)."""
    def lines(run: RunFolder) -> list[str]:
        tree = run.config.model_dump(mode="json")
        tree.pop("output", None)
        return yaml.safe_dump(tree, sort_keys=False).splitlines(keepends=True)

    diff = page_words(page_words("".join(difflib.unified_diff(lines(a), lines(b), a.path.name, b.path.name)), a), b)
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
