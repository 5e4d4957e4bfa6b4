"""What a model or dataset reference names: a built-in asset, a local path, or a Hub repo.

One parser, used by config validation, the licence gate, pulling, data reading and the card:

    RepoRef.parse("hubtune:tiny-llama").kind        -> "builtin"
    RepoRef.parse("./data/train.jsonl").kind        -> "local"
    RepoRef.parse("meta-llama/Llama-3.1-8B").kind   -> "hub"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ASSETS = Path(__file__).parent / "assets"
BUILTIN_PREFIX = "hubtune:"
# File names that are data, never a repo id, whether the file exists yet or not.
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".json.gz", ".jsonl.gz", ".csv.gz")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def resolve_builtin(ref: str) -> str:
    """`hubtune:tiny-llama` -> the path of an asset shipped inside the package; anything else unchanged."""
    if ref.startswith(BUILTIN_PREFIX):
        return str(ASSETS / ref[len(BUILTIN_PREFIX):])
    return ref


@dataclass(frozen=True)
class RepoRef:
    ref: str  # as the user wrote it
    kind: Literal["builtin", "local", "hub"]

    @classmethod
    def parse(cls, ref: str) -> RepoRef:
        """Classify by shape first (./x, /x, ~/x, a data-file name, a/b/c are paths whether they exist
        or not), then by existence (an existing folder `org/name` is local), then as a Hub id."""
        if ref.startswith(BUILTIN_PREFIX):
            return cls(ref, "builtin")
        if (ref.startswith((".", "/", "~")) or ref.endswith(DATA_SUFFIXES) or ref.count("/") > 1
                or Path(ref).expanduser().exists()):
            return cls(ref, "local")
        return cls(ref, "hub")

    @property
    def is_hub(self) -> bool:
        return self.kind == "hub"

    @property
    def is_local(self) -> bool:
        """A built-in asset or a path on this machine."""
        return self.kind != "hub"

    @property
    def path(self) -> Path:
        """The local path (built-in assets resolved); only for local references."""
        if self.is_hub:
            raise ValueError(f"{self.ref} is a Hub repo id, not a local path")
        return Path(resolve_builtin(self.ref)).expanduser()

    @property
    def repo_id(self) -> str | None:
        return self.ref if self.is_hub else None

    def problem(self, what: str = "file or folder") -> str | None:
        """Why this reference cannot be used, or None: a local path that does not exist, or a malformed id."""
        if self.is_local and not self.path.exists():
            return f"{self.ref!r} is neither an existing {what} nor a Hub repo id (owner/name)"
        if self.is_hub and not _HUB_ID.match(self.ref):
            return f"{self.ref!r} is neither an existing {what} nor a Hub repo id (owner/name)"
        return None


def is_hub_id(ref: str) -> bool:
    return RepoRef.parse(ref).is_hub


def data_label(ref: str) -> str:
    """How a dataset is named to people (cards, summaries, messages, `licence.acknowledge`): a Hub id or
    a built-in asset as written, a local file or folder by its name alone, never the path on a machine."""
    parsed = RepoRef.parse(ref)
    return parsed.path.name if parsed.kind == "local" else ref


def file_sha256(path: str | Path) -> str | None:
    """The content hash of a local data file (None for a folder, a Hub id or a missing file)."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
