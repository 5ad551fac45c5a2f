"""Incremental detokenization with stop strings. Pure Python (no torch import).

Decoding. Byte-level BPE tokens can end in the middle of a UTF-8 character, and SentencePiece
decoders drop a leading space at the start of a decode. Both are handled by decoding a small
window twice per step: ``prefix = decode(ids[prefix_offset:read_offset])`` (text already
emitted) and ``full = decode(ids[prefix_offset:])``; the new text is ``full[len(prefix):]``.
When ``full`` ends in U+FFFD (an unfinished character) nothing is emitted and the offsets stay,
so the next token completes it. After an emission the window slides to the new tokens, so each
step decodes O(new tokens), never the whole output. The window starts on the prompt's last few
tokens so the first output token keeps its leading space.

Stop strings. The decoded text is searched for each stop string where it could end in the new
text (so matches across token boundaries are found). The earliest match ends the sequence: the
text is cut before it (after it with ``include_stop_str_in_output``). While running, a tail of
the text that could still grow into a stop string is held back from streaming. As in vLLM, stop
strings are not searched before ``min_tokens`` tokens were generated.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from typing import Any

from tritium.engine.sampling_params import SamplingParams

INITIAL_PREFIX_TOKENS = 5  # prompt tokens the first window starts on (vLLM uses 5 too)
_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Streams one sequence's text as its tokens arrive.

    Args:
        tokenizer: a Hugging Face tokenizer (anything with ``decode(ids, skip_special_tokens=,
            clean_up_tokenization_spaces=)``).
        prompt_token_ids: the prompt (only its last few tokens are read).
        params: the request's settings (stop, include_stop_str_in_output, min_tokens,
            skip_special_tokens).

    Attributes:
        text: text streamed so far; the final text once finished.
        stop_reason: the stop string that ended the sequence, else None.
        finished: no more text will come (stop string found, or ``update(..., finished=True)``).
    """

    def __init__(
        self, tokenizer: Any, prompt_token_ids: SequenceABC[int], params: SamplingParams
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = params.skip_special_tokens
        self.stop = list(params.stop)
        self.include_stop_str_in_output = params.include_stop_str_in_output
        self.min_tokens = params.min_tokens
        self._max_stop_len = max((len(s) for s in self.stop), default=0)
        self._ids: list[int] = list(prompt_token_ids[-INITIAL_PREFIX_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._text = ""  # all decoded output text (cut at a stop string once found)
        self._num_emitted = 0  # characters of _text already streamed
        self.num_output_tokens = 0
        self.stop_reason: str | None = None
        self.finished = False

    @property
    def text(self) -> str:
        return self._text[: self._num_emitted]

    def update(self, new_token_ids: SequenceABC[int], finished: bool = False) -> str:
        """Feed newly sampled tokens; return the text that may be streamed now.

        Args:
            new_token_ids: tokens sampled since the last call (usually one).
            finished: the sequence ended for another reason (EOS, length, abort): flush
                everything, held-back text and unfinished characters included.
        Returns:
            The new text (possibly ""). Check :attr:`stop_reason` afterwards: when it is set,
            the sequence must be finished (``Scheduler.finish``).
        """
        if self.finished:
            return ""
        self._ids.extend(new_token_ids)
        self.num_output_tokens += len(new_token_ids)
        prev_len = len(self._text)
        self._text += self._decode_new(flush=finished)
        if self.stop and self.num_output_tokens >= self.min_tokens:
            self._find_stop(prev_len)
        if finished:
            self.finished = True
        end = len(self._text) if self.finished else len(self._text) - self._stop_holdback()
        if end <= self._num_emitted:
            return ""
        delta = self._text[self._num_emitted : end]
        self._num_emitted = end
        return delta

    # -- decoding --------------------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids,
            skip_special_tokens=self.skip_special_tokens,
            clean_up_tokenization_spaces=False,  # cleanup looks across the window edge
        )

    def _decode_new(self, flush: bool) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix):
            return ""  # nothing visible yet (e.g. a skipped special token)
        if full.endswith(_REPLACEMENT_CHAR) and not flush:
            return ""  # a multi-byte character is still incomplete: wait for its next bytes
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full[len(prefix) :]

    # -- stop strings ----------------------------------------------------------------------

    def _find_stop(self, prev_len: int) -> None:
        """Earliest stop string ending after ``prev_len``; cut the text there."""
        start = max(0, prev_len - self._max_stop_len + 1)
        best: tuple[int, str] | None = None
        for s in self.stop:
            i = self._text.find(s, max(0, start))
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return
        i, s = best
        self._text = self._text[: i + len(s) if self.include_stop_str_in_output else i]
        self.stop_reason = s
        self.finished = True

    def _stop_holdback(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        if not self.stop or self.include_stop_str_in_output:
            return 0  # an included stop string is streamed anyway, up to its end
        text = self._text
        for k in range(min(self._max_stop_len - 1, len(text)), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0
