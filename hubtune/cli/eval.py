"""`hubtune eval`: base (zero- and few-shot) and tuned scored side by side; RUN/eval.json."""

from __future__ import annotations

import argparse
import sys

from hubtune.cli.options import config_option, config_settings


def add(command, common) -> None:
    p = command("eval", help="score base (zero- and few-shot) and tuned side by side; writes RUN/eval.json",
                description="Held-out loss, exact match / F1 against base zero- and few-shot, harness tasks, "
                            "the regression set and an optional LLM judge. Exits 3 when the run regressed.")
    p.add_argument("run", metavar="RUN", help="run folder written by `hubtune train`")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. eval.few_shot_k=5")
    config_option(p, "--tasks", "eval.tasks", metavar="TASK")
    config_option(p, "--judge", "eval.judge")
    config_option(p, "--judge-model", "eval.judge_model")
    config_option(p, "--limit", "eval.limit", metavar="N")
    p.add_argument("--json", action="store_true", help="print eval.json instead of the table")
    p.add_argument("--export-human", type=int, metavar="N", help="write RUN/human_eval.csv: N blinded answer pairs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtune.evaluation import evaluate
    from hubtune.evaluation.report import format_report

    # `--tasks a b key=value` reads the override as a task; task names never hold "=".
    given = getattr(args, "eval.tasks")
    tasks = [t for t in given if "=" not in t] if given else None
    overrides = [*args.overrides, *(t for t in given or [] if "=" in t)]
    result = evaluate(args.run, **{**config_settings(args).get("eval", {}), "tasks": tasks},
                      export_human=args.export_human, overrides=overrides)
    print(result.to_json() if args.json else format_report(result))
    if result.regressed:
        print(f"error: {args.run} REGRESSED on the regression set (see eval.json)", file=sys.stderr)
        return 3
    return 0
