"""Read the rows of a data source: a local JSON/JSONL/CSV/Parquet file, a folder of them,
or a dataset on the Hub. Every row remembers where it came from (file and line) so that
later steps can point at it."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from hubtune.config import DataSource, looks_local, resolve_builtin
from hubtune.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SKIP_HINT = "fix the row or remove it, or skip bad rows with --skip-bad-rows (data.skip_bad_rows: true)"


@dataclass
class SourceRows:
    name: str  # what the user wrote, for the report
    rows: list[dict] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)  # "file, line N" for each row
    bad_rows: list[str] = field(default_factory=list)  # "where: why" for each skipped row

    def add(self, row, origin: str, skip_bad_rows: bool) -> None:
        if isinstance(row, dict):
            self.rows.append(row)
            self.origins.append(origin)
        else:
            self.bad(origin, f"a row is a JSON object, got {type(row).__name__}", skip_bad_rows)

    def bad(self, origin: str, why: str, skip_bad_rows: bool) -> None:
        if not skip_bad_rows:
            raise DataError(f"{origin}: {why}; {SKIP_HINT}")
        self.bad_rows.append(f"{origin}: {why}")


def read_source(source: DataSource, skip_bad_rows: bool = False) -> SourceRows:
    """All rows of one source, in order."""
    path = Path(resolve_builtin(source.path)).expanduser()
    out = SourceRows(source.path)
    if path.is_dir():
        files = data_files(path, source.split)
        if not files:
            raise DataError(f"{source.path}: no {', '.join(SUFFIXES)} files in this folder; "
                            f"point data.sources at a file or a folder that holds some")
        for f in files:
            read_file(f, out, skip_bad_rows)
    elif path.is_file():
        read_file(path, out, skip_bad_rows)
    elif looks_local(source.path):
        raise DataError(f"{source.path}: no such file or folder; check the path")
    else:
        read_hub(source, out)
    return out


def data_files(folder: Path, split: str) -> list[Path]:
    """Files of a folder; those named after the split (train.jsonl, train-0000.parquet) when any are."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    named = [p for p in files if p.stem == split or p.stem.startswith((f"{split}-", f"{split}_", f"{split}."))]
    return named or files


def read_file(path: Path, out: SourceRows, skip_bad_rows: bool) -> None:
    if path.suffix == ".jsonl":
        read_json_lines(path, out, skip_bad_rows)
    elif path.suffix == ".json":
        read_json(path, out, skip_bad_rows)
    elif path.suffix == ".csv":
        read_csv(path, out)
    elif path.suffix == ".parquet":
        read_parquet(path, out)
    else:
        raise DataError(f"{path}: cannot read {path.suffix or 'files without a suffix'}; "
                        f"use one of {', '.join(SUFFIXES)}")


def read_json_lines(path: Path, out: SourceRows, skip_bad_rows: bool) -> None:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                out.bad(f"{path}, line {n}, column {err.colno}", f"not valid JSON ({err.msg})", skip_bad_rows)
                continue
            out.add(row, f"{path}, line {n}", skip_bad_rows)


def read_json(path: Path, out: SourceRows, skip_bad_rows: bool) -> None:
    """A JSON array of rows, or JSON lines in a .json file (a common mix-up, so both are read)."""
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        return read_json_lines(path, out, skip_bad_rows)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        # One broken element spoils the whole array, so there is no row to skip.
        raise DataError(f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); "
                        f"fix the file") from None
    for i, row in enumerate(rows):
        out.add(row, f"{path}, element {i}", skip_bad_rows)


def read_csv(path: Path, out: SourceRows) -> None:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        start = reader.line_num + 1
        for row in reader:
            out.add(row, f"{path}, line {start}", False)
            start = reader.line_num + 1


def read_parquet(path: Path, out: SourceRows) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    for i, row in enumerate(table.to_pylist()):
        out.add(row, f"{path}, row {i + 1}", False)


def read_hub(source: DataSource, out: SourceRows) -> None:
    import datasets

    try:
        ds = datasets.load_dataset(source.path, source.name, split=source.split, revision=source.revision)
    except Exception as err:  # datasets raises many types (not found, offline, bad split, bad config)
        raise DataError(f"{source.path}: cannot load this dataset from the Hub ({type(err).__name__}: {err}); "
                        f"check the id, name, split and revision, or give a local file") from None
    for i, row in enumerate(ds):
        out.add(row, f"{source.path} ({source.split}), row {i + 1}", False)
