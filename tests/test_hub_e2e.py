"""End to end, as a new user would, with the Hub at a loopback address (HF_ENDPOINT): check the
licences of a Llama 3.1 base and a non-commercial dataset, train on them, evaluate, push, and
read the published card back through the Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import HUB_TOKEN
from hub_server import readme
from data_rows import invoice_lines, tiny_run_config

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out


BASE, DATA, REPO = "meta-llama/Llama-3.1-tiny", "acme/invoices-nc", "alice/Llama-3.1-tiny-invoices"


def hubtune_cli(*args, env, cwd):
    return subprocess.run([sys.executable, "-m", "hubtune.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=1200)


@pytest.fixture
def user_env(hub, tmp_path):
    """A new user's shell: the Hub at the loopback address, an empty cache, no token yet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def test_check_train_evaluate_push(hub, user_env, tiny_base_files, tmp_path, monkeypatch):
    base_sha = hub.seed(BASE, {**tiny_base_files, "README.md": readme(license="llama3.1")}, gated="manual")
    hub.grant(BASE, "alice")
    data_sha = hub.seed(DATA, {"README.md": readme(license="cc-by-nc-4.0"), "data/train.jsonl": "\n".join(invoice_lines(96)) + "\n"},
             repo_type="dataset")

    # 1. The licence check a new user runs first.
    blocked = hubtune_cli("check", BASE, "--dataset", DATA, "--use", "commercial", "--json", env=user_env, cwd=tmp_path)
    assert blocked.returncode == 3, blocked.stderr
    verdict = json.loads(blocked.stdout)
    assert verdict["verdict"] == "block"
    assert any(DATA in r and "commercial" in r for r in verdict["reasons"])
    research = hubtune_cli("check", BASE, "--dataset", DATA, "--use", "research", "--json", env=user_env, cwd=tmp_path)
    assert research.returncode == 0, research.stderr
    verdict = json.loads(research.stdout)
    assert verdict["verdict"] in ("allow", "warn")
    assert any("Built with Llama" in o for o in verdict["obligations"])

    # 2. Train; the base is gated, so with the token of an account that accepted its terms.
    run = tmp_path / "run"
    tiny_run_config(tmp_path / "run.yaml", DATA, 3, run, model={"id": BASE}, data={"val_set_size": 8},
                    training={"micro_batch_size": 4, "eval_steps": 3, "save_steps": 100}, licence={"use": "research"})
    user_env["HF_TOKEN"] = HUB_TOKEN
    trained = hubtune_cli("train", "run.yaml", env=user_env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["base_model"], summary["base_revision"]) == (BASE, base_sha)
    assert summary["datasets"][0]["revision_sha"] == data_sha  # the commit read, not the configured revision

    # 3. Evaluate (on the held-out split of the dataset), then push.
    evaluated = hubtune_cli("eval", str(run), "eval.few_shot_k=0", "eval.tasks=[]", "eval.regression_set=null",
                            "--limit", "4", env=user_env, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert any(m["model"] == "tuned" and m["type"] == "exact_match"
               for m in json.loads((run / "eval.json").read_text())["metrics"])
    pushed = hubtune_cli("push", str(run), "--repo", REPO, env=user_env, cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert f"{hub.url}/{REPO}" in pushed.stdout

    # 4. What the Hub now shows.
    meta = yaml.safe_load(hub.files(REPO)["README.md"].decode().split("---")[1])
    assert meta["license"] == "llama3.1" and meta["base_model"] == BASE
    assert meta["datasets"] == [DATA] and meta["library_name"] == "peft"
    assert meta["base_model_relation"] == "adapter"
    results = meta["model-index"][0]["results"]
    assert {r["dataset"]["type"] for r in results} == {DATA}
    # Scored on the run's held-out rows of the dataset, at the commit training read.
    assert {(r["dataset"]["split"], r["dataset"]["revision"]) for r in results} == {("validation", data_sha)}
    assert {"loss", "exact_match", "f1"} <= {m["type"] for r in results for m in r["metrics"]}
    assert "Built with Llama" in hub.files(REPO)["README.md"].decode()
    assert data_sha in hub.files(REPO)["README.md"].decode()  # the card pins the dataset's commit
    assert HUB_TOKEN.encode() not in b"".join(hub.files(REPO).values())
