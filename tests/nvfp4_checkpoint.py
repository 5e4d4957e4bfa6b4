"""A tiny checkpoint in NVIDIA ModelOpt's NVFP4 layout, written by a quantizer of the tests' own (round to the
nearest E2M1 value, block scales to E4M3, one global scale per tensor as ModelOpt sets it: amax / (6 * 448)),
beside the 16-bit checkpoint holding the weights it dequantizes to."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
BOUNDS = (MAGNITUDES[1:] + MAGNITUDES[:-1]) / 2


def quantize(weight: torch.Tensor, global_scale: float | None = None):
    """(packed uint8 [N, K/2], E4M3 [N, K/16], float32 scalar) for a weight [N, K]."""
    w = weight.detach().float()
    scale2 = torch.tensor(global_scale if global_scale is not None else w.abs().max().item() / (6 * 448),
                          dtype=torch.float32)
    blocks = w.unflatten(-1, (-1, 16))
    block_scale = (blocks.abs().amax(-1) / (6 * scale2)).clamp(max=448).to(torch.float8_e4m3fn)
    divisor = (block_scale.float() * scale2).unsqueeze(-1)
    scaled = blocks / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    codes = torch.bucketize(scaled.abs(), BOUNDS).to(torch.uint8) | ((scaled < 0).to(torch.uint8) << 3)
    codes = codes.flatten(-2)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), block_scale, scale2


def dequantize(packed, block_scale, scale2) -> torch.Tensor:
    """The tests' own reading of the layout (element by element, independent of hubtune.nvfp4's)."""
    values = torch.cat([MAGNITUDES, -MAGNITUDES])
    lo, hi = (packed & 0x0F).long(), (packed >> 4).long()
    codes = torch.stack((lo, hi), dim=-1).flatten(-2)
    scales = (block_scale.float() * scale2).repeat_interleave(16, dim=-1)
    return values[codes] * scales


def quantized_name(name: str) -> bool:
    """The layers ModelOpt quantizes in these tests: attention projections and experts (not the embeddings,
    head, norms or router)."""
    return name.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))


def write(model_dir: Path, out: Path, sixteen_out: Path) -> None:
    """model_dir (a 16-bit transformers MoE checkpoint with stacked experts) saved to `out` in ModelOpt's NVFP4
    layout (experts one Linear each, gate and up with different global scales), and to `sixteen_out` as a 16-bit
    checkpoint of the weights `out` dequantizes to."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tensors, dequantized = {}, {}

    def put(prefix: str, weight: torch.Tensor, global_scale: float | None = None):
        packed, block_scale, scale2 = quantize(weight, global_scale)
        tensors.update({f"{prefix}.weight": packed, f"{prefix}.weight_scale": block_scale,
                        f"{prefix}.weight_scale_2": scale2, f"{prefix}.input_scale": torch.tensor(1.0)})
        return dequantize(packed, block_scale, scale2)

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and quantized_name(name):
            dequantized[f"{name}.weight"] = put(name, module.weight)
        elif hasattr(module, "gate_up_proj") and module.gate_up_proj.ndim == 3:
            half = module.gate_up_proj.shape[1] // 2
            gate_up, down = [], []
            for e in range(module.gate_up_proj.shape[0]):
                gate = module.gate_up_proj[e, :half]
                gate_up.append(torch.cat([put(f"{name}.{e}.gate_proj", gate),
                                          put(f"{name}.{e}.up_proj", module.gate_up_proj[e, half:],
                                              gate.abs().max().item() / (6 * 448) * 1.5)]))
                down.append(put(f"{name}.{e}.down_proj", module.down_proj[e]))
            dequantized[f"{name}.gate_up_proj"] = torch.stack(gate_up)
            dequantized[f"{name}.down_proj"] = torch.stack(down)
    state = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    for key, value in state.items():
        if key not in dequantized and not (tied and key == "lm_head.weight"):
            tensors[key] = value.contiguous()
    out.mkdir(parents=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((model_dir / "config.json").read_text())
    settings = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                "exclude_modules": ["lm_head", "*.mlp.gate"]}
    config["quantization_config"] = {"quant_method": "modelopt", **settings}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt", "version": "0.37.0"},
                                                           "quantization": settings}, indent=2))
    for extra in model_dir.iterdir():
        if extra.name not in ("config.json", "model.safetensors") and extra.is_file():
            shutil.copy(extra, out / extra.name)
    with torch.no_grad():
        for key, value in dequantized.items():
            model.get_parameter(key).copy_(value)
    model.save_pretrained(sixteen_out)
    for extra in model_dir.iterdir():
        if not (sixteen_out / extra.name).exists() and extra.is_file():
            shutil.copy(extra, sixteen_out / extra.name)


