"""Log-probabilities of sampled and prompt tokens, batched on the device.

Logprobs are always taken from the *raw* model logits: ``log_softmax(logits)`` before logit bias,
penalties, temperature or any filter (vLLM's default ``raw_logprobs`` mode). So a token's reported
logprob says what the model thought, not how the request's sampling settings reshaped it.

Ranks are 1-based competition ranks: ``1 + #{tokens with a strictly larger logprob}``, so the
argmax has rank 1 and tied tokens share a rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenLogprobs:
    """Host-side logprobs of one position (one sampled token, or one prompt token)."""

    logprob: float  # of the sampled (or actual prompt) token
    rank: int  # 1-based, see module docstring
    top_token_ids: list[int]  # the k most likely tokens, most likely first
    top_logprobs: list[float]  # their logprobs, same order


@dataclass
class LogprobsTensors:
    """Device-side logprobs of N positions; rows share one k (callers slice to their own k).

    Fields:
        token_ids: (N, k) int64, the k most likely tokens per row, most likely first.
        logprobs: (N, k) float32, their log-probabilities.
        sampled_logprobs: (N,) float32, logprob of the sampled token (for prompt logprobs: of
            the actual next prompt token).
        sampled_ranks: (N,) int64, that token's 1-based rank.
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    sampled_logprobs: torch.Tensor
    sampled_ranks: torch.Tensor

    @property
    def num_logprobs(self) -> int:
        return self.token_ids.shape[1]

    def packed(self) -> torch.Tensor:
        """All fields in one (N, 2 + 2k) float64 tensor, so one host copy moves them all.

        float64 holds token ids and ranks (< 2**53) and float32 logprobs exactly.
        """
        return torch.cat(
            [
                self.sampled_logprobs[:, None].double(),
                self.sampled_ranks[:, None].double(),
                self.token_ids.double(),
                self.logprobs.double(),
            ],
            dim=1,
        )

    @staticmethod
    def unpack_rows(rows: list[list[float]], k: int) -> list[TokenLogprobs]:
        """Inverse of :meth:`packed` after ``.tolist()``: one :class:`TokenLogprobs` per row."""
        return [
            TokenLogprobs(
                logprob=r[0],
                rank=int(r[1]),
                top_token_ids=[int(t) for t in r[2 : 2 + k]],
                top_logprobs=list(r[2 + k : 2 + 2 * k]),
            )
            for r in rows
        ]

    def tolist(self) -> list[TokenLogprobs]:
        """Host copy (one device sync)."""
        return self.unpack_rows(self.packed().tolist(), self.num_logprobs)


def gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_logprobs: int
) -> LogprobsTensors:
    """Top-``num_logprobs`` tokens per row plus the logprob and rank of ``token_ids``.

    Args:
        logprobs: (N, V) float, a log-softmax over the vocabulary.
        token_ids: (N,) int64, the token whose logprob and rank to report per row.
        num_logprobs: k >= 0 (clamped to V); 0 gives (N, 0) top tensors.
    """
    n, v = logprobs.shape
    k = min(num_logprobs, v)
    if k > 0:
        top_lp, top_ids = torch.topk(logprobs, k, dim=-1)  # (N, k) each, sorted descending
    else:
        top_lp = logprobs.new_empty((n, 0))
        top_ids = torch.empty((n, 0), dtype=torch.long, device=logprobs.device)
    chosen = logprobs.gather(1, token_ids.long()[:, None])  # (N, 1)
    ranks = (logprobs > chosen).sum(dim=-1) + 1  # (N,) int64
    return LogprobsTensors(top_ids, top_lp, chosen[:, 0], ranks)


def compute_prompt_logprobs(
    logits: torch.Tensor, target_ids: torch.Tensor, k: int
) -> LogprobsTensors:
    """Prompt logprobs: ``log_softmax(logits[t])`` judged at the prompt token that follows.

    The caller lines positions up: ``logits[t]`` is the model output at prompt position t and
    ``target_ids[t]`` is prompt token t + 1 (the first prompt token has no logprob, as in vLLM).

    Args:
        logits: (P, V) raw model logits (any float dtype; computed in float32).
        target_ids: (P,) int, each in [0, V).
        k: number of top logprobs per position, in [0, 20] as SamplingParams allows (any k >= 0
            works here).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a (P, V) tensor, got {getattr(logits, 'shape', logits)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor, got {logits.dtype}")
    if not isinstance(target_ids, torch.Tensor) or target_ids.shape != logits.shape[:1]:
        raise ValueError(
            f"target_ids must be a ({logits.shape[0]},) tensor, got "
            f"{getattr(target_ids, 'shape', target_ids)}"
        )
    if target_ids.is_floating_point():
        raise TypeError(f"target_ids must be an integer tensor, got {target_ids.dtype}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (P, V)
    return gather_logprobs(logprobs, target_ids, k)
