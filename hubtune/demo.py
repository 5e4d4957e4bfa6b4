"""`hubtune demo`: the whole loop on the embedded defaults, as a tour.

The licence verdict of the tiny base and its data, the data report, a QLoRA fine-tune on the invoice
task with the live training line, then `hubtune eval`'s table (base zero-shot, base few-shot and tuned
on the held-out test split, and the regression verdict), and the card a push would publish, written
into the run as README.md. The last line printed is the result:

    demo: base_exact_match=0.00 tuned_exact_match=1.00 minutes=1.8 run=runs/demo-20260101-120000
"""

from __future__ import annotations

import time
from datetime import datetime

from hubtune import config as cfg
from hubtune.refs import ASSETS

DEMO_CONFIG = ASSETS / "configs" / "demo.yaml"


def run_demo(overrides: list[str] | None = None, settings: dict | None = None, display=None) -> dict:
    """Train on the demo config (plus `settings`, a nested dict, and `key=value` overrides), evaluate
    it and write its card; returns the figures of the last line."""
    from hubtune.card import write_card
    from hubtune.evaluation import evaluate
    from hubtune.evaluation.report import format_report
    from hubtune.progress import Display, quiet_libraries, verbose
    from hubtune.train import train

    display = display or Display(detail=True)
    started = time.time()
    tree = cfg.merge(cfg.load(DEMO_CONFIG).model_dump(mode="json"), settings or {})
    tree["output"]["dir"] = tree["output"]["dir"] or f"runs/demo-{datetime.now():%Y%m%d-%H%M%S}"
    config = cfg.build(tree, overrides, source=str(DEMO_CONFIG))

    run = train(config, display=display)
    display.phase("eval", "base zero-shot, base few-shot and tuned on the held-out test split")
    with quiet_libraries(show=verbose()):
        result = evaluate(run.path, log=lambda msg: display.phase("eval", msg))
    display.console.print(format_report(result), markup=False)
    card = write_card(run.path, f"your-name/{run.path.name}")
    display.phase("card", f"{card} (what `hubtune push {run.path} --repo OWNER/NAME` would publish)")

    task = result.task
    figures = {"base_exact_match": task["base"]["exact_match"]["mean"],
               "tuned_exact_match": task["tuned"]["exact_match"]["mean"],
               "minutes": round((time.time() - started) / 60, 2), "run": str(run.path), "test_examples": task["n"],
               "regressed": result.regressed}
    display.console.print(f"demo: base_exact_match={figures['base_exact_match']:.2f} "
                          f"tuned_exact_match={figures['tuned_exact_match']:.2f} minutes={figures['minutes']:.1f} "
                          f"run={run.path}", markup=False, highlight=False, soft_wrap=True)
    return figures
