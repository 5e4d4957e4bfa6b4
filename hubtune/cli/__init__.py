"""`hubtune ...`: a thin shell over the Python API.

One module per command (`hubtune/cli/train.py` for `hubtune train`, ...): each adds its parser and
calls one library function. Options that set a run-config field come from the field (`config_option`).
Known errors print their message (which says how to fix the problem) and exit with the error's code;
HUBTUNE_DEBUG=1 shows the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from hubtune import distributed
from hubtune.cli.options import config_option, config_settings
from hubtune.errors import translate

__all__ = ["build_parser", "config_option", "config_settings", "hf_tune", "main"]

VERBOSE_ENV = "HUBTUNE_VERBOSE"
# In the order `hubtune --help` lists them; each module has add(command, common) and its handlers.
COMMANDS = ("train", "jobs", "merge", "export", "config", "demo", "eval", "check", "push", "estimate", "data", "ui",
            "space")


def build_parser(prog: str = "hubtune") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Fine-tune, check, evaluate and publish LoRA adapters.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show third-party output too (library warnings, progress bars); HUBTUNE_DEBUG=1 also "
                             "shows tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    for name in COMMANDS:
        importlib.import_module(f"hubtune.cli.{name}").add(command, common)
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
    # One of several launched processes: only the main one shows progress; each one's error is reported
    # with its rank (by the launching `hubtune train`, or here under a launcher of the user's own).
    distributed.started()
    try:
        use_timeouts()  # every Hub request this command makes, hubtune's or a library's, gets a timeout
        with distributed.console():
            code = args.func(args) or 0
        distributed.ended(None)
        return code
    except KeyboardInterrupt:
        return _report("interrupted", 130, "")
    except Exception as err:
        # Known errors, and foreign ones the table in hubtune.errors can explain, print their fix;
        # anything else is a bug or a case not handled yet: one line, the traceback on request.
        typed = translate(err)
        if typed is None:
            message = (f"unexpected {type(err).__name__}: {err}\n(a case hubtune does not handle yet; "
                       f"HUBTUNE_DEBUG=1 shows the traceback)")
            code = 1
        else:
            message, code = str(typed), typed.exit_code
        if debug:
            distributed.ended(message, code)
            raise
        return _report(message, code)


def _report(message: str, code: int, prefix: str = "error: ") -> int:
    """An error of this command on stderr; one process of several names its rank, and leaves the
    message to the `hubtune train` that launched it, which reports all of them once."""
    if not distributed.ended(message, code):
        rank = f"{distributed.who()}: " if distributed.world_size() > 1 else ""
        print(f"{prefix}{rank}{message}", file=sys.stderr)
    return code


def hf_tune() -> int:
    """`hf-tune`: the same commands as `hf tune ...`, an extension of huggingface_hub's `hf` CLI."""
    return main(prog="hf tune")


if __name__ == "__main__":
    sys.exit(main())
