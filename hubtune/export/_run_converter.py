"""Run llama.cpp's convert_hf_to_gguf on a model folder, in its own process (started by hubtune.export.convert).

    python _run_converter.py CONVERTER_DIR MODEL_DIR OUTFILE OUTTYPE [PRE_TOKENIZER]

The converter is used as the library it is: the architecture's model class is looked up in its registry and
subclassed only to name the pre-tokenizer of a BPE tokenizer that its hash table does not list, when hubtune
was told which llama.cpp pre-tokenizer matches it (the export's tokenization check then proves it on the
test prompts). Everything else is llama.cpp's own code.
"""

import logging
import sys
from pathlib import Path


def main() -> None:
    converter, model_dir, outfile, outtype = sys.argv[1:5]
    pre = sys.argv[5] if len(sys.argv) > 5 else ""
    sys.path[:0] = [converter, str(Path(converter) / "gguf-py")]
    logging.basicConfig(level=logging.WARNING)

    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    hparams = ModelBase.load_hparams(Path(model_dir), False)
    architecture = get_model_architecture(hparams, ModelType.TEXT)
    try:
        model_class = get_model_class(architecture)
    except NotImplementedError:
        print(f"HUBTUNE-UNSUPPORTED-ARCHITECTURE {architecture}", file=sys.stderr)
        sys.exit(3)

    class Model(model_class):
        model_arch = model_class.model_arch

        def get_vocab_base_pre(self, tokenizer) -> str:
            try:
                return super().get_vocab_base_pre(tokenizer)
            except NotImplementedError:
                if pre:
                    return pre
                print("HUBTUNE-UNKNOWN-PRE-TOKENIZER", file=sys.stderr)
                sys.exit(4)

    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    with torch.inference_mode():
        model = Model(Path(model_dir), ftype, Path(outfile), is_big_endian=False, use_temp_file=False, eager=False)
        model.write()


if __name__ == "__main__":
    main()
