"""The console: figures from metrics rows, the display, quiet libraries, advice, and a CLI drawn from
the config's own fields."""

from __future__ import annotations

import argparse
import io
import logging
import warnings

import pytest
from rich.console import Console

from hubtune import advice
from hubtune import config as cfg
from hubtune.cli import build_parser
from hubtune.cli.data import data_config
from hubtune.progress import Display, Figures, quiet_libraries

ROWS = [{"step": 0, "total_steps": 0, "eval_loss": 3.2, "elapsed_seconds": 0.0},
        {"step": 10, "total_steps": 40, "loss": 2.5, "tokens_per_second": 1234.5, "elapsed_seconds": 30.0},
        {"step": 20, "total_steps": 40, "eval_loss": 2.1, "elapsed_seconds": 61.0},
        {"step": 20, "total_steps": 40, "loss": 2.0, "tokens_per_second": 1100.0, "elapsed_seconds": 60.0}]


def test_figures_come_from_the_metrics_rows():
    f = Figures.from_rows(ROWS)
    assert (f.step, f.total, f.loss, f.eval_loss, f.tokens_per_second) == (20, 40, 2.0, 2.1, 1100.0)
    assert f.eta == 60.0 and f.fraction == 0.5
    assert f.line() == "step 20/40 · loss 2.0000 · held-out loss 2.1000 · 1,100 tok/s · 1:00 elapsed · 1:00 left"
    # between evaluations the held-out loss says which step it was measured at
    assert Figures.from_rows(ROWS[:2]).line() == ("step 10/40 · loss 2.5000 · held-out loss 3.2000 (step 0) · "
                                                  "1,234 tok/s · 0:30 elapsed · 1:30 left")
    assert Figures.from_rows(ROWS[:1]).line() == "held-out loss before training 3.2000"
    assert Figures.from_rows([]) is None


def test_display_prints_one_plain_line_per_row_outside_a_terminal():
    out = io.StringIO()
    display = Display(Console(file=out, width=200))
    display.phase("licence", "allow")
    for n in range(1, len(ROWS) + 1):
        display.row(ROWS[:n])
    display.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("licence   allow") and len(lines) == 5
    assert lines[-1] == "training  " + Figures.from_rows(ROWS).line()


def test_quiet_libraries_hides_third_party_warnings_and_logs_but_not_ours(capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries():
            warnings.warn_explicit("deprecated", FutureWarning, "x.py", 1, module="transformers.training_args")
            warnings.warn_explicit("ours", UserWarning, "hubtune/train.py", 1, module="hubtune.train")
            logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward")
    assert [str(w.message) for w in caught] == ["ours"]
    assert "gemm_4bit" not in capsys.readouterr().err
    with quiet_libraries(show=True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn_explicit("deprecated", FutureWarning, "x.py", 1, module="transformers.training_args")
    assert len(caught) == 1


def test_advice_names_settings_outside_the_usual_ranges_scaled_to_the_base():
    assert advice.advice_line(cfg.RunConfig(), 8_030_000_000) is None  # the defaults are the guidance
    demo = cfg.load(cfg.ASSETS / "configs" / "demo.yaml")
    line = advice.advice_line(demo, 1_900_000)
    assert "training.learning_rate 2e-3 is above the usual 1e-4 to 3e-4" in line
    assert "data.max_seq_len 512 is below the usual 2,048 to 8,192" in line
    assert "this base has 1.9M parameters" in line and line.endswith("Training goes on.")
    odd = cfg.build({"training": {"micro_batch_size": 1, "gradient_accumulation_steps": 2, "epochs": 4,
                                  "lr_scheduler": "linear"}, "lora": {"r": 16, "alpha": 8}})
    line = advice.advice_line(odd, 7_000_000_000)
    for said in ("effective batch 2", "epochs 4 is more than the usual 3", "lora.alpha 8 is usually r (16)",
                 "cosine"):
        assert said in line
    assert "these ranges are for" not in line
    # The ranges live beside the fields, in the config.
    assert advice.typical_range(cfg.TrainingSection, "learning_rate") == (1e-4, 3e-4)


def test_parameter_count_from_config_alone():
    from transformers import AutoConfig

    tiny = AutoConfig.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama"))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny)
    assert advice.parameter_count(tiny) == sum(p.numel() for p in model.parameters())


def test_cli_options_take_choices_defaults_and_help_from_the_config():
    parser = build_parser()
    check = parser._subparsers._group_actions[0].choices["check"]
    use = next(a for a in check._actions if a.option_strings == ["--use"])
    assert tuple(use.choices) == ("personal", "research", "commercial")
    assert cfg.LicenceSection.model_fields["use"].description in use.help and "default personal" in use.help
    args = parser.parse_args(["check", "acme/x", "--use", "research"])
    assert getattr(args, "licence.use") == "research"


def test_every_command_prints_its_help(capsys):
    """`--help` formats every option's help text: a config field whose description holds `%` once broke it."""
    def walk(parser, path):
        yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, [*path, name])

    commands = list(walk(build_parser(), []))
    assert ["data", "check"] in commands and ["space", "deploy"] in commands and len(commands) > 20
    for path in commands:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([*path, "--help"])
        assert exit_.value.code == 0, path
        assert "usage: hubtune" in capsys.readouterr().out


def test_data_commands_use_the_run_configs_seed(tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("training:\n  seed: 7\ndata:\n  max_task_share: 0.5\n")
    args = build_parser().parse_args(["data", "check", "hubtune:data/general/train.jsonl", "--config", str(run_yaml)])
    config = data_config(args)
    assert config.training.seed == 7 and config.data.max_task_share == 0.5
    args = build_parser().parse_args(["data", "check", "hubtune:data/general/train.jsonl", "--config", str(run_yaml),
                                      "--seed", "3", "--skip-bad-rows", "--split", "train"])
    config = data_config(args)
    assert config.training.seed == 3 and config.data.skip_bad_rows and config.data.sources[0].split == "train"
