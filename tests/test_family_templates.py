"""Each family's real chat template, rendered the way hubtune trains on it: the loss mask checked token by token
against the template's own rendering, the system prompt kept, thinking rendered as the template renders it,
and the family table's module names and stop tokens."""

from __future__ import annotations

import pytest
from conftest import TEST_CHAT_TEMPLATE
from data_rows import section, write_jsonl
from family_models import KEYS, SPECS, family_config, label_rows

from hubtune.data import prepare
from hubtune.data.chat import ChatFormat, strip_thinking
from hubtune.data.template import chat_format
from hubtune.errors import DataError
from hubtune.families import BY_KEY, family_of, target_modules

SYSTEM = "You are terse."
CONVERSATION = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "First question here"},
                {"role": "assistant", "content": "First answer"},
                {"role": "user", "content": "Second question here"},
                {"role": "assistant", "content": "The second answer"}]
PROMPT, COMPLETION = CONVERSATION[:-1], CONVERSATION[-1:]


def load(folder):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    return (AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder),
            GenerationConfig.from_pretrained(folder))


def fmt(folder, thinking: str = "auto") -> ChatFormat:
    tokenizer, config, generation = load(folder)
    return chat_format(tokenizer, "auto", config, generation, thinking)[0]


@pytest.mark.parametrize("key", KEYS)
def test_the_loss_covers_exactly_the_answer_and_its_end_of_turn_token(key, family_model):
    chat = fmt(family_model(key))
    tok = chat.tokenizer
    assert chat.family is BY_KEY[SPECS[key].get("family", key)]
    row = chat.tokenize(PROMPT, COMPLETION)
    ids, mask = row["input_ids"], row["completion_mask"]
    learned = [i for i, m in zip(ids, mask) if m]
    # One contiguous run of learned tokens, ending on the family's end-of-turn token.
    first = mask.index(1)
    assert mask[first:first + len(learned)] == [1] * len(learned) and sum(mask[first + len(learned):]) == 0
    eot = tok.convert_tokens_to_ids(chat.family.end_of_turn)
    assert learned[-1] == eot and eot in chat.stop_ids
    answer = tok.decode(learned[:-1])
    if chat.family.thinking == "forced":  # the generation prompt opened <think>; the answer follows an empty block
        assert answer == "\n</think>\n\nThe second answer"
    elif key == "gpt-oss":
        assert answer == "<|channel|>final<|message|>The second answer"
    else:
        assert answer == "The second answer"
    # What the model learns to continue from is the generation prompt, token for token, as inference renders it.
    context = tok(chat.generation_prompt(PROMPT, chat.row_thinking(COMPLETION)), add_special_tokens=False)["input_ids"]
    assert ids[:first] == context
    # The earlier turns and the system prompt are context, never learned.
    prompt_text = tok.decode(ids[:first])
    assert SYSTEM in prompt_text and "First answer" in prompt_text and "Second question here" in prompt_text


@pytest.mark.parametrize("key", KEYS)
def test_the_prompt_is_the_real_templates_own_rendering(key, family_model):
    """Where the template takes the conversation as it is, hubtune's prompt text is its rendering verbatim;
    where hubtune folds the system prompt, the text is the template's rendering of the folded turns, and
    Gemma 3's own fold gives the same text as hubtune's."""
    chat = fmt(family_model(key))
    tok = chat.tokenizer
    prompt_text, completion_text = chat.render(PROMPT, COMPLETION)
    # Qwen3 renders a row without reasoning with thinking off (data.thinking: auto).
    switch = {"enable_thinking": False} if chat.family.thinking == "switch" else {}
    if chat.family.takes_system:
        assert prompt_text == tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True, **switch)
    else:
        folded = chat.messages(PROMPT)
        assert all(m["role"] != "system" for m in folded)
        assert prompt_text == tok.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)
        user = [m for m in folded if m["role"] == "user"]
        where = user[0] if chat.family.system == "first_user" else user[-1]
        assert where["content"].startswith(SYSTEM + "\n\n")
    if key == "gemma3":
        # Gemma 3's template folds a system prompt given as content parts exactly as hubtune folds a string.
        parts = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}] + PROMPT[1:]
        assert prompt_text == tok.apply_chat_template(parts, tokenize=False, add_generation_prompt=True)
    if chat.family.thinking != "forced":
        full = tok.apply_chat_template(chat.messages(CONVERSATION), tokenize=False, **switch)
        assert full == prompt_text + completion_text


