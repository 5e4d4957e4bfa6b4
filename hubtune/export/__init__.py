"""`hubtune export RUN --format gguf`: the run as GGUF files for llama.cpp, Ollama and LM Studio, with proof
that they still do the task.

    result = export("runs/demo", quants=["f16", "q8_0"])   # RUN/export/: GGUF files, Modelfile, export.json

1. merge the adapter in float32 into the base's original weights (or, with adapter_only, keep it apart);
2. convert with llama.cpp's own converter (f16, q8_0) and quantizer (q4_k_m), the chat template and stop
   tokens in the metadata; an Ollama Modelfile beside the files;
3. parity: the run's test prompts through each file in llama.cpp and through the adapter in PyTorch,
   scored with the run's metrics, with intervals (hubtune.export.parity states the tolerance). A file at
   f16 or q8_0 that falls outside it fails the export (ParityError, exit code 3) after export.json is
   written, so the table that says why is there to read.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from hubtune.errors import ExportError, ParityError
from hubtune.runs import RunFolder

FORMATS = ("gguf",)
RESULT = RunFolder.EXPORT  # in OUT, and in the run with the folder it names


def export(run_dir: str | Path, *, out: str | Path | None = None, fmt: str = "gguf", quants: list[str] | None = None,
           adapter_only: bool = False, limit: int | None = None, parity: bool = True, pre_tokenizer: str | None = None,
           log=None) -> dict:
    """Export a finished run; returns (and writes to OUT/export.json) the files and the parity table."""
    from hubtune.export import convert, modelfile
    from hubtune.export import parity as checks

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: hubtune exports {', '.join(FORMATS)}")
    quants = list(dict.fromkeys(quants or ["q8_0"]))
    unknown = [q for q in quants if q not in convert.QUANTS]
    if unknown:
        raise ExportError(f"--quant {', '.join(unknown)}: choose from {', '.join(convert.QUANTS)}")
    run = RunFolder.open(run_dir).require_finished()
    out = Path(out) if out else run.export_dir
    if out.exists() and any(out.iterdir()) and not (out / RESULT).is_file():
        raise ExportError(f"{out} holds other files; give a new or empty folder to --out")
    out.mkdir(parents=True, exist_ok=True)
    name = run.path.name
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    result: dict = {"run": str(run.path), "format": fmt, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "llama_cpp": {"commit": _toolchain().LLAMA_CPP_COMMIT, "llama_cpp_python": _toolchain().LLAMA_CPP_PYTHON},
                    "adapter_only": adapter_only, "files": {}}
    try:
        # 1. The model folder the converter reads: merged, or the base for an adapter-only export.
        model_dir = work / ("base" if adapter_only else "merged")
        if adapter_only:
            log("copying the base in its original precision")
            _copy_base(run, model_dir)
        else:
            from hubtune.merge import logit_difference, merge_into

            log("merging the adapter in float32 into the base's original weights")
            _, warnings = merge_into(run, model_dir, "float32")
            result["merge"] = {"dtype": "float32", "warnings": warnings, **_difference(logit_difference(run, model_dir))}
            log(f"largest logit difference, merged vs adapter on held-out prompts: "
                f"{result['merge']['max_logit_difference']:.2e}")
        result["template"] = convert.prepare_model_folder(model_dir)
        pre = convert.pre_tokenizer(model_dir, pre_tokenizer)

        # 2. Convert and quantize.
        files: dict[str, Path] = {}
        f16 = None
        for quant in sorted(quants, key=convert.QUANTS.index):
            target = out / f"{name}-{quant}.gguf"
            log(f"converting to {target.name}")
            if quant in convert.CONVERTED:
                files[quant] = convert.convert(model_dir, target, quant, pre)
            else:
                f16 = f16 or files.get("f16") or convert.convert(model_dir, work / "f16.gguf", "f16", pre)
                files[quant] = convert.quantize(f16, target, quant)
        lora = None
        if adapter_only:
            lora = convert.convert_adapter(run.adapter, model_dir, out / f"{name}-lora-f16.gguf")
            result["lora"] = {"file": lora.name, "bytes": lora.stat().st_size}
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        stop = _stop_strings(tokenizer, model_dir)
        first = files[quants[0]]
        result["modelfile"] = modelfile.write_modelfile(out, first.name, tokenizer, stop).name
        if lora:
            with (out / "Modelfile").open("a") as f:
                f.write(f"ADAPTER ./{lora.name}\n")
        for quant, path in files.items():
            meta = convert.gguf_metadata(path)
            result["files"][quant] = {"file": path.name, "bytes": path.stat().st_size,
                                      "chat_template": bool(meta.get("tokenizer.chat_template")),
                                      "pre_tokenizer": meta.get("tokenizer.ggml.pre"),
                                      "eos_token_id": meta.get("tokenizer.ggml.eos_token_id")}
        result["stop"] = stop

        # 3. Parity.
        if parity:
            result["parity"] = _parity(run, files, tokenizer, lora, limit, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / RESULT).write_text(json.dumps(result, indent=2, default=str))
    run.write_json(RESULT, {**result, "folder": str(out)})
    failed = {q: r for q, r in result.get("parity", {}).get("files", {}).items() if r["verdict"] == "fail"}
    if failed:
        reasons = "; ".join(f"{q}: {', '.join(r['problems'])}" for q, r in failed.items())
        raise ParityError(f"the exported {', '.join(failed)} file{'s do' if len(failed) > 1 else ' does'} not behave "
                          f"like the adapter: {reasons}. The files and the table are in {out}", result["parity"])
    return result


def _toolchain():
    from hubtune.export import toolchain

    return toolchain


def _difference(d: dict) -> dict:
    return {"max_logit_difference": d["max"], "logit_prompts": d["prompts"]}


def _copy_base(run: RunFolder, dest: Path) -> None:
    """The base's files (weights linked, not copied) with the run's tokenizer, so the template is the trained one."""
    from hubtune.merge import base_path

    source = Path(base_path(run))
    dest.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file():
            (dest / f.name).symlink_to(f.resolve()) if f.suffix == ".safetensors" else shutil.copy2(f, dest / f.name)
    for f in run.adapter.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy2(f, dest / f.name)


def _stop_strings(tokenizer, model_dir: Path) -> list[str]:
    """Texts generation stops on, as the adapter's generation does: the tokenizer's EOS, generation_config's
    eos ids and the family's end-of-turn token (hubtune.families)."""
    from transformers import AutoConfig, GenerationConfig

    from hubtune.families import family_of, stop_token_ids

    try:
        generation = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        generation = None
    family = family_of(AutoConfig.from_pretrained(model_dir), tokenizer.chat_template)
    return [t for t in tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer, generation, family)) if t]


