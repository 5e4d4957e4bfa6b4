"""One line of advice when a setting falls outside the field's typical ranges. The ranges live beside
the fields in hubtune/config.py (`json_schema_extra={"typical": [low, high]}`); the rules here are the
ones that relate two fields (effective batch, alpha against r). Advice, never an error: the ranges
are for 1B-70B bases, and the line says so when the base is far from that.
"""

from __future__ import annotations

from pydantic import BaseModel

from hubtune import config as cfg

EFFECTIVE_BATCH = (8, 32)  # micro-batch x accumulation (x processes)
GUIDE_SIZES = (1e9, 70e9)  # the bases the typical ranges were written for


def typical_range(section: type[BaseModel], name: str) -> tuple[float, float] | None:
    extra = section.model_fields[name].json_schema_extra or {}
    low_high = extra.get("typical") if isinstance(extra, dict) else None
    return tuple(low_high) if low_high else None


def outside(config: cfg.RunConfig) -> list[str]:
    """Each setting outside its typical range, in words."""
    found = []
    sections = {"lora": config.lora, "data": config.data, "training": config.training}
    for section_name, section in sections.items():
        for name in type(section).model_fields:
            rng = typical_range(type(section), name)
            value = getattr(section, name)
            if rng is None or value is None:
                continue
            if name == "epochs" and config.training.max_steps:
                continue  # max_steps decides the length of the run
            if not rng[0] <= value <= rng[1]:
                side = "below" if value < rng[0] else "above"
                found.append(f"{section_name}.{name} {_n(value)} is {side} the usual {_n(rng[0])} to {_n(rng[1])}")
    t = config.training
    if not config.training.max_steps and 3 < t.epochs <= 5:
        found.append(f"training.epochs {t.epochs:g} is more than the usual 3 or fewer (more epochs overfit)")
    batch = t.micro_batch_size * t.gradient_accumulation_steps
    if not EFFECTIVE_BATCH[0] <= batch <= EFFECTIVE_BATCH[1]:
        found.append(f"the effective batch {batch} (micro_batch_size x gradient_accumulation_steps) is outside "
                     f"the usual {EFFECTIVE_BATCH[0]} to {EFFECTIVE_BATCH[1]}")
    if config.lora.alpha not in (config.lora.r, 2 * config.lora.r):
        found.append(f"lora.alpha {config.lora.alpha} is usually r ({config.lora.r}) or twice r")
    if t.lr_scheduler != "cosine":
        found.append(f"training.lr_scheduler {t.lr_scheduler}: the usual schedule is cosine decay")
    return found


def advice_line(config: cfg.RunConfig, parameters: int | None = None) -> str | None:
    """The one line `hubtune train` (and the UI) shows, or None when every setting is typical."""
    found = outside(config)
    if not found:
        return None
    line = "advice: " + "; ".join(found)
    if parameters and not GUIDE_SIZES[0] / 2 <= parameters <= GUIDE_SIZES[1] * 1.5:
        line += (f" (these ranges are for 1B-70B bases; this base has {_size(parameters)} parameters, "
                 f"where other settings can be right)")
    return line + ". Training goes on."


def parameter_count(model_config) -> int | None:
    """Parameters of the base from its config alone (hubtune.memory.parameter_count); None when the
    config cannot be built."""
    from hubtune import memory
    from hubtune.errors import HubtuneError

    try:
        return memory.parameter_count(model_config.to_dict())
    except HubtuneError:
        return None


def _n(x: float) -> str:
    if x >= 1:
        return f"{x:,.0f}"
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}" if x < 0.01 else f"{x:g}"


def _size(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)
