"""`hubtune push`: a run's adapter, card and loss curve published to the Hub in one commit."""

from __future__ import annotations

import argparse

from hubtune.cli.options import config_option


def add(command, common) -> None:
    p = command("push", help="publish a run's adapter, card and loss curve to the Hub in one commit")
    p.add_argument("run", help="a finished run folder")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the model repo to push to (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--merged", action="store_true", help="push the base with the adapter merged in instead")
    p.add_argument("--gguf", action="store_true",
                   help="push the GGUF files of `hubtune export RUN --format gguf` with their parity table (to a "
                        "repo of their own, e.g. OWNER/NAME-GGUF)")
    config_option(p, "--acknowledge", "licence.acknowledge", action="append", nargs=None, metavar="ID")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtune.publish import push

    result = push(args.run, args.repo, private=args.private, merged=args.merged, gguf=args.gguf,
                  acknowledge=getattr(args, "licence.acknowledge") or [])
    print(f"pushed {len(result.files)} files in one commit: {result.url}")
    return 0
