"""`hubtune ...`: a thin shell over the Python API.

Each subcommand parses its arguments and calls one library function. Known errors
print their message (which says how to fix the problem) and exit with the error's
code; HUBTUNE_DEBUG=1 shows the traceback too.
"""

from __future__ import annotations

import argparse
import os
import sys

from hubtune.errors import HubtuneError


def _train(args: argparse.Namespace) -> int:
    from hubtune import config as cfg
    from hubtune.train import resume, train

    if args.resume:
        run = resume(args.resume)
    else:
        if args.config is None:
            raise HubtuneError("give a run config (hubtune train CONFIG.yaml) or --resume RUN_FOLDER")
        config = cfg.load(args.config, args.overrides)
        run = train(config)
    print(f"run: {run.path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hubtune.demo import run_demo

    run_demo(output_dir=args.out, overrides=args.overrides, limit=args.limit)
    return 0


def _check(args: argparse.Namespace) -> int:
    import json

    from hubtune.licence import check, format_table

    verdict = check(args.model, args.dataset, use=args.use, revision=args.revision, publish=args.publish)
    print(json.dumps(verdict.to_dict(), indent=2) if args.json else format_table(verdict))
    return 3 if verdict.verdict == "block" else 0


def _push(args: argparse.Namespace) -> int:
    from hubtune.publish import push

    result = push(args.run, args.repo, private=args.private, merged=args.merged, acknowledge=args.acknowledge)
    print(f"pushed {len(result.files)} files in one commit: {result.url}")
    return 0


def _data_config(args: argparse.Namespace):
    """The run config for `hubtune data ...`: --config (or the defaults), SOURCE and flags on top."""
    from hubtune import config as cfg

    tree = cfg.load(args.config).model_dump(mode="json") if args.config else {}
    data = tree.setdefault("data", {})
    data["sources"] = [{"path": args.source, "split": args.split, "name": args.name, "revision": args.revision}]
    if args.format:
        data["format"] = args.format
    for pair in args.column:
        field, sep, column = pair.partition("=")
        if not sep:
            raise HubtuneError(f"--column {pair}: give FIELD=COLUMN, e.g. --column output=answer")
        data.setdefault("columns", {})[field] = column
    if args.skip_bad_rows:
        data["skip_bad_rows"] = True
    if args.model:
        tree.setdefault("model", {})["id"] = args.model
    overrides = [o if o.startswith("data.") else f"data.{o}" for o in args.overrides]
    return cfg.build(tree, overrides, source=args.config)


def _data(args: argparse.Namespace) -> int:
    import json

    from hubtune import data
    from hubtune.data.report import render

    config = _data_config(args)
    m = config.model
    tokenizer = data.load_tokenizer(m.id, m.revision, m.trust_remote_code)
    prepared = data.prepare(config.data, tokenizer, seed=args.seed)
    if args.json:
        print(json.dumps(prepared.report, indent=2, ensure_ascii=False))
    else:
        render(prepared.report)
    if args.data_command == "prepare":
        n = data.write_jsonl(prepared.train, args.out)
        wrote = f"wrote {n} training rows to {args.out}"
        if prepared.eval is not None:
            eval_path = args.out.removesuffix(".jsonl") + ".eval.jsonl"
            wrote += f" and {data.write_jsonl(prepared.eval, eval_path)} held-out rows to {eval_path}"
        print(wrote, file=sys.stderr if args.json else sys.stdout)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from hubtune.evaluation import evaluate
    from hubtune.evaluation.report import format_report

    # `--tasks a b key=value` reads the override as a task; task names never hold "=".
    tasks = [t for t in args.tasks if "=" not in t] if args.tasks else None
    overrides = [*args.overrides, *(t for t in args.tasks or [] if "=" in t)]
    result = evaluate(args.run, tasks=tasks, judge=args.judge, judge_model=args.judge_model, limit=args.limit,
                      export_human=args.export_human, overrides=overrides)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    if result["regressed"]:
        print(f"error: {args.run} REGRESSED on the regression set (see eval.json)", file=sys.stderr)
        return 3
    return 0


def _estimate(args: argparse.Namespace) -> int:
    import json

    from hubtune import config as cfg
    from hubtune import memory

    if args.table:
        rows = memory.guide_table()
        print(json.dumps(rows, indent=2) if args.json else memory.format_guide_table(rows))
        return 0
    if args.model is None:
        raise HubtuneError("give a model (Hub repo id, folder, hubtune:<asset>) or a run config YAML, or --table")
    is_run_config = args.model.endswith((".yaml", ".yml"))
    config = cfg.load(args.model if is_run_config else None)
    model, revision = (config.model.id, args.revision or config.model.revision) if is_run_config else (args.model, args.revision)
    arch = memory.read_architecture(model, revision)
    settings = memory.Settings.from_run_config(
        config, method=args.method, seq_len=args.seq_len, micro_batch=args.batch, lora_r=args.lora_r,
        target_modules=args.target_modules, gradient_checkpointing=args.gradient_checkpointing,
        optimizer=args.optimizer, compute_dtype=args.compute_dtype)
    gpus = [args.gpu] if args.gpu else list(memory.GPUS)
    fits = {g: memory.fit_report(arch, settings, g) for g in gpus}
    est = memory.estimate(arch, memory.on_gpu(settings, args.gpu) if args.gpu else settings)
    if args.json:
        out = est.to_dict()
        out["fits"] = fits[args.gpu]["fits"] if args.gpu else {g: f["fits"] for g, f in fits.items()}
        out["suggestion"] = fits[args.gpu]["suggestion"] if args.gpu else None
        print(json.dumps(out, indent=2))
    else:
        print(memory.format_estimate(est, list(fits.values())))
    return 0 if not args.gpu or fits[args.gpu]["fits"] else 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hubtune", description="Fine-tune, check, evaluate and publish LoRA adapters.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune with QLoRA/LoRA from a run config")
    p.add_argument("config", nargs="?", help="YAML run config")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.learning_rate=1e-4")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=_train)

    p = sub.add_parser("demo", help="fine-tune the embedded tiny model on the invoice task and score it")
    p.add_argument("--out", default=None, help="run folder (default runs/demo-<timestamp>)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N test examples")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the demo config")
    p.set_defaults(func=_demo)

    p = sub.add_parser("eval", help="score base (zero- and few-shot) and tuned side by side; writes RUN/eval.json",
                       description="Held-out loss, exact match / F1 against base zero- and few-shot, harness tasks, "
                                   "the regression set and an optional LLM judge. Exits 3 when the run regressed.")
    p.add_argument("run", metavar="RUN", help="run folder written by `hubtune train`")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. eval.few_shot_k=5")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="harness tasks (names in evals/tasks/ or lm-eval names)")
    p.add_argument("--judge", help="judge: OpenAI-compatible base URL (http://host:port/v1), Hub model id, or model folder")
    p.add_argument("--judge-model", help="model name to send to a base-URL judge")
    p.add_argument("--limit", type=int, metavar="N", help="score at most N test examples per measure")
    p.add_argument("--json", action="store_true", help="print eval.json instead of the table")
    p.add_argument("--export-human", type=int, metavar="N", help="write RUN/human_eval.csv: N blinded answer pairs")
    p.set_defaults(func=_eval)

    p = sub.add_parser("check", help="check the licences of a base model and datasets for a declared use")
    p.add_argument("model", help="base model: Hub repo id, local folder or hubtune:<asset>")
    p.add_argument("--dataset", action="append", default=[], metavar="ID", help="a dataset (repeat for several)")
    p.add_argument("--use", choices=["personal", "research", "commercial"], default="personal",
                   help="what the tuned adapter is for (default personal)")
    p.add_argument("--revision", help="branch, tag or commit of the model to read the licence at")
    p.add_argument("--publish", action="store_true", help="also check that an adapter may be published")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=_check)

    p = sub.add_parser("push", help="publish a run's adapter, card and loss curve to the Hub in one commit")
    p.add_argument("run", help="a finished run folder")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the model repo to push to (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--merged", action="store_true", help="push the base with the adapter merged in instead")
    p.add_argument("--acknowledge", action="append", default=[], metavar="ID",
                   help="accept the licence of this repo or path explicitly (repeat for several)")
    p.set_defaults(func=_push)

    p = sub.add_parser("estimate", help="peak GPU memory of a fine-tune from the model's config.json, and what fits",
                       description="Counts the parameters from config.json alone (Hub repo, folder, or a run "
                                   "config's model) and adds up weights, adapters, gradients, optimizer states, "
                                   "activations and overhead. Flags default to the run config's values. Exits 3 "
                                   "when the run does not fit --gpu.")
    from hubtune.config import DataSection, LoraSection, ModelSection, TrainingSection
    from hubtune.memory import GPUS, OPTIMIZERS

    def doc(section, name: str) -> str:
        return f"{section.model_fields[name].description} Default: the run config's."

    p.add_argument("model", nargs="?", metavar="MODEL_OR_RUN_CONFIG",
                   help="Hub repo id, model folder, hubtune:<asset>, or a run config YAML (its model and settings)")
    p.add_argument("--revision", help="branch, tag or commit of the Hub repo to read config.json at")
    p.add_argument("--method", choices=["qlora", "lora", "full"],
                   help="qlora: LoRA on a 4-bit base; lora: LoRA on a 16-bit base; full: every weight trained")
    p.add_argument("--seq-len", type=int, metavar="N", help=doc(DataSection, "max_seq_len"))
    p.add_argument("--batch", type=int, metavar="N", help=doc(TrainingSection, "micro_batch_size"))
    p.add_argument("--lora-r", type=int, metavar="N", help=doc(LoraSection, "r"))
    p.add_argument("--target-modules", nargs="+", metavar="NAME", help=doc(LoraSection, "target_modules"))
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help=doc(TrainingSection, "gradient_checkpointing"))
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=doc(TrainingSection, "optimizer"))
    p.add_argument("--compute-dtype", choices=["bfloat16", "float16", "float32"], help=doc(ModelSection, "compute_dtype"))
    p.add_argument("--gpu", metavar="NAME|GB", help=f"a GPU ({', '.join(GPUS)}) or a size in GB; default: all listed")
    p.add_argument("--table", action="store_true", help="the field guide's hardware table, computed from real configs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_estimate)

    p = sub.add_parser("data", help="check and prepare training data: formats, duplicates, lengths, balance")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    for name, help_text in (("check", "print the quality report of a dataset"),
                            ("prepare", "write the prepared training rows as JSON lines, with the report")):
        d = data_sub.add_parser(name, help=help_text)
        d.add_argument("source", help="local JSON/JSONL/CSV/Parquet file or folder, Hub dataset id, or hubtune:<asset>")
        d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="a data setting, e.g. --set near_dup_threshold=0.9 (repeatable)")
        d.add_argument("--config", help="a run config whose data settings and model to use")
        d.add_argument("--model", help="base model whose tokenizer and chat template to use (default: the config's)")
        d.add_argument("--format", choices=["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text"])
        d.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                       help="read a field from a column of another name, e.g. output=answer (repeatable)")
        d.add_argument("--split", default="train", help="split of a Hub dataset or folder (default train)")
        d.add_argument("--name", help="dataset config name on the Hub")
        d.add_argument("--revision", help="dataset revision to pin")
        d.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of stopping")
        d.add_argument("--seed", type=int, default=42, help="seed for task balancing and mixing (default 42)")
        d.add_argument("--json", action="store_true", help="print the report as one JSON object")
        if name == "prepare":
            d.add_argument("--out", required=True, metavar="FILE.jsonl",
                           help="training rows go here; held-out rows to FILE.eval.jsonl")
        d.set_defaults(func=_data)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except HubtuneError as err:
        if os.environ.get("HUBTUNE_DEBUG") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
