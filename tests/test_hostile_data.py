"""Hostile data through the real CLI (`hubtune data check|prepare`, in process): files that are not UTF-8,
JSON nested too deeply, Excel's byte-order mark, values that were silently changed (an Alpaca input of 0,
NaN, a CSV row shifted by an unquoted comma), outputs that would overwrite the wrong file, and scorers
that fail. Each ends in a typed error that names the file, line or setting, or in the right rows."""

from __future__ import annotations

import csv
import io
import json
import sys
import zlib
from pathlib import Path

import pytest
from data_rows import alpaca_rows, write_jsonl

from hubtune.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def error_of(err: str) -> str:
    assert "error: " in err, err
    return err[err.index("error: "):]


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["instruction", "output"])
    writer.writerows([[r["instruction"] + " " + r["input"], r["output"]] for r in rows])
    return buf.getvalue()


# ---- encodings and nesting ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["prices.csv", "prices.jsonl"])
def test_a_file_that_is_not_utf8_names_the_byte_and_how_to_re_encode(tmp_path, capsys, name):
    rows = alpaca_rows(6)
    rows[3]["output"] += " café crème"
    text = csv_text(rows) if name.endswith(".csv") else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    raw = text.encode("cp1252")  # what Excel's plain "CSV" and Windows tools write
    path = tmp_path / name
    path.write_bytes(raw)
    offset = raw.index("é".encode("cp1252"))
    code, _, err = run(capsys, "data", "check", path)
    assert code == 2
    message = error_of(err)
    line = raw.count(b"\n", 0, offset) + 1
    assert f"{path}: not UTF-8 text: byte 0xe9 at byte offset {offset} (line {line})" in message
    assert f"iconv -f WINDOWS-1252 -t UTF-8 {path} >" in message


def test_excel_csv_utf8_byte_order_mark_is_stripped(tmp_path, capsys):
    path = tmp_path / "excel.csv"
    path.write_text(csv_text(alpaca_rows(12)), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    code, out, _ = run(capsys, "data", "check", path, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["sources"][0]["format"] == "alpaca" and report["total"] == 12


def deep_line() -> str:
    return '{"instruction": "x", "output": ' + "[" * 50_000 + "]" * 50_000 + "}"


def test_a_deeply_nested_json_line_is_a_bad_row(tmp_path, capsys):
    good = [json.dumps(r) for r in alpaca_rows(8)]
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join([good[0], deep_line(), *good[1:]]) + "\n")
    code, _, err = run(capsys, "data", "check", path)
    assert code == 2 and f"{path}, line 2: nested deeper than the JSON reader can follow" in error_of(err)
    assert "--skip-bad-rows" in err

    code, out, _ = run(capsys, "data", "check", path, "--skip-bad-rows", "--json")
    report = json.loads(out)
    assert code == 0 and (report["total"], report["bad_rows"]) == (9, 1)
    assert report["bad_row_examples"][0].startswith(f"{path}, line 2: nested deeper")


def test_a_deeply_nested_json_array_names_the_file(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" + json.dumps(alpaca_rows(1)[0]) + ", " + deep_line() + "]")
    code, _, err = run(capsys, "data", "check", path, "--skip-bad-rows")
    assert code == 2 and f"{path}: nested deeper" in error_of(err) and ".jsonl" in err


# ---- values that were changed without a word --------------------------------------------------------
def test_an_alpaca_input_of_zero_is_kept(tmp_path, capsys):
    rows = alpaca_rows(8) + [{"instruction": "Which discount code applies?", "input": 0,
                              "output": "Code zero applies."},
                             {"instruction": "How many items are back-ordered?", "input": 0.0, "output": "None."}]
    out = tmp_path / "out.jsonl"
    code, _, _ = run(capsys, "data", "prepare", write_jsonl(tmp_path / "zero.jsonl", rows), "--out", out,
                     "--set", "val_set_size=0")
    assert code == 0
    prompts = [json.loads(line)["prompt"][-1]["content"] for line in out.read_text().splitlines()]
    assert "Which discount code applies?\n\n0" in prompts and "How many items are back-ordered?\n\n0.0" in prompts


def test_nan_is_never_trained_as_the_text_nan(tmp_path, capsys):
    good = [json.dumps(r) for r in alpaca_rows(8)]
    path = tmp_path / "nan.jsonl"
    # NaN in a required field is refused; in an optional one (input, system, task) it means "none".
    path.write_text("\n".join([*good[:4], '{"instruction": "Price of item 9?", "output": NaN}',
                               '{"instruction": "Total of invoice 3?", "input": NaN, "system": NaN, "task": NaN, '
                               '"output": "It is 42 dollars."}', *good[4:]]) + "\n")
    code, _, err = run(capsys, "data", "check", path)
    assert code == 2 and f"{path}, line 5: output is nan" in error_of(err)

    out = tmp_path / "out.jsonl"
    code, _, _ = run(capsys, "data", "prepare", path, "--out", out, "--skip-bad-rows", "--set", "val_set_size=0")
    assert code == 0
    text = out.read_text()
    assert "nan" not in text.lower() and "Total of invoice 3?" in text
    row = next(json.loads(line) for line in text.splitlines() if "Total of invoice 3?" in line)
    assert [m["role"] for m in row["prompt"]] == ["user"] and row["prompt"][0]["content"] == "Total of invoice 3?"


def test_a_csv_row_with_an_unquoted_comma_is_malformed(tmp_path, capsys):
    lines = csv_text(alpaca_rows(8)).splitlines()
    lines.insert(3, "Say hello, politely,Hello there friend")
    path = tmp_path / "comma.csv"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, "data", "check", path)
    message = error_of(err)
    assert code == 2 and f"{path}, line 4: 3 cells for the 2 columns of the header (instruction, output)" in message
    assert "double quotes" in message

    code, out, _ = run(capsys, "data", "check", path, "--skip-bad-rows", "--json")
    report = json.loads(out)
    assert code == 0 and (report["total"], report["bad_rows"], report["too_short"]) == (9, 1, 0)


