"""Tiny random-weight models of the families people fine-tune, each with its family's real chat template and
special tokens (tests/families/: the templates, their sources in SOURCES.md, the tokens in families.json).

A model is the real architecture class, built from the real config (hubtune/assets/model_configs) with its
dimensions scaled down to hidden 64, 2 layers; the tokenizer is the suite's small byte-level BPE plus the
family's special tokens, which is enough: the template and the tokens the template writes are the real ones.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from data_rows import write_jsonl

FAMILY_DIR = Path(__file__).parent / "families"
SPECS = json.loads((FAMILY_DIR / "families.json").read_text(encoding="utf-8"))
KEYS = sorted(SPECS)
SCALED = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
          # At 0.02 a frozen random head keeps a LoRA's loss flat on a model this small; 0.1 lets it learn.
          "initializer_range": 0.1, "sliding_window": 256, "query_pre_attn_scalar": 16, "torch_dtype": "float32",
          "dtype": "float32", "use_cache": True}
DROPPED = ("auto_map", "_name_or_path", "quantization_config", "transformers_version", "layer_types",
           "max_window_layers", "rope_scaling", "original_max_position_embeddings")


def family_config(key: str, **tokens):
    """Family `key`'s real config scaled down (SCALED); `tokens`: vocab_size and the special token ids."""
    from transformers import AutoConfig

    from hubtune.config import resolve_builtin

    spec = SPECS[key]
    if spec["config"]:
        real = json.loads(Path(resolve_builtin(f"hubtune:model_configs/{spec['config']}")).read_text())
    else:
        real = {"model_type": spec["model_type"], "num_local_experts": 4, "num_experts_per_tok": 2}
    settings = {k: v for k, v in real.items() if k not in DROPPED}
    settings.update(SCALED, **tokens)
    if key == "smollm2":
        settings["tie_word_embeddings"] = True  # SmolLM2 ties its embeddings; Llama 3.2's config does too
    model_type = settings.pop("model_type")
    return AutoConfig.for_model(model_type, **settings)


def build_family_model(key: str, bpe_dir: Path, out: Path) -> Path:
    """Write a loadable model folder for family `key` into `out`: config, random weights, tokenizer with the
    real template and special tokens, generation_config with the real eos ids, a README with a licence."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    spec = SPECS[key]
    tok = AutoTokenizer.from_pretrained(bpe_dir)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in spec["special"]], special_tokens=True)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec["added"]])
    tok.bos_token = spec["bos"]
    tok.eos_token = spec["eos"]
    tok.pad_token = spec["pad"]
    tok.unk_token = spec["unk"]
    tok.chat_template = (FAMILY_DIR / spec["template"]).read_text(encoding="utf-8")
    ids = lambda t: tok.convert_tokens_to_ids(t) if t else None  # noqa: E731

    config = family_config(key, vocab_size=len(tok), bos_token_id=ids(spec["bos"]), eos_token_id=ids(spec["eos"]),
                           pad_token_id=ids(spec["pad"]))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if config.pad_token_id is not None:
        # Random init zeroes the pad row of the embeddings (padding_idx); with tied embeddings (SmolLM2, whose pad
        # is its end-of-turn token) that would zero the token's output logit too. Trained weights never have it.
        with torch.no_grad():
            model.get_input_embeddings().weight[config.pad_token_id].normal_(0.0, SCALED["initializer_range"])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(bos_token_id=ids(spec["bos"]), eos_token_id=[ids(t) for t in spec["generation_eos"]],
                     pad_token_id=ids(spec["pad"])).save_pretrained(out)
    (out / "README.md").write_text(f"---\nlicense: apache-2.0\n---\n\nA tiny random {config.model_type} for tests.\n")
    return out


# ---- a label task in chat format with a system prompt -------------------------------------------------
SYSTEM = "Label the mood of the note. Answer with one word."
CUES = {"calm": ["lagoon", "meadow", "willow"], "angry": ["glacier", "raven", "bramble"],
        "happy": ["orchid", "nectar", "saffron"]}
FILLER = "amber basil cedar delta ember fjord garnet harbor indigo juniper kestrel pebble quartz timber".split()


def label_rows(n: int, seed: int, reasoning: bool = False) -> list[dict]:
    """n rows {messages: [system, user, assistant]}: the label is the mood of the one cue word in the note.
    With reasoning, the assistant turn carries reasoning_content naming the cue."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(CUES))
        cue = rng.choice(CUES[label])
        words = rng.sample(FILLER, 2) + [cue]  # the cue last: a fixed distance from the answer
        answer = {"role": "assistant", "content": label}
        if reasoning:
            answer["reasoning_content"] = f"{cue} means {label}"
        rows.append({"messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": "Note: " + " ".join(words)}, answer]})
    return rows


TOOLS = [{"type": "function", "function": {
    "name": "set_label", "parameters": {"type": "object", "properties": {"label": {"type": "string"}}}}}]


def tool_rows(n: int, seed: int) -> list[dict]:
    """The label task as a tool call: the assistant answers by calling set_label(label=...)."""
    rows = []
    for row in label_rows(n, seed):
        label = row["messages"][-1]["content"]
        call = {"type": "function", "id": "call00001",  # Mistral's template wants 9-character call ids
                "function": {"name": "set_label", "arguments": {"label": label}}}
        rows.append({"messages": row["messages"][:-1] + [{"role": "assistant", "content": "", "tool_calls": [call]}],
                     "tools": TOOLS})
    return rows


# ---- one run through the command line: train, then evaluate ------------------------------------------
# A hidden-64, 2-layer model with LoRA on every linear layer learns the label in ~150 steps at this rate.
STEPS, LEARNING_RATE, TEST_ROWS = 150, 1e-2, 16


def run_config(tmp_path, model, train_rows, steps: int = STEPS, thinking: str = "auto", test_rows=None,
               max_new_tokens: int = 16):
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    write_jsonl(tmp_path / "test.jsonl", test_rows or label_rows(TEST_ROWS, 2))
    config = tmp_path / "run.yaml"
    config.write_text(f"""model:
  id: {model}
  quantization: none
data:
  sources: [{tmp_path / 'train.jsonl'}]
  val_set_size: 0
  max_seq_len: 256
  near_dup_threshold: null
  thinking: {thinking}
training:
  learning_rate: {LEARNING_RATE}
  max_steps: {steps}
  micro_batch_size: 8
  gradient_accumulation_steps: 1
  warmup_steps: 10
  gradient_checkpointing: false
  logging_steps: 50
  save_steps: 100000
eval:
  test: {tmp_path / 'test.jsonl'}
  max_new_tokens: {max_new_tokens}
  batch_size: {TEST_ROWS}
  tasks: []
  regression_set: null
  few_shot_k: 0
output:
  dir: {tmp_path / 'run'}
""")
    return config


def train_and_eval(cli, config, run, *overrides) -> dict:
    done = cli("train", config)
    assert done.returncode == 0, done.stderr[-2000:]
    scored = cli("eval", run, *overrides)
    assert scored.returncode == 0, scored.stderr[-2000:]
    return json.loads((run / "eval.json").read_text())


def answers(run) -> list[dict]:
    return [json.loads(line) for line in (run / "eval_answers.jsonl").read_text().splitlines()]
