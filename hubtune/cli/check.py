"""`hubtune check`: the licences of a base model and datasets for a declared use."""

from __future__ import annotations

import argparse

from hubtune.cli.options import config_option


def add(command, common) -> None:
    p = command("check", help="check the licences of a base model and datasets for a declared use")
    p.add_argument("model", help="base model: Hub repo id, local folder or hubtune:<asset>")
    p.add_argument("--dataset", action="append", default=[], metavar="ID", help="a dataset (repeat for several)")
    config_option(p, "--use", "licence.use")
    config_option(p, "--revision", "model.revision")
    p.add_argument("--publish", action="store_true", help="also check that an adapter may be published")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from hubtune.config import field_at
    from hubtune.licence import check, format_table

    use = getattr(args, "licence.use") or field_at("licence.use").get_default()
    verdict = check(args.model, args.dataset, use=use, revision=getattr(args, "model.revision"), publish=args.publish)
    print(json.dumps(verdict.to_dict(), indent=2) if args.json else format_table(verdict))
    return 3 if verdict.verdict == "block" else 0
