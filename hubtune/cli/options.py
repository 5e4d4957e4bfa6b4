"""What the command modules share: options derived from the run config, the console display, --out files."""

from __future__ import annotations

import argparse
from typing import Literal, get_args, get_origin

from hubtune.errors import HubtuneError


def config_option(parser: argparse.ArgumentParser, flag: str, path: str, dest: str | None = None, **kwargs) -> None:
    """An option that sets the run-config field at `path` (e.g. licence.use): its type, choices, default
    and help all come from the field, so the CLI never restates them. Unset, it leaves the config alone."""
    from hubtune.config import field_at

    field = field_at(path)
    kinds = (field.annotation, *get_args(field.annotation))
    choices = next((get_args(k) for k in kinds if get_origin(k) is Literal), None)
    default = field.get_default(call_default_factory=True)
    shown = default.value if hasattr(default, "value") else default
    # argparse formats help with %: a field that speaks of train[:20%] must not break `--help`.
    help_text = f"{field.description} (config: {path}; default {shown})".replace("%", "%%")
    options: dict = {"dest": dest or path, "default": None, "help": help_text}
    if bool in kinds:
        options["action"] = argparse.BooleanOptionalAction
    elif any(get_origin(k) is list for k in kinds):
        options["nargs"] = "+"
    else:
        options["choices"] = choices
        options["type"] = next((t for t in (int, float) if t in kinds), str)
    if "action" not in options and not choices:
        options["metavar"] = path.rsplit(".", 1)[-1].upper()
    parser.add_argument(flag, **{**options, **kwargs})


def config_settings(args: argparse.Namespace) -> dict:
    """The config fields set by `config_option`s, as a nested dict for `config.build`."""
    tree: dict = {}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            *parents, leaf = dest.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return tree


def display(detail: bool = False):
    from hubtune.progress import Display

    return Display(detail=detail)


def write_out(path: str, text: str) -> None:
    """A file the user named with --out, its folder made if need be (runs/x.yaml in a fresh folder)."""
    from pathlib import Path

    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as err:
        raise HubtuneError(f"cannot write {out} ({err.strerror}); give --out a path in a folder you can "
                           f"write") from None
