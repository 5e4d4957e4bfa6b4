"""`hubtune space deploy`: the web app on a Hugging Face Space."""

from __future__ import annotations

import argparse


def add(command, common) -> None:
    p = command("space", help="put the app on a Hugging Face Space")
    space_sub = p.add_subparsers(dest="space_command", required=True)
    d = space_sub.add_parser("deploy", parents=[common], help="create or update a Gradio Space running this hubtune")
    d.add_argument("space", metavar="OWNER/NAME", help="the Space repo (created if needed)")
    d.add_argument("--hardware", default="l4x1", help="hardware to request (default l4x1; '' for none)")
    d.add_argument("--private", action="store_true", help="create the Space as private")
    d.add_argument("--wheel", help="a hubtune wheel to upload (default: built from this source checkout)")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtune.ui.deploy import deploy

    done = deploy(args.space, hardware=args.hardware or None, private=args.private, wheel=args.wheel)
    print(f"uploaded {len(done.files)} files to {done.repo_id}; {done.hardware_note}")
    print(done.url)
    return 0
