"""A user's own data file, end to end on the command line: every dataset that reaches training is
licence-checked (the general data mixed in included), the file is named by its name and content hash,
never a path of this machine, and `--acknowledge` takes the name the messages show."""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from data_rows import alpaca_rows, label_rows, write_jsonl
from hubtune.runs import RunFolder

pytestmark = pytest.mark.slow  # trains the tiny base


def own_config(tmp_path, source, **extra) -> str:
    tree = {"model": {"id": "hubtune:tiny-llama", "quantization": "none"},
            "data": {"sources": [str(source)], "val_set_size": 10, "max_seq_len": 256},
            "training": {"max_steps": 2, "micro_batch_size": 8, "gradient_accumulation_steps": 1, "warmup_steps": 0,
                         "gradient_checkpointing": False, "logging_steps": 1, "eval_steps": 2, "save_steps": 100},
            "output": {"dir": str(tmp_path / "runs" / "labels")}}
    for key, value in extra.items():
        tree.setdefault(key, {}).update(value)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_a_non_commercial_mix_is_refused_for_commercial_use_before_training(tmp_path, cli):
    data = write_jsonl(tmp_path / "my_labels.jsonl", label_rows())
    general = tmp_path / "general"
    general.mkdir()
    (general / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n")
    write_jsonl(general / "train.jsonl", alpaca_rows(20))
    config = own_config(tmp_path, data, licence={"use": "commercial", "acknowledge": ["my_labels.jsonl"]},
                        data={"mix": {"source": str(general / "train.jsonl"), "ratio": 0.1}})
    result = cli("train", config)
    assert result.returncode == 3, result.stderr
    assert "train.jsonl (dataset, CC BY-NC 4.0) does not permit commercial use" in result.stderr
    assert str(tmp_path) not in result.stderr  # files by their names, also in refusals
    run = RunFolder(tmp_path / "runs" / "labels")
    assert not run.adapter.exists() and not (run.path / RunFolder.DATA_REPORT).exists()  # stopped before data
    # The same mix for research use passes the gate: it is the use, not the mixing, that is refused.
    research = own_config(tmp_path, data, licence={"use": "research"}, output={"dir": str(tmp_path / "r")},
                          data={"mix": {"source": str(general / "train.jsonl"), "ratio": 0.1}},
                          training={"max_steps": 1})
    assert cli("train", research).returncode == 0
    summary = RunFolder(tmp_path / "r").summary
    assert [(d.label, d.role) for d in summary.datasets] == [("my_labels.jsonl", "task"), ("train.jsonl", "mix")]
    assert summary.datasets[1].train_rows and summary.licence["repos"][2]["licence"] == "cc-by-nc-4.0"


def test_own_file_trains_and_publishes_under_its_name(tmp_path, cli, hub, hub_token):
    data = write_jsonl(tmp_path / "my_labels.jsonl", label_rows(60))
    result = cli("train", own_config(tmp_path, data))
    assert result.returncode == 0, result.stderr
    run = RunFolder(tmp_path / "runs" / "labels")
    report = run.read_json(RunFolder.DATA_REPORT)
    # One-word labels are the task: all 60 rows kept, nothing mixed in, 10 held out.
    assert (report["kept"], report["train"], report["eval"], report["mixed"]) == (60, 50, 10, 0)
    s = run.summary
    assert (s.train_examples, s.eval_examples) == (report["train"], report["eval"])
    (d,) = s.datasets
    assert (d.label, d.train_rows, d.eval_rows, len(d.sha256)) == ("my_labels.jsonl", 50, 10, 64)

    refused = cli("push", run.path, "--repo", "alice/tiny-labels")
    assert refused.returncode == 3 and "--acknowledge my_labels.jsonl on `hubtune push`" in refused.stderr
    assert str(tmp_path) not in refused.stderr
    pushed = cli("push", run.path, "--repo", "alice/tiny-labels", "--acknowledge", "my_labels.jsonl")
    assert pushed.returncode == 0, pushed.stderr

    files = hub.files("alice/tiny-labels")
    assert not [name for name, body in files.items() if str(tmp_path).encode() in body], "a server path was published"
    card = files["README.md"].decode()
    assert f"| `my_labels.jsonl` | task data | 50 | train | sha256 {d.sha256[:12]} | missing |" in card
    assert f"| Training examples | {report['train']}, {report['eval']} held out" in card
    assert json.loads(files["training_summary.json"])["datasets"][0]["path"] == "my_labels.jsonl"
    assert ModelCard.load("alice/tiny-labels").data.datasets is None  # a local file is no Hub dataset id


def test_a_rights_declaration_covers_the_file_it_hashed(tmp_path, cli, hub, hub_token):
    from hubtune.refs import file_sha256

    data = write_jsonl(tmp_path / "my_labels.jsonl", label_rows(60))
    declared = {"file": "my_labels.jsonl", "sha256": file_sha256(data), "by": "alice", "at": "2026-12-06T02:30:00Z"}
    assert cli("train", own_config(tmp_path, data, licence={"declared": [declared]},
                                   training={"max_steps": 1})).returncode == 0
    run = tmp_path / "runs" / "labels"
    assert cli("push", run, "--repo", "alice/tiny-declared").returncode == 0  # no --acknowledge needed
    card = hub.files("alice/tiny-declared")["README.md"].decode()
    assert "| declared by the uploader (alice, 2026-12-06T02:30:00Z) |" in card
    assert "was declared by its uploader, alice, at 2026-12-06T02:30:00Z" in card

    # A declaration covers the bytes it hashed: another file under the same name is not covered.
    from hubtune import licence
    from hubtune.config import RightsDeclaration

    record = RunFolder(run).summary.datasets[0]
    other = RightsDeclaration(**{**declared, "sha256": "0" * 64})
    assert licence.dataset_licences([(record, "task")], [other])[0].declared is None
    assert licence.dataset_licences([(record, "task")], [RightsDeclaration(**declared)])[0].declared["by"] == "alice"


def test_one_error_two_renderings_the_command_lines_and_the_pages():
    import pytest

    from hubtune.errors import PushError, page_text
    from hubtune.publish import _check_repo_id

    with pytest.raises(PushError) as err:
        _check_repo_id("not a repo id")
    assert str(err.value).startswith("--repo 'not a repo id' is not a valid repo id")
    assert page_text(err.value).startswith("The Repo box's 'not a repo id' is not a valid repo id")
    assert "--" not in page_text(err.value)
