"""`hubtune jobs status|logs|cancel`: follow a run started with `hubtune train ... --on hf-jobs`."""

from __future__ import annotations

import argparse


def add(command, common) -> None:
    p = command("jobs", help="follow Hugging Face Jobs started with `hubtune train ... --on hf-jobs`")
    jobs_sub = p.add_subparsers(dest="jobs_command", required=True)
    for name, help_text in (("status", "the job's stage"), ("logs", "the job's output"), ("cancel", "stop the job")):
        j = jobs_sub.add_parser(name, parents=[common], help=help_text)
        j.add_argument("job", metavar="JOB_ID")
        j.add_argument("--namespace", help="the job's owner (default: the token's account)")
        if name == "logs":
            j.add_argument("--follow", action="store_true", help="stream until the job ends")
            j.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
        j.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
