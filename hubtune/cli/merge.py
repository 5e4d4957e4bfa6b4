"""`hubtune merge`: a run's adapter merged into its unquantized base."""

from __future__ import annotations

import argparse


def add(command, common) -> None:
    from hubtune.merge import DTYPES

    p = command("merge", help="merge a run's adapter into its unquantized base: a standalone model")
    p.add_argument("run", metavar="RUN", help="a finished run folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the merged model (new or empty)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="dtype of the saved weights (default auto: the base's own)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtune.merge import merge
    from hubtune.progress import quiet_libraries, verbose

    with quiet_libraries(show=verbose()):
        result = merge(args.run, args.out, dtype=args.dtype)
    difference = result.max_logit_difference
    print(f"merged {result.base} + {args.run} into {result.path} ({result.dtype})"
          + (f"; largest logit difference from the adapter on held-out prompts: {difference:.2e}"
             if difference is not None else ""))
    return 0
