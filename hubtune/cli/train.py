"""`hubtune train`: a run config (or an Axolotl config) trained here, over several processes, or on HF Jobs."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hubtune.cli.options import display
from hubtune.errors import HubtuneError


def add(command, common) -> None:
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtune import distributed
    from hubtune.refs import RepoRef
    from hubtune.runs import RunFolder
    from hubtune.train import fetch_from_hub, resume, resume_from_hub, train

    if args.on == "hf-jobs":
        return on_jobs(args)
    from_hub = bool(args.resume) and RepoRef.parse(args.resume).is_hub
    if args.resume:
        config = None if from_hub else RunFolder.open(args.resume).config
    elif args.config is None:
        raise HubtuneError("give a run config (hubtune train CONFIG.yaml) or --resume RUN_FOLDER")
    else:
        config = run_config(args.config, args.overrides, args.ignore_unsupported)
    if config is not None:
        from hubtune.hardware import detect

        distributed.check_hardware(config.training.distributed, detect(config.model).device)
    plan = distributed.plan_launch(config.training.distributed if config else "none", args.num_processes,
                                   args.num_machines, args.machine_rank, args.main_process_ip, args.main_process_port,
                                   config.training.context_parallel_size if config else 1,
                                   config.training.expert_parallel_size if config else 1,
                                   bool(config and distributed.loads_whole_base(config.model, config.training,
                                                                                    read_hub=True)))
    if plan is None:
        if from_hub:
            done = resume_from_hub(args.resume, args.out, display=display())
        else:
            done = resume(args.resume, display=display()) if args.resume else train(config, display=display())
        print(f"run: {done.path}")  # by the main process: the others' stdout goes nowhere (distributed.console)
        return 0
    # Several processes: this one starts `accelerate launch` and waits; they train.
    if from_hub:
        path = fetch_from_hub(args.resume, args.out)
    else:
        path = RunFolder.open(args.resume).path if args.resume else config.output.run_dir()
    worker = (["train", "--resume", str(path)] if args.resume or from_hub else
              ["train", args.config, *args.overrides, f"output.dir={path}"])
    with tempfile.TemporaryDirectory(prefix="hubtune-") as folder:
        if config is not None and not args.resume and is_axolotl(args.config):
            # The processes train the translation shown above (its overrides and --ignore-unsupported
            # applied), rather than translate the Axolotl file again, each.
            translated = Path(folder) / "run.yaml"
            translated.write_text(config.to_yaml())
            worker = ["train", str(translated), f"output.dir={path}"]
        return distributed.launch(plan, worker)  # rank 0 prints the run's folder; a failure names each rank


def on_jobs(args: argparse.Namespace) -> int:
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


def is_axolotl(path: str) -> bool:
    from hubtune.interop import axolotl

    return axolotl.is_axolotl(axolotl.read_yaml(Path(path)))


def run_config(path: str, overrides: list[str], ignore_unsupported: bool):
    """A hubtune run config, or an Axolotl config translated, shown with what it could not honour."""
    from hubtune import config as cfg
    from hubtune.interop import axolotl

    if not is_axolotl(path):
        return cfg.load(path, overrides)
    translation = axolotl.read(path)
    config = translation.run_config(overrides, ignore_unsupported)
    print(f"Axolotl config {path}, translated to this hubtune run config:\n{config.to_yaml()}")
    if report := translation.report(ignored=ignore_unsupported):
        print(report)
    return config
