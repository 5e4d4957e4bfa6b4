"""What a run shows while it works: the phase it is in, then one live line for training (step / total,
loss, held-out loss, tokens/s, elapsed, time left). `Figures` is the one progress model: computed from
the rows written to metrics.jsonl, it feeds the console here and the page (hubtune.ui.views), so both
show the same step total and the same time left (the pace so far, over training time that carries across
a resume), written with `clock`. Before a run, `Throughput` turns a measured (or nominal) tokens/s into
the duration the page shows beside the step count.

Third-party output (progress bars of every datasets map, deprecation warnings, notices) is hidden
unless `--verbose` or HUBTUNE_DEBUG=1.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console

NOISY_LOGGERS = ("transformers", "datasets", "bitsandbytes", "peft", "trl", "accelerate", "huggingface_hub",
                 "torch", "torchao", "lm_eval", "lm-eval", "evaluate", "httpx")


def held_out_text(eval_loss: float, eval_step: int | None, step: int) -> str:
    """The held-out loss for a live line, naming its step when it lags the training step (between evaluations)."""
    lag = eval_step is not None and eval_step != step
    return f"held-out loss {eval_loss:.4f}" + (f" (step {eval_step})" if lag else "")


@dataclass(frozen=True)
class Figures:
    """The live figures of a run, from its metrics rows."""

    step: int
    total: int | None
    loss: float | None
    eval_loss: float | None
    tokens_per_second: float | None
    elapsed: float | None  # seconds of training so far
    learning_rate: float | None = None
    epoch: float | None = None
    eval_step: int | None = None  # the step eval_loss was measured at: it lags the training step between evaluations

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Figures | None:
        if not rows:
            return None
        last = rows[-1]
        latest = lambda key: next((r[key] for r in reversed(rows) if r.get(key) is not None), None)  # noqa: E731
        return cls(step=last["step"], total=latest("total_steps") or None, loss=latest("loss"),
                   eval_loss=latest("eval_loss"), tokens_per_second=latest("tokens_per_second"),
                   elapsed=latest("elapsed_seconds"), learning_rate=latest("learning_rate"), epoch=last.get("epoch"),
                   eval_step=next((r["step"] for r in reversed(rows) if r.get("eval_loss") is not None), None))

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace so far."""
        if not (self.total and self.step and self.elapsed is not None):
            return None
        return self.elapsed / self.step * max(self.total - self.step, 0)

    @property
    def fraction(self) -> float:
        return min(self.step / self.total, 1.0) if self.total else 0.0

    def line(self) -> str:
        if self.step == 0:
            return f"held-out loss before training {self.eval_loss:.4f}" if self.eval_loss is not None else "starting"
        parts = [f"step {self.step}/{self.total or '?'}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.eval_loss is not None:
            parts.append(held_out_text(self.eval_loss, self.eval_step, self.step))
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:,.0f} tok/s")
        if self.elapsed is not None:
            parts.append(f"{clock(self.elapsed)} elapsed")
        if self.eta is not None:
            parts.append(f"{clock(self.eta)} left")
        return " · ".join(parts)


@dataclass(frozen=True)
class Throughput:
    """Training tokens per second on one device, and where the figure comes from, in words."""

    tokens_per_second: float
    source: str

    @classmethod
    def from_rows(cls, rows: list[dict], source: str) -> Throughput | None:
        """The median tokens/s of a run's training rows (a row logged across an evaluation reads slow; the
        median leaves it out)."""
        speeds = sorted(r["tokens_per_second"] for r in rows if r.get("loss") is not None and r.get("tokens_per_second"))
        return cls(speeds[len(speeds) // 2], source) if speeds else None

    def seconds(self, steps: int, tokens_per_step: float) -> float:
        """How long `steps` optimizer steps of `tokens_per_step` tokens take at this pace."""
        return steps * tokens_per_step / self.tokens_per_second


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Display:
    """The console of a run: phase lines, advice, and one live training line (a bar on a terminal,
    a plain line per logging step elsewhere, e.g. in a log file or the UI's log tail)."""

    def __init__(self, console: Console | None = None, detail: bool = False, quiet: bool = False):
        # quiet: print nothing (the other processes of a multi-process launch; the main one shows it all)
        self.console = console or Console(highlight=False, soft_wrap=True, quiet=quiet)
        self.detail = detail  # the full licence table and data report (the demo's tour), not one line each
        self._progress = None
        self._task = None

    def phase(self, name: str, detail: str = "") -> None:
        self.console.print(f"[bold cyan]{name:<9}[/] {detail}".rstrip())

    def note(self, text: str, style: str = "yellow") -> None:
        self.console.print(f"[{style}]{text}[/]")

    def licence(self, verdict) -> None:
        if self.detail:
            from hubtune.licence import format_table

            self.console.print(format_table(verdict), markup=False)
        else:
            self.phase("licence", verdict.verdict + (f": {verdict.reasons[0]}" if verdict.reasons else ""))

    def data_report(self, report: dict) -> None:
        if self.detail:
            from hubtune.data.report import render

            render(report, self.console)
        else:
            self.phase("data", f"kept {report['kept']} of {report['total']} rows: {report['train']} for training, "
                               f"{report['eval']} held out")
            for warning in report.get("warnings") or []:
                self.note(f"warning: {warning}", style="bold yellow")

    def row(self, rows: list[dict]) -> None:
        """Show the figures after a new metrics row (called by the metrics file's writer)."""
        figures = Figures.from_rows(rows)
        if figures is None:
            return
        if not self.console.is_terminal:
            self.console.print(f"{'training':<9} {figures.line()}")
            return
        if self._progress is None:
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(TextColumn("[bold cyan]training "), BarColumn(),
                                      TextColumn("{task.fields[line]}"), console=self.console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task("training", total=figures.total or 1, line="")
        self._progress.update(self._task, completed=figures.step, total=figures.total or 1, line=figures.line())

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def verbose() -> bool:
    """`--verbose` (HUBTUNE_VERBOSE=1) or HUBTUNE_DEBUG=1: show third-party output too."""
    return "1" in (os.environ.get("HUBTUNE_VERBOSE"), os.environ.get("HUBTUNE_DEBUG"))


@contextmanager
def quiet_libraries(show: bool = False):
    """Hide third-party progress bars, warnings and notices for the duration (unless `show`)."""
    if show:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    bars = _library_bars(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", module=r"hubtune(\.|$)")
            yield
    finally:
        _library_bars(bars)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _library_bars(enabled: bool) -> bool:
    """Turn the progress bars of datasets, transformers and huggingface_hub on or off; returns
    whether they were on before."""
    import datasets
    import huggingface_hub.utils as hf_utils
    from transformers.utils import logging as tf_logging

    before = datasets.is_progress_bar_enabled()
    for module, on, off in ((datasets, "enable_progress_bars", "disable_progress_bars"),
                            (tf_logging, "enable_progress_bar", "disable_progress_bar"),
                            (hf_utils, "enable_progress_bars", "disable_progress_bars")):
        getattr(module, on if enabled else off)()
    return before


@contextmanager
def silenced_stderr(show: bool = False):
    """Send stderr, Python's and the process's own (file descriptor 2, which child processes inherit),
    to nowhere for the duration: for libraries that print bars and notices there with no switch to turn
    them off (lm-eval's per-request bars, the `git describe` it runs). Errors still surface as exceptions."""
    if show:
        yield
        return
    import contextlib
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            with contextlib.redirect_stderr(null):
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
