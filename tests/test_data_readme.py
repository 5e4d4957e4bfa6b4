"""The README's "Preparing data" section: every command, config and snippet in it runs."""

from __future__ import annotations

import json
import shlex

import yaml

from hubtune import config as cfg
import readme_blocks


def section_blocks() -> list[tuple[str, str]]:
    blocks = readme_blocks.section_blocks("Preparing data")
    assert {lang for lang, _ in blocks} == {"bash", "yaml", "python"}
    return blocks


def test_the_commands_run(tmp_path, cli):
    commands = [line for lang, body in section_blocks() if lang == "bash" for line in body.splitlines() if line]
    assert len(commands) == 3
    for line in commands:
        args = shlex.split(line)
        assert args[0] == "hubtune"
        result = cli(*args[1:], cwd=tmp_path)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        if "--json" in args:
            report = json.loads(result.stdout)
            assert report["too_short"] == 0 and report["kept"] == report["total"]
        elif args[1:3] == ["data", "check"]:
            assert "What each step removed" in result.stdout
    assert (tmp_path / "prepared" / "invoices.jsonl").is_file()
    assert (tmp_path / "prepared" / "invoices.eval.jsonl").is_file()


def test_the_config_is_valid_and_shows_the_defaults():
    (body,) = [body for lang, body in section_blocks() if lang == "yaml"]
    data = yaml.safe_load(body)["data"]
    section = cfg.build({"data": data}).data
    defaults = cfg.DataSection().model_dump()
    shown = section.model_dump()
    assert set(data) | {"packing"} == set(defaults)  # every setting is documented but packing (shown above)
    for key in set(data) - {"mix"}:
        assert shown[key] == defaults[key], key
    assert section.mix.ratio == 0.05 and cfg.DataSection().mix.ratio == 0.0


def test_the_python_snippet_runs(tmp_path, monkeypatch, capsys):
    (body,) = [body for lang, body in section_blocks() if lang == "python"]
    monkeypatch.chdir(tmp_path)
    exec(compile(body, "README.md", "exec"), {})
    first = capsys.readouterr().out.splitlines()[0].split(" ", 2)
    assert int(first[0]) > 0 and "'share_after': 0.5" in first[2]
