"""`hubtune data check` and `hubtune data prepare` through the CLI's entry point (one case as the installed command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_rows import alpaca_rows, section, sentence, write_jsonl

from hubtune.config import DataSection
from hubtune.data import prepare

HUBTUNE = str(Path(sys.executable).parent / "hubtune")


def installed(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([HUBTUNE, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def planted(tmp_path: Path) -> tuple[Path, dict[str, set[int]]]:
    """30 distinct rows, then exact and near duplicates of some of them (line numbers returned)."""
    rows = [{"instruction": "Summarise this invoice note.", "input": sentence(i, 40), "output": sentence(i + 500, 6)}
            for i in range(30)]
    exact = dict(rows[4])
    exact["input"] = "  " + exact["input"].upper() + " "  # same text once case and spaces are normalised
    near = dict(rows[10])
    words = near["input"].split()
    near["input"] = " ".join(words[:25] + ["changed"] + words[26:])
    near_too = dict(rows[20])
    near_too["output"] = near_too["output"] + " indeed"
    rows += [exact, near, dict(rows[7]), near_too]
    return write_jsonl(tmp_path / "planted.jsonl", rows), {"exact": {31, 33}, "near": {32, 34}}


def test_check_finds_planted_exact_and_near_duplicates(tmp_path, chat_model_dir, cli):
    path, lines = planted(tmp_path)
    result = cli("data", "check", path, "--json", "--model", chat_model_dir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["total"], report["exact_duplicates"], report["near_duplicates"]) == (34, 2, 2)
    assert report["kept"] == 30 and report["too_short"] == 0 and report["too_long"] == 0
    line_of = lambda origin: int(origin.rsplit(" ", 1)[1])  # noqa: E731
    assert {line_of(p["removed"]) for p in report["exact_duplicate_examples"]} == lines["exact"]
    pairs = report["near_duplicate_examples"]
    assert {line_of(p["removed"]["origin"]) for p in pairs} == lines["near"]
    assert {line_of(p["kept"]["origin"]) for p in pairs} == {11, 21}
    assert all(0.8 <= p["similarity"] < 1 for p in pairs)


def test_check_prints_a_table_of_what_each_step_removed(tmp_path, chat_model_dir, cli):
    path, _ = planted(tmp_path)
    run_config = tmp_path / "run.yaml"
    run_config.write_text(f"model:\n  id: {chat_model_dir}\ndata:\n  near_dup_threshold: 0.99\n")
    result = cli("data", "check", path, "--config", run_config)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    step_rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines()
                 if line.startswith("│") and line.count("│") == 4}
    assert step_rows["exact duplicates"] == "2"
    assert step_rows["near duplicates"] == "0"  # at 0.99 the planted pairs stay
    assert "Example length in tokens" in out and "diversity:" in out


def test_prepare_writes_rows_that_read_back_the_same(tmp_path, chat_model_dir, chat_tokenizer, cli):
    source = write_jsonl(tmp_path / "src.jsonl", alpaca_rows(60))
    out = tmp_path / "out" / "prepared.jsonl"
    result = cli("data", "prepare", source, "--out", out, "--model", chat_model_dir, "--json",
                     "--set", "val_set_size=0.2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    eval_path = tmp_path / "out" / "prepared.eval.jsonl"
    assert f"wrote {report['train']} training rows to {out}" in result.stderr
    train_rows = [json.loads(line) for line in out.read_text().splitlines()]
    eval_rows = [json.loads(line) for line in eval_path.read_text().splitlines()]
    assert (len(train_rows), len(eval_rows)) == (report["train"], report["eval"]) and eval_rows
    again = prepare(section(out), chat_tokenizer)
    assert again.report["format"] == "prompt_completion"
    assert again.train.to_list() == train_rows
    # The held-out split hashes the content, so the prepared rows split the same way again.
    both = DataSection(sources=[str(out), str(eval_path)], val_set_size=0.2)
    resplit = prepare(both, chat_tokenizer)
    assert sorted(map(json.dumps, resplit.eval.to_list())) == sorted(map(json.dumps, eval_rows))


def test_errors_print_the_fix_without_a_traceback(tmp_path, chat_model_dir, cli):
    rows = [json.dumps(r) for r in alpaca_rows(3)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows[:2] + ["{oops"] + rows[2:]) + "\n")
    result = cli("data", "check", path, "--model", chat_model_dir)
    assert result.returncode == 2
    assert f"error: {path}, line 3, column 2: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    skipped = cli("data", "check", path, "--model", chat_model_dir, "--skip-bad-rows", "--json")
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(skipped.stdout)["bad_rows"] == 1

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Total of invoice 9?", "answer": "Nine dollars in all."}])
    mapped = cli("data", "check", qa, "--model", chat_model_dir, "--json",
                     "--column", "instruction=question", "--column", "output=answer")
    assert mapped.returncode == 0, mapped.stderr
    assert json.loads(mapped.stdout)["kept"] == 1
    typo = cli("data", "check", qa, "--model", chat_model_dir, "--set", "near_dup_treshold=0.9")
    assert typo.returncode == 2 and "data.near_dup_treshold: unknown key" in typo.stderr


@pytest.mark.slow  # a new interpreter runs the whole command
def test_a_hub_dataset_that_cannot_be_loaded(chat_model_dir):
    result = installed("data", "check", "nobody-here/no-such-dataset", "--model", chat_model_dir,
                     env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 2
    assert ("error: HF_HUB_OFFLINE=1 is set and nobody-here/no-such-dataset@main is not in the local cache"
            in result.stderr and "hf download nobody-here/no-such-dataset --repo-type dataset" in result.stderr)
    assert "Traceback" not in result.stderr
