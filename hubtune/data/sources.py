"""Read the rows of a data source: a local JSON/JSONL/CSV/Parquet file, a folder of them,
or a dataset on the Hub. A Hub dataset is downloaded at its revision and read like a folder,
so every row, wherever it came from, remembers its file and line for later steps to point at.
Rows are read one at a time (`iter_rows`: a million rows never sit in memory as dicts);
`read_source` collects them."""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hubtune.config import DataSource
from hubtune.data.formats import column_list
from hubtune.errors import DataError
from hubtune.refs import RepoRef

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz", ".json.gz", ".csv.gz")
SPLIT_ALIASES = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
                 "test": ("test", "testing", "eval")}
SKIP_HINT = "fix the row or remove it, or skip bad rows with --skip-bad-rows (data.skip_bad_rows: true)"
TOO_DEEP = "nested deeper than the JSON reader can follow (lists or objects inside each other thousands of times)"
EXTRA_CELLS = "\0extra cells"  # csv.DictReader's key for cells beyond the header; no real column is named so

Row = tuple[dict, str, int]  # (row, where, number): its origin reads "{where} {number}", e.g. "data.jsonl, line 7"


@dataclass
class SourceRows:
    name: str  # what the user wrote, for the report
    rows: list[dict] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)  # "file, line N" for each row
    bad_rows: list[str] = field(default_factory=list)  # "where: why" for each skipped row
    revision_sha: str | None = None  # the commit a Hub dataset was read at; None for local data


def read_source(source: DataSource, skip_bad_rows: bool = False) -> SourceRows:
    """All rows of one source, in order: a file, the files of a folder's split, or a Hub dataset's."""
    files, revision_sha = locate(source)
    out = SourceRows(source.path, revision_sha=revision_sha)
    for row, where, number in iter_source_rows(source, files, skip_bad_rows, out.bad_rows):
        out.rows.append(row)
        out.origins.append(f"{where} {number}")
    return out


def iter_source_rows(source: DataSource, files: list[Path], skip_bad_rows: bool, bad_rows: list[str]) -> Iterator[Row]:
    """iter_rows over a source's files, keeping only the rows of a sliced split (train[:20%]). A slice by
    share or from the end counts the rows first (one extra pass over the files, nothing kept in memory)."""
    if not source.split_slice:
        yield from iter_rows(files, skip_bad_rows, bad_rows)
        return
    total = sum(1 for _ in iter_rows(files, True, [])) if re.search(r"[%-]", source.split_slice) else 10**18
    start, stop = slice_bounds(source, total)
    for i, item in enumerate(iter_rows(files, skip_bad_rows, bad_rows)):
        if i >= stop:
            return
        if i >= start:
            yield item


def slice_bounds(source: DataSource, rows: int) -> tuple[int, int]:
    """The rows a sliced split (train[:20%], train[100:500]) takes out of `rows`, rounded as `datasets`
    rounds them, so the same split string reads the same rows here as in load_dataset."""
    from datasets import ReadInstruction

    (absolute,) = ReadInstruction.from_spec(source.split.replace(" ", "")).to_absolute({source.split_name: rows})
    return absolute.from_, absolute.to


def locate(source: DataSource) -> tuple[list[Path], str | None]:
    """The files holding one source's split, and the commit sha a Hub dataset was downloaded at."""
    from hubtune.hub import download_dataset, read_card_metadata

    ref = RepoRef.parse(source.path)
    revision_sha = None
    if ref.is_hub:
        folder, revision_sha = download_dataset(source)
    elif ref.path.is_dir() or ref.path.is_file():
        folder = ref.path
    else:
        raise DataError(f"{source.path}: no such file or folder; check the path")
    if source.data_files:
        return named_files(folder, source), revision_sha
    if folder.is_file():
        return [folder], revision_sha
    return split_files(folder, source, read_card_metadata(folder / "README.md")), revision_sha


def named_files(root: Path, source: DataSource) -> list[Path]:
    """The files a source's data_files names inside its folder or Hub dataset (paths or glob patterns, as
    load_dataset reads them), in the order given."""
    if root.is_file():
        raise DataError(f"{source.path} is a file; data_files picks files inside a dataset or folder: point path "
                        f"at the folder, or leave data_files out")
    files: list[Path] = []
    for pattern in source.data_files:
        found = sorted(p for p in root.glob(_inside(pattern, root, source)) if p.is_file())
        if not found:
            raise DataError(f"{source.path}: no file matches data_files {pattern!r}; check the name against the "
                            f"dataset's files")
        files += [p for p in found if p not in files]
    return files


