"""Attention over a paged KV cache, and the per-step metadata that describes the batch.

KV cache layout, per layer: ``k_cache``/``v_cache`` of shape (num_blocks, block_size, Hk, D).
Token t of a sequence lives in block ``block_table[t // block_size]`` at offset
``t % block_size``; its *slot* is ``block * block_size + offset``. A negative slot in
``slot_mapping`` (padding rows, e.g. of a CUDA-graph batch) is skipped: nothing is written.

Cache dtypes: the model dtype (fp16/bf16/fp32) or ``torch.float8_e4m3fn`` (``kv_cache_dtype=
"fp8"``). An fp8 cache stores ``saturate(k / k_scale)`` and ``saturate(v / v_scale)`` with
per-tensor (per-layer) float scales; attention multiplies them back. Scales apply to fp8 caches
only.

Dispatch (``ops._dispatch.use_triton``): CUDA -> ``tritium.kernels.paged_attention`` (the
split-KV decode kernel over the first ``meta.num_decodes`` sequences, one new token each, and
the varlen prefill kernel over the rest, both writing one output) and ``tritium.kernels.rope``
for cache writes; CPU -> the ``*_reference`` functions below, which are also the test oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tritium.ops._dispatch import use_triton

FP8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INDEX_DTYPES = (torch.int32, torch.int64)
_KV_CACHE_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
    "float16": torch.float16, "half": torch.float16, "fp32": torch.float32,
    "float32": torch.float32, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
}


@dataclass
class AttentionMetadata:
    """Everything attention needs about one engine step; built once, shared by every layer.

    The step's new tokens are packed: sequence i owns query rows
    ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``, which are its *last* tokens (its cached prefix of
    ``seq_lens[i] - num_new`` tokens is already in the KV cache).

    Mixed steps put their one-token sequences first: with ``num_decode_tokens = d``, sequences
    0..d-1 own rows 0..d-1 (one new token each) and take the split-KV decode kernel, the rest
    the prefill kernel. The host values (max_seqlen_*, decode_only, num_decode_tokens) must not
    depend on device data; ``max_seqlen_k`` may be an upper bound (a CUDA-graph batch passes
    max_model_len), which only costs the CPU reference some padding.
    """

    slot_mapping: torch.Tensor  # (T,) int64: cache slot to write each new token's K/V into
    block_tables: torch.Tensor  # (N, max_blocks_per_seq) int32, padded with 0 past the end
    seq_lens: torch.Tensor  # (N,) int32: tokens in the KV cache after this step (cached + new)
    cu_seqlens_q: torch.Tensor  # (N+1,) int32: prefix sums of new tokens per sequence
    max_seqlen_q: int  # max new tokens of any sequence this step
    max_seqlen_k: int  # >= max seq_lens (exact in eager steps)
    decode_only: bool  # every sequence has exactly one new token (decode kernel path)
    # the first num_decode_tokens sequences have one new token each (decode kernel); None = all
    # of them when decode_only, else none
    num_decode_tokens: int | None = None

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def num_decodes(self) -> int:
        """Sequences (= rows) at the front of the batch that take the decode kernel."""
        if self.decode_only:
            return self.num_seqs
        return self.num_decode_tokens or 0


def resolve_kv_cache_dtype(kv_cache_dtype: str | torch.dtype, model_dtype: torch.dtype
                           ) -> torch.dtype:
    """``"auto"`` -> the model dtype; ``"fp8"``/``"fp8_e4m3"`` -> float8_e4m3fn; "bf16", ..."""
    if isinstance(kv_cache_dtype, torch.dtype):
        resolved = kv_cache_dtype
    elif kv_cache_dtype == "auto":
        resolved = model_dtype
    elif kv_cache_dtype in _KV_CACHE_DTYPES:
        resolved = _KV_CACHE_DTYPES[kv_cache_dtype]
    else:
        raise ValueError(f"kv_cache_dtype must be 'auto' or one of {sorted(_KV_CACHE_DTYPES)}, "
                         f"got {kv_cache_dtype!r}")
    if resolved not in (model_dtype, torch.float8_e4m3fn):
        raise ValueError(f"kv cache dtype {resolved} must equal the model dtype {model_dtype} "
                         "or be fp8 (e4m3)")
    return resolved


def _scales(cache: torch.Tensor, k_scale: float | None, v_scale: float | None
            ) -> tuple[float, float]:
    """(k_scale, v_scale) as floats: 1.0 when absent; only fp8 caches may have others."""
    ks = 1.0 if k_scale is None else float(k_scale)
    vs = 1.0 if v_scale is None else float(v_scale)
    for name, s in (("k_scale", ks), ("v_scale", vs)):
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"{name} must be a finite positive float, got {s}")
        if cache.dtype != torch.float8_e4m3fn and s != 1.0:
            raise ValueError(f"{name}={s} given for a {cache.dtype} cache: scales apply to "
                             "fp8 (float8_e4m3fn) caches only")
    return ks, vs


def _to_cache(x: torch.Tensor, cache_dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Values as stored: fp8 caches hold saturate(x / scale) (x first rounded to its dtype)."""
    if cache_dtype != torch.float8_e4m3fn:
        return x.to(cache_dtype)
    # times the fp32 reciprocal, as the kernel does, so both round to the same fp8 values
    return (x.float() * (1.0 / scale)).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(cache_dtype)