def test_the_families_that_trip_a_plain_trainer_are_the_ones_hubtune_renders_itself(family_model):
    """Rendered naively (the template's own system handling, prompt + answer as one conversation), Gemma 2
    refuses the system prompt, Mistral drops it from a rendered answer, and the DeepSeek-R1 prompt is not a
    prefix: each is a typed error that names the template, never a warning."""
    tok, _, _ = load(family_model("mistral"))
    with pytest.raises(DataError, match="not a prefix of the rendered conversation"):
        ChatFormat(tok, None, name="mistral-tiny").render(PROMPT, COMPLETION)
    tok, _, _ = load(family_model("deepseek-r1-distill"))
    with pytest.raises(DataError, match="not a prefix") as err:
        ChatFormat(tok, None, name="r1-tiny").render(PROMPT, COMPLETION)
    assert "r1-tiny" in str(err.value) and "<think>" in str(err.value)
    tok, _, _ = load(family_model("gemma2"))
    with pytest.raises(DataError, match="System role not supported"):
        ChatFormat(tok, None, name="gemma-tiny").render(PROMPT, COMPLETION)


def test_a_prompt_that_is_not_a_prefix_names_the_family(make_tokenizer, tmp_path):
    template = TEST_CHAT_TEMPLATE.replace("{{ '<|assistant|>\n' }}{%- endif -%}", "{{ '<|assistant|>\nSure: ' }}{%- endif -%}")
    assert template != TEST_CHAT_TEMPLATE
    tok = make_tokenizer(template)
    chat = ChatFormat(tok, BY_KEY["phi3"], name="some/model")
    with pytest.raises(DataError) as err:
        chat.render(PROMPT, COMPLETION)
    assert "Phi-3 / Phi-3.5 mini chat template of some/model" in str(err.value)


def test_qwen3_thinking_is_rendered_exactly_as_the_template_renders_it(family_model):
    chat = fmt(family_model("qwen3"))
    plain = {"role": "assistant", "content": "calm"}
    reasoned = {"role": "assistant", "content": "calm", "reasoning_content": "meadow means calm"}
    inline = {"role": "assistant", "content": "<think>\nmeadow means calm\n</think>\n\ncalm"}
    # auto: a row without reasoning trains with thinking off (the empty block is in the prompt, not learned) ...
    prompt, completion = chat.render(PROMPT, [plain])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and completion == "calm<|im_end|>\n"
    # ... a row with reasoning (a field or an inline block) learns the thinking, the answer and <|im_end|>.
    for row in (reasoned, inline):
        prompt, completion = chat.render(PROMPT, [row])
        assert prompt.endswith("<|im_start|>assistant\n")
        assert completion == "<think>\nmeadow means calm\n</think>\n\ncalm<|im_end|>\n"
    # thinking on: a row without reasoning learns the empty think block the template writes.
    assert fmt(family_model("qwen3"), "on").render(PROMPT, [plain])[1] == "<think>\n\n</think>\n\ncalm<|im_end|>\n"
    # thinking off: reasoning is dropped.
    assert fmt(family_model("qwen3"), "off").render(PROMPT, [reasoned])[1] == "calm<|im_end|>\n"
    # Generation prompts follow the switch.
    assert chat.generation_prompt(PROMPT, thinking=False).endswith("<think>\n\n</think>\n\n")
    assert chat.generation_prompt(PROMPT, thinking=True).endswith("<|im_start|>assistant\n")


def test_deepseek_r1_trains_after_the_think_prefix_of_its_generation_prompt(family_model):
    chat = fmt(family_model("deepseek-r1-distill"))
    reasoned = {"role": "assistant", "content": "calm", "reasoning_content": "meadow means calm"}
    prompt, completion = chat.render(PROMPT, [reasoned])
    assert prompt.endswith("<｜Assistant｜><think>\n")
    assert completion == "meadow means calm\n</think>\n\ncalm<｜end▁of▁sentence｜>"
    assert chat.answer(completion) == "calm"


def test_answers_are_scored_after_the_thinking(family_model):
    chat = fmt(family_model("qwen3"))
    assert chat.answer("<think>\nmeadow\n</think>\n\ncalm<|im_end|>\nextra") == "calm"
    assert chat.stopped("calm<|im_end|>") and not chat.stopped("calm calm calm")
    assert strip_thinking("<think>\n\n</think>\n\nnegative") == "negative"
    assert fmt(family_model("gpt-oss")).answer("<|channel|>analysis<|message|>hmm<|end|><|start|>assistant"
                                                "<|channel|>final<|message|>calm<|return|>") == "calm"


