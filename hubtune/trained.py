"""What a LoRA run trains, counted from config.json alone (hubtune.memory's Architecture) as PEFT builds it:
the adapter, and the base weights trained in full beside it.

PEFT trains a module in full when it is in the LoraConfig's modules_to_save (hubtune.train.lora_config puts
there lora.modules_to_save, the embedding and output head when tokens are new to the vocabulary, and the
modules of whole parameters named by lora.unfrozen_parameters): it keeps the frozen original, adds a
trainable copy of the whole module (ModulesToSaveWrapper), and puts no LoRA layer inside it. A module name
matches every module whose name ends with it (PEFT's `key.endswith`), so `norm` names every norm. On a base
whose head is tied to the embedding, ensure_weight_tying makes one copy for both. Embedding rows named by
lora.unfrozen_parameters train as a delta of those rows only (trainable_token_indices).

Parameter names are transformers' own for the families the estimate knows (model.layers.0.self_attn.q_proj.
weight, lm_head.weight); tests/test_memory_trained.py checks them against the models transformers builds
and the counts against PEFT's on the tiny base."""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubtune.errors import ConfigError

if TYPE_CHECKING:
    from hubtune.memory import Architecture, Settings

EMBEDDING, HEAD = "embed_tokens", "lm_head"
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"}


def prefix(arch: Architecture) -> str:
    """Where the language model's modules sit: under the multimodal model's language_model (Gemma 3)."""
    return "model.language_model." if arch.vision_params else "model."


