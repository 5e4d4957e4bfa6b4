"""The card of a GGUF repo: what the files are a quantization of, the parity table that says they still do the
task, and how to run them (llama.cpp, Ollama) or serve the adapter itself (vLLM)."""

from __future__ import annotations

from hubtune.refs import is_hub_id
from hubtune.runs import RunFolder


def lineage(run: RunFolder, repo: str, adapter_only: bool) -> tuple[str | None, str]:
    """(base_model, base_model_relation) for the card: the files quantize the tuned model where it is on the
    Hub (the run's last push to another repo); otherwise they are a fine-tune of the base (merged weights)
    or, adapter-only, an adapter of it."""
    pushed = [p["repo"] for p in run.state().get("pushes", []) if p.get("repo") != repo]
    if pushed and not adapter_only:
        return pushed[-1], "quantized"
    base = run.summary.base_model
    return (base if is_hub_id(base) else None), ("adapter" if adapter_only else "finetune")


def serving_text(tuned_repo: str, base: str, rank: int) -> str:
    """How to serve the adapter: vLLM with multi-LoRA."""
    name = tuned_repo.split("/")[-1]
    return f"""## Serving the adapter

With vLLM, several LoRA adapters share one copy of the base (multi-LoRA); requests pick one by name:

```bash
vllm serve {base} --enable-lora --max-lora-rank {rank} --lora-modules {name}={tuned_repo}
curl http://localhost:8000/v1/chat/completions -H "Content-Type: application/json" \\
  -d '{{"model": "{name}", "messages": [{{"role": "user", "content": "..."}}]}}'
```

"""


def gguf_card(run: RunFolder, repo: str, verdict, record: dict, licence_files: list[str]):
    from huggingface_hub import ModelCard, ModelCardData

    from hubtune.export.report import parity_markdown

    s = run.summary
    base_model, relation = lineage(run, repo, record.get("adapter_only", False))
    licences = verdict.findings[0].repo.licences
    data = ModelCardData(base_model=base_model, base_model_relation=relation, license=licences[0] if licences else None,
                         tags=["gguf", "llama.cpp", "ollama", "hubtune"], pipeline_tag="text-generation",
                         datasets=[d.path for d in s.datasets if is_hub_id(d.path)] or None)
    parity = record["parity"]
    files = "\n".join(f"| `{f['file']}` | {q} | {f['bytes'] / 2**20:.1f} MiB |" for q, f in record["files"].items())
    first = next(iter(record["files"].values()))["file"]
    merge = record.get("merge")
    what = (f"the LoRA adapter of `{run.path.name}` as a GGUF adapter (`{record['lora']['file']}`) over `{s.base_model}` "
            if record.get("adapter_only") else
            f"`{s.base_model}` with the adapter of `{run.path.name}` merged into its original-precision weights")
    body = f"""---
{data.to_yaml()}
---

# {repo.split('/')[-1]}

GGUF files of {what}, converted by llama.cpp `{record['llama_cpp']['commit'][:9]}`'s own converter and quantizer
(made with hubtune). {f"The adapter itself: [{base_model}]({base_model})." if relation == "quantized" else ""}

| File | Precision | Size |
|---|---|---|
{files}

## Does it still do the task?

Each file was run in llama.cpp on {parity['n']} prompts of `{parity['dataset']['name']}` ({parity['split']}), greedy,
and scored with the run's own metrics beside the adapter in PyTorch:

{parity_markdown(record)}

Tolerance: {parity['tolerance']}
{f"Merging changed the logits by at most {merge['max_logit_difference']:.2e} (merged in float32 against the adapter over the same base, {merge['logit_prompts']} held-out prompts)." if merge else ""}

## How to run

```bash
llama-server -m {first} --jinja          # the chat template is in the file's metadata
ollama create {repo.split('/')[-1].lower()} -f Modelfile && ollama run {repo.split('/')[-1].lower()}
```

The `Modelfile` carries a Go template that renders the same prompt as the training chat template, and the
stop tokens ({', '.join(f'`{t}`' for t in record.get('stop', []))}).

{serving_text(base_model, s.base_model, run.config.lora.r) if relation == "quantized" else ""}
## Licence

These files inherit the licence of their base, `{s.base_model}`: **{verdict.findings[0].repo.licence}**.
{("This repo carries the base's " + ", ".join(f"`{n}`" for n in licence_files) + ".") if licence_files else ""}
{"".join(f"- {o}" + chr(10) for o in verdict.obligations)}"""
    return ModelCard(body)
