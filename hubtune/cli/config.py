"""`hubtune config convert|export`: Axolotl configs to hubtune run configs and back."""

from __future__ import annotations

import argparse
import sys

from hubtune.cli.options import write_out


def add(command, common) -> None:
    p = command("config", help="convert Axolotl configs to hubtune run configs and back")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    c = config_sub.add_parser("convert", parents=[common], help="write the hubtune run config of an Axolotl config")
    c.add_argument("source", metavar="AXOLOTL.yml", help="an Axolotl config")
    c.add_argument("--out", required=True, metavar="RUN.yaml", help="the run config to write")
    c.add_argument("--ignore-unsupported", action="store_true", help="leave out the keys hubtune cannot honour")
    c.set_defaults(func=convert)
    c = config_sub.add_parser("export", parents=[common], help="write the Axolotl config of a hubtune run (or run config)")
    c.add_argument("run", metavar="RUN", help="a run folder or a run config YAML")
    c.add_argument("--to", choices=["axolotl"], default="axolotl", help="the format to write (axolotl)")
    c.add_argument("--out", metavar="FILE.yml", help="write here instead of printing")
    c.set_defaults(func=export)


def convert(args: argparse.Namespace) -> int:
    from hubtune.interop import axolotl

    translation = axolotl.read(args.source)
    config = translation.run_config(ignore_unsupported=args.ignore_unsupported)
    report = translation.report(ignored=args.ignore_unsupported)
    header = f"# Translated by hubtune from the Axolotl config {args.source}\n"
    header += "".join(f"# {line}\n" for line in report.splitlines())
    write_out(args.out, header + config.to_yaml())
    print(report + ("\n" if report else "") + f"wrote {args.out}")
    return 0


def export(args: argparse.Namespace) -> int:
    import yaml

    from hubtune.interop import axolotl

    exported = axolotl.export(args.run)
    text = yaml.safe_dump(exported, sort_keys=False)
    if args.out:
        write_out(args.out, text)
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