def iter_rows(files: list[Path], skip_bad_rows: bool, bad_rows: list[str]) -> Iterator[Row]:
    """The rows of these files, one at a time. A row that is not a JSON object (or a CSV line that
    cannot be trusted) is a DataError, or, with skip_bad_rows, a "where: why" line in bad_rows."""
    for path in files:
        try:
            for row, where, number in _iter_file(path, skip_bad_rows, bad_rows):
                if isinstance(row, dict):
                    yield row, where, number
                else:
                    _bad(bad_rows, f"{where} {number}", f"a row is a JSON object, got {type(row).__name__}",
                         skip_bad_rows)
        except UnicodeDecodeError:
            raise not_utf8(path) from None


def _bad(bad_rows: list[str], origin: str, why: str, skip_bad_rows: bool) -> None:
    if not skip_bad_rows:
        raise DataError(f"{origin}: {why}; {SKIP_HINT}")
    bad_rows.append(f"{origin}: {why}")


def split_files(root: Path, source: DataSource, card: dict | None) -> list[Path]:
    """The files of one config and split in a folder or a downloaded Hub dataset: by the card's
    `configs:` section when there is one, otherwise by the Hub's naming conventions
    (train.jsonl, train-00000-of-00002.parquet, data/test/x.jsonl, ...)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
    if not files:
        raise DataError(f"{source.path}: no {', '.join(SUFFIXES[:4])} files in this folder; "
                        f"point data.sources at a file or a folder that holds some")
    configs = (card or {}).get("configs") or []
    if configs:
        chosen = _card_split(root, source, configs)
    else:
        scoped = [f for f in files if source.name is None or source.name in f.relative_to(root).parts[:-1]]
        chosen = [f for f in scoped if _split_of(f.relative_to(root)) == source.split_name]
        if not chosen and source.split_name == "train":
            chosen = [f for f in scoped if _split_of(f.relative_to(root)) is None]
    if not chosen:
        found = ", ".join(str(f.relative_to(root)) for f in files[:10])
        raise DataError(f"{source.path}: no data files for split {source.split_name!r}"
                        f"{f' of config {source.name!r}' if source.name else ''} (found: {found}); "
                        f"set the source's `split` / `name`, or point `path` at a file")
    return chosen


def _card_split(root: Path, source: DataSource, configs: list[dict]) -> list[Path]:
    names = [c.get("config_name", "default") for c in configs]
    wanted = source.name or ("default" if "default" in names else names[0])
    config = next((c for c in configs if c.get("config_name", "default") == wanted), None)
    if config is None:
        raise DataError(f"{source.path}: no config {wanted!r}; available: {', '.join(names)} "
                        f"(set the source's `name`)")
    data_files = config.get("data_files") or []
    if isinstance(data_files, (str, dict)):
        data_files = [data_files]
    entries = [e if isinstance(e, dict) else {"split": "train", "path": e} for e in data_files]
    entry = next((e for e in entries if e.get("split", "train") == source.split_name), None)
    if entry is None:
        splits = ", ".join(e.get("split", "train") for e in entries)
        raise DataError(f"{source.path} (config {wanted!r}): no split {source.split_name!r}; "
                        f"available: {splits} (set the source's `split`)")
    globs = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
    return sorted({p for g in globs for p in root.glob(_inside(g, root, source)) if p.is_file()})


def _inside(pattern, root: Path, source: DataSource) -> str:
    """A card's data_files pattern, which must stay inside the dataset's folder: relative, without `..`."""
    parts = Path(str(pattern)).parts
    if not isinstance(pattern, str) or not pattern or Path(pattern).is_absolute() or ".." in parts:
        raise DataError(f"{source.path}: the card's data_files pattern {pattern!r} points outside the dataset "
                        f"({root.name}); a pattern is a path relative to the dataset's root, such as "
                        f"data/train-*.parquet")
    return pattern


def _split_of(rel: Path) -> str | None:
    """The split a data file belongs to by its name or folder (train-00000.parquet, test/x.jsonl)."""
    words = [w for part in rel.parts for w in re.split(r"[^a-zA-Z]+", part.lower()) if w]
    for split, aliases in SPLIT_ALIASES.items():
        if any(w in aliases for w in words):
            return split
    return None


def _open_text(path: Path):
    """A data file as UTF-8 text; `.gz` files are decompressed on the fly. A byte-order mark (Excel's
    "CSV UTF-8" writes one) is dropped, or it would become part of the first column's name."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def not_utf8(path: Path) -> DataError:
    """Where a file stops being UTF-8 (byte offset, line) and how to re-encode it."""
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    try:
        raw.decode("utf-8")
        return DataError(f"{path}: not UTF-8 text; re-encode it as UTF-8")
    except UnicodeDecodeError as err:
        offset = err.start
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "UTF-16"
    else:
        try:
            raw.decode("cp1252")
            encoding = "WINDOWS-1252"  # what Excel's plain "CSV" and many Windows tools write
        except UnicodeDecodeError:
            encoding = "ITS-ENCODING"
    line = raw.count(b"\n", 0, offset) + 1
    target = path.with_name(path.name.replace(".", ".utf8.", 1))
    what = (f"{path}: not UTF-8 text: byte 0x{raw[offset]:02x} at byte offset {offset} (line {line}) is not "
            f"valid UTF-8. hubtune reads data as UTF-8; re-encode the file")
    return DataError(f"{what}, e.g. `iconv -f {encoding} -t UTF-8 {path} > {target}` (in Excel: Save As "
                     f"\"CSV UTF-8\")").for_page(f"{what} and upload it again: in Excel, Save As \"CSV UTF-8\"; in a "
                                                f"text editor, save with the UTF-8 encoding")


