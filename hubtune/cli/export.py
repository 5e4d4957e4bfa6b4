"""`hubtune export`: GGUF files of a run for llama.cpp and Ollama, checked against the adapter."""

from __future__ import annotations

import argparse


def add(command, common) -> None:
    from hubtune.export import FORMATS
    from hubtune.export.convert import QUANTS

    p = command("export", help="export a run as GGUF files for llama.cpp and Ollama, checked against the adapter")
    p.add_argument("run", metavar="RUN", help="a finished run folder")
    p.add_argument("--format", choices=FORMATS, default="gguf", help="file format (default gguf)")
    p.add_argument("--quant", nargs="+", choices=QUANTS, default=["q8_0"],
                   help="one or more precisions (default q8_0); f16 and q8_0 must match the adapter within the "
                        "interval, lower ones are reported")
    p.add_argument("--adapter-only", action="store_true",
                   help="a LoRA GGUF over the base's f16 GGUF instead of merged weights")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN/export)")
    p.add_argument("--limit", type=int, metavar="N", help="parity on the first N test prompts (default all)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check (the files are then unchecked)")
    p.add_argument("--pre-tokenizer", metavar="NAME",
                   help="llama.cpp pre-tokenizer for a BPE tokenizer its converter does not recognise")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtune.export import export
    from hubtune.export.report import format_parity
    from hubtune.progress import quiet_libraries, verbose

    with quiet_libraries(show=verbose()):
        result = export(args.run, out=args.out, fmt=args.format, quants=args.quant, adapter_only=args.adapter_only,
                        limit=args.limit, parity=not args.no_parity, pre_tokenizer=args.pre_tokenizer)
    if "parity" in result:
        print(format_parity(result))
    for quant, f in result["files"].items():
        print(f"{quant}: {f['file']} ({f['bytes'] / 2**20:.1f} MiB)")
    return 0
