"""The data quality report as tables in the terminal (the report itself is a plain dict,
printed as JSON by `hubtune data check --json` and written to every run folder)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

STEP_LABELS = {
    "read": "malformed rows skipped",
    "exact_duplicates": "exact duplicates",
    "near_duplicates": "near duplicates",
    "too_short": "responses too short",
    "too_long": "too long",
    "scorer": "scored below threshold",
    "task_balance": "task share capped",
}


def render(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    sources = ", ".join(f"{s['path']} ({s['format']}, {s['rows']} rows)" for s in report["sources"])
    console.print(f"[bold]Data report[/bold]: {sources}")
    template = report.get("chat_template")
    end = template and (template.get("end_of_turn") or template["eos_token"])
    family = f" ({template['family']} family)" if template and template.get("family") else ""
    console.print(f"chat template: {template['template'] if template else 'none (plain text)'}{family}"
                  + (f", assistant turns end with {end!r}" if template else ""))
    if template and template.get("system_prompt"):
        console.print(f"system prompt: {template['system_prompt']}")  # said once, for the whole dataset
    if report.get("reasoning_rows"):
        console.print(f"rows with reasoning: {report['reasoning_rows']}"
                      + (f" (thinking: {template['thinking']})" if template and template.get("thinking") else ""))

    steps = Table(title="What each step removed", title_justify="left")
    steps.add_column("step")
    steps.add_column("removed", justify="right")
    steps.add_column("left", justify="right")
    steps.add_row("rows read", "", str(report["total"]))
    for s in report["steps"]:
        steps.add_row(STEP_LABELS.get(s["step"], s["step"]), str(s["removed"]), str(s["left"]))
    console.print(steps)
    line = (f"kept {report['kept']} of {report['total']}: {report['train']} for training, "
            f"{report['eval']} held out")
    if report["mixed"]:
        line += f" ({report['mixed']} general rows mixed into training)"
    if report["truncated"]:
        line += f"; {report['truncated']} over max_seq_len kept and truncated"
    console.print(line)
    for warning in report.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/bold yellow] {warning}")

    lengths = report["lengths"]
    hist = Table(title=f"Example length in tokens (max_seq_len {lengths['max_seq_len']})", title_justify="left")
    hist.add_column("tokens")
    hist.add_column("examples", justify="right")
    hist.add_column("")
    top = max((b["count"] for b in lengths["histogram"]), default=1)
    for b in lengths["histogram"]:
        hist.add_row(b["tokens"], str(b["count"]), "#" * max(1, round(30 * b["count"] / top)))
    console.print(hist)
    r = lengths["response_tokens"]
    if r:
        console.print(f"response tokens: min {r['min']}, median {r['p50']:g}, p99 {r['p99']:g}, max {r['max']}")

    if report["tasks"]:
        tasks = Table(title="Task types", title_justify="left")
        for col in ("task", "read", "before cap", "after cap", "share"):
            tasks.add_column(col, justify="left" if col == "task" else "right")
        for name, t in report["tasks"].items():
            tasks.add_row(name, str(t["read"]), str(t["before"]), str(t["after"]), f"{t['share_after']:.1%}")
        console.print(tasks)

    d = report["diversity"]
    console.print(f"diversity: distinct words {d['distinct_1']:.3f}, distinct word pairs {d['distinct_2']:.3f} "
                  f"(over {d['examples']} examples)")

    if report["near_duplicate_examples"]:
        pairs = Table(title=f"Near duplicates, least similar first (threshold "
                            f"{report['settings']['near_dup_threshold']})", title_justify="left", show_lines=True)
        pairs.add_column("similarity", justify="right")
        pairs.add_column("kept")
        pairs.add_column("removed")
        for p in report["near_duplicate_examples"]:
            pairs.add_row(f"{p['similarity']:.2f}", f"{p['kept']['origin']}\n{p['kept']['text']}",
                          f"{p['removed']['origin']}\n{p['removed']['text']}")
        console.print(pairs)
    for step, shown in (report.get("removed_examples") or {}).items():
        if shown:
            console.print(f"first removed as {STEP_LABELS.get(step, step)}:")
            for ex in shown:
                console.print(f"  {ex['origin']}: {ex['text'][:120]!r}", markup=False, highlight=False)
    for pair in report["exact_duplicate_examples"]:
        console.print(f"exact duplicate: {pair['removed']} repeats {pair['kept']}")
    for bad in report["bad_row_examples"]:
        console.print(f"skipped: {bad}")
