"""Hugging Face Jobs against the loopback Hub's emulation of the Jobs API: the request the client sends
(image, command, environment, secrets, flavor, timeout), the checks before submitting, following a job,
and the submitted command run the way the Jobs runtime would run it."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from conftest import HUB_TOKEN
from hub_server import readme

import hubtune
from hubtune import config as cfg
from hubtune import jobs
from hubtune.cli import main
from hubtune.errors import JobError
import readme_blocks

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["training.max_steps=3", "training.logging_steps=1", "training.save_steps=2", "training.warmup_steps=0",
         "training.micro_batch_size=4", "data.max_seq_len=256", "data.val_set_size=8", "model.quantization=none",
         "data.near_dup_threshold=null"]


def commands(section: str) -> list[str]:
    return [ln.strip() for lang, body in readme_blocks.section_blocks(section) if lang == "bash"
            for ln in body.splitlines() if ln.strip()]


def jobs_of(hub, repo: str) -> list:
    return [j for j in hub.jobs.values() if repo in j.spec["command"]]


def machine_env(tmp: Path) -> dict:
    """What a fresh Jobs container has before the job's own environment and secrets: no token, no endpoint."""
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp), "HF_HOME": str(tmp / "hf-home"),
            "HF_HUB_DISABLE_XET": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    import shutil

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_job_is_submitted_runs_and_is_followed(hub, hub_token, workdir, capsys):
    submit, status, logs, cancel, resume = commands("Training on Hugging Face Jobs")
    assert main([*shlex.split(submit)[1:], *SMALL]) == 0
    out = capsys.readouterr().out
    repo = "alice/invoices-job"
    (job,) = jobs_of(hub, repo)
    spec = job.spec
    # The request: image, command, environment, secrets, flavor, timeout.
    assert spec["dockerImage"] == "ghcr.io/astral-sh/uv:python3.12-bookworm"
    assert spec["command"] == ["uv", "run", "--with", f"hubtune=={hubtune.__version__}", "hubtune", "train",
                               "--resume", repo]
    assert spec["environment"] == {"PYTHONUNBUFFERED": "1", "HF_ENDPOINT": hub.url}
    assert spec["secrets"] == {"HF_TOKEN": HUB_TOKEN}
    assert spec["flavor"] == "a10g-small" and spec["timeoutSeconds"] == 2 * 3600
    assert HUB_TOKEN not in json.dumps([spec["command"], spec["environment"], spec.get("labels")])
    assert job.id in out and f"{hub.url}/alice/invoices-job" in out and "estimated run: about" in out
    # The run's repo is private and holds the config the job will train, pointing back at itself.
    assert hub.repos[("model", repo)].private
    uploaded = cfg.build(yaml.safe_load(hub.files(repo)["config.yaml"]))
    assert uploaded.training.push_checkpoints == repo and uploaded.training.max_steps == 3
    assert uploaded.output.dir is None

    # The Jobs runtime runs the command in an empty container with the job's environment and secrets.
    done = hub.execute_job(job.id, workdir / "job-disk", Path(sys.executable).parent, machine_env(workdir))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = hub.files(repo)
    assert {"summary.json", "adapter/adapter_model.safetensors", "metrics.jsonl",
            "checkpoints/checkpoint-3/trainer_state.json"} <= set(files)
    assert json.loads(files["summary.json"])["global_steps"] == 3
    assert not any(HUB_TOKEN.encode() in content for content in files.values())
    assert not any(HUB_TOKEN in line for _, line in job.logs)

    assert main(shlex.split(status.replace("JOB_ID", job.id))[1:]) == 0
    assert f"job {job.id}: COMPLETED" in capsys.readouterr().out
    assert main(shlex.split(logs.replace("JOB_ID", job.id))[1:]) == 0
    assert "run: runs/invoices-job" in capsys.readouterr().out
    assert main(shlex.split(cancel.replace("JOB_ID", job.id))[1:]) == 0
    assert job.stage == "COMPLETED"  # cancelling a finished job changes nothing

    # Continue on a 4-GPU flavor: one process per GPU.
    assert main(shlex.split(resume)[1:]) == 0
    second = jobs_of(hub, repo)[-1]
    assert second.id != job.id and second.spec["flavor"] == "l40sx4"
    assert second.spec["command"][-4:] == ["--resume", repo, "--num-processes", "4"]
    assert main(["jobs", "cancel", second.id]) == 0 and second.stage == "CANCELED"
    assert main(["jobs", "status", second.id]) == 0
    assert "CANCELED" in capsys.readouterr().out