# ---- where `data prepare` writes ----------------------------------------------------------------------
@pytest.fixture
def source(tmp_path) -> Path:
    return write_jsonl(tmp_path / "src.jsonl", alpaca_rows(10))


def test_prepare_refuses_to_overwrite_its_source(source, capsys):
    before = source.read_bytes()
    code, _, err = run(capsys, "data", "prepare", source, "--out", source)
    assert code == 2 and "would overwrite the data it is prepared from" in error_of(err) and "--force" in err
    assert source.read_bytes() == before
    assert run(capsys, "data", "prepare", source, "--out", source, "--force")[0] == 0
    assert json.loads(source.read_text().splitlines()[0]).keys() == {"prompt", "completion"}


def test_prepare_refuses_a_file_it_did_not_write_and_replaces_its_own(source, tmp_path, capsys):
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"note": "not hubtune\'s"}\n')
    code, _, err = run(capsys, "data", "prepare", source, "--out", mine)
    assert code == 2 and "exists and was not written by `hubtune data prepare`" in error_of(err)
    assert mine.read_text() == '{"note": "not hubtune\'s"}\n'

    out = tmp_path / "prepared" / "train.jsonl"
    assert run(capsys, "data", "prepare", source, "--out", out)[0] == 0
    record = (tmp_path / "prepared" / "train.sha256").read_text().splitlines()
    assert [line.split("  ")[1] for line in record] == ["train.jsonl", "train.eval.jsonl"]
    assert run(capsys, "data", "prepare", source, "--out", out)[0] == 0  # its own output: replaced
    out.write_text(out.read_text() + '{"prompt": "edited by hand"}\n')
    assert run(capsys, "data", "prepare", source, "--out", out)[0] == 2  # edited since: no longer only hubtune's


@pytest.mark.parametrize("where", ["folder", "under-a-file"])
def test_prepare_checks_the_output_before_any_work(tmp_path, capsys, where):
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")  # reading it would fail: the output must be refused first
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "outdir" if where == "folder" else tmp_path / "afile" / "train.jsonl"
    code, _, err = run(capsys, "data", "prepare", broken, "--out", out)
    message = error_of(err)
    assert code == 2 and "not valid JSON" not in message
    assert ("is a folder; give a file path" if where == "folder" else f"cannot write in {out.parent}") in message


# ---- scorers ------------------------------------------------------------------------------------------
SCORERS = '''
def reward(rows):
    return [float(len(r["completion"][0]["content"])) for r in rows]

def boom(rows):
    raise KeyError("score")

def as_dict(rows):
    return {"scores": [1.0] * len(rows)}

def scalar(rows):
    return 1.0

def with_nan(rows):
    return [float("nan")] + [1.0] * (len(rows) - 1)

def oom(rows):
    import torch
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
'''


@pytest.fixture
def scorer_folder(tmp_path, monkeypatch, request):
    """A module of scorers in the current folder, as the README's `my_scores:reward` example has it."""
    name = f"cwd_scores_{zlib.crc32(request.node.nodeid.encode())}"  # a module name no other test imported
    (tmp_path / f"{name}.py").write_text(SCORERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def score(capsys, module: str, fn: str, source: Path) -> tuple[int, str, str]:
    return run(capsys, "data", "check", source, "--json", "--set", f"scorer.callable={module}:{fn}",
               "--set", "scorer.threshold=20", "--set", "scorer.batch_size=4")


def test_a_scorer_module_in_the_current_folder_is_found(scorer_folder, source, capsys):
    code, out, err = score(capsys, scorer_folder, "reward", source)
    assert code == 0, err
    assert json.loads(out)["scores"]["max"] > 20


@pytest.mark.parametrize("fn, says", [
    ("boom", "raised KeyError: 'score' (on rows 1-4, the first from {source}, line 1)"),
    ("as_dict", "returned {{'scores': [1.0, 1.0, 1.0, 1.0]}} (for rows 1-4"),
    ("scalar", "returned 1.0 (for rows 1-4"),
    ("with_nan", "returned NaN for row 1 (1 in all)"),
    ("oom", "out of accelerator memory (CUDA out of memory. Tried to allocate 2.00 GiB). To fit: lower "
            "data.scorer.batch_size (now 4)"),
])
def test_a_scorer_that_fails_is_named_with_the_rows(scorer_folder, source, capsys, fn, says):
    code, _, err = score(capsys, scorer_folder, fn, source)
    assert code == 2 and says.format(source=source) in error_of(err), err
