"""Training data: read sources in any supported format, turn rows into chat examples, check
the chat template, clean the data (duplicates, lengths, scores, task balance), split off a
held-out set, mix in general data, and report each step.

`prepare(data_section, tokenizer, seed)` is the one entry point (training and `hubtune data` use it);
`write_jsonl` saves prepared rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from hubtune.data.formats import to_example
from hubtune.data.pipeline import PreparedData, prepare

__all__ = ["PreparedData", "prepare", "write_jsonl", "load_tokenizer", "alpaca_to_messages"]


def write_jsonl(rows, path: str | Path) -> int:
    """Rows (a Dataset or a list of dicts) as JSON lines; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def load_tokenizer(model_id: str, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of a base model (Hub id, local folder or hubtune:<asset>), for token lengths."""
    from transformers import AutoTokenizer

    from hubtune import hub
    from hubtune.errors import DataError
    from hubtune.refs import RepoRef, resolve_builtin

    hub.check_remote_code(trust_remote_code, model_id)
    if RepoRef.parse(model_id).is_hub:
        with hub.hub_errors(model_id, "model", revision):
            hub.require_access(model_id, "model", revision)
    try:
        return AutoTokenizer.from_pretrained(resolve_builtin(model_id), revision=revision, token=hub.token(),
                                             trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot load the tokenizer of {model_id} ({err}); token lengths are measured with the "
                        f"base model's tokenizer: pass a local model folder or a Hub id with --model") from None


def alpaca_to_messages(row: dict) -> dict:
    """An Alpaca row as the conversational prompt/completion row training uses."""
    return to_example(row, "alpaca", "task", "row").row()