def test_the_readme_resume_from_the_hub_runs(hub, hub_token, workdir, capsys):
    train, resume = commands("Never losing a run")
    assert main([*shlex.split(train)[1:], *SMALL]) == 0
    assert {"summary.json", "checkpoints/checkpoint-3/optimizer.pt"} <= set(hub.files("alice/invoices-run"))
    assert main(shlex.split(resume)[1:]) == 0
    copy = hubtune.RunFolder.open(workdir / "runs" / "invoices-run-2")
    assert copy.summary.global_steps == 3 and (copy.adapter / "adapter_model.safetensors").is_file()
    assert copy.metrics() == hubtune.RunFolder.open(workdir / "runs" / "invoices-run").metrics()


# ---- checks before submitting --------------------------------------------------------------------------------
def job_config(tmp: Path, **changes) -> Path:
    tree = {"model": {"id": "hubtune:tiny-llama", "quantization": "none"},
            "data": {"sources": ["hubtune:data/invoices/train.jsonl"]},
            "training": {"max_steps": 3, "push_checkpoints": "alice/checked-run"}}
    for key, value in changes.items():
        section, field = key.split("__")
        tree.setdefault(section, {})[field] = value
    path = tmp / "run.yaml"
    path.write_text(cfg.build(tree).to_yaml())
    return path


def refused(hub, config: Path, *extra: str) -> tuple[int, str]:
    before = len(hub.jobs)
    code = main(["train", str(config), "--on", "hf-jobs", "--flavor", "a10g-small", *extra])
    assert len(hub.jobs) == before, "nothing may be submitted when a check fails"
    return code


def test_the_licence_gate_runs_before_submitting(hub, hub_token, tmp_path, capsys):
    hub.seed("acme/nc-rows", {"README.md": readme(license="cc-by-nc-4.0"), "train.jsonl": "{}\n"}, repo_type="dataset")
    config = job_config(tmp_path, data__sources=["acme/nc-rows"], licence__use="commercial")
    assert refused(hub, config) == 3
    assert "licence gate" in capsys.readouterr().err


def test_a_token_that_cannot_write_or_run_jobs_is_refused(hub, tmp_path, capsys, monkeypatch):
    hub.add_user("carol", "hf_carol_read_only_token", role="read")
    monkeypatch.setenv("HF_TOKEN", "hf_carol_read_only_token")
    assert refused(hub, job_config(tmp_path, training__push_checkpoints="carol/run")) == 2
    assert "read-only" in capsys.readouterr().err

    hub.add_user("dave", "hf_dave_fine_grained_token", role="fineGrained", fine_grained={
        "global": [], "scoped": [{"entity": {"type": "user", "name": "dave"}, "permissions": ["repo.write"]}]})
    monkeypatch.setenv("HF_TOKEN", "hf_dave_fine_grained_token")
    assert refused(hub, job_config(tmp_path, training__push_checkpoints="dave/run")) == 2
    assert "lacks job.write" in capsys.readouterr().err

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    assert refused(hub, job_config(tmp_path, training__push_checkpoints="bob/run")) == 2
    assert "'bob' is neither your account nor one of your organisations" in capsys.readouterr().err


def test_a_fine_grained_token_with_both_permissions_submits(hub, tmp_path, monkeypatch, capsys):
    hub.add_user("erin", "hf_erin_fine_grained_token", role="fineGrained", fine_grained={
        "global": [], "scoped": [{"entity": {"type": "user", "name": "erin"},
                                  "permissions": ["repo.content.read", "repo.write", "job.write"]}]})
    monkeypatch.setenv("HF_TOKEN", "hf_erin_fine_grained_token")
    config = job_config(tmp_path, training__push_checkpoints="erin/run")
    assert main(["train", str(config), "--on", "hf-jobs", "--flavor", "t4-small"]) == 0
    (job,) = jobs_of(hub, "erin/run")
    assert job.owner == "erin" and job.spec["secrets"] == {"HF_TOKEN": "hf_erin_fine_grained_token"}


