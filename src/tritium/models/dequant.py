"""Vectorized torch dequantizers for GGUF tensor types (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
Q5_K, Q6_K), checked bit-exact against ``gguf.quants.dequantize``.

Block layouts follow ggml (``QK = 32`` elements for the legacy types, ``QK_K = 256`` for the
k-quants); every dequantizer works on all blocks at once with tensor ops:

    Q8_0 (34 B):  d:f16 | q:int8[32]                              y = d*q
    Q4_0 (18 B):  d:f16 | qs:u8[16]                               y = d*(q-8)
    Q4_1 (20 B):  d:f16 | m:f16 | qs:u8[16]                       y = d*q + m
                  (element j < 16 is the low nibble of qs[j], element j+16 its high nibble)
    Q4_K (144 B): d:f16 | dmin:f16 | scales:u8[12] | qs:u8[128]   y = d*sc_s*q - dmin*m_s
                  (8 sub-blocks of 32 with 6-bit scale sc_s and min m_s packed in 12 bytes)
    Q5_K (176 B): as Q4_K plus qh:u8[32] before qs; bit s of qh[l] is bit 4 of element l of
                  sub-block s
    Q6_K (210 B): ql:u8[128] | qh:u8[64] | scales:i8[16] | d:f16   y = d*sc_(v//16)*(q-32)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as QType
from gguf.constants import GGML_QUANT_SIZES

# -- dequantizers: blocks (N, type_size) uint8 -> (N, block_size) float32 ------------------------


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(N, 2) uint8 little-endian half floats -> (N, 1) float32."""
    return b.contiguous().view(torch.float16).float()


# Each dequantizer writes the integer levels into one float32 output and scales it in place:
# temporaries of a 100M-element model cost more than the arithmetic (in-place is ~2.5x faster
# here), and mul_/add_ round exactly like the out-of-place d*q + m.


def _dequant_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    out = blocks[:, 2:].contiguous().view(torch.int8).float()  # (N, 32)
    return out.mul_(d)


def _unpack_nibbles(out: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """out (..., 2, K) float32 <- qs (..., K) uint8: low nibbles, then high nibbles."""
    out.select(-2, 0).copy_(qs & 0x0F)
    out.select(-2, 1).copy_(qs >> 4)
    return out


def _dequant_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d = _f16(blocks[:, :2])
    # element j < 16: low nibble of qs[j]; element j + 16: its high nibble
    out = _unpack_nibbles(torch.empty(n, 2, 16), blocks[:, 2:]).view(n, 32)
    return out.sub_(8.0).mul_(d)


def _dequant_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    out = _unpack_nibbles(torch.empty(n, 2, 16), blocks[:, 4:]).view(n, 32)
    return out.mul_(d).add_(m)


def _k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 12) packed bytes -> 6-bit (scale, min), each (N, 8) float32.

    Sub-blocks 0-3 keep scale/min in the low 6 bits of bytes 0-3 / 4-7; sub-blocks 4-7 take the
    low/high nibble of bytes 8-11 plus the top 2 bits of bytes 0-3 / 4-7 as bits 4-5.
    """
    a, b, c = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([a & 0x3F, (c & 0x0F) | ((a >> 6) << 4)], dim=-1)
    mn = torch.cat([b & 0x3F, (c >> 4) | ((b >> 6) << 4)], dim=-1)
    return sc.float(), mn.float()


def _k_scale_offset(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K header -> per-sub-block (d*scale, dmin*min), each (N, 8, 1)."""
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mn = _k_scales_mins(blocks[:, 4:16])
    return (d * sc).unsqueeze(-1), (dmin * mn).unsqueeze(-1)


def _dequant_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scale, offset = _k_scale_offset(blocks)
    # each 32-byte chunk c of qs holds sub-block 2c (low nibbles) and 2c+1 (high nibbles)
    qs = blocks[:, 16:144].reshape(n, 4, 32)
    out = _unpack_nibbles(torch.empty(n, 4, 2, 32), qs).view(n, 8, 32)
    return out.mul_(scale).sub_(offset).view(n, 256)


