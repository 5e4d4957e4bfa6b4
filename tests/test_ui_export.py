"""The page's Export tab through gradio_client against the app served on 127.0.0.1: merge into the base and a
GGUF export as real `hubtune merge` / `hubtune export` jobs of the job runner, their results and their files
downloaded as a user would."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from hubtune.runs import RunFolder

pytestmark = pytest.mark.slow  # merges and exports a trained run in subprocesses


@pytest.fixture
def ui(tmp_path, monkeypatch, request):
    """The app (ui_app, with `.client`) over a runs root outside both the working directory and the temp folder,
    as a Space's mounted volume is: where Gradio by itself hands out no files."""
    import tempfile

    from gradio_client import Client

    for folder in ("cwd", "tmp"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    app = request.getfixturevalue("ui_app")  # its runs root: tmp_path / "runs"
    app.client = Client(app.local_url, verbose=False)
    return app


def wait_for_job(app, run: Path, timeout: float = 600) -> dict:
    """The job's record once the runner has reaped it (its exit code written)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        record = json.loads((run / "job.json").read_text()) if (run / "job.json").is_file() else {}
        if app.runner.job(run) is None and record.get("exit_code") is not None:
            return record
        time.sleep(1)
    raise AssertionError(f"the job on {run.name} did not end in {timeout} s: {(run / 'job.log').read_text()[-2000:]}")


def test_export_tab_merges_exports_and_offers_the_files(ui, eval_run, monkeypatch):
    client, ui_app = ui.client, ui
    run = ui_app.root / "done"
    shutil.copytree(eval_run, run, ignore=shutil.ignore_patterns(".lock", "export*", "merge*", "job.*"))
    status, merge_text, merged, gguf_text, exported, log = client.predict(str(run), api_name="/export_view")
    assert (merge_text, merged, gguf_text, exported) == ("Not merged yet.", None, "Not exported yet.", None)

    # Without llama.cpp's binding the page says so before any job starts (the import fails as when uninstalled).
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "llama_cpp", None)
        missing = client.predict(str(run), "q8_0", 4, api_name="/export")
    assert missing.startswith("**Problem:** GGUF export needs llama.cpp's Python binding")
    assert "toolchain install" in missing and "Merging into the base works without it" in missing
    assert ui_app.runner.job(run) is None and not (run / "job.json").exists()

    # Merge: a `hubtune merge` job; the largest logit difference and the files come back to the page.
    started = client.predict(str(run), "float32", api_name="/merge")
    assert "merging its adapter in float32" in started, started
    record = wait_for_job(ui_app, run)
    assert (record["kind"], record["exit_code"]) == ("merge", 0), record
    assert record["command"] == f"hubtune merge {run} --out {run / 'merged-float32'} --dtype float32"
    status, merge_text, merged, *_ = client.predict(str(run), api_name="/export_view")
    assert "`hubtune merge` on **done** finished" in status
    difference = json.loads((run / "merge.json").read_text())["max_logit_difference"]
    assert difference < 1e-4 and f"**{difference:.2e}**" in merge_text and "saved in float32" in merge_text
    names = {Path(f).name for f in merged}
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= names
    downloaded = next(Path(f) for f in merged if Path(f).name == "model.safetensors")  # fetched over HTTP
    assert downloaded.read_bytes() == (run / "merged-float32" / "model.safetensors").read_bytes()
    assert "already merged (float32)" in client.predict(str(run), "float32", api_name="/merge")

    # GGUF: a `hubtune export` job with its parity check; the table and the files come back to the page.
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is missing: `python -m hubtune.export.toolchain "
                                            "install` builds it once per machine (make install runs it)")
    started = client.predict(str(run), "q8_0", 4, api_name="/export")
    assert "converting to q8_0, then the first 4 test prompts" in started, started
    busy = client.predict(str(run), "float16", api_name="/merge")
    assert "already has a job queued or running" in busy  # one job per run at a time
    record = wait_for_job(ui_app, run)
    assert (record["kind"], record["exit_code"]) == ("export", 0), record
    status, _, _, gguf_text, exported, log = client.predict(str(run), api_name="/export_view")
    assert "Parity on 4 prompts of hubtune:data/invoices/test.jsonl" in gguf_text
    assert "| q8_0 GGUF (llama.cpp) |" in gguf_text and "| pass" in gguf_text and "Tolerance:" in gguf_text
    names = {Path(f).name for f in exported}
    assert names == {"done-q8_0.gguf", "Modelfile", "export.json"}
    gguf = next(Path(f) for f in exported if f.endswith(".gguf"))
    assert gguf.read_bytes()[:4] == b"GGUF" and gguf.stat().st_size == (run / "export" / "done-q8_0.gguf").stat().st_size
    assert "parity" in log or "q8_0" in log  # the tail of `hubtune export`'s own output


def test_a_failed_merge_job_says_why_on_the_page(ui, eval_run):
    """A job that fails shows its own error message, not a bare exit code."""
    client, ui_app = ui.client, ui
    run = ui_app.root / "broken"
    shutil.copytree(eval_run, run, ignore=shutil.ignore_patterns(".lock", "export*", "merge*", "job.*"))
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    client.predict(str(run), "auto", api_name="/merge")
    record = wait_for_job(ui_app, run)
    assert (record["kind"], record["exit_code"]) == ("merge", 2), record
    status, merge_text, merged, *_ = client.predict(str(run), api_name="/export_view")
    assert status.startswith("**Problem:** `hubtune merge` on broken failed at") and "is damaged" in status
    assert (merge_text, merged) == ("Not merged yet.", None)
