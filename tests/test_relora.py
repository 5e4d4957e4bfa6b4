"""training.relora: the adapter merged into the base and restarted every restart_steps, the optimizer's
state pruned and the learning rate restarted, as Axolotl's ReLoRA; the run's adapter holds every cycle."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from transformers import TrainerCallback

from hubtune import config as cfg
from hubtune import relora
from hubtune.errors import ConfigError
from data_rows import invoice_file, tiny_tree


def axolotl_jagged(step, restarts, warmup, anneal, floor=0.001):
    """JaggedLRRestartScheduler.get_lr's factor, as written in Axolotl's utils/schedulers.py."""
    if step < restarts - anneal:
        return 1
    progress = step % restarts
    if progress < warmup:
        t = min(1.0, progress / warmup)
    elif progress > restarts - anneal:
        t = min(1.0, (restarts - progress) / anneal)
    else:
        t = 1
    return t * (1 - floor) + floor


def test_the_restart_schedule_is_axolotls():
    for restart, warmup, anneal in ((150, 10, 1), (6, 2, 3), (4, 4, 1)):
        for step in range(0, 3 * restart + 2):
            assert relora.jagged_scale(step, restart, warmup, anneal) == pytest.approx(
                axolotl_jagged(step, restart, warmup, anneal)), (restart, warmup, anneal, step)
    assert relora.jagged_scale(150, 150, 10, 1) == pytest.approx(0.001)  # the restart step itself starts again


def test_what_relora_cannot_run_with_is_a_config_error(tmp_path):
    with pytest.raises(ValidationError):
        cfg.ReLoRASection(restart_steps=0)
    rows = invoice_file(tmp_path / "rows.jsonl", 4)
    config = cfg.build(tiny_tree(rows, lora={"modules_to_save": ["lm_head"]},
                                 training={"relora": {"restart_steps": 2}, "method": "sft", "optimizer": "sgd",
                                           "select": "eval_loss"}))
    with pytest.raises(ConfigError) as err:
        relora.check(config)
    text = " ".join(why for _, why in err.value.problems)
    assert "which sgd does not keep as such" in text and "select: last" in text
    assert "modules_to_save would train outside them" in text


def test_pruning_zeroes_the_smallest_share_of_the_moments():
    p = torch.nn.Parameter(torch.zeros(100))
    opt = torch.optim.AdamW([p])
    opt.state[p] = {"exp_avg": torch.arange(1.0, 101.0), "exp_avg_sq": torch.arange(1.0, 101.0), "step": torch.tensor(3.)}
    relora.prune(opt, [p], ["exp_avg", "exp_avg_sq"], "magnitude", 0.9)
    assert torch.equal(opt.state[p]["exp_avg"].nonzero().flatten(), torch.arange(90, 100))  # the 10 largest kept
    assert opt.state[p]["step"] == 3.0


class Watch(TrainerCallback):
    """What the run computes at its last step (before ReLoRA's on_train_end), and the state after the first restart."""

    def __init__(self, ids, last):
        self.ids, self.last = ids, last
        self.zeroed = None
        self.logits = None
        self.base_after_restart = None

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step == 2:  # ReLoRA's on_step_begin has merged, restarted and pruned
            layer = model.base_model.model.model.layers[0].self_attn.q_proj
            moments = [s["exp_avg"] for p, s in optimizer.state.items() if "exp_avg" in s and p.shape == (4, 192)]
            self.zeroed = min(float((m == 0).float().mean()) for m in moments)
            self.base_after_restart = _dequantized(layer.get_base_layer()).clone()
            self.b_after_restart = layer.lora_B["default"].weight.detach().clone()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.last:
            with torch.no_grad():
                self.logits = model(input_ids=self.ids).logits.float()


def _dequantized(linear) -> torch.Tensor:
    w = linear.weight
    if type(w).__name__ == "Params4bit":
        import bitsandbytes.functional as F

        return F.dequantize_4bit(w.data, w.quant_state).float()
    return w.detach().float()


def _config(tmp_path, **model):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return cfg.build(tiny_tree(invoice_file(tmp_path / "rows.jsonl", 24), tmp_path / "run", model=model,
                               lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "qv"},
                               training={"max_steps": 5, "learning_rate": 1e-2, "optimizer": "adamw_torch",
                                         "lr_scheduler": "constant", "save_steps": 3,
                                         "relora": {"restart_steps": 2, "warmup_steps": 1}},
                               eval={"tasks": [], "regression_set": None}))


