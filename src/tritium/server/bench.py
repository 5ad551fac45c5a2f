"""Online serving benchmark for any OpenAI-compatible server (``tritium bench serve``).

Metrics are defined as ``vllm bench serve`` defines them, so figures are comparable:

- TTFT: request sent -> first streamed chunk that carries content (a content-less chunk, such
  as a chat role announcement sent before any token, does not count; tritium sends its role
  chunk together with the first token, as vLLM's server does, so the two readings agree).
- TPOT (per request): ``(e2e latency - TTFT) / (output tokens - 1)``, for requests with > 1 token.
- ITL: gaps between successive content chunks (all requests pooled).
- E2EL: request sent -> last chunk.
- request throughput = completed / duration; output throughput = output tokens / duration;
  total token throughput = (input + output tokens) / duration.
- goodput = requests/s meeting every given SLO (``--goodput ttft:MS tpot:MS e2el:MS``).

Arrivals: ``--request-rate`` requests/s drawn as a gamma process (``--burstiness`` 1 = Poisson,
as vLLM), ``inf`` = all at once; ``--max-concurrency`` caps requests in flight. Workloads:
``random`` (token-id prompts of chosen lengths to /v1/completions, ``ignore_eos`` so outputs have
exactly the drawn length) and ``chat`` (synthetic multi-turn conversations to /v1/chat/completions,
natural stops). Output tokens are the server's ``usage.completion_tokens``
(``stream_options.include_usage``); input tokens its ``usage.prompt_tokens``.

``--result-json`` writes a list with one record per request rate, each in the layout of
``vllm bench serve --save-result`` (same keys: ``request_throughput``, ``mean_ttft_ms``,
``p99_itl_ms``, ``ttfts``, ...; see :func:`result_record`), so vLLM's result readers take it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tritium.server.bench_report import format_report, summarize

_WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at "
          "which but have an they you were her she there been one all we their has would when "
          "what if can more will so about no some into time could them other than then now may "
          "only its over also new after first two any these most people like just way made "
          "system model memory cache server token request batch kernel latency").split()


@dataclass
class BenchRequest:
    """One request of the workload: the JSON body (without model/stream fields) and lengths."""

    endpoint: str
    body: dict[str, Any]
    prompt_len: int | None  # known for token-id prompts; else from the server's usage
    output_len: int


@dataclass
class RequestResult:
    success: bool = False
    error: str = ""
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start: float = 0.0
    generated_text: str = ""


# ------------------------------------------------------------------------------ workloads
def random_workload(n: int, input_len: int, output_len: int, range_ratio: float,
                    vocab: tuple[int, int], rng: random.Random) -> list[BenchRequest]:
    """vLLM's 'random' dataset: lengths uniform in [len*(1-r), len*(1+r)], random token ids."""
    out = []
    for _ in range(n):
        lo_in = max(1, int(input_len * (1 - range_ratio)))
        n_in = rng.randint(lo_in, max(lo_in, int(input_len * (1 + range_ratio))))
        lo_out = max(1, int(output_len * (1 - range_ratio)))
        n_out = rng.randint(lo_out, max(lo_out, int(output_len * (1 + range_ratio))))
        ids = [rng.randrange(*vocab) for _ in range(n_in)]
        out.append(BenchRequest("/v1/completions",
                                {"prompt": ids, "max_tokens": n_out, "ignore_eos": True,
                                 "temperature": 0.0}, n_in, n_out))
    return out


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, words))).capitalize() + "."


def chat_workload(n: int, input_words: int, output_len: int, rng: random.Random,
                  ignore_eos: bool = False) -> list[BenchRequest]:
    """Chat-like conversations: a system prompt, 0-2 earlier exchanges, a user question.

    Turn lengths are log-normal around ``input_words`` words in total (long-tailed, as in
    ShareGPT); ``max_tokens`` is log-normal around ``output_len``, capped at 4x.
    """
    out = []
    for _ in range(n):
        total = max(4, int(rng.lognormvariate(math.log(input_words), 0.5)))
        turns = rng.randint(0, 2)
        msgs = [{"role": "system", "content": _sentence(rng, 8)}]
        share = max(2, total // (2 * turns + 1))
        for _ in range(turns):
            msgs.append({"role": "user", "content": _sentence(rng, share)})
            msgs.append({"role": "assistant", "content": _sentence(rng, share)})
        msgs.append({"role": "user", "content": _sentence(rng, share) + " Why?"})
        n_out = min(4 * output_len, max(1, int(rng.lognormvariate(math.log(output_len), 0.5))))
        body = {"messages": msgs, "max_tokens": n_out, "temperature": 0.7,
                "seed": rng.randrange(2**31)}
        if ignore_eos:
            body["ignore_eos"] = True
        out.append(BenchRequest("/v1/chat/completions", body, None, n_out))
    return out


# ------------------------------------------------------------------------------- client
async def send_request(client: httpx.AsyncClient, base_url: str, model: str,
                       req: BenchRequest, headers: dict[str, str]) -> RequestResult:
    """Stream one request; time every content chunk."""
    res = RequestResult(prompt_len=req.prompt_len or 0)
    body = {**req.body, "model": model, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks = 0
    res.start = t0 = time.perf_counter()
    last = t0
    try:
        async with client.stream("POST", base_url + req.endpoint, json=body,
                                 headers=headers) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread())[:300]!r}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = str(chunk["error"])
                    return res
                if chunk.get("usage"):
                    res.output_tokens = chunk["usage"]["completion_tokens"]
                    res.prompt_len = chunk["usage"]["prompt_tokens"] or res.prompt_len
                for choice in chunk.get("choices") or []:
                    text = choice.get("text")
                    if text is None:
                        text = (choice.get("delta") or {}).get("content")
                    if text:
                        now = time.perf_counter()
                        if chunks == 0:
                            res.ttft = now - t0
                        else:
                            res.itl.append(now - last)
                        last = now
                        chunks += 1
                        res.generated_text += text
        res.latency = time.perf_counter() - t0
        if res.output_tokens == 0:  # server without usage: count chunks (a lower bound)
            res.output_tokens = chunks
        res.success = chunks > 0
        if not res.success:
            res.error = "no content received"
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


