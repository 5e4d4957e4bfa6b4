"""`hubtune demo`: the whole loop on the embedded tiny model."""

from __future__ import annotations

import argparse

from hubtune.cli.options import config_option, config_settings, display


def add(command, common) -> None:
    p = command("demo", help="the whole loop on the embedded tiny model: licence, data, training, evaluation, card")
    config_option(p, "--out", "output.dir")
    config_option(p, "--limit", "eval.limit")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the demo config")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtune.demo import run_demo

    run_demo(overrides=args.overrides, settings=config_settings(args), display=display(detail=True))
    return 0
