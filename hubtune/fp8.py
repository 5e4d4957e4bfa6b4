"""Weights saved in block-wise FP8 (DeepSeek's format, transformers' `quant_method: fp8`), kept in FP8 in memory and
dequantized when their layer reads them, through a torch parametrization as hubtune.nvfp4 does for NVFP4.

The format, per quantized weight `<prefix>` of out x in = N x K, with `weight_block_size` [BN, BK] (128 x 128):
- `<prefix>.weight`: float8 E4M3 [N, K];
- `<prefix>.weight_scale_inv` (DeepSeek's own releases name it `<prefix>.scale`): [ceil(N/BN), ceil(K/BK)], one
  scale per block, float32 (`scale_fmt: float`) or UE8M0 powers of two (`scale_fmt: ue8m0`, torch's
  float8_e8m0fnu, or its raw exponent bytes: 2 ** (byte - 127));
  weight[n, k] = float(weight[n, k]) * scale[n // BN, k // BK]
A dimension that is not a multiple of the block ends in a partial block, as DeepSeek's `weight_dequant` reads it.
transformers' `Fp8Dequantize._dequantize_one` (integrations/finegrained_fp8.py) derives the block from the scale grid
instead; both give the same weights where the blocks divide the weight (tests/test_fp8.py checks it).

The codes are held as uint8 (their bytes unchanged): FSDP2's mixed precision casts floating-point parameters, and
float8 counts as one.
"""

from __future__ import annotations

import torch

BLOCK = (128, 128)


def scales(stored: torch.Tensor) -> torch.Tensor:
    """Block scales as float32, from the dtype the checkpoint stores them in (UE8M0 powers of two are exact)."""
    if stored.dtype == torch.uint8:  # UE8M0 exponent bytes
        return (stored.to(torch.float32) - 127.0).exp2()
    return stored.to(torch.float32)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] = BLOCK,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight [..., N, K] that E4M3 codes (float8_e4m3fn, or its bytes as uint8) and float32 block scales
    [..., ceil(N/BN), ceil(K/BK)] hold, in `dtype` (the product computed in float32)."""
    if codes.dtype == torch.uint8:
        codes = codes.view(torch.float8_e4m3fn)
    rows, cols = codes.shape[-2:]
    grid_rows, grid_cols = scale.shape[-2:]
    values = codes.to(torch.float32)
    if (grid_rows * block[0], grid_cols * block[1]) != (rows, cols):  # a partial last block: pad it whole
        values = torch.nn.functional.pad(values, (0, grid_cols * block[1] - cols, 0, grid_rows * block[0] - rows))
    # Blocks broadcast against their scale: no weight-sized copy of the scales.
    values = values.unflatten(-1, (grid_cols, block[1])).unflatten(-3, (grid_rows, block[0]))
    values = values.mul_(scale.to(torch.float32)[..., :, None, :, None]).flatten(-2).flatten(-3, -2)
    return values[..., :rows, :cols].to(dtype)


def grid(shape: torch.Size | tuple[int, ...], block: tuple[int, int] = BLOCK) -> torch.Size:
    """The shape of the block scales of a weight of `shape`."""
    return torch.Size((*shape[:-2], -(-shape[-2] // block[0]), -(-shape[-1] // block[1])))


class Fp8Blocks(torch.nn.Module):
    """The parametrization of a weight stored in block-wise FP8: the E4M3 codes (as uint8) are the parameter, the
    float32 block scales a buffer; reading the weight dequantizes it to `dtype`."""

    def __init__(self, scale: torch.Tensor, block: tuple[int, int], dtype: torch.dtype):
        super().__init__()
        self.register_buffer("scale", scale)
        self.block = tuple(block)
        self.dtype = dtype

    @torch.no_grad()
    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return dequantize(codes, self.scale, self.block, self.dtype)