def test_the_data_report_counts_rows_with_reasoning(tmp_path, family_model):
    tokenizer, config, generation = load(family_model("qwen3"))
    rows = label_rows(6, 1, reasoning=True) + label_rows(6, 2)
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    prepared = prepare(section(path, near_dup_threshold=None), tokenizer, model_config=config,
                       generation_config=generation)
    assert prepared.report["reasoning_rows"] == sum("reasoning_content" in r["messages"][-1] for r in
                                                    [r for r in rows])
    assert prepared.report["chat_template"]["family"] == "Qwen3"


def test_a_system_prompt_the_template_refuses_is_folded_and_the_report_says_so(tmp_path, family_model):
    tokenizer, config, generation = load(family_model("gemma2"))
    path = write_jsonl(tmp_path / "g.jsonl", label_rows(4, 1))
    full = prepare(section(path, near_dup_threshold=None), tokenizer, model_config=config,
                   generation_config=generation).report
    report = full["chat_template"]
    assert report["system_prompt"].startswith("folded into the first user turn")
    from rich.console import Console

    from hubtune.data.report import render

    console = Console(record=True, width=200)
    render(full, console)
    shown = console.export_text()
    assert shown.count("system prompt: folded into the first user turn") == 1 and "(Gemma 2 family)" in shown
    assert report["end_of_turn"] == "<end_of_turn>" and tokenizer.convert_tokens_to_ids("<end_of_turn>") in \
        report["stop_token_ids"]


@pytest.mark.parametrize("key", KEYS)
def test_generation_stops_on_every_eos_id_of_generation_config(key, family_model):
    tokenizer, config, generation = load(family_model(key))
    chat = chat_format(tokenizer, "auto", config, generation)[0]
    wanted = {tokenizer.convert_tokens_to_ids(t) for t in SPECS[key]["generation_eos"]}
    assert wanted <= set(chat.stop_ids)


def test_fused_modules_stand_behind_the_presets_on_phi3(family_model):
    from transformers import AutoConfig

    from hubtune import config as cfg
    from hubtune.train import target_modules_problem

    phi = AutoConfig.from_pretrained(family_model("phi3"))
    assert target_modules("qv", phi) == ["qkv_proj"]
    assert target_modules("attention", phi) == ["qkv_proj", "o_proj"]
    for preset in ("qv", "attention", "all-linear"):
        assert target_modules_problem(cfg.LoraSection(target_modules=preset), phi) is None
    assert "q_proj" in target_modules_problem(cfg.LoraSection(target_modules=["q_proj", "v_proj"]), phi)
    llama = AutoConfig.from_pretrained(family_model("llama3.1"))
    assert target_modules("attention", llama) == ["q_proj", "k_proj", "v_proj", "o_proj"]


def adapted_layers(model, targets) -> set[str]:
    """The modules PEFT puts LoRA on for these targets, and no parameter (built on the meta device)."""
    import warnings

    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = get_peft_model(model, LoraConfig(r=2, target_modules=targets), low_cpu_mem_usage=True)
    assert not adapted.peft_config["default"].target_parameters
    return {key for key, m in adapted.named_modules() if hasattr(m, "lora_A")}


