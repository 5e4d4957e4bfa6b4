"""examples/quickstart.ipynb runs top to bottom in a Jupyter kernel (nbclient), on the embedded model,
and publishes to the loopback Hub when PUSH_TO is set, as a user would set it."""

from __future__ import annotations

import pytest

import re
from pathlib import Path

import nbformat
from hub_server import readme
from huggingface_hub import ModelCard
from nbclient import NotebookClient
from data_rows import invoice_file

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out


NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"
REPO = "alice/tiny-llama-invoices"


def set_parameters(nb, **values) -> None:
    """Edit the parameter cell the way a user would: replace the assignment of each name."""
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and "MODEL_ID = " in c.source]
    for name, value in values.items():
        cell.source, n = re.subn(rf"^{name} = .*?(\s+#.*)?$", f"{name} = {value!r}", cell.source, flags=re.M)
        assert n == 1, name


def outputs(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_quickstart_notebook_runs_and_publishes(hub_token, tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    # A user's own small file, few steps and examples: seconds on a CPU.
    (tmp_path / "data").mkdir()
    invoice_file(tmp_path / "data" / "invoices.jsonl", 96)
    (tmp_path / "data" / "README.md").write_text(readme(license="apache-2.0"))  # its licence, for publishing
    set_parameters(nb, DATASET="data/invoices.jsonl", MAX_STEPS=2, EVAL_LIMIT=2, PUSH_TO=REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch: tiny models run fastest on one thread
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    shown = [outputs(c) for c in nb.cells if c.cell_type == "code"]
    licences, memory, trained, evaluated, pushed = shown[3:8]
    assert "verdict: allow (use: personal)" in licences and "invoices.jsonl" in licences
    assert re.search(r"\d\.\dM parameters; QLoRA peak about [\d.]+ GB on a T4 \([\d.]+ GiB\): fits", memory)
    assert re.search(r"held-out loss \d+\.\d\d -> \d+\.\d\d; run folder runs/", trained)
    assert "prompt" in evaluated and "regression" in evaluated
    assert "published" in pushed and REPO in pushed
    assert ModelCard.load(REPO).data.base_model is None  # the embedded base is not a Hub model
    assert list((tmp_path / "runs").glob("*/adapter/adapter_model.safetensors"))