async def _arrivals(requests: list[BenchRequest], rate: float, burstiness: float,
                    rng: random.Random):
    """Yield requests on a gamma process of mean ``rate``/s (Poisson when burstiness == 1)."""
    for i, req in enumerate(requests):
        yield req
        if i + 1 < len(requests) and math.isfinite(rate):
            await asyncio.sleep(rng.gammavariate(burstiness, 1.0 / (rate * burstiness)))


async def run_benchmark(base_url: str, model: str, requests: list[BenchRequest], *,
                        rate: float = math.inf, burstiness: float = 1.0,
                        max_concurrency: int | None = None, api_key: str | None = None,
                        seed: int = 0, timeout: float = 600.0) -> dict[str, Any]:
    """Send ``requests`` on the arrival process; returns raw results and the wall duration."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    in_flight = peak = 0
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        warm = await send_request(client, base_url, model, requests[0], headers)
        if not warm.success:
            raise RuntimeError(f"the warm-up request failed: {warm.error}")

        async def one(req: BenchRequest) -> RequestResult:
            nonlocal in_flight, peak
            if sem is not None:
                await sem.acquire()
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await send_request(client, base_url, model, req, headers)
            finally:
                in_flight -= 1
                if sem is not None:
                    sem.release()

        tasks = []
        t0 = time.perf_counter()
        async for req in _arrivals(requests, rate, burstiness, random.Random(seed)):
            tasks.append(asyncio.create_task(one(req)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    return {"results": results, "duration": duration, "peak_concurrency": peak}


async def resolve_model(base_url: str, model: str | None, api_key: str | None) -> str:
    if model:
        return model
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(base_url + "/v1/models", headers=headers)
        r.raise_for_status()
        return r.json()["data"][0]["id"]


def _parse_slos(items: list[str]) -> dict[str, float]:
    slos = {}
    for item in items:
        name, _, ms = item.partition(":")
        if name not in ("ttft", "tpot", "e2el") or not ms:
            raise ValueError(f"--goodput takes ttft:MS, tpot:MS or e2el:MS, got {item!r}")
        slos[name] = float(ms)
    return slos


def build_workload(args: argparse.Namespace) -> list[BenchRequest]:
    rng = random.Random(args.seed)
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if args.workload == "random":
        return random_workload(args.num_prompts, args.random_input_len, args.random_output_len,
                               args.random_range_ratio, tuple(args.random_vocab_range), rng)
    return chat_workload(args.num_prompts, args.chat_input_words, args.chat_output_len, rng,
                         args.ignore_eos)


def result_record(args: argparse.Namespace, model: str, rate: float, raw: dict[str, Any],
                  metrics: dict[str, Any]) -> dict[str, Any]:
    """One run as ``vllm bench serve --save-result`` writes it (same keys and meanings: setup,
    traffic, the metrics, then per-request lists), plus tritium's extras: per-request ``e2els``
    (s), ``peak_concurrency`` (requests in flight at once, as the client saw), ``slos_ms``,
    ``percentiles``, ``error_samples`` and ``config`` (every flag)."""
    results: list[RequestResult] = raw["results"]
    inf_safe = rate if math.isfinite(rate) else "inf"  # strict JSON, as vLLM
    config = {k: v for k, v in vars(args).items() if k not in ("func", "api_key")}
    config.update(request_rate=inf_safe, model=model)
    return {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if args.workload == "chat" else "openai",
        "label": args.label,
        "model_id": model,
        "tokenizer_id": None,  # the server tokenizes; lengths are its usage counts
        "num_prompts": args.num_prompts,
        "request_rate": inf_safe,
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        **metrics,
        "input_lens": [r.prompt_len for r in results],
        "output_lens": [r.output_tokens if r.success else 0 for r in results],
        "ttfts": [r.ttft for r in results],
        "itls": [r.itl for r in results],
        "generated_texts": [r.generated_text for r in results],
        "errors": [r.error for r in results],
        "e2els": [r.latency for r in results],
        "peak_concurrency": raw["peak_concurrency"],
        "config": config,
    }


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run one benchmark per request rate; print a table each; write JSON if asked.

    Returns one record per rate (:func:`result_record`); ``--result-json`` gets their list.
    """
    slos = _parse_slos(args.goodput)
    percentiles = [float(p) for p in args.percentiles.split(",") if p]
    base = args.base_url.rstrip("/")
    model = asyncio.run(resolve_model(base, args.model, args.api_key))
    requests = build_workload(args)
    runs = []
    for rate in args.request_rate:
        raw = asyncio.run(run_benchmark(base, model, requests, rate=rate,
                                        burstiness=args.burstiness,
                                        max_concurrency=args.max_concurrency,
                                        api_key=args.api_key, seed=args.seed))
        metrics = summarize(raw["results"], raw["duration"], slos, percentiles)
        record = result_record(args, model, rate, raw, metrics)
        print(format_report(record, record["config"]))
        runs.append(record)
    if args.result_json:
        with open(args.result_json, "w") as f:
            json.dump(runs, f, indent=1, default=str)
    return runs