def parameter_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The language model's parameters by the name transformers gives them, with their shapes (a tied head
    listed too, as named_parameters(remove_duplicate=False) lists it; a vision tower is not listed)."""
    p, h = prefix(arch), arch.hidden
    shapes: dict[str, tuple[int, ...]] = {f"{p}embed_tokens.weight": (arch.vocab, h)}
    norms = ["input_layernorm", "post_attention_layernorm"]
    if arch.model_type in {"gemma2", "gemma3_text"}:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    moe = arch.moe
    for i in range(arch.layers):
        layer = f"{p}layers.{i}."
        if moe and i in moe.sparse_layers:  # the router and the stacked experts
            shapes[f"{layer}mlp.gate.weight"] = (moe.count, h)
            for stack, shape in moe.stack_shapes(h).items():
                shapes[f"{layer}mlp.experts.{stack}"] = shape
        for m in arch.linears:
            if not arch.layer_holds(m, i):
                continue
            name = f"{layer}{m.path or ('self_attn' if m.name in ATTENTION else 'mlp')}.{m.name}"
            shapes[f"{name}.weight"] = (m.fan_out, m.fan_in)
            if m.bias:
                shapes[f"{name}.bias"] = (m.fan_out,)
        if arch.model_type in {"qwen3", "gemma3_text", "qwen3_moe"} or (moe and arch.norm_params > 2 * h):
            shapes[f"{layer}self_attn.q_norm.weight"] = shapes[f"{layer}self_attn.k_norm.weight"] = (arch.head_dim,)
        for norm in norms:
            shapes[f"{layer}{norm}.weight"] = (h,)
    shapes[f"{p}norm.weight"] = (h,)
    shapes["lm_head.weight"] = (arch.vocab, h)
    return shapes


@dataclass(frozen=True)
class Copy:
    """One module PEFT trains in full: a copy of the whole module, of which `trained` are trainable."""
    module: str
    numbers: int  # in the copy (a bias beside a named weight is copied but stays frozen)
    trained: tuple[tuple[int, ...], ...]  # shapes of its trainable tensors
    embedding: bool  # an nn.Embedding (8-bit Adam keeps its states in 32 bits, as transformers' Trainer sets)
    tied: bool = False  # the output head shares this copy's weight (ensure_weight_tying)


@dataclass(frozen=True)
class Beside:
    """What trains beside the adapter, and the adapted modules PEFT leaves out (inside a copied module)."""
    copies: tuple[Copy, ...] = ()
    rows: int = 0  # embedding rows trained as a delta (trainable_token_indices)
    hidden: int = 0
    unadapted: tuple[str, ...] = ()  # full names of LoRA targets left without an adapter
    head_trained: bool = False  # the output head's weight is trained (its gradient is computed)

    def __bool__(self) -> bool:
        return bool(self.copies or self.rows)

    @property
    def parameters(self) -> int:
        return sum(math.prod(s) for c in self.copies for s in c.trained) + self.rows * self.hidden

    def described(self, arch: Architecture) -> str:
        """The copied modules as a reader names them: embed_tokens, lm_head (one copy, tied), layers.*.input_layernorm
        (32), and the embedding rows."""
        def short(module: str) -> str:
            return re.sub(r"\.\d+\.", ".*.", module.removeprefix(prefix(arch)))

        names = Counter(short(c.module) for c in self.copies)
        tied = {short(c.module) for c in self.copies if c.tied}
        shown = [f"{n}{', lm_head (one copy, tied)' if n in tied else ''}{f' ({k})' if k > 1 else ''}"
                 for n, k in names.items()]
        if self.rows:
            shown.append(f"{self.rows} embedding rows")
        return ", ".join(shown)


def beside(arch: Architecture, s: Settings) -> Beside:
    """What `s` trains beside the adapter on `arch` (its vocabulary already resized for new tokens)."""
    from hubtune import unfreeze

    shapes = parameter_shapes(arch)
    embedding = f"{prefix(arch)}embed_tokens"
    unfrozen = _unfrozen(arch, s.unfrozen_parameters, s.method == "qlora") if s.unfrozen_parameters \
        else unfreeze.Unfrozen()
    save = list(dict.fromkeys([*s.modules_to_save, *((EMBEDDING, HEAD) if s.new_tokens else ()), *unfrozen.modules]))
    tying = (bool(s.new_tokens) and arch.tied_embeddings) or unfrozen.tied
    if tying and any(m.split(".")[-1] in (EMBEDDING, HEAD) for m in save):
        # PEFT's _add_modules_to_save_to_tie: the embedding is copied, the head shares its copy
        save.append(embedding)
        save = [m for m in save if not re.match(rf"(^|.*\.){m}($|\..*)", "lm_head")]
    modules = _modules(shapes)
    matched = [k for k in modules if any(k.endswith(m) for m in save)]
    outermost = [k for k in matched if not any(k.startswith(f"{o}.") for o in matched)]
    copies = []
    for module in outermost:
        names = [n for n in shapes if n.startswith(f"{module}.")]
        named = module in unfrozen.modules  # hubtune.unfreeze.freeze_unnamed: only the named parameters train
        trained = tuple(shapes[n] for n in names if not named or n in unfrozen.parameters)
        tied = tying and module == embedding
        copies.append(Copy(module, sum(math.prod(shapes[n]) for n in names), trained, module == embedding, tied))
    if s.method == "qlora":
        quantized = [c.module for c in copies
                     if any(_is_linear_weight(n, arch) for n in shapes if n.startswith(f"{c.module}."))]
        if quantized:
            shown = ", ".join(quantized[:3]) + (f" and {len(quantized) - 3} more" if len(quantized) > 3 else "")
            verb = "hold" if len(quantized) > 1 else "holds"
            raise ConfigError([("lora.modules_to_save", f"{shown} {verb} weights of the quantized base, which "
                                                        f"cannot train in full; load the base with model.quantization: "
                                                        f"none, or save only unquantized modules (embeddings, norms, "
                                                        f"the head)")])
    targets = {m.name for m in arch.target_linears(s.target_modules)}
    unadapted = tuple(n.removesuffix(".weight") for n in shapes if _is_linear_weight(n, arch)
                      and n.rsplit(".", 2)[-2] in targets
                      and any(re.match(rf"(^|.*\.){m}($|\..*)", n.removesuffix(".weight")) for m in save))
    rows = sum(len(r) for r in unfrozen.token_rows.values())
    head = any(c.module == "lm_head" or c.tied for c in copies)
    return Beside(tuple(copies), rows, arch.hidden, unadapted, head)


@functools.lru_cache(maxsize=32)  # the fit search estimates the same run many times
def _unfrozen(arch: Architecture, patterns: tuple[str, ...], quantized: bool):
    from hubtune import unfreeze

    return unfreeze.resolve(_standin(parameter_shapes(arch), arch, quantized), list(patterns))


def _modules(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Every module that holds a parameter, parents first (named_modules' order)."""
    out: dict[str, None] = {}
    for name in shapes:
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            out.setdefault(".".join(parts[:i]))
    return list(out)


def _is_linear_weight(name: str, arch: Architecture) -> bool:
    return (name.endswith(".weight") and name.rsplit(".", 2)[-2] in {m.name for m in arch.linears}
            or bool(arch.moe) and ".experts." in name)  # stacked experts: quantized with model.quantize_experts


def _standin(shapes: dict[str, tuple[int, ...]], arch: Architecture, quantized: bool):
    """A module tree on the meta device (no memory) with the base's parameter names and shapes, the decoder's
    linear weights in uint8 on a 4-bit base, for hubtune.unfreeze.resolve to read as it reads the loaded base."""
    import torch

    embedding_path = f"{prefix(arch)}embed_tokens"

    class Base(torch.nn.Module):
        def get_input_embeddings(self):
            return self.get_submodule(embedding_path)

        def get_output_embeddings(self):
            return self.lm_head

    root = Base()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Embedding(1, 1, device="meta") if part == EMBEDDING
                                  else torch.nn.Module())
            module = getattr(module, part)
        if name == "lm_head.weight" and arch.tied_embeddings:
            module.weight = root.get_input_embeddings().weight
            continue
        dtype = torch.uint8 if quantized and _is_linear_weight(name, arch) else torch.bfloat16
        module.register_parameter(leaf, torch.nn.Parameter(torch.empty(shape, device="meta", dtype=dtype),
                                                           requires_grad=False))
    return root
