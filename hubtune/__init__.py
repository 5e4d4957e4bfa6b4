"""hubtune: from a base model and a dataset on the Hugging Face Hub to a fine-tuned adapter others can trust.

    import hubtune
    run = hubtune.train(hubtune.load_config("run.yaml", ["training.learning_rate=1e-4"]))
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning: on a CPU shared with other work (a Space's
# page, other jobs) spinning threads take the cores the stragglers need. Read once, when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Heavy libraries (torch, transformers) load on first use, so `import hubtune` and the CLI's --help stay fast.
_EXPORTS = {
    "RunConfig": "hubtune.config",
    "load_config": ("hubtune.config", "load"),
    "build_config": ("hubtune.config", "build"),
    "ConfigError": "hubtune.errors",
    "HubtuneError": "hubtune.errors",
    "run_demo": "hubtune.demo",
    "evaluate": "hubtune.evaluation",
    "push": "hubtune.publish",
    "check_licences": ("hubtune.licence", "check"),
    "LicenceBlocked": "hubtune.errors",
}

if TYPE_CHECKING:
    from hubtune.config import RunConfig
    from hubtune.config import build as build_config
    from hubtune.config import load as load_config
    from hubtune.demo import run_demo
    from hubtune.errors import ConfigError, HubtuneError, LicenceBlocked
    from hubtune.licence import check as check_licences
    from hubtune.publish import push


# Bound here, not lazily: importing the submodule hubtune.train would otherwise replace
# the function `hubtune.train` with the module of the same name.
from hubtune.runs import RunFolder, Status  # noqa: E402
from hubtune.train import resume, train  # noqa: E402


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'hubtune' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(import_module(module), attr)


__all__ = sorted([*_EXPORTS, "RunFolder", "Status", "resume", "train"])
