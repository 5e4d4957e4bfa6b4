"""`hubtune ...`: a thin shell over the Python API.

Each subcommand parses its arguments and calls one library function. Known errors
print their message (which says how to fix the problem) and exit with the error's
code; HUBTUNE_DEBUG=1 shows the traceback too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Literal, get_args, get_origin

from hubtune.errors import HubtuneError, translate

VERBOSE_ENV = "HUBTUNE_VERBOSE"


def config_option(parser: argparse.ArgumentParser, flag: str, path: str, dest: str | None = None, **kwargs) -> None:
    """An option that sets the run-config field at `path` (e.g. licence.use): its type, choices, default
    and help all come from the field, so the CLI never restates them. Unset, it leaves the config alone."""
    from hubtune.config import field_at

    field = field_at(path)
    kinds = (field.annotation, *get_args(field.annotation))
    choices = next((get_args(k) for k in kinds if get_origin(k) is Literal), None)
    default = field.get_default(call_default_factory=True)
    shown = default.value if hasattr(default, "value") else default
    help_text = f"{field.description} (config: {path}; default {shown})"
    options: dict = {"dest": dest or path, "default": None, "help": help_text}
    if bool in kinds:
        options["action"] = argparse.BooleanOptionalAction
    elif any(get_origin(k) is list for k in kinds):
        options["nargs"] = "+"
    else:
        options["choices"] = choices
        options["type"] = next((t for t in (int, float) if t in kinds), str)
    if "action" not in options and not choices:
        options["metavar"] = path.rsplit(".", 1)[-1].upper()
    parser.add_argument(flag, **{**options, **kwargs})


def config_settings(args: argparse.Namespace) -> dict:
    """The config fields set by `config_option`s, as a nested dict for `config.build`."""
    tree: dict = {}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            *parents, leaf = dest.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return tree


def _display(detail: bool = False):
    from hubtune.progress import Display

    return Display(detail=detail)


def _train(args: argparse.Namespace) -> int:
    from hubtune import config as cfg
    from hubtune import distributed
    from hubtune.refs import RepoRef
    from hubtune.runs import RunFolder
    from hubtune.train import fetch_from_hub, resume, resume_from_hub, train

    if args.on == "hf-jobs":
        return _train_on_jobs(args)
    from_hub = bool(args.resume) and RepoRef.parse(args.resume).is_hub
    if args.resume:
        config = None if from_hub else RunFolder.open(args.resume).config
    elif args.config is None:
        raise HubtuneError("give a run config (hubtune train CONFIG.yaml) or --resume RUN_FOLDER")
    else:
        config = _run_config(args.config, args.overrides, args.ignore_unsupported)
    if config is not None:
        from hubtune.hardware import detect

        distributed.check_hardware(config.training.distributed, detect(config.model).device)
    plan = distributed.plan_launch(config.training.distributed if config else "none", args.num_processes,
                                   args.num_machines, args.machine_rank, args.main_process_ip, args.main_process_port)
    if plan is None:
        if from_hub:
            run = resume_from_hub(args.resume, args.out, display=_display())
        else:
            run = resume(args.resume, display=_display()) if args.resume else train(config, display=_display())
        if distributed.is_main_process():
            print(f"run: {run.path}")
        return 0
    # Several processes: this one starts `accelerate launch` and waits; they train.
    if from_hub:
        path = fetch_from_hub(args.resume, args.out)
    else:
        path = RunFolder.open(args.resume).path if args.resume else config.output.run_dir()
    worker = (["train", "--resume", str(path)] if args.resume or from_hub else
              ["train", args.config, *args.overrides, f"output.dir={path}"])
    return distributed.launch(plan, worker)  # rank 0 prints the run's folder, or its error


def _train_on_jobs(args: argparse.Namespace) -> int:
    from hubtune import config as cfg
    from hubtune import jobs

    if not args.flavor:
        raise HubtuneError("--on hf-jobs needs --flavor, e.g. --flavor a10g-small (see `hf jobs hardware`)")
    options = {"flavor": args.flavor, "timeout": args.timeout, "install": args.install or jobs.DEFAULT_INSTALL,
               "image": args.image or jobs.DEFAULT_IMAGE, "num_processes": args.num_processes}
    if args.resume:
        sub = jobs.submit_resume(args.resume, **options)
    elif args.config is None:
        raise HubtuneError("give a run config (hubtune train CONFIG.yaml --on hf-jobs ...) or --resume OWNER/REPO")
    else:
        sub = jobs.submit(cfg.load(args.config, args.overrides), **options)
    print(f"estimated run: {sub.estimate.describe()}")
    print(f"submitted job {sub.job.id} on {args.flavor} (timeout {jobs.duration(sub.timeout_seconds)}): {sub.job.url}")
    print(f"checkpoints and the finished run go to {sub.repo_url}")
    print(f"follow it with `hubtune jobs logs {sub.job.id} --follow`; if it stops early, continue with "
          f"`hubtune train --resume {sub.repo_id} --on hf-jobs --flavor {args.flavor}`")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from hubtune import jobs

    if args.jobs_command == "status":
        job = jobs.status(args.job, namespace=args.namespace)
        print(f"job {job.id}: {job.status.stage}" + (f" ({job.status.message})" if job.status.message else ""))
        print(f"flavor: {job.flavor}  url: {job.url}")
        return 0 if job.status.stage != "ERROR" else 1
    if args.jobs_command == "logs":
        for line in jobs.logs(args.job, follow=args.follow, tail=args.tail, namespace=args.namespace):
            print(line)
        return 0
    jobs.cancel(args.job, namespace=args.namespace)
    print(f"cancelled job {args.job}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from hubtune.merge import merge

    result = merge(args.run, args.out, dtype=args.dtype)
    print(f"merged {result.base} + {args.run} into {result.path} ({result.dtype})")
    return 0


def _run_config(path: str, overrides: list[str], ignore_unsupported: bool):
    """A hubtune run config, or an Axolotl config translated, shown with what it could not honour."""
    from pathlib import Path

    from hubtune import config as cfg
    from hubtune.interop import axolotl

    if not axolotl.is_axolotl(axolotl.read_yaml(Path(path))):
        return cfg.load(path, overrides)
    translation = axolotl.read(path)
    config = translation.run_config(overrides, ignore_unsupported)
    print(f"Axolotl config {path}, translated to this hubtune run config:\n{config.to_yaml()}")
    if report := translation.report(ignored=ignore_unsupported):
        print(report)
    return config



def _write_out(path: str, text: str) -> None:
    """A file the user named with --out, its folder made if need be (runs/x.yaml in a fresh folder)."""
    from pathlib import Path

    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as err:
        raise HubtuneError(f"cannot write {out} ({err.strerror}); give --out a path in a folder you can "
                           f"write") from None

def _config(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from hubtune.interop import axolotl

    if args.config_command == "convert":
        translation = axolotl.read(args.source)
        config = translation.run_config(ignore_unsupported=args.ignore_unsupported)
        report = translation.report(ignored=args.ignore_unsupported)
        header = f"# Translated by hubtune from the Axolotl config {args.source}\n"
        header += "".join(f"# {line}\n" for line in report.splitlines())
        _write_out(args.out, header + config.to_yaml())
        print(report + ("\n" if report else "") + f"wrote {args.out}")
        return 0
    exported = axolotl.export(args.run)
    text = yaml.safe_dump(exported, sort_keys=False)
    if args.out:
        _write_out(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    if kept := axolotl.hubtune_only(exported):
        print(f"kept under `hubtune:` (Axolotl ignores them; hubtune reads them back): {', '.join(kept)}",
              file=sys.stderr)
    if assets := axolotl.hubtune_assets(exported):
        print(f"hubtune's own assets, which Axolotl cannot read: {'; '.join(assets)}. Replace them with a Hub "
              f"repo id or a file of your own before training with Axolotl.", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hubtune.demo import run_demo

    run_demo(overrides=args.overrides, settings=config_settings(args), display=_display(detail=True))
    return 0


def _check(args: argparse.Namespace) -> int:
    import json

    from hubtune.licence import check, format_table

    use = getattr(args, "licence.use") or "personal"
    verdict = check(args.model, args.dataset, use=use, revision=getattr(args, "model.revision"), publish=args.publish)
    print(json.dumps(verdict.to_dict(), indent=2) if args.json else format_table(verdict))
    return 3 if verdict.verdict == "block" else 0


def _push(args: argparse.Namespace) -> int:
    from hubtune.publish import push

    result = push(args.run, args.repo, private=args.private, merged=args.merged,
                  acknowledge=getattr(args, "licence.acknowledge") or [])
    print(f"pushed {len(result.files)} files in one commit: {result.url}")
    return 0


def _data_config(args: argparse.Namespace):
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


def _data(args: argparse.Namespace) -> int:
    import json

    from hubtune import data
    from hubtune.data.output import check_outputs, write_record
    from hubtune.data.report import render

    config = _data_config(args)
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


def _data_pairs(args: argparse.Namespace) -> int:
    from hubtune.data.pairs import pairs_from_eval, write_pairs

    rows, report = pairs_from_eval(args.run, args.metric, args.reference_chosen)
    out = write_pairs(rows, args.out)
    print(f"{report['pairs']} pairs from {report['prompts']} prompts ({report['reference_chosen']} with the reference "
          f"chosen, {report['tied']} left out: their answers scored alike) ranked by {report['metric']}: {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from hubtune.evaluation import evaluate
    from hubtune.evaluation.report import format_report

    # `--tasks a b key=value` reads the override as a task; task names never hold "=".
    given = getattr(args, "eval.tasks")
    tasks = [t for t in given if "=" not in t] if given else None
    overrides = [*args.overrides, *(t for t in given or [] if "=" in t)]
    result = evaluate(args.run, **{**config_settings(args).get("eval", {}), "tasks": tasks},
                      export_human=args.export_human, overrides=overrides)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    if result["regressed"]:
        print(f"error: {args.run} REGRESSED on the regression set (see eval.json)", file=sys.stderr)
        return 3
    return 0


def _ui(args: argparse.Namespace) -> int:
    from hubtune.ui import launch

    launch(args.root, share_token_with_visitors=args.share_token_with_visitors)
    return 0


def _space_deploy(args: argparse.Namespace) -> int:
    from hubtune.ui.deploy import deploy

    done = deploy(args.space, hardware=args.hardware or None, private=args.private, wheel=args.wheel)
    print(f"uploaded {len(done.files)} files to {done.repo_id}; {done.hardware_note}")
    print(done.url)
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
    adapter, training_method = (None, args.method) if args.method in cfg.METHODS else (args.method, None)
    settings = memory.Settings.from_run_config(
        config, method=adapter, training_method=training_method, num_generations=args.generations,
        max_completion_length=args.completion_len, seq_len=args.seq_len, micro_batch=args.batch, lora_r=args.lora_r,
        target_modules=args.target_modules, gradient_checkpointing=args.gradient_checkpointing,
        optimizer=args.optimizer, compute_dtype=args.compute_dtype, loss=args.loss)
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


def build_parser(prog: str = "hubtune") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Fine-tune, check, evaluate and publish LoRA adapters.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show third-party output too (library warnings, progress bars); HUBTUNE_DEBUG=1 also "
                             "shows tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    p = command("train", help="fine-tune with QLoRA/LoRA from a run config")
    p.add_argument("config", nargs="?", help="YAML run config")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.learning_rate=1e-4")
    p.add_argument("--resume", metavar="RUN",
                   help="continue an interrupted run from its last checkpoint: a run folder, or the OWNER/REPO "
                        "of training.push_checkpoints (downloaded into --out)")
    p.add_argument("--out", metavar="DIR", help="with --resume OWNER/REPO: the local run folder (default runs/REPO)")
    g = p.add_argument_group("several processes (accelerate launch with the preset of training.distributed)")
    g.add_argument("--num-processes", type=int, metavar="N",
                   help="processes (GPUs) in total, over all machines; default: every GPU when "
                        "training.distributed is set")
    g.add_argument("--num-machines", type=int, default=1, metavar="M", help="machines taking part (default 1)")
    g.add_argument("--machine-rank", type=int, default=0, metavar="R", help="this machine's rank, 0 to M-1")
    g.add_argument("--main-process-ip", metavar="IP", help="address of machine rank 0 (several machines)")
    g.add_argument("--main-process-port", type=int, metavar="PORT",
                   help="its port (default: a free one on one machine, 29500 over several)")
    g = p.add_argument_group("Hugging Face Jobs")
    g.add_argument("--on", choices=["local", "hf-jobs"], default="local", help="where to train (default local)")
    g.add_argument("--flavor", metavar="FLAVOR", help="Jobs hardware, e.g. a10g-small, l40sx4, h200")
    g.add_argument("--timeout", metavar="DURATION",
                   help="e.g. 90m, 6h (default: 1.5 x the estimated run, at least 30m)")
    g.add_argument("--install", metavar="SPEC", help="how the job installs hubtune: a pip requirement "
                                                     "(default hubtune==<this version>; a git+https URL for a fork)")
    g.add_argument("--image", metavar="IMAGE", help="Docker image with uv (default ghcr.io/astral-sh/uv:python3.12-bookworm)")
    p.add_argument("--ignore-unsupported", action="store_true",
                   help="train an Axolotl config without the keys hubtune cannot honour (they are listed)")
    p.set_defaults(func=_train)

    p = command("jobs", help="follow Hugging Face Jobs started with `hubtune train ... --on hf-jobs`")
    jobs_sub = p.add_subparsers(dest="jobs_command", required=True)
    for name, help_text in (("status", "the job's stage"), ("logs", "the job's output"), ("cancel", "stop the job")):
        j = jobs_sub.add_parser(name, parents=[common], help=help_text)
        j.add_argument("job", metavar="JOB_ID")
        j.add_argument("--namespace", help="the job's owner (default: the token's account)")
        if name == "logs":
            j.add_argument("--follow", action="store_true", help="stream until the job ends")
            j.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
        j.set_defaults(func=_jobs)

    p = command("merge", help="merge a run's adapter into its unquantized base: a standalone model")
    p.add_argument("run", metavar="RUN", help="a finished run folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the merged model (new or empty)")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto",
                   help="dtype of the saved weights (default auto: the base's own)")
    p.set_defaults(func=_merge)

    p = command("config", help="convert Axolotl configs to hubtune run configs and back")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    c = config_sub.add_parser("convert", parents=[common], help="write the hubtune run config of an Axolotl config")
    c.add_argument("source", metavar="AXOLOTL.yml", help="an Axolotl config")
    c.add_argument("--out", required=True, metavar="RUN.yaml", help="the run config to write")
    c.add_argument("--ignore-unsupported", action="store_true", help="leave out the keys hubtune cannot honour")
    c.set_defaults(func=_config)
    c = config_sub.add_parser("export", parents=[common], help="write the Axolotl config of a hubtune run (or run config)")
    c.add_argument("run", metavar="RUN", help="a run folder or a run config YAML")
    c.add_argument("--to", choices=["axolotl"], default="axolotl", help="the format to write (axolotl)")
    c.add_argument("--out", metavar="FILE.yml", help="write here instead of printing")
    c.set_defaults(func=_config)

    p = command("demo", help="the whole loop on the embedded tiny model: licence, data, training, evaluation, card")
    config_option(p, "--out", "output.dir")
    config_option(p, "--limit", "eval.limit")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the demo config")
    p.set_defaults(func=_demo)

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
    p.set_defaults(func=_eval)

    p = command("check", help="check the licences of a base model and datasets for a declared use")
    p.add_argument("model", help="base model: Hub repo id, local folder or hubtune:<asset>")
    p.add_argument("--dataset", action="append", default=[], metavar="ID", help="a dataset (repeat for several)")
    config_option(p, "--use", "licence.use")
    config_option(p, "--revision", "model.revision")
    p.add_argument("--publish", action="store_true", help="also check that an adapter may be published")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=_check)

    p = command("push", help="publish a run's adapter, card and loss curve to the Hub in one commit")
    p.add_argument("run", help="a finished run folder")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the model repo to push to (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--merged", action="store_true", help="push the base with the adapter merged in instead")
    config_option(p, "--acknowledge", "licence.acknowledge", action="append", nargs=None, metavar="ID")
    p.set_defaults(func=_push)

    p = command("estimate", help="peak GPU memory of a fine-tune from the model's config.json, and what fits",
                description="Counts the parameters from config.json alone (Hub repo, folder, or a run "
                            "config's model) and adds up weights, adapters, gradients, optimizer states, "
                            "activations and overhead. Flags default to the run config's values. Exits 3 "
                            "when the run does not fit --gpu.")
    from typing import get_type_hints

    from hubtune.memory import GPUS, OPTIMIZERS, Settings

    fields = get_type_hints(Settings)  # the estimate's own choices for the flags that are not run-config fields

    p.add_argument("model", nargs="?", metavar="MODEL_OR_RUN_CONFIG",
                   help="Hub repo id, model folder, hubtune:<asset>, or a run config YAML (its model and settings)")
    config_option(p, "--revision", "model.revision", dest="revision")
    p.add_argument("--method", choices=[*get_args(fields["method"]), *get_args(fields["training_method"])],
                   help="qlora: LoRA on a 4-bit base; lora: LoRA on a 16-bit base; full: every weight trained; "
                        "or the training method (sft, dpo, orpo, kto, grpo), default the run config's")
    config_option(p, "--generations", "training.grpo.num_generations", dest="generations", metavar="N")
    config_option(p, "--completion-len", "training.grpo.max_completion_length", dest="completion_len", metavar="N")
    config_option(p, "--seq-len", "data.max_seq_len", dest="seq_len", metavar="N")
    config_option(p, "--batch", "training.micro_batch_size", dest="batch", metavar="N")
    config_option(p, "--lora-r", "lora.r", dest="lora_r", metavar="N")
    config_option(p, "--target-modules", "lora.target_modules", dest="target_modules", metavar="NAME")
    config_option(p, "--gradient-checkpointing", "training.gradient_checkpointing", dest="gradient_checkpointing")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer whose states to count (default: the run config's)")
    p.add_argument("--compute-dtype", choices=get_args(fields["compute_dtype"]),
                   help="dtype of the frozen weights and activations on the GPU (default: bfloat16)")
    p.add_argument("--loss", choices=get_args(fields["loss"]),
                   help="fused: TRL's tiled LM head (hubtune's recipe, the default); float32: the whole vocabulary's "
                        "logits in float32, as plain transformers computes the loss")
    p.add_argument("--gpu", metavar="NAME|GB", help=f"a GPU ({', '.join(GPUS)}) or a size in GB; default: all listed")
    p.add_argument("--table", action="store_true", help="the field guide's hardware table, computed from real configs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_estimate)

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
        d.set_defaults(func=_data)
    d = data_sub.add_parser("pairs", parents=[common], help="preference pairs from an evaluated run's answers",
                            description="Each test prompt of `hubtune eval RUN` whose answers (tuned, base, few-shot "
                                        "base) score differently becomes a pair: the best answer chosen, the worst "
                                        "rejected. Train on them with training.method: dpo (or orpo, kto).")
    d.add_argument("run", help="an evaluated run folder (it holds eval_answers.jsonl)")
    d.add_argument("--out", required=True, metavar="FILE.jsonl", help="where the pairs go")
    d.add_argument("--metric", choices=["exact_match", "token_f1"], default="token_f1",
                   help="the score that ranks the answers (default token_f1)")
    d.add_argument("--reference-chosen", action="store_true",
                   help="where no answer is fully right, prefer the reference answer over the tuned model's")
    d.set_defaults(func=_data_pairs)

    p = command("ui", help="the web app: run, watch, evaluate, chat and publish from a browser",
                       description="Serves the app on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (default 127.0.0.1:7860).")
    p.add_argument("--root", help="where runs live (default: HUBTUNE_HOME, else ./runs)")
    p.add_argument("--share-token-with-visitors", action="store_true",
                   help="allow serving beyond 127.0.0.1 (GRADIO_SERVER_NAME=0.0.0.0): everyone who reaches the page "
                        "acts with this machine's Hugging Face token and reads its files")
    p.set_defaults(func=_ui)

    p = command("space", help="put the app on a Hugging Face Space")
    space_sub = p.add_subparsers(dest="space_command", required=True)
    d = space_sub.add_parser("deploy", parents=[common], help="create or update a Gradio Space running this hubtune")
    d.add_argument("space", metavar="OWNER/NAME", help="the Space repo (created if needed)")
    d.add_argument("--hardware", default="l4x1", help="hardware to request (default l4x1; '' for none)")
    d.add_argument("--private", action="store_true", help="create the Space as private")
    d.add_argument("--wheel", help="a hubtune wheel to upload (default: built from this source checkout)")
    d.set_defaults(func=_space_deploy)

    return parser


class _ConsoleFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (tests and notebooks swap it)."""

    hubtune_console = True

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _console_logging() -> None:
    """hubtune's own messages (resume points, skipped checkpoints, warnings) on stderr, once."""
    logger = logging.getLogger("hubtune")
    if not any(getattr(h, "hubtune_console", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(_ConsoleFormat())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None, prog: str = "hubtune") -> int:
    from hubtune.hub import use_timeouts

    parser = build_parser(prog)
    args, extra = parser.parse_known_args(argv)
    # `hubtune train CONFIG --num-processes 2 key=value`: overrides may also follow the options.
    if extra and (not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # a subprocess (the UI's training job) inherits it
    _console_logging()
    debug = os.environ.get("HUBTUNE_DEBUG") == "1"
    try:
        use_timeouts()  # every Hub request this command makes, hubtune's or a library's, gets a timeout
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        # Known errors, and foreign ones the table in hubtune.errors can explain, print their fix;
        # anything else is a bug or a case not handled yet: one line, the traceback on request.
        typed = translate(err)
        if debug:
            raise
        if typed is None:
            print(f"error: unexpected {type(err).__name__}: {err}\n(a case hubtune does not handle yet; "
                  f"HUBTUNE_DEBUG=1 shows the traceback)", file=sys.stderr)
            return 1
        print(f"error: {typed}", file=sys.stderr)
        return typed.exit_code


def hf_tune() -> int:
    """`hf-tune`: the same commands as `hf tune ...`, an extension of huggingface_hub's `hf` CLI."""
    return main(prog="hf tune")


if __name__ == "__main__":
    sys.exit(main())