@pytest.mark.slow
def test_a_relora_run_restarts_and_its_adapter_is_what_it_trained(tmp_path, one_torch_thread):
    import hubtune
    from hubtune.card import write_card
    from hubtune.evaluation.generate import load_tuned

    ids = torch.tensor([[1, 20, 30, 40, 50, 60, 70, 80]])
    watch = Watch(ids, 5)
    run = hubtune.train(_config(tmp_path, quantization="none"), callbacks=[watch])
    saved = json.loads((run.adapter / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"]) == (12, 12)  # restarts at steps 2 and 4: three cycles of rank 4
    assert watch.zeroed >= 0.89  # 90% of Adam's first moment of each adapter weight zeroed at the restart
    assert torch.count_nonzero(watch.b_after_restart) == 0  # the adapter started afresh (B = 0)
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "learning_rate" in r]
    assert [r["relora_restarts"] for r in trained] == [0, 0, 1, 1, 2]  # logged after each step; restarts begin steps 3, 5
    # the first step of each cycle runs at 0.001 of the rate, rising over warmup_steps (1) back to it
    assert [r["learning_rate"] for r in trained] == pytest.approx([1e-2, 1e-2, 1e-5, 1e-2, 1e-5])
    assert (run.path / "checkpoints" / "checkpoint-3" / relora.FACTORS).is_file()  # to resume from
    model, _ = load_tuned(run.path)  # the pinned base plus the saved adapter
    with torch.no_grad():
        product = model(input_ids=ids).logits.float()
        with model.disable_adapter():
            base = model(input_ids=ids).logits.float()
    assert torch.allclose(product, watch.logits, atol=1e-4)  # the function the run trained, restarts and all
    assert (product - base).abs().max() > 0.1  # and not the base's
    card = write_card(run.path, "alice/relora").read_text()
    assert ("| ReLoRA | merged into the base and restarted every 2 steps (3 cycles of rank 4, saved as one adapter "
            "of rank 12, scale 1)") in card


@pytest.mark.slow
def test_relora_on_a_4_bit_base_merges_into_its_16_bit_weights_and_requantizes(tmp_path, one_torch_thread):
    import hubtune
    from safetensors import safe_open

    ids = torch.tensor([[1, 20, 30, 40]])
    watch = Watch(ids, 3)
    config = _config(tmp_path, quantization="nf4")
    config.training.max_steps = 3
    run = hubtune.train(config, callbacks=[watch])
    assert json.loads((run.adapter / "adapter_config.json").read_text())["r"] == 8  # two cycles
    with safe_open(str(cfg.resolve_builtin("hubtune:tiny-llama") + "/model.safetensors"), "pt") as f:
        own = f.get_tensor("model.layers.0.self_attn.q_proj.weight").float()
    merged = watch.base_after_restart
    assert not torch.allclose(merged, own, atol=1e-3)  # the first cycle's update is in the base
    assert (merged - own).abs().mean() < 0.05  # quantized from the 16-bit weight plus a small update


def test_axolotls_relora_keys_convert_and_export_back():
    import yaml

    from hubtune.interop import axolotl

    base = {"base_model": "hubtune:tiny-llama", "adapter": "qlora", "load_in_4bit": True, "lora_r": 8,
            "lora_alpha": 16, "lora_target_linear": True, "learning_rate": 2e-4,
            "datasets": [{"path": "mhenrichsen/alpaca_2k_test", "type": "alpaca"}]}
    config = axolotl.from_axolotl({**base, "relora": True, "jagged_restart_steps": 50,
                                   "jagged_restart_anneal_steps": 5, "relora_prune_method": "reset",
                                   "relora_cpu_offload": True}).run_config()
    assert config.training.relora == cfg.ReLoRASection(restart_steps=50, warmup_steps=10, anneal_steps=5,
                                                       prune_method="reset")
    out = axolotl.to_axolotl(config, ["alpaca"])
    assert {k: v for k, v in out.items() if "relora" in k or "jagged" in k} == {
        "relora": True, "jagged_restart_steps": 50, "jagged_restart_warmup_steps": 10,
        "jagged_restart_anneal_steps": 5, "relora_prune_method": "reset"}
    assert axolotl.from_axolotl(yaml.safe_load(yaml.safe_dump(out))).run_config() == config
    alone = dict(axolotl.from_axolotl({**base, "jagged_restart_steps": 50}).unsupported)
    assert "restarts the learning rate alone" in alone["jagged_restart_steps"]
    missing = dict(axolotl.from_axolotl({**base, "relora": True}).unsupported)
    assert "without jagged_restart_steps, which Axolotl requires too" in missing["relora"]


class Crash(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 4:  # checkpoint-3 is saved, with the first cycle merged
            raise RuntimeError("the machine went away")


@pytest.mark.slow
def test_a_relora_run_resumes_with_its_merged_cycles(tmp_path, one_torch_thread):
    import hubtune
    from hubtune.evaluation.generate import load_tuned

    ids = torch.tensor([[1, 20, 30, 40, 50, 60, 70, 80]])
    reference = hubtune.train(_config(tmp_path / "a", quantization="none"))
    with pytest.raises(RuntimeError, match="went away"):
        hubtune.train(_config(tmp_path / "b", quantization="none"), callbacks=[Crash()])
    watch = Watch(ids, 5)
    resumed = hubtune.resume(tmp_path / "b" / "run", callbacks=[watch])
    assert json.loads((resumed.adapter / "adapter_config.json").read_text())["r"] == 12
    rows = [json.loads(line) for line in (resumed.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["relora_restarts"] for r in rows if "loss" in r] == [0, 0, 1, 1, 2]
    with torch.no_grad():
        a = load_tuned(reference.path)[0](input_ids=ids).logits
        b = load_tuned(resumed.path)[0](input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(b, watch.logits, atol=1e-4)


def test_axolotls_relora_example_converts_to_a_run_relora_can_start():
    import yaml
    from pathlib import Path

    from hubtune.interop import axolotl

    data = yaml.safe_load((Path(__file__).parent / "data/axolotl_examples/llama-2/relora.yml").read_text())
    config = axolotl.from_axolotl(data).run_config()
    assert config.training.relora == cfg.ReLoRASection(restart_steps=150, warmup_steps=10, anneal_steps=1,
                                                       prune_ratio=0.9)
    assert (config.model.quantization, config.training.optimizer) == ("nf4", "adamw_8bit")
    relora.check(config, "adamw_8bit", "hf", [])  # nothing in it that hubtune's ReLoRA does not run with


def test_the_training_page_example_is_axolotls_relora_example():
    """docs/training.md, "ReLoRA: restarting the adapter": a valid section, the settings Axolotl's
    llama-2/relora.yml converts to (restart 150, warm-up 10, anneal 1, prune 0.9 by magnitude)."""
    from pathlib import Path

    import yaml
    from readme_blocks import section_blocks

    from hubtune.interop import axolotl

    (text,) = [body for lang, body in section_blocks("ReLoRA: restarting the adapter") if lang == "yaml"]
    shown = cfg.build(yaml.safe_load(text)).training.relora
    example = yaml.safe_load((Path(__file__).parent / "data" / "axolotl_examples" / "llama-2" / "relora.yml").read_text())
    assert shown == axolotl.from_axolotl(example).run_config().training.relora
