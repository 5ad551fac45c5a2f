"""The real ``openai`` client against a live server running the real engine on the embedded
SmolLM2-135M (CPU): chat and completions, streaming and not, n > 1, stop, seeds, logprobs,
32 concurrent streams, a disconnect that frees KV blocks, and bad inputs.

``max_tokens`` stays small: a CPU decode step of the shared machine takes 0.1-1 s.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from server_utils import HTTP, REAL_MAX_MODEL_LEN

from tritium.server.metrics import parse_prometheus

MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(real_server):
    return openai.OpenAI(base_url=real_server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=300)


def chat_prompt_len(server, messages) -> int:
    tok = server.engine.tokenizer
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tok.encode(text, add_special_tokens=False))


def test_chat_stream_and_non_stream_agree(client, real_server):
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,
                                          temperature=0)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert full.usage.prompt_tokens == chat_prompt_len(real_server, MESSAGES)
    assert full.usage.completion_tokens <= 8
    if choice.finish_reason == "length":
        assert full.usage.completion_tokens == 8
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason


def test_completions_stream_and_non_stream_agree(client, real_server):
    prompt = "The three primary colors are"
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    assert full.usage.prompt_tokens == len(real_server.engine.tokenizer.encode(prompt))
    assert full.usage.completion_tokens == 6 or full.choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=6, temperature=0, stream=True) if c.choices)
    assert text == full.choices[0].text and text


def test_n_seed_and_stop(client):
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=1.0, n=3)
    a = client.chat.completions.create(seed=7, **kw)
    b = client.chat.completions.create(seed=7, **kw)
    c = client.chat.completions.create(seed=8, **kw)
    texts = [ch.message.content for ch in a.choices]
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert texts == [ch.message.content for ch in b.choices]  # same seed, same samples
    assert texts != [ch.message.content for ch in c.choices]
    # usage counts the prompt once and the tokens of all 3 choices
    assert a.usage.completion_tokens <= 12 and a.usage.prompt_tokens == b.usage.prompt_tokens
    if all(ch.finish_reason == "length" for ch in a.choices):
        assert a.usage.completion_tokens == 12
    # stop: cut the greedy answer at a word it contains
    greedy = client.completions.create(model=MODEL, prompt="Paris is the capital of",
                                       max_tokens=8, temperature=0).choices[0].text
    word = greedy.split()[1] if len(greedy.split()) > 1 else greedy.strip()
    cut = client.completions.create(model=MODEL, prompt="Paris is the capital of", max_tokens=8,
                                    temperature=0, stop=[word]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == greedy[: greedy.index(word)]


def test_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert entry.logprob == pytest.approx(tops[0])  # greedy picks the most likely token
        assert entry.top_logprobs[0].token == entry.token
    assert "".join(e.token for e in content) == r.choices[0].message.content
    c = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=3, temperature=0,
                                  logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert all(len(d) <= 2 for d in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and "".join(lp.tokens) == c.choices[0].text


def test_32_concurrent_streams_match_single_client(client, real_server):
    prompts = ["Name a fruit.", "Name a color.", "Name an animal.", "Count to three."]
    single = {}
    for p in prompts:
        single[p] = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=6,
            temperature=0).choices[0].message.content
    aclient = openai.AsyncOpenAI(base_url=real_server.url + "/v1", api_key="unused",
                                 max_retries=0, timeout=300)

    async def one(i):
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompts[i % 4]}], max_tokens=6,
            temperature=0, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main():
        try:
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await aclient.close()

    texts = asyncio.run(main())
    assert texts == [single[prompts[i % 4]] for i in range(32)]
    m = real_server.wait_idle()
    assert m["tritium:kv_cache_usage_perc"] == 0


def test_disconnect_frees_blocks(real_server):
    before = parse_prometheus(HTTP.get(f"{real_server.url}/metrics").text)
    key = f'tritium:request_success_total{{model_name="{MODEL}",finished_reason="abort"}}'
    body = {"model": MODEL, "prompt": "Write a long story about a dragon.", "max_tokens": 400,
            "temperature": 0, "ignore_eos": True, "stream": True}
    t0 = time.monotonic()
    with HTTP.stream("POST", f"{real_server.url}/v1/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        busy = real_server.metrics()
        assert busy["tritium:kv_cache_usage_perc"] > 0
        assert busy["tritium:num_requests_running"] == 1
    idle = real_server.wait_idle(timeout=60)
    assert idle["tritium:kv_cache_usage_perc"] == 0 and idle["tritium:num_requests_running"] == 0
    after = parse_prometheus(HTTP.get(f"{real_server.url}/metrics").text)
    assert after[key] == before[key] + 1
    assert time.monotonic() - t0 < 60  # far less than 400 CPU decode steps


def test_bad_inputs_with_real_engine(client, real_server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="word " * (REAL_MAX_MODEL_LEN + 10),
                                  max_tokens=2)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5)
    r = httpx.post(f"{real_server.url}/v1/completions", json={"prompt": [1, 2, 10**7]})
    assert r.status_code == 400
    # still serving, nothing leaked
    ok = client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, temperature=0)
    assert ok.usage.completion_tokens <= 2
    assert real_server.wait_idle()["tritium:kv_cache_usage_perc"] == 0


def test_metrics_after_traffic(real_server):
    samples = parse_prometheus(HTTP.get(f"{real_server.url}/metrics").text)
    lab = f'model_name="{MODEL}"'
    assert samples[f"tritium:generation_tokens_total{{{lab}}}"] > 0
    assert samples[f"tritium:prompt_tokens_total{{{lab}}}"] > 0
    assert samples[f"tritium:time_to_first_token_seconds_count{{{lab}}}"] > 0
    queries = samples[f"tritium:prefix_cache_queries_total{{{lab}}}"]
    hits = samples[f"tritium:prefix_cache_hits_total{{{lab}}}"]
    assert hits > 0  # the same chat prompt was sent many times
    assert samples[f"tritium:prefix_cache_hit_rate{{{lab}}}"] == pytest.approx(hits / queries)
