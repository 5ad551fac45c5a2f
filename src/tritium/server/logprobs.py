"""Engine logprobs -> OpenAI's two logprobs formats (chat ``content`` list, legacy completions).

The engine gives, per generated token, either a ``TokenLogprobs`` (logprob, rank, top_token_ids,
top_logprobs) or a vLLM-style ``{token_id: Logprob | float}`` dict; both are read here. Logprobs
of -inf (impossible under the raw distribution) are sent as -9999.0, as JSON has no infinity.
"""

from __future__ import annotations

import math
from typing import Any

from tritium.server.protocol import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob

_FLOOR = -9999.0


def _finite(x: float | None) -> float:
    return _FLOOR if x is None or math.isnan(x) or x < _FLOOR else float(x)


def _value(v: Any) -> float:
    return float(getattr(v, "logprob", v))


def token_entry(item: Any, token_id: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """(logprob of ``token_id``, up to k (token id, logprob) most likely first)."""
    if hasattr(item, "top_token_ids"):
        tops = list(zip(item.top_token_ids, item.top_logprobs))[:k]
        return _finite(item.logprob), [(int(t), _finite(lp)) for t, lp in tops]
    if isinstance(item, dict):
        lp = _value(item[token_id]) if token_id in item else None
        tops = sorted(((int(t), _value(v)) for t, v in item.items()), key=lambda x: -x[1])[:k]
        return _finite(lp), [(t, _finite(v)) for t, v in tops]
    raise TypeError(f"unsupported logprobs entry {item!r}")


def chat_logprobs(tokenizer: Any, items: list[Any] | None, token_ids: list[int],
                  k: int) -> ChatLogprobs:
    content = []
    for item, tid in zip(items or [], token_ids):
        lp, tops = token_entry(item, tid, k)
        text = tokenizer.decode([tid])
        content.append(TokenLogprob(
            token=text, logprob=lp, bytes=list(text.encode("utf-8")),
            top_logprobs=[TopLogprob(token=(s := tokenizer.decode([t])), logprob=v,
                                     bytes=list(s.encode("utf-8"))) for t, v in tops]))
    return ChatLogprobs(content=content)


def completion_logprobs(tokenizer: Any, items: list[Any] | None, token_ids: list[int], k: int,
                        offset: int) -> CompletionLogprobs:
    """Legacy format; ``offset`` is the text offset of the first token (text already sent)."""
    out = CompletionLogprobs()
    for item, tid in zip(items or [], token_ids):
        lp, tops = token_entry(item, tid, k)
        text = tokenizer.decode([tid])
        out.tokens.append(text)
        out.token_logprobs.append(lp)
        out.top_logprobs.append({tokenizer.decode([t]): v for t, v in tops} if k else None)
        out.text_offset.append(offset)
        offset += len(text)
    return out
