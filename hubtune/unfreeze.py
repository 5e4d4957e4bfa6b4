"""Base parameters trained in full beside the adapter (lora.unfrozen_parameters).

A pattern names base parameters the way Axolotl's unfrozen_parameters does (src/axolotl/utils/freeze.py):
a regular expression matched from the start of the name, with dots taken literally unless followed by `+`
(`.+` is any text), and an optional row range at the end (`model.embed_tokens.weight[:32000]`).
Names are the base model's own (`model.norm.weight`, `lm_head.weight`), not the PEFT-wrapped ones.

What a match trains, through PEFT's public options so that the saved adapter carries it and a base
loaded under it gets it back: a whole parameter trains its module in full (`modules_to_save`); a row
range of the input embedding trains those token rows only (`trainable_token_indices`). A module trained
in full takes no LoRA layer (PEFT leaves modules_to_save out of target_modules)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hubtune.errors import ConfigError

FIELD = "lora.unfrozen_parameters"
RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")


@dataclass(frozen=True)
class Pattern:
    raw: str
    regex: re.Pattern
    rows: tuple[int, int | None] | None  # [start, end) of the first dimension; None: the whole parameter

    def match(self, name: str) -> bool:
        return self.regex.match(name) is not None


def parse(raw: str) -> Pattern:
    """One pattern, as Axolotl reads it (LayerNamePattern): a ValueError says what is wrong with it."""
    rows = None
    name = raw
    found = RANGE.match(raw)
    if found:
        name, start, end = found.groups()
        if end is None and start.isdecimal():
            rows = (int(start), int(start) + 1)
        else:
            rows = (int(start) if start else 0, int(end) if end else None)
            if rows[1] is not None and rows[0] >= rows[1]:
                raise ValueError(f"{raw}: the row range must end after it starts")
    try:
        regex = re.compile(re.sub(r"\.(?!\+)", r"\\.", name))
    except re.error as err:
        raise ValueError(f"{raw} is not a regular expression ({err})") from None
    return Pattern(raw, regex, rows)


@dataclass
class Unfrozen:
    """What the patterns resolve to on a loaded base."""
    modules: list[str] = field(default_factory=list)  # full module names, trained in full (modules_to_save)
    token_rows: dict[str, list[int]] = field(default_factory=dict)  # embedding module -> rows trained
    parameters: set[str] = field(default_factory=set)  # the matched parameter names
    tied: bool = False  # a matched embedding or head is tied to the other: PEFT keeps them tied

    def __bool__(self) -> bool:
        return bool(self.modules or self.token_rows)


def resolve(model, patterns: list[str]) -> Unfrozen:
    """The modules and embedding rows `patterns` train on the base `model` (before the adapter is attached).
    A ConfigError for a pattern that matches nothing, a quantized weight (4-bit or 8-bit weights cannot
    train in full), or a row range on anything but the input embedding."""
    out = Unfrozen()
    if not patterns:
        return out
    parsed = [parse(p) for p in patterns]
    params = list(model.named_parameters(remove_duplicate=False))
    owners = dict(model.named_modules(remove_duplicate=False))
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    problems: list[tuple[str, str]] = []
    for pattern in parsed:
        matched = [(name, p) for name, p in params if pattern.match(name)]
        if not matched:
            sample = ", ".join(name for name, _ in params[:3])
            problems.append((FIELD, f"{pattern.raw} matches no parameter of the base (names are the base's own, "
                                    f"such as {sample}, with no base_model.model. in front)"))
            continue
        for name, p in matched:
            module_name, _, leaf = name.rpartition(".")
            module = owners[module_name]
            if _quantized(p):
                problems.append((FIELD, f"{pattern.raw} matches {name}, a {_kind(p)} weight of the quantized base, "
                                        f"which cannot train in full; load the base with model.quantization: none, "
                                        f"or name only unquantized parameters (embeddings, norms, the head)"))
                continue
            out.parameters.add(name)
            if pattern.rows is not None:
                if module is not embedding or leaf != "weight":
                    problems.append((FIELD, f"{pattern.raw}: a row range trains token rows of the input embedding "
                                            f"only (PEFT's trainable_token_indices); {name} is not its weight"))
                    continue
                if tied:
                    problems.append((FIELD, f"{pattern.raw}: this base ties its output head to the input embedding, "
                                            f"and TRL's fused loss reads the head's weight directly, so rows trained "
                                            f"through the tied head would not reach the loss; name the whole "
                                            f"embedding ({name}) instead"))
                    continue
                start, end = pattern.rows
                end = p.shape[0] if end is None else end
                if end > p.shape[0]:
                    problems.append((FIELD, f"{pattern.raw}: {name} has {p.shape[0]} rows"))
                    continue
                rows = out.token_rows.setdefault(module_name.rsplit(".", 1)[-1], [])
                rows.extend(i for i in range(start, end) if i not in rows)
            elif module_name not in out.modules:
                out.modules.append(module_name)
                if tied and module in (embedding, head):
                    out.tied = True
    whole_embedding = [m for m in out.modules if owners[m] is embedding]
    if whole_embedding and out.token_rows:
        problems.append((FIELD, f"{whole_embedding[0]} is named both whole and by rows; name it one way"))
    if problems:
        raise ConfigError(problems)
    return out


def refuse_quantized_saves(model, names: list[str]) -> None:
    """lora.modules_to_save: PEFT copies and trains in full every module whose name ends with one of `names`;
    a ConfigError naming those that hold quantized weights, which cannot be made trainable."""
    held = [key for key, module in model.named_modules() if key and any(key.endswith(n) for n in names)
            and any(_quantized(p) for p in module.parameters())]
    held = [key for key in held if not any(key.startswith(f"{outer}.") for outer in held)]
    if held:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        verb = "hold" if len(held) > 1 else "holds"
        raise ConfigError([("lora.modules_to_save", f"{shown} {verb} weights of the quantized base, which cannot "
                                                    f"train in full; load the base with model.quantization: none, or "
                                                    f"save only unquantized modules (embeddings, norms, the head)")])


def freeze_unnamed(peft_model, unfrozen: Unfrozen) -> None:
    """PEFT trains every parameter of a module it saves whole; keep the ones no pattern named (a bias
    beside a named weight) as they are."""
    from peft.utils import ModulesToSaveWrapper

    for name, wrapper in peft_model.named_modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        base_name = name.removeprefix("base_model.model.")
        if base_name not in unfrozen.modules:
            continue
        for adapter in wrapper.modules_to_save.values():
            for leaf, p in adapter.named_parameters():
                if f"{base_name}.{leaf}" not in unfrozen.parameters:
                    p.requires_grad_(False)


def _quantized(p) -> bool:
    return type(p).__name__ in ("Params4bit", "Int8Params") or not p.dtype.is_floating_point


def _kind(p) -> str:
    return {"Params4bit": "4-bit", "Int8Params": "8-bit"}.get(type(p).__name__, str(p.dtype))
