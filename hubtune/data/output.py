"""Where `hubtune data prepare` writes, checked before any work: the training rows (FILE.jsonl), the
held-out rows (FILE.eval.jsonl) and their checksums (FILE.sha256, in `sha256sum` format, so
`sha256sum -c FILE.sha256` verifies them). The checksums are how a later run knows a file is hubtune's
own, unedited output and may be replaced; any other existing file, and above all one of the sources
being read, is only overwritten when asked."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hubtune.config import DataSection
from hubtune.errors import OutputPathError
from hubtune.refs import RepoRef, file_sha256


@dataclass(frozen=True)
class PreparedPaths:
    train: Path
    eval: Path
    record: Path

    @classmethod
    def for_out(cls, out: str | Path) -> PreparedPaths:
        stem = str(out).removesuffix(".jsonl")
        return cls(Path(out), Path(stem + ".eval.jsonl"), Path(stem + ".sha256"))


def check_outputs(out: str | Path, data: DataSection, force: bool = False) -> PreparedPaths:
    """The paths `out` stands for, or OutputPathError when one is a folder, cannot be written, is a source
    being read, or is an existing file hubtune did not write (the last two pass with force)."""
    paths = PreparedPaths.for_out(out)
    sources = _local_sources(data)
    for target in (paths.train, paths.eval):
        if target.is_dir():
            raise OutputPathError(f"--out {target} is a folder; give a file path such as {target / 'train.jsonl'}")
        resolved = target.resolve()
        source = next((s for s in sources if resolved == s or (s.is_dir() and s in resolved.parents)), None)
        if source is not None and not force:
            raise OutputPathError(f"--out {target} would overwrite the data it is prepared from ({source}); write "
                                  f"to another file (or pass --force to replace the source)")
        if target.exists() and source is None and not force and not written_by_hubtune(target, paths.record):
            raise OutputPathError(f"--out {target} exists and was not written by `hubtune data prepare`; choose "
                                  f"another path, delete it, or pass --force to overwrite it")
    if paths.record.exists() and not force and _record_of(paths.record) is None:
        raise OutputPathError(f"{paths.record} (where `hubtune data prepare --out {out}` writes the checksums of what "
                              f"it wrote) exists and holds something else; move it, or pass --force to overwrite it")
    _writable(paths.train.parent)
    return paths


def written_by_hubtune(path: Path, record: Path) -> bool:
    """True when `record` (FILE.sha256) lists `path` with the content it has now."""
    written = _record_of(record)
    return written is not None and written.get(path.name) == file_sha256(path)


def write_record(paths: PreparedPaths) -> None:
    lines = [f"{file_sha256(p)}  {p.name}\n" for p in (paths.train, paths.eval) if p.is_file()]
    paths.record.write_text("".join(lines))


_SHA_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def _record_of(record: Path) -> dict | None:
    """{file name: sha256} from a sha256sum-format file, or None when it is not one."""
    try:
        lines = record.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    found = [_SHA_LINE.match(line) for line in lines if line.strip()]
    if not found or not all(found):
        return None
    return {m.group(2): m.group(1) for m in found}


def _local_sources(data: DataSection) -> list[Path]:
    sources = [*data.sources, *([data.mix.source] if data.mix.source else [])]
    refs = [RepoRef.parse(s.path) for s in sources]
    return [r.path.resolve() for r in refs if r.kind == "local"]


def _writable(folder: Path) -> None:
    """Create the folder if needed and write a probe file in it: what matters is whether writing works,
    which permission bits alone do not tell (root, read-only mounts, a file where a folder should be)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hubtune-probe-"):
            pass
    except OSError as err:
        raise OutputPathError(f"--out: cannot write in {folder} ({err.strerror or err}); choose a folder this user "
                              f"can write to") from None