def write_kv_cache_reference(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: float | None = None, v_scale: float | None = None,
) -> None:
    """Scatter k/v (T, Hk, D) into the caches at ``slot_mapping`` (T,), in place.

    Negative slots are skipped. fp8 caches get saturate(k / k_scale), saturate(v / v_scale).
    """
    ks, vs = _scales(k_cache, k_scale, v_scale)
    nb, bs = k_cache.shape[:2]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(nb * bs, *k_cache.shape[2:])[slots] = _to_cache(k[keep], k_cache.dtype, ks)
    v_cache.view(nb * bs, *v_cache.shape[2:])[slots] = _to_cache(v[keep], v_cache.dtype, vs)


# Above this many padded scores (N x Hq x max_q x max_k) the reference loops over sequences
# instead of padding the batch: 2**25 fp32 scores = 128 MiB.
_MAX_PADDED_SCORES = 1 << 25


def paged_attention_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
    softmax_scale: float | None = None, *, k_scale: float | None = None,
    v_scale: float | None = None, sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of packed new queries q (T, Hq, D) over each sequence's paged K/V.

    Per sequence: gather its seq_len keys through the block table (times k_scale / v_scale for
    fp8 caches), then contiguous causal attention aligned bottom-right: new token r of n sits
    at position L - n + r and sees keys j <= L - n + r (and j > pos - sliding_window).
    fp32 math; returns (T, Hq, D) in q.dtype.

    Small batches (decode, short prefills: the CPU engine's steady state) are padded to
    (N, max_q, max_k) and computed in a few batched ops; large ones loop over sequences.
    """
    N, Hq = meta.num_seqs, q.shape[1]
    if N == 0 or N * Hq * meta.max_seqlen_q * meta.max_seqlen_k > _MAX_PADDED_SCORES:
        return _paged_attention_loop(q, k_cache, v_cache, meta, softmax_scale, k_scale, v_scale,
                                     sliding_window)
    return _paged_attention_padded(q, k_cache, v_cache, meta, softmax_scale, k_scale, v_scale,
                                   sliding_window)


def _paged_attention_padded(q, k_cache, v_cache, meta, softmax_scale, k_scale, v_scale,
                            sliding_window) -> torch.Tensor:
    T, Hq, D = q.shape
    N, Hk, bs = meta.num_seqs, k_cache.shape[2], k_cache.shape[1]
    G, Qm, Lm = Hq // Hk, meta.max_seqlen_q, meta.max_seqlen_k
    ks, vs = _scales(k_cache, k_scale, v_scale)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    dev = q.device
    lens = meta.seq_lens.long()
    cu = meta.cu_seqlens_q.long()
    n_new = cu[1:] - cu[:-1]  # (N,)
    t = torch.arange(Lm, device=dev)
    # (N, Lm); entries past a sequence are masked (max_seqlen_k may exceed the table's width)
    blocks = meta.block_tables.long()[:, (t // bs).clamp(max=meta.block_tables.shape[1] - 1)]
    past_end = (t[None, :] >= lens[:, None])[..., None, None]  # (N, Lm, 1, 1)
    # zero what lies past each sequence: unwritten slots may hold anything (NaN included)
    k = (k_cache[blocks, t % bs].float() * ks).masked_fill(past_end, 0.0)  # (N, Lm, Hk, D)
    v = (v_cache[blocks, t % bs].float() * vs).masked_fill(past_end, 0.0)
    r = torch.arange(Qm, device=dev)
    rows = (cu[:-1, None] + r[None, :]).clamp(max=max(T - 1, 0))  # (N, Qm) packed row ids
    valid = r[None, :] < n_new[:, None]  # (N, Qm)
    qp = q.float()[rows].view(N, Qm, Hk, G, D).permute(0, 2, 3, 1, 4)  # (N, Hk, G, Qm, D)
    s = qp @ k.permute(0, 2, 3, 1)[:, :, None] * scale  # (N, Hk, G, Qm, Lm)
    qpos = (lens - n_new)[:, None] + r[None, :]  # (N, Qm): position of each new token
    hidden = t[None, None, :] > qpos[:, :, None]  # (N, Qm, Lm); covers t >= L as qpos < L
    if sliding_window is not None:
        hidden = hidden | (t[None, None, :] <= qpos[:, :, None] - sliding_window)
    p = torch.softmax(s.masked_fill(hidden[:, None, None], float("-inf")), dim=-1)
    o = (p @ v.permute(0, 2, 1, 3)[:, :, None]).permute(0, 3, 1, 2, 4)  # (N, Qm, Hk, G, D)
    return o.reshape(N, Qm, Hq, D)[valid].to(q.dtype)


def _paged_attention_loop(q, k_cache, v_cache, meta, softmax_scale, k_scale, v_scale,
                          sliding_window) -> torch.Tensor:
    T, Hq, D = q.shape
    Hk = k_cache.shape[2]
    bs = k_cache.shape[1]
    ks, vs = _scales(k_cache, k_scale, v_scale)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    out = torch.empty_like(q)
    cu = meta.cu_seqlens_q.tolist()
    lens = meta.seq_lens.tolist()
    for i, L in enumerate(lens):
        q0, q1 = cu[i], cu[i + 1]
        if q1 == q0:
            continue
        t = torch.arange(L, device=q.device)
        blocks = meta.block_tables[i, t // bs].long()
        k = k_cache[blocks, t % bs].float() * ks  # (L, Hk, D)
        v = v_cache[blocks, t % bs].float() * vs
        qi = q[q0:q1].float()  # (n, Hq, D)
        k = k.repeat_interleave(Hq // Hk, dim=1)
        v = v.repeat_interleave(Hq // Hk, dim=1)
        s = torch.einsum("qhd,khd->hqk", qi, k) * scale
        n = q1 - q0
        qpos = torch.arange(L - n, L, device=q.device)[:, None]
        hidden = t[None, :] > qpos
        if sliding_window is not None:
            hidden = hidden | (t[None, :] <= qpos - sliding_window)
        s = s.masked_fill(hidden, float("-inf"))
        p = torch.softmax(s, dim=-1)
        out[q0:q1] = torch.einsum("hqk,khd->qhd", p, v).to(q.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# validation + dispatch
# ---------------------------------------------------------------------------------------------
def _check_caches(k_cache: torch.Tensor, v_cache: torch.Tensor, model_dtype: torch.dtype,
                  device: torch.device) -> None:
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(c, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(c).__name__}")
        if c.dim() != 4:
            raise ValueError(f"{name} must be (num_blocks, block_size, Hk, D), got shape "
                             f"{tuple(c.shape)}")
        if c.dtype not in (model_dtype, torch.float8_e4m3fn):
            raise TypeError(f"{name} dtype {c.dtype} must be the model dtype {model_dtype} "
                            "or torch.float8_e4m3fn")
        if c.device != device:
            raise ValueError(f"{name} is on {c.device} but the inputs are on {device}")
        if c.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim, got strides {c.stride()}")
    if k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} {k_cache.dtype} and v_cache "
                         f"{tuple(v_cache.shape)} {v_cache.dtype} must match")


def _check_index(name: str, t: torch.Tensor, dim: int, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dim(s), got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}")


def _check_heads(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"{name} must be (T, heads, head_dim), got shape {tuple(x.shape)}")


def _check_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     meta: AttentionMetadata, sliding_window: int | None) -> None:
    _check_heads("q", q)
    _check_caches(k_cache, v_cache, q.dtype, q.device)
    T, Hq, D = q.shape
    Hk = k_cache.shape[2]
    if k_cache.shape[3] != D:
        raise ValueError(f"q head_dim {D} != cache head_dim {k_cache.shape[3]}")
    if Hq % Hk != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of KV heads ({Hk})")
    if not isinstance(meta, AttentionMetadata):
        raise TypeError(f"meta must be AttentionMetadata, got {type(meta).__name__}")
    _check_index("meta.block_tables", meta.block_tables, 2, q.device)
    _check_index("meta.seq_lens", meta.seq_lens, 1, q.device)
    _check_index("meta.cu_seqlens_q", meta.cu_seqlens_q, 1, q.device)
    N = meta.seq_lens.shape[0]
    if meta.block_tables.shape[0] != N or meta.cu_seqlens_q.shape[0] != N + 1:
        raise ValueError(f"metadata for {N} sequences needs block_tables (N, *) and "
                         f"cu_seqlens_q (N+1,), got {tuple(meta.block_tables.shape)} and "
                         f"{tuple(meta.cu_seqlens_q.shape)}")
    if meta.decode_only and T != N:
        raise ValueError(f"decode_only metadata needs one query row per sequence: q has {T} "
                         f"rows for {N} sequences")
    nd = meta.num_decode_tokens
    if nd is not None and (not isinstance(nd, int) or not 0 <= nd <= min(N, T)
                           or (meta.decode_only and nd != N)):
        raise ValueError(f"meta.num_decode_tokens={nd!r} must be an int in [0, {min(N, T)}] "
                         f"(and equal the {N} sequences when decode_only)")
    if sliding_window is not None and (not isinstance(sliding_window, int) or sliding_window < 1):
        raise ValueError(f"sliding_window must be a positive int or None, got {sliding_window!r}")


def check_kv_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """What every K/V cache write needs: k and v alike, caches that fit them, one slot a row."""
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if v.dtype != k.dtype or v.device != k.device:
        raise TypeError(f"v ({v.dtype}, {v.device}) must match k ({k.dtype}, {k.device})")
    _check_caches(k_cache, v_cache, k.dtype, k.device)
    if tuple(k_cache.shape[2:]) != tuple(k.shape[1:]):
        raise ValueError(f"k (T, Hk, D) = {tuple(k.shape)} does not fit cache "
                         f"{tuple(k_cache.shape)}")
    _check_index("slot_mapping", slot_mapping, 1, k.device)
    if slot_mapping.shape[0] != k.shape[0]:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} slots for {k.shape[0]} tokens")


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, *, k_scale: float | None = None, v_scale: float | None = None,
) -> None:
    """Write k/v (T, Hk, D) into the paged caches at ``slot_mapping`` (T,), in place."""
    _check_heads("k", k)
    _check_heads("v", v)
    check_kv_write(k, v, k_cache, v_cache, slot_mapping)
    ks, vs = _scales(k_cache, k_scale, v_scale)
    if not use_triton(k):
        write_kv_cache_reference(k, v, k_cache, v_cache, slot_mapping, ks, vs)
        return
    from tritium.kernels.rope import rope_write_kv

    rope_write_kv(None, k, v, None, None, k_cache, v_cache, slot_mapping, ks, vs)


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
    softmax_scale: float | None = None, *, k_scale: float | None = None,
    v_scale: float | None = None, sliding_window: int | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """softmax(q K^T * scale, causal bottom-right) V per sequence over its paged K/V.

    q (T, Hq, D) packed new tokens (their K/V already written) -> (T, Hq, D) in q.dtype.
    The first ``meta.num_decodes`` sequences (one row each) go to the split-KV decode kernel,
    the others to the prefill kernel; both write one output, without copies.
    ``num_splits`` forces the decode kernel's KV split count (None: chosen from batch x heads
    vs SM count); it is ignored on the reference path.
    """
    _check_attention(q, k_cache, v_cache, meta, sliding_window)
    ks, vs = _scales(k_cache, k_scale, v_scale)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if not use_triton(q):
        if q.device.type == "cpu":  # PyTorch's SDPA kernels; the reference stays the oracle
            from tritium.ops.paged_attention_cpu import paged_attention_cpu

            return paged_attention_cpu(q, k_cache, v_cache, meta, scale, ks, vs,
                                       sliding_window)
        return paged_attention_reference(q, k_cache, v_cache, meta, scale, k_scale=ks,
                                         v_scale=vs, sliding_window=sliding_window)
    if q.stride(-1) != 1:
        q = q.contiguous()
    from tritium.kernels.paged_attention import paged_decode, paged_prefill

    N, nd = meta.num_seqs, meta.num_decodes
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    if nd > 0:  # rows 0..nd-1; max_seqlen_k bounds them (it only caps the split count)
        paged_decode(q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens[:nd],
                     meta.max_seqlen_k, scale, ks, vs, sliding_window, num_splits,
                     out=out[:nd])
    if nd < N:  # cu_seqlens_q holds absolute row offsets: slices address q and out directly
        paged_prefill(q, k_cache, v_cache, meta.block_tables[nd:], meta.seq_lens[nd:],
                      meta.cu_seqlens_q[nd:], meta.max_seqlen_q, scale, ks, vs, sliding_window,
                      out=out)
    return out
