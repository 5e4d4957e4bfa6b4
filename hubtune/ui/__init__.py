"""The Gradio app (`hubtune ui`, and the Space): a page thin over the library and a job runner that runs
`hubtune train` / `hubtune eval` as subprocesses. Importing this package does not import Gradio."""

from __future__ import annotations


def build_app(root=None, runner=None):
    from hubtune.ui.app import build_app as build

    return build(root, runner)


def launch(root=None, share_token_with_visitors: bool = False, **kwargs) -> None:
    from hubtune.ui.app import launch as serve

    serve(root, share_token_with_visitors=share_token_with_visitors, **kwargs)


__all__ = ["build_app", "launch"]
