"""Limits on a data file a user uploads to the app, checked by streaming it before anything parses it:
decompressed bytes, rows, and the longest line. A small file can hold a great deal (a gzip of one 3 GB line,
a Parquet file whose one dictionary value repeats a million times); reading it whole would take the
memory of the process that serves everyone. Settings: HUBTUNE_UPLOAD_MAX_ROWS (default 500,000),
HUBTUNE_UPLOAD_MAX_LINE_MB (1), HUBTUNE_UPLOAD_MAX_MB (decompressed, 1,024)."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

from hubtune.errors import BudgetError

BLOCK = 1 << 20


def _setting(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


@dataclass(frozen=True)
class UploadLimits:
    max_rows: int
    max_line_bytes: int
    max_bytes: int

    @classmethod
    def from_env(cls) -> UploadLimits:
        return cls(max_rows=int(_setting("HUBTUNE_UPLOAD_MAX_ROWS", 500_000)),
                   max_line_bytes=int(_setting("HUBTUNE_UPLOAD_MAX_LINE_MB", 1) * 2**20),
                   max_bytes=int(_setting("HUBTUNE_UPLOAD_MAX_MB", 1024) * 2**20))


def check_upload(path: Path, name: str | None = None, limits: UploadLimits | None = None) -> None:
    """BudgetError, naming the file, the limit and what to do, when the upload is over one of the limits."""
    limits = limits or UploadLimits.from_env()
    name = name or path.name
    if name.lower().endswith(".parquet"):
        _check_parquet(path, name, limits)
    else:
        _check_text(path, name, limits)


def _over(name: str, what: str) -> BudgetError:
    return BudgetError(f"{name}: {what}. Uploads to this page are limited so that one file cannot take the memory "
                       f"of the app everyone shares; split the file, or put the dataset on the Hub and give its id")


def _check_text(path: Path, name: str, limits: UploadLimits) -> None:
    opener = gzip.open if name.lower().endswith(".gz") else open
    rows = line = total = 0
    try:
        with opener(path, "rb") as f:
            while block := f.read(BLOCK):
                total += len(block)
                if total > limits.max_bytes:
                    raise _over(name, f"more than {limits.max_bytes / 2**20:,.0f} MB once decompressed")
                start = 0
                while (end := block.find(b"\n", start)) >= 0:
                    line += end - start
                    if line > limits.max_line_bytes:
                        break
                    rows, line, start = rows + 1, 0, end + 1
                else:
                    line += len(block) - start
                if line > limits.max_line_bytes:
                    raise _over(name, f"line {rows + 1} is longer than {limits.max_line_bytes / 2**20:,.0f} MB")
                if rows > limits.max_rows:
                    raise _over(name, f"more than {limits.max_rows:,} rows")
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise BudgetError(f"{name}: cannot be read as {'gzip-compressed ' if opener is gzip.open else ''}text "
                          f"({err}); upload the file itself, .jsonl, .csv or .json, optionally .gz") from None


def _check_parquet(path: Path, name: str, limits: UploadLimits) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow's own errors for a file that is not Parquet
        raise BudgetError(f"{name}: not a readable Parquet file ({err}); upload .parquet written by pandas, "
                          f"pyarrow or datasets") from None
    if table.metadata.num_rows > limits.max_rows:
        raise _over(name, f"{table.metadata.num_rows:,} rows, more than {limits.max_rows:,}")
    total = 0
    for batch in table.iter_batches(batch_size=64):  # decoded a few rows at a time
        total += batch.nbytes
        if total > limits.max_bytes:
            raise _over(name, f"more than {limits.max_bytes / 2**20:,.0f} MB of values once decoded")
        if batch.num_rows and batch.nbytes / batch.num_rows > limits.max_line_bytes:
            raise _over(name, f"rows of more than {limits.max_line_bytes / 2**20:,.0f} MB each")