def _parity(run: RunFolder, files: dict[str, Path], tokenizer, lora: Path | None, limit: int | None, log) -> dict:
    from hubtune.export import parity as checks

    prompts, refs, source = checks.test_prompts(run, limit)
    max_new = run.config.eval.max_new_tokens
    log(f"parity: {len(prompts)} test prompts through the adapter in PyTorch")
    adapter_gen = checks.adapter_generations(run, prompts)
    adapter = checks.score(adapter_gen, refs)
    table = {**source, "max_new_tokens": max_new, "tolerance": checks.__doc__.split("The tolerance, stated once: ")[1]
             .split("\n\n")[0].replace("\n", " "),
             "adapter": {**adapter, "quantization": run.config.model.quantization}, "files": {}}
    for quant, path in files.items():
        log(f"parity: {len(prompts)} test prompts through {path.name} in llama.cpp")
        gen = checks.gguf_generations(path, tokenizer, prompts, max_new, lora=lora)
        row = checks.score(gen, refs)
        row["agreement"] = checks.agreement(gen.answers, adapter_gen.answers)
        row["verdict"], row["problems"] = checks.verdict(quant, row, adapter, len(prompts))
        table["files"][quant] = row
        if row["verdict"] == "warn":
            log(f"WARNING: {path.name}: {'; '.join(row['problems'])}")
    return table
