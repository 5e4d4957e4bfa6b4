"""`hubtune estimate`: peak GPU memory of a fine-tune from the model's config.json, and what fits."""

from __future__ import annotations

import argparse
from typing import get_args

from hubtune.cli.options import config_option
from hubtune.errors import HubtuneError


def add(command, common) -> None:
    from typing import get_type_hints

    from hubtune.memory import GPUS, OPTIMIZERS, Settings

    p = command("estimate", help="peak GPU memory of a fine-tune from the model's config.json, and what fits",
                description="Counts the parameters from config.json alone (Hub repo, folder, or a run "
                            "config's model) and adds up weights, adapters, gradients, optimizer states, "
                            "activations and overhead. Flags default to the run config's values. Exits 3 "
                            "when the run does not fit --gpu.")
    fields = get_type_hints(Settings)  # the estimate's own choices for the flags that are not run-config fields

    p.add_argument("model", nargs="?", metavar="MODEL_OR_RUN_CONFIG",
                   help="Hub repo id, model folder, hubtune:<asset>, or a run config YAML (its model and settings), "
                        "hubtune's or Axolotl's")
    p.add_argument("--base-config", metavar="CONFIG_JSON",
                   help="read the base's config.json from this file (a path or hubtune:model_configs/NAME.json) "
                        "instead of the Hub or the model folder, e.g. offline")
    config_option(p, "--revision", "model.revision", dest="revision")
    p.add_argument("--method", choices=[*get_args(fields["method"]), *get_args(fields["training_method"])],
                   help="qlora: LoRA on a 4-bit base; lora: LoRA on a 16-bit base; full: every weight trained; "
                        "or the training method (sft, dpo, orpo, kto, grpo), default the run config's")
    config_option(p, "--generations", "training.grpo.num_generations", dest="generations", metavar="N")
    config_option(p, "--completion-len", "training.grpo.max_completion_length", dest="completion_len", metavar="N")
    config_option(p, "--seq-len", "data.max_seq_len", dest="seq_len", metavar="N")
    config_option(p, "--batch", "training.micro_batch_size", dest="batch", metavar="N")
    config_option(p, "--lora-r", "lora.r", dest="lora_r", metavar="N")
    config_option(p, "--target-modules", "lora.target_modules", dest="target_modules", metavar="NAME")
    config_option(p, "--gradient-checkpointing", "training.gradient_checkpointing", dest="gradient_checkpointing")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer whose states to count (default: the run config's)")
    p.add_argument("--compute-dtype", choices=get_args(fields["compute_dtype"]),
                   help="dtype of the frozen weights and activations on the GPU (default: bfloat16)")
    p.add_argument("--loss", choices=get_args(fields["loss"]),
                   help="fused: TRL's tiled LM head (hubtune's recipe, the default); float32: the whole vocabulary's "
                        "logits in float32, as plain transformers computes the loss")
    p.add_argument("--gpu", metavar="NAME|GB", help=f"a GPU ({', '.join(GPUS)}) or a size in GB; default: all listed")
    p.add_argument("--table", action="store_true", help="the field guide's hardware table, computed from real configs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from hubtune import config as cfg
    from hubtune import fit, memory

    if args.table:
        rows = memory.guide_table()
        print(json.dumps(rows, indent=2) if args.json else memory.format_guide_table(rows))
        return 0
    if args.model is None:
        raise HubtuneError("give a model (Hub repo id, folder, hubtune:<asset>) or a run config YAML, or --table")
    is_run_config = args.model.endswith((".yaml", ".yml"))
    config = _run_config(args.model) if is_run_config else cfg.load(None)
    model, revision = (config.model.id, args.revision or config.model.revision) if is_run_config else (args.model, args.revision)
    arch = memory.read_architecture(args.base_config or model, None if args.base_config else revision)
    adapter, training_method = (None, args.method) if args.method in cfg.METHODS else (args.method, None)
    settings = memory.Settings.from_run_config(
        config, method=adapter, training_method=training_method, num_generations=args.generations,
        max_completion_length=args.completion_len, seq_len=args.seq_len, micro_batch=args.batch, lora_r=args.lora_r,
        target_modules=args.target_modules, gradient_checkpointing=args.gradient_checkpointing,
        optimizer=args.optimizer, compute_dtype=args.compute_dtype, loss=args.loss)
    gpus = [args.gpu] if args.gpu else list(memory.GPUS)
    fits = {g: fit.fit_report(arch, settings, g) for g in gpus}
    est = memory.estimate(arch, memory.on_gpu(settings, args.gpu) if args.gpu else settings)
    if args.json:
        out = est.to_dict()
        out["fits"] = fits[args.gpu]["fits"] if args.gpu else {g: f["fits"] for g, f in fits.items()}
        out["suggestion"] = fits[args.gpu]["suggestion"] if args.gpu else None
        print(json.dumps(out, indent=2))
    else:
        print(memory.format_estimate(est, list(fits.values())))
    return 0 if not args.gpu or fits[args.gpu]["fits"] else 3


def _run_config(path: str):
    """A hubtune run config, or an Axolotl config translated as `hubtune train` translates it (what it
    cannot honour named in a note: the estimate still reads its model and sizes)."""
    from hubtune import config as cfg
    from hubtune.interop import axolotl

    if not axolotl.is_axolotl(axolotl.read_yaml(__import__("pathlib").Path(path))):
        return cfg.load(path)
    translation = axolotl.read(path)
    for key, why in translation.unsupported:
        print(f"note: {path}: {key} is not honoured by hubtune ({why}); estimated without it")
    return translation.run_config(ignore_unsupported=True)
