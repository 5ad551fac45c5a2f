"""The ``tritium`` command in a subprocess: answers on stdout only, diagnostics on stderr, and
one clear error line (no traceback, non-zero exit) for every user mistake."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tritium.models.loader import default_model_path

# One thread per subprocess: the CPU is shared, and OpenMP spin-waiting under load made decode
# ~10x slower with 2 threads.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "0"}


def run_cli(*args: str, stdin: str | None = None, timeout: float = 240
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tritium", *args], input=stdin,
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    """Non-zero exit, nothing on stdout, exactly one stderr line: the error, matching pattern."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.search(r"^tritium( \w+)?: error: ", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), lines[0]


# -- the embedded model ----------------------------------------------------------------------

def test_generate_answers_capital_of_france():
    proc = run_cli("generate", "--temperature", "0", "--max-tokens", "24",
                   "What is the capital of France?")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    # only the completion on stdout: no chat-template markers, no diagnostics
    assert "<|im" not in proc.stdout and "[tritium]" not in proc.stdout
    assert "[tritium] loaded" in proc.stderr and "Traceback" not in proc.stderr


def test_generate_raw_continues_plain_text():
    proc = run_cli("generate", "--raw", "--temperature", "0", "--max-tokens", "6",
                   "The capital of France is")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert not proc.stdout.startswith("The capital")  # the completion only, not the prompt


def test_chat_with_piped_stdin_keeps_history():
    proc = run_cli("chat", "--temperature", "0", "--max-tokens", "12",
                   stdin="What is the capital of France?\nAnd what is 2 + 2?\n/exit\nignored\n")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) >= 2  # two answers (the third line is ignored)
    # turn 2's prompt holds turn 1's question and answer: longer than turn 1's prompt + output
    turns = [tuple(map(int, m)) for m in
             re.findall(r"(\d+) prompt \+ (\d+) generated", proc.stderr)]
    assert len(turns) == 2, proc.stderr
    assert turns[1][0] > turns[0][0] + turns[0][1]


# -- a tiny random model in an HF folder (fast to load) -----------------------------------------

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A 2-layer random Llama with a 32-token context and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "hello", "world", "the", "cat", "sat", "user", "assistant"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        chat_template="{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                      "{% if add_generation_prompt %}assistant {% endif %}",
    )
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=32, bos_token_id=1, eos_token_id=2)
    folder = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_generate_with_hf_folder(tiny_folder):
    proc = run_cli("generate", "--model", str(tiny_folder), "--max-tokens", "5",
                   "--temperature", "0.8", "--top-p", "0.9", "--seed", "1", "hello world")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_prompt_longer_than_context(tiny_folder):
    proc = run_cli("generate", "--model", str(tiny_folder), "hello " * 40)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    assert re.match(r"tritium: error: the prompt has \d+ tokens, but the context holds 32",
                    errors[0]), errors[0]
    assert proc.stdout.strip() == ""


def test_generate_random_preset_with_tokenizer():
    from tritium.models.tokenizer_cache import embedded_tokenizer_dir

    proc = run_cli("generate", "--model", "random:tiny", "--tokenizer",
                   str(embedded_tokenizer_dir()), "--device", "cpu", "--max-tokens", "6",
                   "--temperature", "0", "Hello")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and "6 generated tokens" in proc.stderr  # random words, as text


# -- user mistakes that fail before loading anything ---------------------------------------------

def test_random_preset_without_tokenizer():
    assert_user_error(run_cli("generate", "--model", "random:tiny", "hi"),
                      r"random:tiny has random weights and no tokenizer: pass --tokenizer")


def test_missing_tokenizer_path(tmp_path):
    assert_user_error(run_cli("chat", "--model", "random:tiny", "--tokenizer",
                              str(tmp_path / "tok"), stdin="hi\n"),
                      r"tokenizer path .*tok does not exist")


def test_missing_model_file(tmp_path):
    assert_user_error(run_cli("generate", "--model", str(tmp_path / "nope.gguf"), "hi"),
                      "nope.gguf")


def test_corrupted_gguf(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(3000))
    assert_user_error(run_cli("generate", "--model", str(bad), "hi"), "garbage.gguf")


def test_truncated_gguf(tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(default_model_path(), "rb") as f:
        cut.write_bytes(f.read(2_000_000))  # header and metadata intact, tensor data cut short
    assert_user_error(run_cli("generate", "--model", str(cut), "hi"), "cut.gguf")


def test_truncated_safetensors(tiny_folder, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_folder, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert_user_error(run_cli("generate", "--model", str(folder), "hi"), "model.safetensors")


def test_unsupported_architecture(tiny_folder, tmp_path):
    folder = tmp_path / "gpt2"
    shutil.copytree(tiny_folder, folder)
    config = (folder / "config.json").read_text().replace('"llama"', '"gpt2"')
    (folder / "config.json").write_text(config.replace("LlamaForCausalLM", "GPT2LMHeadModel"))
    assert_user_error(run_cli("generate", "--model", str(folder), "hi"), "gpt2")


@pytest.mark.parametrize("flags, pattern", [
    (["--max-tokens", "0"], "max-tokens.*>= 1"),
    (["--max-tokens", "many"], "max-tokens.*integer"),
    (["--temperature", "-0.5"], "temperature.*>= 0"),
    (["--temperature", "nan"], "temperature.*finite"),
    (["--top-p", "0"], r"top-p.*\(0, 1\]"),
    (["--top-p", "1.5"], r"top-p.*\(0, 1\]"),
    (["--dtype", "float64"], "dtype.*invalid choice"),
    (["--device", "tpu"], "device.*invalid choice"),
    (["--seed", "x"], "seed.*integer"),
    (["--threads", "0"], "threads.*>= 1"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_flag_values(flags, pattern):
    assert_user_error(run_cli("generate", *flags, "hi"), pattern)


def test_missing_prompt_and_command():
    assert_user_error(run_cli("generate"), "PROMPT")
    assert_user_error(run_cli(), "COMMAND")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda():
    assert_user_error(run_cli("generate", "--device", "cuda", "hi"), "CUDA is not available")


def test_console_script_installed():
    exe = shutil.which("tritium")
    assert exe is not None, "the tritium entry point is not on PATH (pip install -e .)"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0 and proc.stdout.startswith("tritium ")


def test_model_flag_help_lists_every_random_preset():
    from tritium.argtypes import RANDOM_PRESETS
    from tritium.models.presets import preset_names

    assert sorted(RANDOM_PRESETS.split(", ")) == sorted(preset_names())
