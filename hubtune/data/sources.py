"""Read the rows of a data source: a local JSON/JSONL/CSV/Parquet file, a folder of them,
or a dataset on the Hub. Every row remembers where it came from (file and line) so that
later steps can point at it. Rows are read one at a time (`iter_rows`); `read_source` collects them."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
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
    out = SourceRows(source.path)
    for row, where, number in iter_rows(source, skip_bad_rows, out.bad_rows):
        out.add(row, f"{where} {number}", skip_bad_rows)
    return out


Row = tuple[dict, str, int]  # (row, where, number): its origin reads "{where} {number}", e.g. "data.jsonl, line 7"


def iter_rows(source: DataSource, skip_bad_rows: bool, bad_rows: list[str]) -> Iterator[Row]:
    """The rows of one source, one at a time (a million rows never sit in memory as dicts). Rows that
    are not JSON objects are errors, or, with skip_bad_rows, noted in bad_rows."""
    path = Path(resolve_builtin(source.path)).expanduser()
    if path.is_dir():
        files = data_files(path, source.split)
        if not files:
            raise DataError(f"{source.path}: no {', '.join(SUFFIXES)} files in this folder; "
                            f"point data.sources at a file or a folder that holds some")
        rows = (r for f in files for r in iter_file(f, skip_bad_rows, bad_rows))
    elif path.is_file():
        rows = iter_file(path, skip_bad_rows, bad_rows)
    elif looks_local(source.path):
        raise DataError(f"{source.path}: no such file or folder; check the path")
    else:
        rows = iter_hub(source)
    for row, where, number in rows:
        if isinstance(row, dict):
            yield row, where, number
        elif not skip_bad_rows:
            raise DataError(f"{where} {number}: a row is a JSON object, got {type(row).__name__}; {SKIP_HINT}")
        else:
            bad_rows.append(f"{where} {number}: a row is a JSON object, got {type(row).__name__}")


def data_files(folder: Path, split: str) -> list[Path]:
    """Files of a folder; those named after the split (train.jsonl, train-0000.parquet) when any are."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    named = [p for p in files if p.stem == split or p.stem.startswith((f"{split}-", f"{split}_", f"{split}."))]
    return named or files


def iter_file(path: Path, skip_bad_rows: bool, bad_rows: list[str]) -> Iterator[Row]:
    if path.suffix == ".jsonl":
        return iter_json_lines(path, skip_bad_rows, bad_rows)
    if path.suffix == ".json":
        return iter_json(path, skip_bad_rows, bad_rows)
    if path.suffix == ".csv":
        return iter_csv(path)
    if path.suffix == ".parquet":
        return iter_parquet(path)
    raise DataError(f"{path}: cannot read {path.suffix or 'files without a suffix'}; "
                    f"use one of {', '.join(SUFFIXES)}")


def read_file(path: Path, out: SourceRows, skip_bad_rows: bool) -> None:
    for row, where, number in iter_file(path, skip_bad_rows, out.bad_rows):
        out.add(row, f"{where} {number}", skip_bad_rows)


def iter_json_lines(path: Path, skip_bad_rows: bool, bad_rows: list[str]) -> Iterator[Row]:
    where = f"{path}, line"
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                why = f"{path}, line {n}, column {err.colno}: not valid JSON ({err.msg})"
                if not skip_bad_rows:
                    raise DataError(f"{why}; {SKIP_HINT}") from None
                bad_rows.append(why)
                continue
            yield row, where, n


def read_json_lines(path: Path, out: SourceRows, skip_bad_rows: bool) -> None:
    for row, where, number in iter_json_lines(path, skip_bad_rows, out.bad_rows):
        out.add(row, f"{where} {number}", skip_bad_rows)


def iter_json(path: Path, skip_bad_rows: bool, bad_rows: list[str]) -> Iterator[Row]:
    """A JSON array of rows, or JSON lines in a .json file (a common mix-up, so both are read)."""
    with path.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if not head.startswith("["):
        yield from iter_json_lines(path, skip_bad_rows, bad_rows)
        return
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        # One broken element spoils the whole array, so there is no row to skip.
        raise DataError(f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); "
                        f"fix the file") from None
    where = f"{path}, element"
    for i in range(len(rows)):
        row, rows[i] = rows[i], None  # let each row go once handed on
        yield row, where, i


def iter_csv(path: Path) -> Iterator[Row]:
    where = f"{path}, line"
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        start = reader.line_num + 1
        for row in reader:
            yield row, where, start
            start = reader.line_num + 1


def iter_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=10_000)
        n = 0
        where = f"{path}, row"
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield row, where, n
    except DataError:
        raise
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None


def iter_hub(source: DataSource) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(source.path, source.name, split=source.split, revision=source.revision)
    except Exception as err:  # datasets raises many types (not found, offline, bad split, bad config)
        raise DataError(f"{source.path}: cannot load this dataset from the Hub ({type(err).__name__}: {err}); "
                        f"check the id, name, split and revision, or give a local file") from None
    where = f"{source.path} ({source.split}), row"
    for i, row in enumerate(ds):
        yield row, where, i + 1
