"""`hubtune data check|prepare|pairs`: the quality report of a dataset, its prepared rows, preference pairs."""

from __future__ import annotations

import argparse
import sys

from hubtune.cli.options import config_option, config_settings
from hubtune.errors import HubtuneError


def add(command, common) -> None:
    from hubtune.runs import RunFolder

    p = command("data", help="check and prepare training data: formats, duplicates, lengths, balance")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    for name, help_text in (("check", "print the quality report of a dataset"),
                            ("prepare", "write the prepared training rows as JSON lines, with the report")):
        d = data_sub.add_parser(name, parents=[common], help=help_text)
        d.add_argument("source", help="local JSON/JSONL/CSV/Parquet file or folder, Hub dataset id, or hubtune:<asset>")
        d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="a data setting, e.g. --set near_dup_threshold=0.9 (repeatable)")
        d.add_argument("--config", help="a run config whose data settings, model and seed to use")
        config_option(d, "--model", "model.id")
        config_option(d, "--format", "data.format")
        d.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                       help="read a field from a column of another name, e.g. output=answer (repeatable)")
        config_option(d, "--split", "data.sources.split", dest="split")
        config_option(d, "--name", "data.sources.name", dest="name")
        config_option(d, "--revision", "data.sources.revision", dest="revision")
        config_option(d, "--skip-bad-rows", "data.skip_bad_rows")
        config_option(d, "--seed", "training.seed")
        d.add_argument("--json", action="store_true", help="print the report as one JSON object")
        if name == "prepare":
            d.add_argument("--out", required=True, metavar="FILE.jsonl",
                           help="training rows go here; held-out rows to FILE.eval.jsonl, their checksums to "
                                "FILE.sha256")
            d.add_argument("--force", action="store_true",
                           help="overwrite --out even when it is a source or a file hubtune did not write")
        d.set_defaults(func=run)
    d = data_sub.add_parser("pairs", parents=[common], help="preference pairs from an evaluated run's answers",
                            description="Each test prompt of `hubtune eval RUN` whose answers (tuned, base, few-shot "
                                        "base) score differently becomes a pair: the best answer chosen, the worst "
                                        "rejected. Train on them with training.method: dpo (or orpo, kto).")
    d.add_argument("run", help="an evaluated run folder (it holds eval_answers.jsonl)")
    d.add_argument("--out", required=True, metavar="FILE.jsonl", help="where the pairs go")
    d.add_argument("--metric", choices=[*RunFolder.ANSWER_SCORES, "judge"],
                   help="the score that ranks the answers (default token_f1; judge with --judge or eval.judge)")
    config_option(d, "--judge", "eval.judge", dest="judge",
                  help="rank by this judge's 1-5 rubric grades: an OpenAI-compatible base URL (its key in "
                       "HUBTUNE_JUDGE_API_KEY), a Hub model id or a model folder; the run's eval.judge otherwise")
    config_option(d, "--judge-model", "eval.judge_model", dest="judge_model")
    d.add_argument("--reference-chosen", action="store_true",
                   help="where no answer is fully right, prefer the reference answer over the tuned model's")
    d.set_defaults(func=pairs)


def data_config(args: argparse.Namespace):
    """The run config for `hubtune data ...`: --config (or the defaults), SOURCE and flags on top."""
    from hubtune import config as cfg

    tree = cfg.load(args.config).model_dump(mode="json") if args.config else {}
    tree = cfg.merge(tree, config_settings(args))
    data = tree.setdefault("data", {})
    source = {"path": args.source, "split": args.split, "name": args.name, "revision": args.revision}
    data["sources"] = [{k: v for k, v in source.items() if v is not None}]
    for pair in args.column:
        field, sep, column = pair.partition("=")
        if not sep:
            raise HubtuneError(f"--column {pair}: give FIELD=COLUMN, e.g. --column output=answer")
        data.setdefault("columns", {})[field] = column
    overrides = [o if o.startswith("data.") else f"data.{o}" for o in args.overrides]
    return cfg.build(tree, overrides, source=args.config)


def run(args: argparse.Namespace) -> int:
    import json

    from hubtune import data
    from hubtune.data.output import check_outputs, write_record
    from hubtune.data.report import render

    config = data_config(args)
    # Where the rows go is checked before anything is read: a wrong --out fails in a second, not after the work.
    out = check_outputs(args.out, config.data, args.force) if args.data_command == "prepare" else None
    m = config.model
    tokenizer = data.load_tokenizer(m.id, m.revision, m.trust_remote_code)
    prepared = data.prepare(config.data, tokenizer, seed=config.training.seed)
    if args.json:
        print(json.dumps(prepared.report, indent=2, ensure_ascii=False))
    else:
        render(prepared.report)
    if out is not None:
        n = data.write_jsonl(prepared.train, out.train)
        wrote = f"wrote {n} training rows to {out.train}"
        out.eval.unlink(missing_ok=True)  # a held-out file of an earlier run would no longer match
        if prepared.eval is not None:
            wrote += f" and {data.write_jsonl(prepared.eval, out.eval)} held-out rows to {out.eval}"
        write_record(out)
        print(wrote, file=sys.stderr if args.json else sys.stdout)
    return 0


def pairs(args: argparse.Namespace) -> int:
    from hubtune.data.pairs import pairs_from_eval, write_pairs

    from hubtune.errors import DataError

    metric = args.metric or ("judge" if args.judge else "token_f1")
    if args.judge and metric != "judge":
        raise DataError(f"--judge ranks the answers by the judge's grades, --metric {metric} by {metric}: give one")
    grade, ranked_by = None, metric
    if metric == "judge":
        from hubtune.evaluation.judge import run_grader

        grade, spec = run_grader(args.run, args.judge, args.judge_model)
        ranked_by = f"the judge {spec}"
    rows, report = pairs_from_eval(args.run, metric, args.reference_chosen, grade=grade)
    out = write_pairs(rows, args.out)
    n = report["unscored"]
    unscored = f"; {n} answer{'s' if n > 1 else ''} the judge left unscored (no grades in its reply)" if n else ""
    print(f"{report['pairs']} pairs from {report['prompts']} prompts ({report['reference_chosen']} with the reference "
          f"chosen, {report['tied']} left out: their answers scored alike{unscored}) ranked by {ranked_by}: {out}")
    return 0