def test_what_a_job_cannot_reach_or_run_is_refused(hub, hub_token, tmp_path, capsys):
    local = tmp_path / "rows.jsonl"
    local.write_text('{"instruction": "a", "output": "b"}\n')
    assert refused(hub, job_config(tmp_path, data__sources=[str(local)])) == 2
    err = capsys.readouterr().err
    assert "data.sources.0.path" in err and "upload it to the Hub first" in err

    assert main(["train", str(job_config(tmp_path)), "--on", "hf-jobs", "--flavor", "a10g-tiny"]) == 2
    assert "a10g-small" in capsys.readouterr().err  # the flavors that exist

    assert refused(hub, job_config(tmp_path, training__push_checkpoints=None)) == 2
    assert "training.push_checkpoints=alice/" in capsys.readouterr().err

    assert main(["train", str(job_config(tmp_path)), "--on", "hf-jobs"]) == 2
    assert "--flavor" in capsys.readouterr().err


# ---- the timeout ---------------------------------------------------------------------------------------------
LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256,
            "tie_word_embeddings": False}


@pytest.fixture
def big_run(hub, hub_token, tmp_path):
    hub.seed("alice/big-base", {"config.json": json.dumps(LLAMA_8B), "README.md": readme(license="apache-2.0")})
    info = {"dataset_info": {"splits": [{"name": "train", "num_examples": 4000}]}}
    hub.seed("alice/big-rows", {"README.md": readme(license="mit", **info), "train.jsonl": "{}\n"}, repo_type="dataset")
    return job_config(tmp_path, model__id="alice/big-base", model__quantization="nf4", data__sources=["alice/big-rows"],
                      data__max_seq_len=2048, data__val_set_size=0.05, training__max_steps=None,
                      training__epochs=1, training__push_checkpoints="alice/big-run")


def test_the_estimate_reads_steps_from_the_dataset_card_and_size_from_the_config(big_run):
    config = cfg.load(big_run)
    estimate = jobs.estimate_run(config, "a10g-small")
    assert estimate.steps == 475  # 3,800 training rows / (2 per device x 4 accumulation)
    assert 7.0e9 < estimate.parameters < 8.5e9  # Llama 3 8B
    assert estimate.seconds > 3600
    four = jobs.estimate_run(config, "a10g-largex4")
    assert four.steps == 119 and four.seconds_per_step == pytest.approx(estimate.seconds_per_step)


def test_a_timeout_shorter_than_the_estimate_is_refused_and_none_asks_for_enough(hub, big_run, capsys):
    assert refused(hub, big_run, "--timeout", "30m") == 2
    err = capsys.readouterr().err
    assert "--timeout 30m is shorter than the estimated run" in err and "475 steps" in err

    assert main(["train", str(big_run), "--on", "hf-jobs", "--flavor", "a10g-small"]) == 0
    (job,) = jobs_of(hub, "alice/big-run")
    estimate = jobs.estimate_run(cfg.load(big_run), "a10g-small")
    timeout = job.spec["timeoutSeconds"]
    assert timeout >= 1.5 * estimate.seconds and timeout % 900 == 0 and timeout > jobs.JOBS_DEFAULT_TIMEOUT


def test_an_unknown_row_count_needs_max_steps_or_a_timeout(hub, hub_token, tmp_path, capsys):
    hub.seed("alice/no-info-rows", {"README.md": readme(license="mit"), "train.jsonl": "{}\n"}, repo_type="dataset")
    config = job_config(tmp_path, data__sources=["alice/no-info-rows"], training__max_steps=None,
                        training__push_checkpoints="alice/no-info-run")
    assert refused(hub, config) == 2
    assert "number of rows of alice/no-info-rows is unknown" in capsys.readouterr().err


def test_following_an_unknown_job_is_a_clear_error(hub, hub_token, capsys):
    assert main(["jobs", "status", "0123456789abcdef01234567"]) == 2
    assert "no job 0123456789abcdef01234567" in capsys.readouterr().err


def test_durations_read_like_the_jobs_api():
    assert jobs.parse_duration("6h") == 21600 and jobs.parse_duration("90m") == 5400
    assert jobs.parse_duration("45") == 45 and jobs.parse_duration(120) == 120
    with pytest.raises(JobError):
        jobs.parse_duration("six hours")
    assert jobs.gpus_of("l40sx4") == 4 and jobs.gpus_of("a10g-small") == 1 and jobs.gpus_of("cpu-basic") == 0
