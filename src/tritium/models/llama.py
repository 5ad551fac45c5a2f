"""Llama-family decoder: Llama 2/3 (incl. "llama3" rope scaling), SmolLM2, Mistral, Qwen2/2.5.

One config-driven model covers the family; what varies is read from ``ModelConfig``:
grouped K/V heads (GQA/MQA), q/k/v bias (Qwen2), tied or untied embeddings, rope theta and
scaling, Mistral's sliding window. Fused projections: ``qkv_proj`` = [q ; k ; v] and
``gate_up_proj`` = [gate ; up] by rows; ``load_hf_state_dict`` builds them from Hugging Face's
separate tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from tritium.layers.attention import Attention
from tritium.layers.linear import Linear, linear
from tritium.layers.mlp import GatedMLP
from tritium.layers.norm import RMSNorm
from tritium.layers.rotary import RotaryEmbedding
from tritium.models.config import ModelConfig
from tritium.models.errors import ModelLoadError
from tritium.ops.paged_attention import AttentionMetadata

# Fused parameter (our name suffix) <- Hugging Face name suffixes, concatenated along dim 0.
_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
# HF tensors that carry nothing we need (old checkpoints saved the rope frequencies).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _family(config: ModelConfig) -> str:
    """'llama', 'mistral', 'qwen2', ... from the config's architecture name."""
    arch = str(getattr(config, "architecture", "llama")).lower()
    return arch.removesuffix("forcausallm")


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: h += attn(norm(h)); h += mlp(norm(h)), residual adds fused into the norms."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        qkv_bias = bool(config.attention_bias)
        # Qwen2 has q/k/v bias but never an o_proj bias; Llama's attention_bias covers all four.
        o_bias = qkv_bias and _family(config) != "qwen2"
        self.self_attn = Attention(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            sliding_window=config.sliding_window,
        )
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        rotary: RotaryEmbedding,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        meta: AttentionMetadata | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (..., hidden) output of the previous block (not yet added to ``residual``).

        Returns (this block's output, residual stream before it); the caller adds them.
        ``kv_cache``/``meta`` given -> paged path with x (T, hidden); else plain, x (B, S, hidden).
        """
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        if meta is None:
            h = self.self_attn(h, positions, rotary)
        else:
            h = self.self_attn.forward_paged(h, positions, rotary, kv_cache, meta)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    """Embedding -> decoder layers -> final norm; returns the normalized hidden states."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(
            config.head_dim,
            config.max_position_embeddings,
            config.rope_theta,
            config.rope_scaling,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        meta: AttentionMetadata | None = None,
    ) -> torch.Tensor:
        """input_ids/positions: (B, S) plain or (T,) paged -> hidden (..., hidden)."""
        h = self.embed_tokens(input_ids)
        residual = None
        for i, layer in enumerate(self.layers):
            kv = kv_caches[i] if kv_caches is not None else None
            h, residual = layer(h, residual, positions, self.rotary_emb, kv, meta)
        h, _ = self.norm(h, residual)
        return h