@pytest.mark.parametrize("key", ["tiny-llama", "gpt2", *KEYS])
def test_all_linear_resolves_to_the_layers_peft_all_linear_adapts(key):
    """all-linear goes to PEFT as the base's linear layer names (linear_module_names, resolved on the loaded
    base): on these bases exactly the layers PEFT's own all-linear adapts (nn.Linear, GPT-2's Conv1D)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

    from hubtune import config as cfg
    from hubtune.families import linear_module_names
    from hubtune.train import lora_config

    model_config = (AutoConfig.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama")) if key == "tiny-llama"
                    else GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64) if key == "gpt2"
                    else family_config(key, vocab_size=128, pad_token_id=None, bos_token_id=None, eos_token_id=None))

    def build():
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(model_config)

    model = build()
    names = lora_config(cfg.LoraSection(), model_config=model_config, model=model).target_modules
    assert sorted(names) == linear_module_names(model) and "lm_head" not in names
    assert adapted_layers(model, sorted(names)) == adapted_layers(build(), "all-linear")


def test_an_unknown_architecture_keeps_its_own_module_names():
    from transformers import GPT2Config

    from hubtune import config as cfg
    from hubtune.train import target_modules_problem

    gpt2 = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)
    assert family_of(gpt2, None) is None
    assert target_modules("all-linear", gpt2) == "all-linear"
    assert target_modules_problem(cfg.LoraSection(target_modules="all-linear"), gpt2) is None
    assert target_modules_problem(cfg.LoraSection(target_modules=["c_attn"]), gpt2) is None
    assert "c_attn" in target_modules_problem(cfg.LoraSection(target_modules="attention"), gpt2)


def test_tool_calls_render_through_the_templates_own_tool_support_and_only_the_call_is_learned(family_model):
    from family_models import TOOLS, tool_rows

    from hubtune.data.formats import to_example

    chat = fmt(family_model("qwen2.5"))
    tok = chat.tokenizer
    example = to_example(tool_rows(1, 1)[0], "messages", "task", "row 1")
    row = chat.tokenize(example.prompt, example.completion, example.tools)
    learned = tok.decode([i for i, m in zip(row["input_ids"], row["completion_mask"]) if m])
    label = example.completion[-1]["tool_calls"][0]["function"]["arguments"]
    assert learned == f'<tool_call>\n{{"name": "set_label", "arguments": {label}}}\n</tool_call><|im_end|>'
    prompt = tok.decode([i for i, m in zip(row["input_ids"], row["completion_mask"]) if not m])
    assert '"name": "set_label"' in prompt and "# Tools" in prompt  # the schema, as the template writes it
    assert prompt.startswith(tok.apply_chat_template(chat.messages(example.prompt), tools=TOOLS, tokenize=False,
                                                     add_generation_prompt=True))

    # After a tool's result, the answer is learned; the call and the result before it are context.
    history = example.prompt + example.completion + [{"role": "tool", "content": '{"ok": true}'}]
    final = [{"role": "assistant", "content": "Recorded."}]
    row = chat.tokenize(history, final, example.tools)
    assert tok.decode([i for i, m in zip(row["input_ids"], row["completion_mask"]) if m]) == "Recorded.<|im_end|>"
    assert "<tool_response>" in tok.decode(row["input_ids"])


def test_the_call_metric_compares_the_name_and_the_json_arguments():
    from hubtune.data.chat import call_matches, tool_call_of

    reference = {"name": "set_label", "arguments": {"label": "price"}}
    assert call_matches('<tool_call>\n{"name": "set_label", "arguments": {"label": "price"}}\n</tool_call>', reference)
    assert call_matches('{"name": "set_label", "parameters": {"label": "price"}}', reference)  # Llama 3's form
    assert call_matches('{"arguments": {"label": "price"}, "name": "set_label"}', reference)  # key order aside
    assert not call_matches('{"name": "set_label", "arguments": {"label": "unit"}}', reference)
    assert not call_matches('{"name": "get_label", "arguments": {"label": "price"}}', reference)
    assert not call_matches("price", reference)
    assert tool_call_of('[TOOL_CALLS][{"name": "f", "arguments": "{\\"a\\": 1}"}]') == {"name": "f", "arguments": {"a": 1}}


def test_the_docs_show_the_family_table_as_it_is():
    from pathlib import Path

    from hubtune.families import markdown_table

    page = (Path(__file__).parents[1] / "docs" / "families.md").read_text(encoding="utf-8")
    assert markdown_table() in page, "regenerate the table in docs/families.md from hubtune.families.markdown_table()"


def test_generation_renders_a_system_prompt_the_way_the_family_takes_it(family_model):
    """Generation (evaluation, the base's prompting score, the app's chat) renders through the family: Gemma 2's
    template alone refuses the system prompt; through hubtune it is folded, and every stop id is passed."""
    from transformers import AutoModelForCausalLM

    from hubtune.evaluation.generate import chat_for, generate_answers, stream_answer

    folder = family_model("gemma2")
    tokenizer, _, _ = load(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    chat = chat_for(model, tokenizer)
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in chat.stop_ids
    generated = generate_answers(model, tokenizer, [PROMPT], max_new_tokens=3, chat=chat)
    assert len(generated) == 1 and isinstance(chat.answer(generated[0]), str)
    assert isinstance(list(stream_answer(model, tokenizer, PROMPT, max_new_tokens=3))[-1], str)
