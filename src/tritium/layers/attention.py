"""Multi-head self-attention with grouped K/V heads (MHA, GQA, MQA) and a fused qkv projection.

Two entry points over the same weights:
- ``forward``: plain causal attention over whole sequences (B, S, hidden), no cache, through
  ``ops.attention.flash_attn_func`` (training, parity tests);
- ``forward_paged``: packed tokens of many sequences (T, hidden), K/V written into and read from
  a paged cache through ``ops.paged_attention`` (the serving engine).
"""

from __future__ import annotations

import torch
from torch import nn

from tritium.layers.linear import Linear
from tritium.layers.rotary import RotaryEmbedding
from tritium.ops import attention as attention_ops
from tritium.ops import paged_attention as paged_ops
from tritium.ops.paged_attention import AttentionMetadata


class Attention(nn.Module):
    """softmax(q k^T * scale + causal mask) v with Hq query heads sharing Hk K/V heads.

    ``qkv_proj.weight`` is ((Hq + 2 Hk) * D, hidden) = [W_q ; W_k ; W_v] by rows (and the same
    order for the bias), so one matmul gives [q | k | v] along the last dim.
    ``sliding_window`` W (Mistral): query i sees keys i-W+1 .. i (Hugging Face's definition).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        qkv_bias: bool = False,
        o_bias: bool = False,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_attention_heads ({num_heads}) must be a multiple of "
                f"num_key_value_heads ({num_kv_heads})"
            )
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
        self.scale = head_dim**-0.5
        self.sliding_window = sliding_window
        self.qkv_proj = Linear(hidden_size, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.o_proj = Linear(self.q_size, hidden_size, bias=o_bias)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: (..., hidden) -> q (..., Hq, D), k/v (..., Hk, D), not yet rotated (views of qkv)
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        lead = x.shape[:-1]
        q = q.reshape(*lead, self.num_heads, self.head_dim)
        k = k.reshape(*lead, self.num_kv_heads, self.head_dim)
        v = v.reshape(*lead, self.num_kv_heads, self.head_dim)
        return q, k, v

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, rotary: RotaryEmbedding
    ) -> torch.Tensor:
        """x: (B, S, hidden), positions: (B, S) -> (B, S, hidden); causal over each row."""
        B, S, _ = x.shape
        q, k, v = self._qkv(x)  # (B, S, H, D)
        q, k = rotary(q, k, positions)
        kwargs = {}
        if self.sliding_window is not None and S > self.sliding_window:
            kwargs["window_size"] = (self.sliding_window - 1, 0)  # keys i-W+1 .. i
        o = attention_ops.flash_attn_func(
            q, k, v, causal=True, softmax_scale=self.scale, **kwargs
        )  # (B, S, Hq, D)
        return self.o_proj(o.reshape(B, S, self.q_size))

    def forward_paged(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rotary: RotaryEmbedding,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """x: (T, hidden) packed new tokens, positions: (T,) -> (T, hidden).

        Writes the new tokens' K/V into ``kv_cache`` = (k_cache, v_cache), each
        (num_blocks, block_size, Hk, D), at ``meta.slot_mapping``, then attends over each
        sequence's cached prefix plus its new tokens.
        """
        kwargs = {}
        if self.sliding_window is not None and meta.max_seqlen_k > self.sliding_window:
            kwargs["sliding_window"] = self.sliding_window
        T = x.shape[0]
        q, k, v = self._qkv(x)  # (T, H, D)
        k_cache, v_cache = kv_cache
        q, _ = rotary.rope_and_write_kv(q, k, v, positions, k_cache, v_cache, meta.slot_mapping)
        o = paged_ops.paged_attention(
            q, k_cache, v_cache, meta, softmax_scale=self.scale, **kwargs
        )  # (T, Hq, D)
        return self.o_proj(o.reshape(T, self.q_size))
