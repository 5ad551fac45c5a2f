"""Throughput benchmark (tritium.bench.throughput, benchmarks/throughput.py), random-weight
presets (models/presets.py, ``load_model("random:...")``) and the engine's skip_tokenizer_init.

Everything runs on the ``random:tiny`` preset (0.2M parameters) so the file takes seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tritium import LLM, SamplingParams
from tritium.bench.peers import build_hf_model, hf_state_dict, model_flops_per_token
from tritium.bench.throughput import add_throughput_arguments, make_workload, resolve_args
from tritium.models import load_model
from tritium.models.presets import build_random_model, get_preset, num_parameters

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "random:tiny", "--device", "cpu"]


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_throughput_arguments(p)
    return p.parse_args(list(argv))


# -- presets and random weights ------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("llama3-8b", 8_030_261_248),     # Llama-3.1-8B's published count
    ("llama3-1b", 1_235_814_400),     # Llama-3.2-1B (tied embeddings)
    ("smollm2-135m", 134_515_008),    # SmolLM2-135M (tied embeddings)
])
def test_preset_shapes_match_published_parameter_counts(name, expected):
    assert num_parameters(get_preset(name)) == expected


def test_llama3_8b_preset_fields():
    c = get_preset("llama3-8b")
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.intermediate_size, c.head_dim) == (
        128256, 4096, 32, 32, 8, 14336, 128)
    assert c.rope_theta == 500000.0 and c.rope_scaling["rope_type"] == "llama3"
    assert not c.tie_word_embeddings
    c.rope_scaling["factor"] = 1.0  # a copy: the registry's preset is untouched
    assert get_preset("llama3-8b").rope_scaling["factor"] == 8.0


def test_load_random_model_is_seeded_and_sane():
    m1, tok, cfg = load_model("random:tiny", device="cpu", dtype=torch.float32)
    m2, _, _ = load_model("random:tiny", device="cpu", dtype=torch.float32)
    assert tok is None and cfg.vocab_size == 1024
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    assert torch.all(sd1["model.norm.weight"] == 1)
    w = sd1["model.layers.0.self_attn.qkv_proj.weight"]
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    logits = m1(torch.tensor([[1, 2, 3, 4, 5]]))
    assert logits.shape == (1, 5, 1024) and torch.isfinite(logits).all()


def test_load_random_model_in_bf16():
    m, _, _ = load_model("random:tiny", device="cpu", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    assert m.model.rotary_emb.cos_sin_cache.dtype == torch.float32  # rope table stays fp32


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model preset 'nope'.*llama3-8b"):
        load_model("random:nope", device="cpu")


# -- HF peer: same weights -----------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_hf_copy_computes_the_same_logits(tied):
    cfg = dataclasses.replace(get_preset("tiny"), tie_word_embeddings=tied)
    ours = build_random_model(cfg, device="cpu", dtype=torch.float32, seed=3)
    hf = build_hf_model(ours, cfg, torch.float32, "cpu", "sdpa")
    ids = torch.tensor([[5, 17, 900, 3, 44, 7, 1000]])
    with torch.no_grad():
        ref = ours(ids)
        got = hf(input_ids=ids).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)  # fp32, two op orders
    assert len(hf_state_dict(ours, cfg)) == len(hf.state_dict()) - (1 if tied else 0)


def test_model_flops_count_excludes_embeddings():
    c = get_preset("llama3-8b")
    assert model_flops_per_token(c) == 2 * (8_030_261_248 - 2 * 128256 * 4096)


# -- workload and arguments ----------------------------------------------------------------

def test_workload_is_seeded_and_in_range():
    a = make_workload(50, (3, 9), (2, 5), vocab_size=100, seed=7)
    b = make_workload(50, (3, 9), (2, 5), vocab_size=100, seed=7)
    assert a == b and a != make_workload(50, (3, 9), (2, 5), vocab_size=100, seed=8)
    assert {len(p) for p in a.prompts} == set(range(3, 10))  # inclusive ranges, all hit
    assert set(a.output_lens) == {2, 3, 4, 5}
    assert all(0 <= t < 100 for p in a.prompts for t in p)
    assert a.num_input_tokens == sum(map(len, a.prompts))


def test_cpu_defaults_are_the_anchor_workload():
    args = resolve_args(_args("--device", "cpu"))
    assert args.model is None  # the embedded SmolLM2-135M
    assert (args.num_prompts, args.input_len_range, args.output_len_range) == (
        24, [32, 256], [16, 96])
    assert args.hf_batch_size == 24 and args.peers == ["hf", "vllm"]
    assert args.max_model_len == 256 + 96
    quick = resolve_args(_args("--device", "cpu", "--quick", "--num-prompts", "3"))
    assert quick.num_prompts == 3 and quick.input_len_range == [16, 64]


@pytest.mark.parametrize("argv, match", [
    (["--input-len-range", "9", "3"], "input-len-range 9 3"),
    (["--peers", "hf,sglang"], "unknown peer.*sglang"),
    (["--temperature", "-1"], "temperature"),
])
def test_bad_arguments_raise_value_error(argv, match):
    with pytest.raises(ValueError, match=match):
        resolve_args(_args("--device", "cpu", *argv))


# -- engine without a tokenizer ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llm():
    return LLM("random:tiny", device="cpu", num_kv_blocks=32, max_model_len=128)


def test_random_model_runs_without_tokenizer(tiny_llm):
    assert tiny_llm.engine.skip_tokenizer_init and tiny_llm.tokenizer is None
    outs = tiny_llm.generate([[5, 6, 7], [8, 9]],
                             SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert [len(o.outputs[0].token_ids) for o in outs] == [6, 6]
    assert all(o.outputs[0].text == "" for o in outs)
    assert all(o.metrics.ttft is not None and o.metrics.ttft > 0 for o in outs)


def test_no_tokenizer_rejects_text_and_stop_strings(tiny_llm):
    with pytest.raises(ValueError, match="without a tokenizer"):
        tiny_llm.generate("hello")
    with pytest.raises(ValueError, match="stop strings"):
        tiny_llm.generate([[5, 6]], SamplingParams(stop=["x"]))
    with pytest.raises(ValueError, match="chat needs a tokenizer"):
        tiny_llm.chat([{"role": "user", "content": "hi"}])
    assert not tiny_llm.engine.has_unfinished_requests()


def test_final_only_steps_return_each_request_once_when_finished(tiny_llm):
    eng = tiny_llm.engine
    greedy = dict(temperature=0, ignore_eos=True)
    a = eng.add_request(None, [5, 6, 7], SamplingParams(max_tokens=2, **greedy))
    b = eng.add_request(None, [8, 9], SamplingParams(max_tokens=5, **greedy))
    seen = []
    while eng.has_unfinished_requests():
        outs = eng.step(final_only=True)
        assert all(o.finished for o in outs)
        seen.extend(outs)
    assert [o.request_id for o in seen] == [a, b]
    ref = tiny_llm.generate([[5, 6, 7], [8, 9]],
                            [SamplingParams(max_tokens=2, **greedy),
                             SamplingParams(max_tokens=5, **greedy)])
    assert [o.outputs[0].token_ids for o in seen] == [o.outputs[0].token_ids for o in ref]
    assert [len(o.outputs[0].token_ids) for o in seen] == [2, 5]


# -- end to end ----------------------------------------------------------------------------

def test_script_smoke_writes_full_json(tmp_path):
    """benchmarks/throughput.py in a subprocess: tritium + HF (+ vLLM 'not available')."""
    out = tmp_path / "tp.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *TINY, "--num-prompts", "4",
         "--input-len-range", "3", "20", "--output-len-range", "2", "9", "--threads", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "out tok/s" in proc.stdout and "tritium / hf output tok/s" in proc.stdout
    rep = json.loads(out.read_text())
    assert rep["benchmark"] == "throughput"
    cfg = rep["config"]
    assert cfg["model"] == "random:tiny" and cfg["num_prompts"] == 4 and cfg["seed"] == 0
    assert cfg["input_len_range"] == [3, 20] and cfg["resolved_dtype"] == "float32"
    env_ = rep["environment"]
    for key in ("date", "torch", "transformers", "tritium", "device_name", "torch_threads"):
        assert env_[key], key
    assert env_["torch_threads"] == 1
    wl = rep["workload"]
    res = {r["engine"]: r for r in rep["results"]}
    assert list(res) == ["tritium", "hf", "vllm"]
    for name in ("tritium", "hf"):
        r = res[name]
        assert r["num_requests"] == 4 and r["output_tokens"] == wl["output_tokens"]
        assert r["input_tokens"] == wl["input_tokens"]
        assert r["elapsed_s"] > 0
        assert r["output_tokens_per_s"] == pytest.approx(r["output_tokens"] / r["elapsed_s"])
        assert r["total_tokens_per_s"] == pytest.approx(
            (r["input_tokens"] + r["output_tokens"]) / r["elapsed_s"])
    assert res["tritium"]["mean_ttft_s"] > 0 and res["tritium"]["mean_tpot_s"] > 0
    # HF runs its one batch (of all 4) to the longest output; useful tokens are each row's own
    expected = make_workload(4, (3, 20), (2, 9), vocab_size=1024, seed=0)
    assert wl["output_tokens"] == expected.num_output_tokens
    assert res["hf"]["extra"]["generated_tokens"] == 4 * max(expected.output_lens)
    assert rep["speedup_vs"]["hf"] == pytest.approx(
        res["tritium"]["output_tokens_per_s"] / res["hf"]["output_tokens_per_s"])
    for name in ("tritium", "hf"):
        assert res[name]["cpu_time_s"] > 0
    assert rep["speedup_per_cpu_second_vs"]["hf"] == pytest.approx(
        (res["tritium"]["output_tokens"] / res["tritium"]["cpu_time_s"])
        / (res["hf"]["output_tokens"] / res["hf"]["cpu_time_s"]))
    if env_["vllm"] is None:
        assert res["vllm"]["extra"]["status"].startswith("not available")


def test_cli_bench_throughput(capsys, tmp_path):
    from tritium import cli

    out = tmp_path / "cli.json"
    rc = cli.main(["bench", "throughput", *TINY, "--num-prompts", "2", "--input-len-range", "2",
                   "4", "--output-len-range", "2", "3", "--peers", "none", "--warmup-prompts",
                   "0", "--out", str(out)])
    assert rc == 0
    assert "tritium" in capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert [r["engine"] for r in rep["results"]] == ["tritium"]
    assert cli.main(["bench", "throughput", *TINY, "--input-len-range", "5", "2"]) == 2
    assert "LO must be <= HI" in capsys.readouterr().err