class LlamaForCausalLM(nn.Module):
    """Decoder + LM head. ``model(input_ids (B, S)) -> logits (B, S, V)``; see ``forward_paged``
    for the engine path."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        # Tied embeddings: no lm_head of our own; compute_logits reads embed_tokens.weight.
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Linear(config.hidden_size, config.vocab_size, bias=False)
        )

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Plain causal forward, no cache. input_ids (B, S) [positions (B, S)] -> logits
        (B, S, V) in the model's dtype."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            positions = positions.expand_as(input_ids)
        hidden = self.model(input_ids, positions)
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, w)

    def forward_paged(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Engine path. input_ids, positions: (T,) packed new tokens of ``meta.num_seqs``
        sequences; kv_caches[i] = (k_cache, v_cache) of layer i, each
        (num_blocks, block_size, Hk, D). Writes the new K/V, returns hidden (T, hidden)."""
        if len(kv_caches) != len(self.model.layers):
            raise ValueError(
                f"kv_caches has {len(kv_caches)} layers, the model {len(self.model.layers)}"
            )
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, hidden) -> logits (N, V) in float32, for sampling.

        A bf16 model's logits rounded to bf16 are 0.125 apart near 25: greedy picks flip on such
        ties (seen with the embedded model's first answer token) and sampling gets coarse
        probabilities. So the LM head accumulates and returns fp32 (on CUDA without copying the
        weight). The plain ``forward`` keeps the model dtype (training takes that path).
        """
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return _linear_fp32_out(hidden, w)

    # -- loading ---------------------------------------------------------------------------

    def load_hf_state_dict(
        self,
        state_dict: Mapping[str, torch.Tensor],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Load Hugging Face-named tensors, concatenating q/k/v and gate/up into fused ones.

        A model built on the 'meta' device takes the tensors as its parameters, each cast to
        ``dtype`` and moved to ``device`` as it is mapped (default: as they come); otherwise
        they are copied into the existing parameters (``dtype``/``device`` unused).
        Raises ``ModelLoadError`` naming missing, unexpected or wrongly shaped tensors.
        """
        own = self.state_dict()
        on_meta = any(t.device.type == "meta" for t in own.values())
        consumed: set[str] = set()
        missing: list[str] = []
        mapped: dict[str, torch.Tensor] = {}
        for name, target in own.items():
            sources = _hf_sources(name)
            absent = [s for s in sources if s not in state_dict]
            if absent:
                missing.extend(absent)
                continue
            parts = [state_dict[s] for s in sources]
            consumed.update(sources)
            t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            if tuple(t.shape) != tuple(target.shape):
                raise ModelLoadError(
                    f"checkpoint tensor {'+'.join(sources)} has shape {tuple(t.shape)}, "
                    f"the model expects {tuple(target.shape)} for {name}"
                )
            # Built on 'meta': take the tensors as they come (cast/moved as asked); otherwise
            # load_state_dict copies them into the existing parameters (casting to their dtype).
            mapped[name] = t.to(device=device, dtype=dtype) if on_meta else t
        unexpected = [
            k for k in state_dict
            if k not in consumed and not self._ignorable(k)
        ]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
            if unexpected:
                parts.append(
                    f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})"
                )
            raise ModelLoadError(
                f"checkpoint does not match the {_family(self.config)} model: " + "; ".join(parts)
            )
        self.load_state_dict(mapped, strict=True, assign=on_meta)
        if on_meta:
            self.model.rotary_emb.rebuild(self.model.embed_tokens.weight.device)

    def _ignorable(self, hf_name: str) -> bool:
        if hf_name.endswith(_IGNORED_SUFFIXES):
            return True
        # HF state dicts of tied models list lm_head.weight (the same tensor as the embedding).
        return hf_name == "lm_head.weight" and self.lm_head is None


@functools.cache
def _cuda_mm_has_out_dtype() -> bool:
    """torch >= 2.8 on CUDA: ``torch.mm(a, b, out_dtype=torch.float32)`` for bf16/fp16 a, b."""
    try:
        a = torch.zeros(1, 1, device="cuda", dtype=torch.bfloat16)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False


def _linear_fp32_out(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (N, K) @ w (V, K)^T -> (N, V) float32."""
    if x.dtype == torch.float32 and w.dtype == torch.float32:
        return linear(x, w)
    if x.is_cuda and x.dim() == 2 and _cuda_mm_has_out_dtype():
        return torch.mm(x, w.t(), out_dtype=torch.float32)
    # CPU half precision (not the default there): one fp32 copy of the weight per call.
    return F.linear(x.float(), w.float())


def _hf_sources(name: str) -> tuple[str, ...]:
    """Our parameter name -> the Hugging Face names it is built from (in concat order)."""
    for fused, parts in _FUSED.items():
        marker = f".{fused}."
        if marker in name:
            prefix, suffix = name.split(marker)
            return tuple(f"{prefix}.{p}.{suffix}" for p in parts)
    return (name,)