# ---- DeepSeek V4's NVFP4 release: block-wise FP8 weights with NVFP4 routed experts, under DeepSeek's names ----

# The weights DeepSeek V4 saves in FP8 (attention projections, the indexer's query projection, the shared expert);
# its compressors, router, norms, hyper-connections, embeddings and head stay 16/32-bit, its routed experts NVFP4.
DEEPSEEK_FP8 = re.compile(r"\.attn\.(wq_a|wq_b|wkv|wo_a|wo_b|indexer\.wq_b)\.weight$|\.shared_experts\.w[123]\.weight$")
DEEPSEEK_EXPERT = re.compile(r"^(?P<layer>layers\.\d+\.ffn\.experts)\.(?P<e>\d+)\.w(?P<w>[123])\.weight$")
MIXED_SETTINGS = {"quant_method": "fp8", "quant_algo": "MIXED_PRECISION", "moe_quant_algo": "NVFP4",
                  "group_size": 16, "activation_scheme": "dynamic", "fmt": "e4m3", "scale_fmt": "ue8m0",
                  "weight_block_size": [128, 128], "ignore": ["mtp.*"]}


def quantize_fp8_blocks(weight: torch.Tensor, block: int = 128):
    """(float8_e4m3fn codes [N, K], UE8M0 block scales [ceil(N/128), ceil(K/128)]) as transformers' Fp8Quantize
    makes them with scale_fmt ue8m0: each block's scale the power of two at or above its amax / 448."""
    w = weight.detach().float()
    rows, cols = w.shape
    pad = torch.zeros(-(-rows // block) * block, -(-cols // block) * block)
    pad[:rows, :cols] = w
    tiles = pad.unflatten(0, (-1, block)).unflatten(-1, (-1, block))  # [R, 128, C, 128]
    amax = tiles.abs().amax(dim=(1, 3))
    inv = torch.pow(2.0, torch.ceil(torch.log2((amax / 448).clamp(min=torch.finfo(torch.float32).tiny))))
    codes = (tiles / inv[:, None, :, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    codes = codes.flatten(2).flatten(0, 1)[:rows, :cols].contiguous()
    return codes, inv.to(torch.float8_e8m0fnu)


def dequantize_fp8_blocks(codes, scale, block: int = 128) -> torch.Tensor:
    """The tests' own reading (each element times its block's scale, by index)."""
    rows, cols = codes.shape
    r = torch.arange(rows)[:, None] // block
    c = torch.arange(cols)[None, :] // block
    return codes.float() * scale.float()[r, c]


def write_deepseek_v4(model_dir: Path, out: Path, sixteen_out: Path) -> None:
    """model_dir (a 16-bit transformers DeepSeek V4 checkpoint) saved to `out` as nvidia/DeepSeek-V4-Flash-NVFP4
    lays its weights out (config.json declaring fp8 with moe_quant_algo NVFP4; DeepSeek's own tensor names, as
    transformers' save_pretrained reverts them, without the `model.` prefix; FP8 weights with UE8M0 scales under
    `<prefix>.scale`; each routed expert's w1, w3 (sharing one global scale) and w2 in ModelOpt's NVFP4), and to
    `sixteen_out` as a 16-bit checkpoint of the weights `out` dequantizes to."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(model_dir / "model.safetensors", framework="pt") as f:
        saved = {key: f.get_tensor(key) for key in f.keys()}
    tensors, dequantized = {}, {}  # dequantized: by DeepSeek's name
    for key, value in saved.items():
        name = key.removeprefix("model.")
        name = {"embed_tokens.weight": "embed.weight"}.get(name, name)
        name = re.sub(r"^hc_head\.hc_", "hc_head_", name)
        if DEEPSEEK_FP8.search(name):
            codes, scale = quantize_fp8_blocks(value)
            tensors[name] = codes
            tensors[name[: -len(".weight")] + ".scale"] = scale
            dequantized[key] = dequantize_fp8_blocks(codes, scale)
        elif m := DEEPSEEK_EXPERT.match(name):
            scale2 = None
            if m["w"] in "13":
                pair = [saved[f"model.{m['layer']}.{m['e']}.w{w}.weight"] for w in "13"]
                scale2 = max(p.abs().max().item() for p in pair) / (6 * 448)
            packed, block_scale, scale2 = quantize(value, scale2)
            prefix = name[: -len(".weight")]
            tensors.update({f"{prefix}.weight": packed, f"{prefix}.weight_scale": block_scale,
                            f"{prefix}.weight_scale_2": scale2, f"{prefix}.input_scale": torch.tensor(1.0)})
            dequantized[key] = dequantize(packed, block_scale, scale2)
        else:
            tensors[name] = value.contiguous()
    # The multi-token-prediction layer's experts, which DeepSeek saves in MXFP4 (int8 codes, UE8M0 scales a 32
    # weights) and transformers' model leaves out.
    tensors["mtp.0.ffn.experts.0.w1.weight"] = torch.randint(-128, 127, (64, 64), dtype=torch.int8)
    tensors["mtp.0.ffn.experts.0.w1.scale"] = torch.ones(64, 4).to(torch.float8_e8m0fnu)
    out.mkdir(parents=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((model_dir / "config.json").read_text())
    config["expert_dtype"] = "fp4"  # DeepSeek V4's own field, which transformers folds into quantization_config
    config["quantization_config"] = dict(MIXED_SETTINGS)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for extra in model_dir.iterdir():
        if extra.name not in ("config.json", "model.safetensors") and extra.is_file():
            shutil.copy(extra, out / extra.name)
    # The 16-bit twin: the same model with each quantized weight replaced by what it dequantizes to, saved by
    # transformers' names as in model_dir, which transformers loads.
    twin = dict(saved)
    twin.update({key: value.to(saved[key].dtype) for key, value in dequantized.items()})
    sixteen_out.mkdir(parents=True)
    save_file(twin, sixteen_out / "model.safetensors", metadata={"format": "pt"})
    for extra in model_dir.iterdir():
        if extra.name != "model.safetensors" and extra.is_file():
            shutil.copy(extra, sixteen_out / extra.name)


def tiny_deepseek_v4(root: Path) -> tuple[Path, Path, Path]:
    """A tiny random DeepSeek V4 under root: both compressed attention kinds (compressed sparse with its indexer,
    heavily compressed), a hash-routed and a top-k MoE layer of 4 experts, mHC width 2, hubtune's tiny tokenizer;
    written by write_deepseek_v4. Returns (the mixed-layout folder, its 16-bit twin, the original 16-bit folder)."""
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    from hubtune import config as cfg

    tiny = Path(cfg.resolve_builtin("hubtune:tiny-llama"))
    torch.manual_seed(0)
    config = DeepseekV4Config(
        vocab_size=902, hidden_size=128, moe_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=64, q_lora_rank=128, partial_rotary_factor=0.25, n_routed_experts=4,
        num_experts_per_tok=2, n_shared_experts=1, o_groups=2, o_lora_rank=128, index_n_heads=2, index_head_dim=32,
        index_topk=4, sliding_window=8, hc_mult=2, hc_sinkhorn_iters=3, max_position_embeddings=512,
        layer_types=["compressed_sparse_attention", "heavily_compressed_attention"], mlp_layer_types=["hash_moe", "moe"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        num_nextn_predict_layers=0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    DeepseekV4ForCausalLM(config).save_pretrained(root / "original")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md"):
        shutil.copy(tiny / name, root / "original" / name)
    write_deepseek_v4(root / "original", root / "mixed", root / "sixteen")
    return root / "mixed", root / "sixteen", root / "original"
