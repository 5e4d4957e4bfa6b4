"""The app built as a shared Space (SPACE_ID set), played against by two signed-in users (alice, bob), a
signed-out visitor and the Space's owner (olga), over the loopback Hub. Sign-in goes through the real
boundary: gradio_client hands the app a Hugging Face token as the Space's login would (gr.OAuthToken), and
the app asks the loopback Hub whose it is."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import HUB_OTHER_TOKEN, HUB_TOKEN
from data_rows import alpaca_rows, write_jsonl
from hub_server import readme
from hubtune import config as cfg
from hubtune.runs import RunFolder

OWNER, OWNER_TOKEN = "olga", "hf_olga_loopback_owner_token_000000"
SECRET = "oauth-client-secret-of-the-space"


def rows_jsonl(n: int = 12, start: int = 0) -> str:
    return "".join(json.dumps(r) + "\n" for r in alpaca_rows(n, start))


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def space(hub, tmp_path, monkeypatch):
    """Builds the app as a Space over the loopback Hub; `space(owner_token=...)` sets the owner's HF_TOKEN."""
    import gradio.oauth as oauth

    from hubtune.ui import build_app

    hub.add_user(OWNER, OWNER_TOKEN)
    monkeypatch.setenv("SPACE_ID", f"{OWNER}/hubtune")
    monkeypatch.setenv("SPACE_AUTHOR_NAME", OWNER)
    monkeypatch.setenv("SYSTEM", "spaces")
    for name, value in {"OAUTH_CLIENT_ID": "client", "OAUTH_CLIENT_SECRET": SECRET,
                        "OAUTH_SCOPES": "openid profile read-repos write-repos manage-repos gated-repos",
                        "OPENID_PROVIDER_URL": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(oauth, name, value)
    apps = []

    def build(owner_token: str | None = None, runs=None, start_jobs: bool = True):
        """start_jobs=False: a runner without device slots, so queued jobs stay queued."""
        from hubtune.ui.jobs import JobRunner

        if owner_token:
            monkeypatch.setenv("HF_TOKEN", owner_token)
        root = tmp_path / "runs"
        for name, owner in (runs or {}).items():
            RunFolder.create(root / name, cfg.RunConfig(), owner=owner)
        app = build_app(root, None if start_jobs else JobRunner(root, slots=[], shared=True).start())
        app.queue(default_concurrency_limit=4).launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
        app.root = root
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.runner.close()
        for running in list(app.runner.running.values()):
            running.process.terminate()
            running.process.wait(timeout=60)
        app.close()


def person(app, token: str | None = None):
    """A browser session: signed in with `token` (the Space's login), or a signed-out visitor."""
    from gradio_client import Client

    client = Client(app.local_url, verbose=False, oauth_token=token)
    client.predict(api_name="/sign_in")
    return client


def check(client, dataset: str, model: str = "hubtune:tiny-llama"):
    return client.predict(model, dataset, None, "auto", "", "personal", api_name="/check_data")


DEMO_CONFIG = "model:\n  id: hubtune:tiny-llama\ndata:\n  sources: [{source}]\ntraining:\n  max_steps: 1\n"


# ---- who may read what ------------------------------------------------------------------------------------
def test_a_visitor_cannot_check_data_or_score_prompts(space):
    app = space()
    visitor = person(app)
    fmt, rows, *_ = check(visitor, "hubtune:data/invoices/train.jsonl")
    assert "Sign in with Hugging Face to check data" in fmt and not rows["data"]
    text = visitor.predict("hubtune:tiny-llama", "auto", "", "personal", 2, api_name="/try_prompting")
    assert "Sign in with Hugging Face" in text


def test_server_paths_are_refused_even_to_signed_in_users(space, tmp_path):
    app = space()
    secret = write_jsonl(tmp_path / "someone-elses.jsonl", alpaca_rows(12))
    alice = person(app, HUB_TOKEN)
    for path in (str(secret), str(app.root), str(app.root / ".uploads" / "bob" / "train.jsonl")):
        fmt, rows, *_ = check(alice, path)
        assert "not from a path on the server" in fmt, fmt
    fmt, *_ = check(alice, "hubtune:data/invoices/train.jsonl", model=str(tmp_path))
    assert "not a path on the server" in fmt
    message = alice.predict(DEMO_CONFIG.format(source=secret), "", api_name="/start")
    assert "not from a path on the server" in message
    assert not list(app.root.glob("*/config.yaml"))


def test_a_signed_in_user_cannot_train_on_another_users_upload(space):
    app = space()
    bobs = app.root / ".uploads" / "bob" / "train.jsonl"
    bobs.parent.mkdir(parents=True)
    write_jsonl(bobs, alpaca_rows(12))
    alice = person(app, HUB_TOKEN)
    message = alice.predict(DEMO_CONFIG.format(source=bobs), "", api_name="/start")
    assert "not from a path on the server" in message
    mine = app.root / ".uploads" / "alice" / "train.jsonl"
    mine.parent.mkdir(parents=True)
    write_jsonl(mine, alpaca_rows(12))
    fmt, *_ = check(alice, str(mine))
    assert "12 rows" in fmt  # her own upload is hers to use


def test_remote_code_is_refused_on_a_space(space):
    app = space()
    alice = person(app, HUB_TOKEN)
    config = DEMO_CONFIG.format(source="hubtune:data/invoices/train.jsonl").replace(
        "tiny-llama\n", "tiny-llama\n  trust_remote_code: true\n")
    message = alice.predict(config, "", api_name="/start")
    assert "trust_remote_code is refused on a shared Space" in message
    kernels = DEMO_CONFIG.format(source="hubtune:data/invoices/train.jsonl").replace(
        "tiny-llama\n", "tiny-llama\n  use_kernels: true\n")
    message = alice.predict(kernels, "", api_name="/start")
    assert "model.use_kernels: kernels fetched from the Hub are code" in message
    assert not list(app.root.glob("*/config.yaml"))


# ---- whose token ------------------------------------------------------------------------------------------
def test_the_owners_token_never_serves_a_visitor_or_another_user(space, hub):
    repo = unique(f"{OWNER}/private-data")
    hub.seed(repo, {"train.jsonl": rows_jsonl()}, repo_type="dataset", private=True)
    app = space(owner_token=OWNER_TOKEN)  # HF_TOKEN set as a Space secret
    alice = person(app, HUB_TOKEN)
    fmt, rows, *_ = check(alice, repo)
    assert "was not found" in fmt and not rows["data"], fmt
    owner = person(app, OWNER_TOKEN)
    fmt, *_ = check(owner, repo)
    assert "12 rows" in fmt  # the owner, signed in, reads it with her own token


def test_gated_files_in_the_shared_cache_need_the_users_own_grant(space, hub):
    repo = unique("acme/gated-data")
    hub.seed(repo, {"train.jsonl": rows_jsonl()}, repo_type="dataset", gated="manual")
    hub.grant(repo, "alice", repo_type="dataset")
    app = space()
    fmt, *_ = check(person(app, HUB_TOKEN), repo)
    assert "12 rows" in fmt, fmt  # alice is granted: downloaded into the shared cache
    fmt, rows, *_ = check(person(app, HUB_OTHER_TOKEN), repo)
    assert "is a gated dataset" in fmt and "has not been granted access" in fmt and not rows["data"], fmt


def test_a_user_starts_a_run_on_her_own_private_model(space, hub, tiny_base_files):
    repo = unique("alice/private-base")
    hub.seed(repo, {**tiny_base_files, "README.md": readme(license="apache-2.0")}, private=True)
    app = space(start_jobs=False)
    config = DEMO_CONFIG.format(source="hubtune:data/invoices/train.jsonl").replace("hubtune:tiny-llama", repo)
    message = person(app, HUB_TOKEN).predict(config, "", api_name="/start")
    assert "Queued" in message, message


def test_a_job_gets_a_minimal_environment_and_only_its_own_users_token(space, monkeypatch):
    from hubtune.ui.jobs import Job

    class PrintEnvironment(Job):  # the job runner's real launch, with a command that shows what it was given
        def command(self):
            return [sys.executable, "-c", "import json, os; print('ENV=' + json.dumps(dict(os.environ)))"]

    monkeypatch.setenv("HF_TOKEN", OWNER_TOKEN)
    monkeypatch.setenv("SOME_OWNER_SETTING", "owners-only")
    app = space()
    run = app.root / "alices-run"
    RunFolder.create(run, cfg.RunConfig(), owner="alice")
    app.runner.submit(PrintEnvironment(run, "eval", owner="alice", token=HUB_TOKEN))
    deadline = time.time() + 60
    while run in app.runner.running or app.runner.place(run):
        assert time.time() < deadline
        time.sleep(0.2)
        app.runner.tick()
    line = next(l for l in (run / "job.log").read_text().splitlines() if l.startswith("ENV="))
    env = json.loads(line[4:])
    assert env["HF_TOKEN"] == HUB_TOKEN
    assert SECRET not in env.values() and OWNER_TOKEN not in env.values()
    assert "SOME_OWNER_SETTING" not in env and "OAUTH_CLIENT_SECRET" not in env
    assert env["SPACE_ID"] == f"{OWNER}/hubtune" and "PATH" in env


# ---- whose runs -------------------------------------------------------------------------------------------
def test_a_run_without_an_owner_is_the_operators_never_a_visitors(space):
    from gradio_client.exceptions import AppError

    app = space(runs={"cli-run": None, "bobs-run": "bob"})
    visitor = person(app)
    table, *_ = visitor.predict(None, api_name="/runs")
    assert table["data"] == []
    cli_run = str(app.root / "cli-run")
    with pytest.raises(AppError, match="Sign in"):
        visitor.predict(cli_run, api_name="/run")
    with pytest.raises(AppError, match="Sign in"):
        visitor.predict(cli_run, True, api_name="/delete")
    with pytest.raises(AppError, match="belongs to another user"):
        person(app, HUB_TOKEN).predict(cli_run, 2, api_name="/evaluate")
    assert (app.root / "cli-run" / "config.yaml").is_file()
    owner = person(app, OWNER_TOKEN)
    table, *_ = owner.predict(None, api_name="/runs")
    assert [row[0] for row in table["data"]] == ["cli-run"]


def test_nobody_but_its_owner_merges_exports_or_downloads_a_run(space, eval_run):
    """Bob, signed in, and a visitor play against alice's finished run from the Export tab's endpoints and
    from Gradio's file route: no merge, export, view or file of hers reaches them; alice gets her own."""
    import shutil
    import urllib.error
    import urllib.request

    from gradio_client.exceptions import AppError

    app = space(start_jobs=False)
    run = app.root / "alices-run"
    shutil.copytree(eval_run, run, ignore=shutil.ignore_patterns(".lock", "export*", "merge*", "job.*"))
    state = json.loads((run / "state.json").read_text()) if (run / "state.json").is_file() else {}
    (run / "state.json").write_text(json.dumps({**state, "owner": "alice"}))
    (run / "merge.json").write_text(json.dumps({  # as if merged: the files the tab would offer its owner
        "folder": str(run / "adapter"), "dtype": "float32", "base": "hubtune:tiny-llama",
        "max_logit_difference": 1e-6, "logit_prompts": 8, "warnings": []}))
    bob, visitor = person(app, HUB_OTHER_TOKEN), person(app)
    for who, says in ((bob, "belongs to another user"), (visitor, "Sign in")):
        for args, endpoint in (((str(run),), "/export_view"), ((str(run), "float32"), "/merge"),
                               ((str(run), "q8_0", 4), "/export")):
            with pytest.raises(AppError, match=says):
                who.predict(*args, api_name=endpoint)
    assert app.runner.job(run) is None and not (run / "job.json").exists()
    for target in (run / "adapter" / "adapter_model.safetensors", run / "merge.json"):  # the route refuses them
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{app.local_url}gradio_api/file={target}")
        assert refused.value.code in (403, 404)
    status, merge_text, merged, *_ = person(app, HUB_TOKEN).predict(str(run), api_name="/export_view")
    assert "1.00e-06" in merge_text
    assert {Path(f).name for f in merged} >= {"adapter_model.safetensors", "adapter_config.json"}


def test_a_stale_lock_from_another_host_frees_the_run_and_stop_signals_no_stranger(space, tmp_path):
    import subprocess

    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # now holds the old pid
    try:
        root = tmp_path / "runs"
        run = RunFolder.create(root / "moved-run", cfg.RunConfig(), owner="alice")
        (run.path / "checkpoints").mkdir()  # it was training on the Space's old host when the Space restarted
        (run.path / ".lock").write_text(json.dumps({"pid": stranger.pid, "host": "the-old-host", "command": "train",
                                                     "started": "2026-01-01T00:00:00Z"}))
        app = space()
        assert run.status.value == "interrupted"  # not "running" for ever
        assert app.runner._free_slot() is not False  # the queue is not frozen by it
        alice = person(app, HUB_TOKEN)
        alice.predict(str(run.path), api_name="/run")
        message = app.runner.stop(run.path)
        time.sleep(0.5)
        assert stranger.poll() is None, f"Stop signalled a process it did not start ({message})"
        message = alice.predict(str(run.path), True, api_name="/delete")
        assert "Deleted" in message and not run.path.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_requeued_jobs_wait_for_their_owner_and_take_her_token(space):
    from hubtune.ui.jobs import JobRunner

    app = space(runs={"queued-before-restart": "alice"}, start_jobs=False)
    run = app.root / "queued-before-restart"
    restarted = JobRunner(app.root, slots=[None], shared=True)  # the Space restarted: its runner requeues
    assert restarted.held(run) and "waiting for its owner" in RunFolder(run).error
    restarted.tick()
    assert not restarted.running  # not started without a token
    assert restarted.release("bob", HUB_OTHER_TOKEN) == 0
    assert restarted.release("alice", HUB_TOKEN) == 1
    job = next(j for j in restarted.queue if j.run == run)
    assert job.token == HUB_TOKEN and not job.held and RunFolder(run).error is None


def test_one_user_cannot_fill_the_queue(space):
    app = space(start_jobs=False)
    alice = person(app, HUB_TOKEN)
    config = DEMO_CONFIG.format(source="hubtune:data/invoices/train.jsonl")
    for _ in range(3):
        assert "Queued" in alice.predict(config, "", api_name="/start")
    message = alice.predict(config, "", api_name="/start")
    assert "already has 3 jobs waiting" in message
    assert len(list(app.root.glob("*/config.yaml"))) == 3
    assert "Queued" in person(app, HUB_OTHER_TOKEN).predict(config, "", api_name="/start")


@pytest.mark.slow  # a new interpreter runs the whole command
def test_hubtune_ui_on_a_network_address_needs_consent(tmp_path):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("SPACE_ID", "SYSTEM")}
    env.update(GRADIO_SERVER_NAME="0.0.0.0", GRADIO_SERVER_PORT="0", PYTHONPATH=os.getcwd())
    try:
        done = subprocess.run([sys.executable, "-m", "hubtune.cli", "ui", "--root", str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("`hubtune ui` served on 0.0.0.0 without consent")
    assert done.returncode == 2 and "refusing to serve the page on 0.0.0.0" in done.stderr
    assert "--share-token-with-visitors" in done.stderr


# ---- paths inside their roots -----------------------------------------------------------------------------
def test_a_dataset_cards_data_files_stay_inside_its_snapshot(space, hub):
    app = space()
    alice = person(app, HUB_TOKEN)
    for pattern in ("../../../../../../../**/train.jsonl", "/etc/*"):
        repo = unique("mallory/escape")
        card = readme(configs=[{"config_name": "default", "data_files": [{"split": "train", "path": pattern}]}])
        hub.seed(repo, {"README.md": card, "data/train.jsonl": rows_jsonl(3)}, repo_type="dataset")
        fmt, rows, *_ = check(alice, repo)
        assert "points outside the dataset" in fmt and not rows["data"], fmt


# ---- exhaustion -------------------------------------------------------------------------------------------
HANGING_TEMPLATE = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                    "{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}")


@pytest.mark.slow  # a new interpreter runs the whole command
def test_a_hanging_chat_template_is_stopped_by_its_budget(bpe_tokenizer_dir, tmp_path):
    import subprocess

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_tokenizer_dir)
    tok.chat_template = HANGING_TEMPLATE
    tok.save_pretrained(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(4))
    env = {**os.environ, "HUBTUNE_TEMPLATE_SECONDS": "1", "PYTHONPATH": os.getcwd()}
    try:
        done = subprocess.run([sys.executable, "-m", "hubtune.cli", "data", "check", str(data), "--model",
                               str(tmp_path / "model")], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("`hubtune data check --model` hung on the chat template")
    assert done.returncode == 2 and "ran past its budget of 1 s" in done.stderr, done.stderr[-2000:]


# ---- a finished run stands on its own ----------------------------------------------------------------------
def test_a_finished_run_works_after_its_training_file_moved(eval_run, tmp_path, cli, hub, hub_token):
    import shutil

    import yaml

    run = tmp_path / "volume" / "run"  # HUBTUNE_HOME moved to a volume, the training file left behind
    shutil.copytree(eval_run, run, ignore=shutil.ignore_patterns("eval*", "human_eval*", ".lock", "checkpoints"))
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree["data"]["sources"] = [{"path": "data/invoices.jsonl"}]  # relative to a folder it is no longer run from
    tree["data"]["val_set_size"] = 0.1  # a share, which an Axolotl config can hold
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exported = cli("config", "export", run, cwd=elsewhere)
    assert exported.returncode == 0 and "datasets:" in exported.stdout, exported.stderr
    merged = cli("merge", run, "--out", tmp_path / "merged", cwd=elsewhere)
    assert merged.returncode == 0, merged.stderr
    evaluated = cli("eval", run, "eval.tasks=[]", "eval.regression_set=null", "--limit", "2", cwd=elsewhere)
    assert evaluated.returncode in (0, 3) and (run / "eval.json").is_file(), evaluated.stderr
    repo = unique("alice/moved-run")
    record = json.loads((run / "summary.json").read_text())["datasets"][0]
    assert len(record["sha256"]) == 64  # the file's content as trained, to recognise it wherever it moves
    recorded = record["path"]  # the path it was trained from
    pushed = cli("push", run, "--repo", repo, "--acknowledge", recorded, cwd=elsewhere)
    assert pushed.returncode == 0, pushed.stderr
    assert "adapter_model.safetensors" in hub.files(repo)


# ---- messages: typed, saying what to do, never weakening a safety check -----------------------------------
def finished_copy(eval_run, tmp_path, name="run"):
    import shutil

    run = tmp_path / name
    shutil.copytree(eval_run, run, ignore=shutil.ignore_patterns("eval*", "human_eval*", ".lock", "checkpoints"))
    return run


def test_adapter_weights_pickled_missing_or_cut_short_are_typed(eval_run, tmp_path, cli):
    import datetime

    import torch

    pickled = finished_copy(eval_run, tmp_path, "pickled")
    (pickled / "adapter" / "adapter_model.safetensors").unlink()
    torch.save({"base_model.model.x": torch.zeros(1), "when": datetime.date(2026, 1, 1)},
               pickled / "adapter" / "adapter_model.bin")
    cut = finished_copy(eval_run, tmp_path, "cut")
    weights = cut / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    missing = finished_copy(eval_run, tmp_path, "missing")
    (missing / "adapter" / "adapter_model.safetensors").unlink()
    for run, says in ((pickled, "holds pickled weights (adapter_model.bin)"), (cut, "is damaged"),
                      (missing, "adapter_model.safetensors is missing")):
        for command in (("merge", run, "--out", tmp_path / f"merged-{run.name}"), ("eval", run, "--limit", "1")):
            result = cli(*command)
            text = result.stdout + result.stderr
            assert result.returncode == 2 and says in text, (command, text[-1500:])
            assert "unexpected" not in text and "weights_only=False" not in text and "likely succeed" not in text


def test_a_resumed_run_with_an_edited_lora_rank_is_a_config_error(eval_run, tmp_path, cli, one_torch_thread):
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(eval_run, run, ignore=shutil.ignore_patterns("eval*", "human_eval*", ".lock"))
    (run / "summary.json").unlink()  # stopped after its last checkpoint (step 12), before the summary
    saved = next((run / "checkpoints").glob("checkpoint-*")).name
    tree = yaml.safe_load((run / "config.yaml").read_text())
    was = tree["lora"]["r"]
    tree["lora"]["r"] = was * 2
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    result = cli("train", "--resume", run)
    assert result.returncode == 2, result.stderr[-1500:]
    assert f"lora.r: {was * 2} here, but {saved} was saved with {was}" in result.stderr
    assert "unexpected" not in result.stderr


@pytest.mark.parametrize("key,value", [("num_attention_heads", 0), ("num_hidden_layers", -40)])
def test_impossible_model_sizes_are_refused_not_estimated(tmp_path, cli, key, value):
    import shutil

    from hubtune.refs import resolve_builtin

    model = tmp_path / "model"
    shutil.copytree(resolve_builtin("hubtune:tiny-llama"), model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, key: value}))
    result = cli("estimate", model)
    text = result.stdout + result.stderr
    assert result.returncode == 2 and f"{key}: {value}: each must be a positive whole number" in text, text[-1500:]
    assert "fits" not in result.stdout and "unexpected" not in text


