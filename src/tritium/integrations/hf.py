"""Hugging Face transformers backend: ``attn_implementation="tritium"``.

    import tritium.integrations.hf
    tritium.integrations.hf.register()          # once per process; importing tritium does not
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="tritium")

Two things are registered under the name "tritium":

- an attention function (``AttentionInterface``) that runs ``tritium.flash_attn_func`` on
  HF's (B, H, S, D) query/key/value, GQA without repeating K/V, softcap, causal from
  ``module.is_causal``;
- a mask function (``AttentionMaskInterface``) that turns HF's mask description (its
  ``mask_function`` + 2-D padding mask + cache offsets) into a tritium ``BlockMask`` once per
  forward, shared by every layer; pure causal attention without padding gets no mask at all
  (the kernel's causal path), exactly where HF's SDPA backend would skip its mask.

A 4-D mask passed by the user (bool, or additive float of 0 / large negative values) is
converted to a ``BlockMask`` too (once per tensor). Unsupported: attention dropout > 0,
additive biases (ALiBi-style ``position_bias``), attention sinks, ``output_attentions``
(weights are never materialized; None is returned, as HF's SDPA backend does).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import torch

from tritium.ops.block_mask import BlockMask, block_mask_from_dense, create_block_mask

logger = logging.getLogger(__name__)

NAME = "tritium"
_KV_BLOCK = 128
_dense_cache: list[tuple[weakref.ref, BlockMask]] = []  # few dense masks -> their BlockMasks


def register() -> None:
    """Register ``attn_implementation="tritium"`` with transformers (idempotent)."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as e:  # AttentionMaskInterface arrived in transformers 4.53
        raise ImportError("tritium's HF backend needs transformers >= 4.53 "
                          "(AttentionInterface and AttentionMaskInterface)") from e
    AttentionInterface.register(NAME, tritium_attention_forward)
    AttentionMaskInterface.register(NAME, tritium_mask)


# -- the mask, built once per forward ------------------------------------------------------


def _q_block(q_length: int) -> int:
    """Query block size: 128, or the next power of two >= q_length (min 16) for short queries
    (decode), so a 1-token query does not evaluate 127 rows of padding."""
    return min(128, max(16, 1 << max(0, q_length - 1).bit_length()))


def _hf_skip(padding_mask, q_length, kv_length, q_offset, kv_offset, local_size,
             allow_is_causal_skip, allow_is_bidirectional_skip) -> bool:
    """Whether HF's SDPA backend would pass no mask here (then neither do we)."""
    from transformers import masking_utils as mu

    causal_skip = getattr(mu, "_ignore_causal_mask_sdpa", None)
    bidir_skip = getattr(mu, "_ignore_bidirectional_mask_sdpa", None)
    if allow_is_causal_skip and causal_skip is not None and causal_skip(
            padding_mask, q_length, kv_length, q_offset, kv_offset, local_size):
        return True
    return bool(allow_is_bidirectional_skip and bidir_skip is not None
                and bidir_skip(padding_mask, kv_length, local_size))


def tritium_mask(
    batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
    mask_function: Callable | None = None, attention_mask: torch.Tensor | None = None,
    local_size: int | None = None, allow_is_causal_skip: bool = True,
    allow_is_bidirectional_skip: bool = False, use_vmap: bool = False,
    device: torch.device | str = "cpu", **kwargs,
) -> BlockMask | None:
    """HF mask interface: -> a ``BlockMask`` (batch_size|1, 1, q_length, kv_length) or None.

    ``mask_function(b, h, q_idx, kv_idx)`` is HF's index-based mask (causal, sliding window,
    packed sequences, ...); ``attention_mask`` (B, >= kv_offset + kv_length) bool marks real
    tokens (False = padding). q/kv indices are shifted by the cache offsets, as HF does.
    """
    from transformers import masking_utils as mu

    if mask_function is None:
        mask_function = mu.causal_mask_function
    padding_mask = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
    if _hf_skip(padding_mask, q_length, kv_length, q_offset, kv_offset, local_size,
                allow_is_causal_skip, allow_is_bidirectional_skip):
        return None
    qb = _q_block(q_length)
    if use_vmap:  # custom HF mask functions may not broadcast: let HF build the dense mask
        dense = mu.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                             q_offset=q_offset, kv_offset=kv_offset,
                             mask_function=mask_function, attention_mask=attention_mask,
                             allow_is_causal_skip=False, use_vmap=True, device=device)
        return block_mask_from_dense(dense.to(torch.bool), qb, _KV_BLOCK)
    if padding_mask is not None:
        mask_function = mu.and_masks(mask_function, mu.padding_mask_function(padding_mask))

    def mod(b, h, q_idx, kv_idx):
        return mask_function(b, h, q_idx + q_offset, kv_idx + kv_offset)

    return create_block_mask(mod, batch_size, None, q_length, kv_length, device=device,
                             q_block_size=qb, kv_block_size=_KV_BLOCK)


def _from_dense(mask: torch.Tensor) -> BlockMask:
    """A user's 4-D mask (bool, or additive float: 0 = attend, very negative = masked)."""
    for ref, bm in _dense_cache:
        if ref() is mask:
            return bm
    if mask.dim() != 4:
        raise ValueError(f"tritium attention: attention_mask must be 4-D (B, H|1, Sq, Sk) "
                         f"here, got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        allowed = mask == 0
        if not bool((mask[~allowed] <= torch.finfo(mask.dtype).min / 2).all()):
            raise ValueError("tritium attention: additive float masks may hold only 0 and "
                             "large negative values (no biases); build a BlockMask instead")
        mask_b = allowed
    else:
        mask_b = mask
    bm = block_mask_from_dense(mask_b, _q_block(mask.shape[-2]), _KV_BLOCK)
    _dense_cache.insert(0, (weakref.ref(mask), bm))
    del _dense_cache[4:]  # every layer passes the same one or two masks in one forward
    return bm


# -- attention ------------------------------------------------------------------------------


def tritium_attention_forward(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: BlockMask | torch.Tensor | None, dropout: float = 0.0,
    scaling: float | None = None, is_causal: bool | None = None, softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """HF attention interface: query (B, Hq, Sq, D), key/value (B, Hk, Sk, D), Hq % Hk == 0
    -> (attn_output (B, Sq, Hq, D), None).

    softmax(scaling * q k^T + mask) v with the mask from ``tritium_mask`` (or None: causal,
    following ``module.is_causal``, when Sq > 1 -- HF's SDPA semantics).
    """
    from tritium.ops.attention import flash_attn_func

    if dropout and dropout > 0:
        raise ValueError(f"tritium attention does not support attention dropout (got "
                         f"{dropout}); set config.attention_dropout = 0.0")
    for unsupported in ("position_bias", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"tritium attention does not support {unsupported!r}")
    if kwargs.get("output_attentions"):
        logger.warning("tritium attention does not return attention weights "
                       "(output_attentions=True gives None)")
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    block_mask = None
    if attention_mask is None:
        causal = bool(causal) and q_len > 1
        if causal and kv_len > q_len:
            # HF skips the mask here only when the cache is empty (q_offset == 0): keys past
            # q_len are unwritten static-cache slots, as in HF's SDPA backend.
            key, value = key[:, :, :q_len], value[:, :, :q_len]
    else:
        causal = False  # the mask carries causality
        block_mask = attention_mask if isinstance(attention_mask, BlockMask) \
            else _from_dense(attention_mask)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, S, H, D) views
    out = flash_attn_func(q, k, v, causal=causal, softcap=float(softcap or 0.0),
                          softmax_scale=scaling, block_mask=block_mask)
    return out, None