def _iter_file(path: Path, skip_bad_rows: bool, bad_rows: list[str]) -> Iterator[Row]:
    suffix = path.name.removesuffix(".gz").rsplit(".", 1)[-1] if "." in path.name else ""
    if suffix == "jsonl":
        return iter_json_lines(path, skip_bad_rows, bad_rows)
    if suffix == "json":
        return iter_json(path, skip_bad_rows, bad_rows)
    if suffix == "csv":
        return iter_csv(path, skip_bad_rows, bad_rows)
    if suffix == "parquet":
        return iter_parquet(path)
    raise DataError(f"{path}: cannot read {path.suffix or 'files without a suffix'}; use one of {', '.join(SUFFIXES)}")


def max_line_chars() -> int:
    """The longest JSON line read (HUBTUNE_MAX_LINE_MB, default 64): a longer one is an error, not a MemoryError."""
    import os

    try:
        return int(float(os.environ.get("HUBTUNE_MAX_LINE_MB") or 64) * 2**20)
    except ValueError:
        return 64 * 2**20


def _lines(f, path: Path) -> Iterator[tuple[int, str]]:
    """(number, line) of a text file, each line read up to the limit and no further."""
    limit = max_line_chars()
    n = 0
    while line := f.readline(limit + 1):
        n += 1
        if len(line) > limit and not line.endswith("\n"):
            raise DataError(f"{path}, line {n}: longer than {limit / 2**20:,.0f} MB (HUBTUNE_MAX_LINE_MB); a row this "
                            f"long is rarely data: check that the file is JSON lines, one row per line")
        yield n, line


def iter_json_lines(path: Path, skip_bad_rows: bool, bad_rows: list[str]) -> Iterator[Row]:
    where = f"{path}, line"
    with _open_text(path) as f:
        for n, line in _lines(f, path):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                _bad(bad_rows, f"{path}, line {n}, column {err.colno}", f"not valid JSON ({err.msg})", skip_bad_rows)
                continue
            except RecursionError:
                _bad(bad_rows, f"{path}, line {n}", TOO_DEEP, skip_bad_rows)
                continue
            yield row, where, n


def iter_json(path: Path, skip_bad_rows: bool, bad_rows: list[str]) -> Iterator[Row]:
    """A JSON array of rows, or JSON lines in a .json file (a common mix-up, so both are read)."""
    with _open_text(path) as f:
        head = f.read(4096).lstrip()
    if not head.startswith("["):
        yield from iter_json_lines(path, skip_bad_rows, bad_rows)
        return
    with _open_text(path) as f:
        text = f.read()
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        # One broken element spoils the whole array, so there is no row to skip.
        raise DataError(f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); "
                        f"fix the file") from None
    except RecursionError:
        raise DataError(f"{path}: {TOO_DEEP}; one such element spoils the whole array: flatten or remove it, "
                        f"or store the rows as JSON lines (.jsonl) so that --skip-bad-rows can skip it") from None
    del text
    where = f"{path}, element"
    for i in range(len(rows)):
        row, rows[i] = rows[i], None  # let each row go once handed on
        yield row, where, i


def iter_csv(path: Path, skip_bad_rows: bool, bad_rows: list[str]) -> Iterator[Row]:
    where = f"{path}, line"
    with _open_text(path) as f:
        reader = csv.DictReader(f, restkey=EXTRA_CELLS)
        header = reader.fieldnames or []  # reads the header, so the first row's line number is right
        start = reader.line_num + 1
        for row in reader:
            number, start = start, reader.line_num + 1
            if EXTRA_CELLS in row:
                # Cells shifted by a comma inside an unquoted value: no column can be trusted.
                _bad(bad_rows, f"{where} {number}",
                     f"{len(header) + len(row[EXTRA_CELLS])} cells for the {len(header)} columns of the header "
                     f"({column_list(header)}): a value holding a comma must be in double quotes", skip_bad_rows)
                continue
            yield row, where, number


def iter_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=10_000)
        n, where = 0, f"{path}, row"
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield row, where, n
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