def test_a_csv_with_a_million_columns_gets_a_short_message(tmp_path, cli):
    header = ",".join(f"column_{i}" for i in range(1_000_000))
    path = tmp_path / "wide.csv"
    path.write_text(header + "\n" + ",".join("1" for _ in range(1_000_000)) + "\n")
    result = cli("data", "check", path)
    assert result.returncode == 2 and "(1,000,000 columns in all)" in result.stderr
    assert len(result.stderr) < 5000


def upload(client, path):
    from gradio_client import handle_file

    return client.predict("hubtune:tiny-llama", "", handle_file(str(path)), "auto", "", "personal",
                          api_name="/check_data")


def test_uploads_are_checked_against_their_budget_before_they_are_read(space, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HUBTUNE_UPLOAD_MAX_MB", "50")
    app = space()
    alice = person(app, HUB_TOKEN)
    bomb = tmp_path / "bomb.parquet"  # one 100 kB value, dictionary-encoded, repeated: 200 MB once decoded
    value = "x" * 100_000
    pq.write_table(pa.table({"instruction": [value] * 2000, "output": ["y"] * 2000}), bomb, use_dictionary=True,
                   compression="zstd")
    assert bomb.stat().st_size < 50_000
    fmt, rows, *_ = upload(alice, bomb)
    assert "more than 50 MB of values once decoded" in fmt and not rows["data"], fmt
    long_line = tmp_path / "long.jsonl"
    long_line.write_text(json.dumps({"instruction": "a" * 3_000_000, "output": "b"}) + "\n")
    fmt, rows, *_ = upload(alice, long_line)
    assert "line 1 is longer than 1 MB" in fmt and not rows["data"], fmt


def test_a_line_too_long_to_read_is_a_data_error_not_a_memory_error(tmp_path, cli):
    import gzip

    path = tmp_path / "one-line.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"instruction": "a " * 1_500_000, "output": "an answer of several words"}) + "\n")
    result = cli("data", "check", path, env={"HUBTUNE_MAX_LINE_MB": "1"})
    assert result.returncode == 2 and "line 1: longer than 1 MB (HUBTUNE_MAX_LINE_MB)" in result.stderr, result.stderr


def test_every_hub_call_in_the_library_names_its_token():
    """In the app each Hub call must act with the session's token (hubtune.hub.token()), never fall back to
    the process's: a call to huggingface_hub without `token=` is what let the owner's HF_TOKEN serve visitors."""
    import ast
    from pathlib import Path

    import hubtune

    hub_functions = {"HfApi", "hf_hub_download", "snapshot_download", "get_hf_file_metadata", "InferenceClient"}

    def name(node):
        return getattr(node, "id", None) or getattr(node, "attr", None)

    def names_token(call):
        return any(k.arg in ("token", "api_key", "local_files_only") for k in call.keywords)

    missing = []
    for path in Path(hubtune.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            direct = name(node.func) in hub_functions
            passed = bool(node.args) and name(node.args[0]) in hub_functions and not isinstance(node.args[0], ast.Call)
            if (direct or passed) and not names_token(node):
                missing.append(f"{path.relative_to(Path(hubtune.__file__).parent)}:{node.lineno}")
    assert not missing, f"Hub calls without token=: {missing}"
