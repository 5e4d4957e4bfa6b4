"""What hubtune knows about each model family, as data: how its chat template ends an assistant turn, what
pads, whether the template takes a system message (and where it puts one), which module names stand behind
the LoRA presets, whether it thinks before answering, and what generation must stop on.

Read by the data pipeline (rendering and masks), training (LoRA targets, padding), evaluation (stopping,
thinking) and the card (how to use). An architecture not listed keeps working from the model's own names:
`family_of` returns None and every reader falls back to the tokenizer's EOS and PEFT's module matching.

    family = family_of(model_config, tokenizer.chat_template)   # a Family or None
    targets = target_modules("attention", model_config)          # ["qkv_proj", "o_proj"] on Phi-3
"""

from __future__ import annotations

from dataclasses import dataclass, field

# LoRA presets by module naming scheme. "all-linear" is every linear layer but the output head, resolved on
# the loaded base (linear_module_names); the explicit lists say what it finds on these families.
SEPARATE_QKV = {
    "qv": ["q_proj", "v_proj"],
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
# Phi-3 / Phi-4-mini fuse the query, key and value projections into qkv_proj and the MLP's gate and up into
# gate_up_proj: q_proj or v_proj alone do not exist there, so "qv" adapts the fused projection.
FUSED_QKV = {
    "qv": ["qkv_proj"],
    "attention": ["qkv_proj", "o_proj"],
    "all-linear": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}


@dataclass(frozen=True)
class Family:
    """One family's template and architecture facts."""

    key: str  # short name, used in docs and errors: "qwen3"
    name: str  # what users call it: "Qwen3"
    model_types: tuple[str, ...]  # config.json model_type values of its architectures
    end_of_turn: str  # the token that closes an assistant turn in its template
    pad: str | None  # the pad token to use when the tokenizer sets none (never the end-of-turn token)
    system: str = "native"  # native | first_user (folded into the first user turn) | last_user (into the last)
    system_separator: str = "\n\n"  # between a folded system prompt and the user's text, as its template joins them
    thinking: str | None = None  # None | "switch" (enable_thinking on/off) | "forced" (the generation prompt opens <think>)
    template_marker: str = ""  # a piece of the chat template that tells this family from others of its model_type
    modules: dict = field(default_factory=lambda: SEPARATE_QKV)
    tool_arguments: str = "object"  # how its template takes tool call arguments: object (a dict) or text (JSON)
    answer_marker: str | None = None  # where the answer starts in generated text (gpt-oss: after the last <|message|>)
    attention: str | None = None  # the attention implementation training must use (None: hubtune's choice)
    quirks: str = ""  # what its template does that trips fine-tuning
    handling: str = ""  # what hubtune does about it

    @property
    def takes_system(self) -> bool:
        return self.system == "native"


FAMILIES: tuple[Family, ...] = (
    # Template markers first: families that share a model_type with another are told apart by their template.
    Family("deepseek-r1-distill", "DeepSeek-R1 distill (Qwen / Llama)", ("qwen2", "llama"),
           end_of_turn="<｜end▁of▁sentence｜>", pad="<｜▁pad▁｜>", thinking="forced", template_marker="<｜Assistant｜>",
           tool_arguments="text",
           quirks="The generation prompt ends `<｜Assistant｜><think>\\n`, but a rendered training conversation drops "
                  "everything up to `</think>` and never writes `<think>\\n`: the prompt is not a prefix of prompt + "
                  "answer. The system prompt is written bare before the first user turn.",
           handling="Trains on the generation prompt followed by the reasoning (empty when the row has none), "
                    "`</think>\\n\\n`, the answer and `<｜end▁of▁sentence｜>`; evaluation scores the text after "
                    "`</think>`."),
    Family("smollm2", "SmolLM2", ("llama",), end_of_turn="<|im_end|>", pad="<|endoftext|>",
           template_marker="named SmolLM",
           quirks="ChatML on a Llama architecture; inserts its own default system prompt when a conversation has none.",
           handling="Renders through the template as is; the loss covers the answer and `<|im_end|>`."),
    Family("llama3", "Llama 3.1 / 3.2 / 3.3 Instruct", ("llama",), end_of_turn="<|eot_id|>",
           pad="<|finetune_right_pad_id|>", template_marker="<|eot_id|>",
           quirks="Writes a dated system header (`Cutting Knowledge Date`, `Today Date`) into every conversation; "
                  "the base tokenizer's EOS is `<|end_of_text|>` while turns end with `<|eot_id|>`; no pad token.",
           handling="Pads with `<|finetune_right_pad_id|>`; generation stops on every id of generation_config's "
                    "eos_token_id."),
    Family("qwen3", "Qwen3", ("qwen3", "qwen3_moe"), end_of_turn="<|im_end|>", pad="<|endoftext|>", thinking="switch",
           template_marker="enable_thinking",
           quirks="Thinking is on by default: the last assistant turn is rendered with a `<think>…</think>` block, "
                  "empty when there is no reasoning; `enable_thinking=False` puts the empty block into the "
                  "generation prompt instead.",
           handling="Rows with reasoning (`reasoning_content` or a `<think>` block) train in thinking mode, rows "
                    "without it with `enable_thinking=False` (data.thinking: auto); evaluation scores the text "
                    "after `</think>` and checks both modes."),
    Family("qwen2.5", "Qwen2.5 Instruct", ("qwen2",), end_of_turn="<|im_end|>", pad="<|endoftext|>",
           template_marker="<|im_start|>",
           quirks="Adds a default system prompt (\"You are Qwen, created by Alibaba Cloud…\") when there is none.",
           handling="Renders through the template as is; the loss covers the answer and `<|im_end|>`."),
    Family("phi4-mini", "Phi-4-mini", ("phi3",), end_of_turn="<|end|>", pad="<|endoftext|>", template_marker="<|tool|>",
           modules=FUSED_QKV,
           quirks="Turns end with `<|end|>`, not the tokenizer's EOS `<|endoftext|>`; no newline after role tags; "
                  "fused `qkv_proj` and `gate_up_proj` modules.",
           handling="Accepts `<|end|>` as the end of turn (it is in generation_config's eos_token_id) and stops "
                    "generation on it; LoRA presets name the fused modules."),
    Family("phi3", "Phi-3 / Phi-3.5 mini", ("phi3",), end_of_turn="<|end|>", pad="<|endoftext|>",
           template_marker="<|end|>", modules=FUSED_QKV,
           quirks="Turns end with `<|end|>`, not the tokenizer's EOS `<|endoftext|>`, and a conversation that does "
                  "not end in a generation prompt gets a trailing `<|endoftext|>`; fused `qkv_proj` and "
                  "`gate_up_proj` modules.",
           handling="The loss ends at `<|end|>`; generation stops on `<|end|>` and `<|endoftext|>`; LoRA presets "
                    "name the fused modules."),
    Family("gemma3", "Gemma 3", ("gemma3", "gemma3_text"), end_of_turn="<end_of_turn>", pad="<pad>",
           system="first_user", template_marker="first_user_prefix",
           quirks="No system role: the template folds the system prompt into the first user turn (and its early "
                  "revisions read it as a list of content parts); turns end with `<end_of_turn>`, not EOS `<eos>`.",
           handling="Folds the system prompt into the first user turn itself, joined by a blank line as the "
                    "template does; stops generation on `<end_of_turn>`."),
    Family("gemma2", "Gemma 2", ("gemma2",), end_of_turn="<end_of_turn>", pad="<pad>", system="first_user",
           template_marker="System role not supported", attention="eager",
           quirks="Raises \"System role not supported\" on a system message; turns end with `<end_of_turn>`, not "
                  "EOS `<eos>`; its attention logit soft-capping has no SDPA kernel (transformers refuses sdpa).",
           handling="Folds the system prompt into the first user turn, joined by a blank line (as Gemma 3's "
                    "template does), and says so once; stops generation on `<end_of_turn>`; trains with eager "
                    "attention."),
    Family("mistral", "Mistral (v0.3 / Nemo templates)", ("mistral",), end_of_turn="</s>", pad="<unk>",
           system="last_user", template_marker="[INST]",
           quirks="The system prompt is written into the last user turn only when that turn is the last message: "
                  "rendered with its answer, a conversation loses the system prompt, and the prompt alone is not "
                  "a prefix of prompt + answer.",
           handling="Folds the system prompt into the last user turn of the prompt itself, as the template does at "
                    "inference, so training and inference see the same text."),
    Family("gpt-oss", "gpt-oss", ("gpt_oss",), end_of_turn="<|return|>", pad="<|endoftext|>",
           template_marker="<|channel|>", answer_marker="<|message|>", attention="eager",
           quirks="Harmony format: the final answer goes to the `final` channel and ends with `<|return|>` when "
                  "rendered last (`<|end|>` inside a history); reasoning goes to the `analysis` channel.",
           handling="Stops generation on `<|return|>`, `<|endoftext|>` and `<|call|>`; scores the text after the "
                    "last `<|message|>`; trains with eager attention (its attention sinks have no SDPA kernel)."),
)
BY_KEY = {f.key: f for f in FAMILIES}


def family_of(model_config=None, chat_template: str | None = None) -> Family | None:
    """The family of a model from its config (model_type) and its chat template; None when unknown."""
    model_type = getattr(model_config, "model_type", None) if model_config is not None else None
    if isinstance(model_config, dict):
        model_type = model_config.get("model_type")
    template = chat_template if isinstance(chat_template, str) else ""
    candidates = [f for f in FAMILIES if model_type in f.model_types] if model_type else list(FAMILIES)
    for f in candidates:
        if template and f.template_marker in template:
            return f
    # A model_type only one family has (gemma2, qwen3) says enough; a shared one (llama, qwen2) needs the template.
    return candidates[0] if model_type and len(candidates) == 1 else None


def target_modules(preset: str, model_config=None) -> str | list[str]:
    """The module names behind a LoRA preset for this model: the family's own names where the family is
    known, else the model's (Phi-3's fused qkv_proj where it has one), else PEFT's all-linear."""
    model_type = (model_config.get("model_type") if isinstance(model_config, dict)
                  else getattr(model_config, "model_type", None))
    known = [f for f in FAMILIES if model_type in f.model_types]
    if known:
        return known[0].modules[preset] if preset != "all-linear" else "all-linear"
    names = module_names(model_config) if model_config is not None else set()
    scheme = FUSED_QKV if "qkv_proj" in names and "q_proj" not in names else SEPARATE_QKV
    return scheme[preset] if preset != "all-linear" else "all-linear"


def linear_module_names(model) -> list[str]:
    """What the all-linear preset adapts: the last names of the model's linear layers but the output head.
    On a dense model PEFT's own all-linear finds the same layers (nn.Linear and GPT-2's Conv1D, bitsandbytes'
    Linear4bit / Linear8bitLt being nn.Linear subclasses), as does Axolotl's lora_target_linear
    (find_all_linear_names). Passed to PEFT by name because on a transformers 5 mixture-of-experts model PEFT's
    all-linear also puts LoRA on the stacked expert parameters and the router's weight (ParamWrapper, no
    dropout there), which are no linear layers: those are asked for with lora.target_parameters."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head and name})


def module_names(model_config) -> set[str]:
    """The last name of every linear layer of a model built from its config on the meta device (no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(model_config)
    except Exception:  # an architecture that cannot be built empty: PEFT checks when it attaches LoRA
        return set()
    return {key.rsplit(".", 1)[-1] for key, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)}


def stop_token_ids(tokenizer, generation_config=None, family: Family | None = None) -> list[int]:
    """Every id generation must stop on: the tokenizer's EOS, each of generation_config's eos_token_id
    (an int or a list: Llama 3 lists three, Phi-3 three, Gemma two) and the family's end-of-turn token."""
    ids: list[int] = []
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    for value in ([tokenizer.eos_token_id] + (eos if isinstance(eos, list) else [eos])):
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    if family is not None:
        eot = tokenizer.convert_tokens_to_ids(family.end_of_turn)
        if isinstance(eot, int) and eot != tokenizer.unk_token_id and eot not in ids:
            ids.append(eot)
    return ids


def markdown_table() -> str:
    """The family table as the docs show it (docs/families.md holds this text; a test keeps them equal)."""
    rows = ["| Family | model_type | End of turn | System prompt | Template quirks | What hubtune does |",
            "|---|---|---|---|---|---|"]
    system = {"native": "its own turn", "first_user": "folded into the first user turn",
              "last_user": "folded into the last user turn"}
    for f in FAMILIES:
        cells = [f.name, ", ".join(f.model_types), f"`{f.end_of_turn}`", system[f.system], f.quirks, f.handling]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # a pipe in a token splits a cell
    return "\n".join(rows) + "\n"


def suggestion(name: str | None) -> str:
    """A line for the app's model box: the family found, the modules behind each LoRA preset, what hubtune does
    about its template. Empty for a model of no known family."""
    family = next((f for f in FAMILIES if f.name == name), None)
    if family is None:
        return ""
    presets = "; ".join(f"`{preset}` adapts {', '.join(names)}" for preset, names in family.modules.items())
    return f"**Model family: {family.name}.** LoRA presets on it: {presets}. Its template: {family.handling}"
