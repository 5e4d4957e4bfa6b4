"""`hubtune ui`: the web app, served from this machine."""

from __future__ import annotations

import argparse


def add(command, common) -> None:
    p = command("ui", help="the web app: run, watch, evaluate, chat and publish from a browser",
                description="Serves the app on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (default 127.0.0.1:7860).")
    p.add_argument("--root", help="where runs live (default: HUBTUNE_HOME, else ./runs)")
    p.add_argument("--share-token-with-visitors", action="store_true",
                   help="allow serving beyond 127.0.0.1 (GRADIO_SERVER_NAME=0.0.0.0): everyone who reaches the page "
                        "acts with this machine's Hugging Face token and reads its files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtune.ui import launch

    launch(args.root, share_token_with_visitors=args.share_token_with_visitors)
    return 0