_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8).view(1, 8, 1)
_PAIR_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)


def _dequant_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scale, offset = _k_scale_offset(blocks)
    high = (blocks[:, 16:48].unsqueeze(1) >> _BIT_SHIFTS) & 1  # (N, 8, 32): bit s -> sub-block s
    qs = blocks[:, 48:176].reshape(n, 4, 1, 32)
    low = torch.cat([qs & 0x0F, qs >> 4], dim=2).view(n, 8, 32)
    out = (low | (high << 4)).float()  # (N, 8, 32) in [0, 31]
    return out.mul_(scale).sub_(offset).view(n, 256)


def _dequant_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    # each 128-element half: ql 64 B, qh 32 B; its 4 groups of 32 are
    # [lo(ql[0:32]), lo(ql[32:64]), hi(ql[0:32]), hi(ql[32:64])], 2 more bits from qh >> 2g
    ql = blocks[:, 0:128].reshape(n, 2, 1, 64)
    low = torch.cat([ql & 0x0F, ql >> 4], dim=2).view(n, 2, 4, 32)
    high = (blocks[:, 128:192].reshape(n, 2, 1, 32) >> _PAIR_SHIFTS) & 0x03  # (N, 2, 4, 32)
    out = (low | (high << 4)).float().sub_(32.0).view(n, 16, 16)  # in [-32, 31]
    sc = blocks[:, 192:208].contiguous().view(torch.int8).float()  # (N, 16): one per 16 values
    d = _f16(blocks[:, 208:210])
    return out.mul_((d * sc).unsqueeze(-1)).view(n, 256)


_BLOCK_DEQUANTIZERS: dict[QType, Callable[[torch.Tensor], torch.Tensor]] = {
    QType.Q8_0: _dequant_q8_0,
    QType.Q4_0: _dequant_q4_0,
    QType.Q4_1: _dequant_q4_1,
    QType.Q4_K: _dequant_q4_k,
    QType.Q5_K: _dequant_q5_k,
    QType.Q6_K: _dequant_q6_k,
}
_FLOAT_TYPES = {QType.F32: torch.float32, QType.F16: torch.float16, QType.BF16: torch.bfloat16}
SUPPORTED_QUANT_TYPES = tuple(_FLOAT_TYPES) + tuple(_BLOCK_DEQUANTIZERS)


def dequantize_flat(raw: torch.Tensor, qtype: QType) -> torch.Tensor:
    """1-D uint8 holding whole blocks of ``qtype`` -> 1-D float32 (a fresh tensor)."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if qtype in _FLOAT_TYPES:
        return raw.view(_FLOAT_TYPES[qtype]).to(torch.float32, copy=True)
    return _BLOCK_DEQUANTIZERS[qtype](raw.view(-1, type_size)).view(-1)


def dequantize(raw: torch.Tensor, qtype: QType, shape: tuple[int, ...]) -> torch.Tensor:
    """Raw GGUF tensor bytes -> float32 tensor of ``shape`` (torch order, last dim = GGUF ne0).

    ``raw``: 1-D uint8 holding ``prod(shape) / block_size`` blocks of ``type_size`` bytes each.
    Raises ValueError for an unsupported type or a byte count that does not match ``shape``.
    """
    qtype = QType(qtype)
    if qtype not in SUPPORTED_QUANT_TYPES:
        names = ", ".join(t.name for t in SUPPORTED_QUANT_TYPES)
        raise ValueError(f"unsupported GGUF tensor type {qtype.name}; supported: {names}")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    numel = int(np.prod(shape)) if len(shape) else 1
    if raw.dtype != torch.uint8 or raw.dim() != 1:
        raise ValueError(f"raw must be a 1-D uint8 tensor, got {raw.dtype} {tuple(raw.shape)}")
    if numel % block_size or raw.numel() != numel // block_size * type_size:
        raise ValueError(f"{raw.numel()} bytes do not hold a {qtype.name} tensor of shape "
                         f"{tuple(shape)}")
    return dequantize_flat(raw, qtype).reshape(shape)
