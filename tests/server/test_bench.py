"""The serving benchmark: vLLM's metric definitions pinned on hand-made results, and a live run
against the fake server (both workloads, finite and infinite rates, JSON output)."""

from __future__ import annotations

import argparse
import json
import random

import pytest

from tritium.server.args import add_bench_serve_arguments
from tritium.server.bench import (
    RequestResult,
    chat_workload,
    main,
    random_workload,
)
from tritium.server.bench_report import (
    format_report,
    markdown_table,
    per_second_peaks,
    summarize,
)


def test_metric_definitions():
    a = RequestResult(success=True, prompt_len=10, output_tokens=5, ttft=0.1, latency=0.5,
                      itl=[0.1, 0.1, 0.1, 0.1])
    b = RequestResult(success=True, prompt_len=20, output_tokens=11, ttft=0.2, latency=1.2,
                      itl=[0.1] * 10)
    one = RequestResult(success=True, prompt_len=7, output_tokens=1, ttft=0.3, latency=0.3)
    bad = RequestResult(success=False, error="HTTP 503")
    m = summarize([a, b, one, bad], duration=2.0, slos_ms={"ttft": 150.0, "tpot": 100.0},
                  percentiles=[50, 99])
    assert m["completed"] == 3 and m["failed"] == 1 and m["error_samples"] == ["HTTP 503"]
    assert m["total_input_tokens"] == 37 and m["total_output_tokens"] == 17
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(8.5)
    assert m["total_token_throughput"] == pytest.approx(27.0)
    # TPOT = (e2e - ttft) / (out - 1): 0.4/4 and 1.0/10, both 100 ms; the 1-token one is skipped
    assert m["mean_tpot_ms"] == pytest.approx(100.0)
    assert m["median_ttft_ms"] == pytest.approx(200.0)
    assert m["p99_ttft_ms"] == pytest.approx(298.0)  # numpy linear interpolation
    assert m["mean_itl_ms"] == pytest.approx(100.0)
    assert m["mean_e2el_ms"] == pytest.approx(2000.0 / 3)
    # goodput: only a (ttft 100 ms, tpot 100 ms) meets both SLOs; `one` fails on ttft
    assert m["request_goodput"] == pytest.approx(0.5)
    text = format_report(m, {"workload": "random", "num_prompts": 4, "request_rate": 1.0})
    assert "Request goodput (req/s):" in text and "P99 TTFT (ms):" in text


def test_per_second_peaks_as_vllm():
    # a: chunks at 0.5, 0.9, 1.2 s, in flight [0, 1.2]; b: chunks at 1.5, 1.6, in flight [1.4, 2.6]
    a = RequestResult(success=True, start=100.0, ttft=0.5, itl=[0.4, 0.3], latency=1.2)
    b = RequestResult(success=True, start=101.4, ttft=0.1, itl=[0.1], latency=1.2)
    peaks = per_second_peaks([a, b])
    # buckets [0,1): 2 chunks, [1,2): 3 chunks; requests in [1,2): both
    assert peaks == {"max_output_tokens_per_s": 3.0, "max_concurrent_requests": 2}
    assert per_second_peaks([]) == {"max_output_tokens_per_s": 0.0, "max_concurrent_requests": 0}


def test_workloads_are_seeded_and_sized():
    w1 = random_workload(8, 32, 16, 0.5, (1000, 2000), random.Random(3))
    w2 = random_workload(8, 32, 16, 0.5, (1000, 2000), random.Random(3))
    assert [r.body for r in w1] == [r.body for r in w2]
    for r in w1:
        assert 16 <= r.prompt_len <= 48 and len(r.body["prompt"]) == r.prompt_len
        assert 8 <= r.output_len <= 24 and r.body["ignore_eos"] is True
        assert all(1000 <= t < 2000 for t in r.body["prompt"])
    chats = chat_workload(6, 40, 20, random.Random(0))
    for c in chats:
        roles = [m["role"] for m in c.body["messages"]]
        assert roles[0] == "system" and roles[-1] == "user" and c.endpoint.endswith("chat/"
                                                                                   "completions")
        assert 1 <= c.body["max_tokens"] <= 80


def test_live_run_against_fake_server(make_fake_server, tmp_path, capsys):
    server = make_fake_server(step_delay=0.002, max_num_seqs=8)
    parser = argparse.ArgumentParser()
    add_bench_serve_arguments(parser)
    out = tmp_path / "serve.json"
    args = parser.parse_args([
        "--base-url", server.url, "--workload", "random", "--num-prompts", "12",
        "--random-input-len", "20", "--random-output-len", "6", "--random-range-ratio", "0.5",
        "--random-vocab-range", "97", "123", "--request-rate", "50", "inf",
        "--max-concurrency", "4", "--goodput", "ttft:60000", "--result-json", str(out)])
    runs = main(args)
    expected_out = sum(r.output_len for r in
                       random_workload(12, 20, 6, 0.5, (97, 123), random.Random(0)))
    assert len(runs) == 2
    for m in runs:
        assert m["completed"] == 12 and m["failed"] == 0
        assert m["total_output_tokens"] == expected_out  # ignore_eos: exactly the drawn lengths
        assert m["request_goodput"] == pytest.approx(m["request_throughput"])
        assert m["peak_concurrency"] <= 4 and 1 <= m["max_concurrent_requests"] <= 12
        assert m["mean_ttft_ms"] > 0 and m["mean_tpot_ms"] > 0
        assert sum(m["output_lens"]) == expected_out and m["errors"] == [""] * 12
        # one gap per chunk after the first; a chunk may carry several tokens when the client
        # lags a step behind (the stream then coalesces them)
        assert all(len(i) <= n - 1 for i, n in zip(m["itls"], m["output_lens"]))
    saved = json.loads(out.read_text())
    assert [r["request_rate"] for r in saved] == [50.0, "inf"]  # strict JSON, as vLLM
    # every key `vllm bench serve --save-result` writes for these metrics is there
    vllm_keys = {"date", "backend", "label", "model_id", "tokenizer_id", "num_prompts",
                 "request_rate", "burstiness", "max_concurrency", "duration", "completed",
                 "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
                 "request_goodput", "output_throughput", "total_token_throughput", "input_lens",
                 "output_lens", "ttfts", "itls", "generated_texts", "errors",
                 "max_output_tokens_per_s", "max_concurrent_requests"}
    vllm_keys |= {f"{s}_{k}_ms" for s in ("mean", "median", "std", "p50", "p90", "p99")
                  for k in ("ttft", "tpot", "itl", "e2el")}
    assert vllm_keys <= set(saved[0]), vllm_keys - set(saved[0])
    assert saved[0]["backend"] == "openai" and saved[0]["model_id"] == "fake-model"
    assert "Serving Benchmark Result" in capsys.readouterr().out
    chat = parser.parse_args(["--base-url", server.url, "--workload", "chat", "--num-prompts",
                              "6", "--chat-input-words", "20", "--chat-output-len", "8"])
    (run,) = main(chat)
    assert run["completed"] == 6 and run["total_input_tokens"] > 6 * 20
    assert run["backend"] == "openai-chat"
    table = markdown_table(saved + [run]).splitlines()
    assert len(table) == 2 + 3 and table[0].startswith("| workload | rate |")
    assert table[2].startswith("| random 12 x 20 / 6 | 50.0 | 4 | 12 / 0 |")
    assert table[4].startswith("| chat 6 x ~20 words / ~8 | inf | None | 6 / 0 |")
