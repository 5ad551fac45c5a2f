"""GPU check of the whole engine path, CUDA graphs included (not a test: needs CUDA).

``LLMEngine`` on CUDA (Triton paged prefill/decode, fused RoPE + KV write, RMSNorm, SwiGLU,
chunked prefill, mixed prefill/decode steps, decode steps replayed from CUDA graphs) generates
greedily from random-weight models. Three checks per case:

1. each generated token is judged by the plain-PyTorch fp32 reference forward on the CPU over
   the same weights (teacher forcing). Random weights give flat logits where bf16 rounding can
   flip an argmax, so the check is that each chosen token is *near*-optimal under fp32: the gap
   between the best fp32 logit and the chosen token's, in units of that position's logit std;
2. the same requests again on the same engine with the graphs off (the eager path, as
   ``enforce_eager=True``): the tokens should be identical. Padding a batch to a captured size
   changes the matmuls' M (cuBLAS may pick another kernel) and the decode split count, so a
   bf16 near-tie may flip; each divergence is reported with both tokens' fp32 gaps at the first
   differing position (both < 0.5 std = a rounding tie, explained);
3. a decode batch replayed from its graph against the same padded static buffers run eagerly
   (bit-identical expected: same kernels, same shapes) and against the unpadded eager forward;
4. the same requests with async scheduling (step N+1 launched before step N's tokens are read,
   its placeholder inputs filled on the device): the batches are the same as in the first run,
   so the tokens should be identical; divergences are judged as in 2.

Prints a table; writes JSON to --out. ``--smoke`` runs one tiny case on the CPU with the graphs'
padded static-buffer path run eagerly (what tests exercise; no capture).

    python benchmarks/check_engine_gpu.py --out engine_check.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time

import numpy as np
import torch

from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from tritium.engine.llm_engine import LLMEngine
from tritium.engine.sampling_params import SamplingParams
from tritium.ops.paged_attention import AttentionMetadata

PROMPT_LENS = [1, 17, 113, 300, 1000, 64, 5, 777]
NEW_TOKENS = 16
GAP_OK = 0.5  # fp32 logit gap, in logit std units, below which a pick is a rounding tie


def _generate(engine: LLMEngine, prompts: list[list[int]], tag: str) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"{tag}{i}", p, params)
    final = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out.outputs[0].token_ids
    return [final[f"{tag}{i}"] for i in range(len(prompts))]


def _gaps(ref, prompt: list[int], gen: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 reference: per generated position, (gap of the chosen token in std, argmax)."""
    logits = ref(torch.tensor([prompt + gen[:-1]]))[0, len(prompt) - 1:].float()
    chosen = logits.gather(1, torch.tensor(gen)[:, None])[:, 0]
    return (logits.max(-1).values - chosen) / logits.std(-1), logits.argmax(-1)


def _divergence(ref, prompt, a: list[int], b: list[int]) -> dict:
    """First position where a and b differ, with both tokens' fp32 gaps there."""
    j = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    logits = ref(torch.tensor([prompt + a[:j]]))[0, -1].float()
    std, best = logits.std(), logits.max()
    gap_a, gap_b = ((best - logits[a[j]]) / std).item(), ((best - logits[b[j]]) / std).item()
    return dict(position=j, graph_token=a[j], eager_token=b[j], graph_gap=gap_a,
                eager_gap=gap_b, explained=max(gap_a, gap_b) < GAP_OK)


@torch.inference_mode()
def replay_check(engine: LLMEngine, batches=(1, 3, 8), seed: int = 0) -> list[dict]:
    """Decode batches of random sequences (fresh blocks, any K/V they hold) through the graph,
    the same static buffers eagerly, and the unpadded eager forward."""
    runner, graphs = engine.runner, engine.runner.decode_graphs
    rng = np.random.default_rng(seed)
    bs, dev, rows = runner.block_size, runner.device, []
    for n in batches:
        size = graphs.size_for(n)
        if size is None:
            continue
        lens = rng.integers(1, min(600, runner.max_model_len), n).astype(np.int32)
        nblk = -(-lens // bs)
        tables = np.zeros((n, nblk.max()), np.int32)
        first = np.concatenate([[0], np.cumsum(nblk)[:-1]])
        for i in range(n):
            tables[i, : nblk[i]] = np.arange(first[i], first[i] + nblk[i])
        pos = (lens - 1).astype(np.int64)
        slots = tables[np.arange(n), pos // bs].astype(np.int64) * bs + pos % bs
        ids = rng.integers(0, runner.vocab_size, n).astype(np.int64)
        replay = graphs.run(ids, pos, slots, lens, tables).clone()
        padded = graphs._forward(size)[:n].clone()  # the same static buffers, eagerly
        meta = AttentionMetadata(
            slot_mapping=torch.from_numpy(slots).to(dev),
            block_tables=torch.from_numpy(tables).to(dev),
            seq_lens=torch.from_numpy(lens).to(dev),
            cu_seqlens_q=torch.arange(n + 1, dtype=torch.int32, device=dev),
            max_seqlen_q=1, max_seqlen_k=int(lens.max()), decode_only=True)
        unpadded = runner.model.forward_paged(torch.from_numpy(ids).to(dev),
                                              torch.from_numpy(pos).to(dev),
                                              runner.kv_caches, meta)
        diff = (replay.float() - unpadded.float()).abs().max().item()
        rows.append(dict(batch=n, size=size, bitwise_equal_padded_eager=torch.equal(replay, padded),
                         max_abs_diff_unpadded=diff,
                         rel_diff_unpadded=diff / unpadded.float().abs().max().item()))
    return rows


def run_case(preset: str, dtype: str, budget: int, device: str = "cuda",
             smoke: bool = False) -> dict:
    engine = LLMEngine(EngineConfig(
        model=f"random:{preset}", device=device, dtype=dtype, skip_tokenizer_init=True,
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget,
                                  max_model_len=2048),
        # no prefix caching: the eager rerun must prefill exactly as the first run did
        cache=CacheConfig(num_kv_blocks=1024, block_size=16, enable_prefix_caching=False),
    ))
    runner = engine.runner
    if smoke:  # CPU: the graphs' padded static-buffer path, run eagerly
        runner.decode_graphs = runner.make_decode_graphs(8, use_cuda_graphs=False)
    graphs = runner.decode_graphs
    if graphs is None:
        raise RuntimeError("no decode CUDA graphs were captured (enforce_eager? not CUDA?)")
    graph_steps = []
    real_run = graphs.run
    graphs.run = lambda ids, *a, **kw: graph_steps.append(len(ids)) or real_run(ids, *a, **kw)
    rng = random.Random(0)
    vocab = engine.model_config.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(n)] for n in PROMPT_LENS]
    t0 = time.perf_counter()
    with_graphs = _generate(engine, prompts, "g")
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    graphs.run = real_run
    engine.async_scheduling = True
    overlapped = _generate(engine, prompts, "a")
    engine.async_scheduling = False
    replay = replay_check(engine)
    runner.decode_graphs = None  # the eager path, as enforce_eager=True
    eager = _generate(engine, prompts, "e")
    runner.decode_graphs = graphs
    # fp32 reference on the CPU with the very same weights (reference path: no Triton)
    ref = copy.deepcopy(runner.model).to(device="cpu", dtype=torch.float32).eval()
    gaps, exact, divergences = [], 0, []
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            gap, argmax = _gaps(ref, p, with_graphs[i])
            gaps.append(gap.max().item())
            exact += int((argmax == torch.tensor(with_graphs[i])).sum())
            if eager[i] != with_graphs[i]:
                divergences.append(dict(prompt=i, **_divergence(ref, p, with_graphs[i], eager[i])))
            if overlapped[i] != with_graphs[i]:
                divergences.append(dict(prompt=i, run="async", **_divergence(
                    ref, p, with_graphs[i], overlapped[i])))
    total = len(prompts) * NEW_TOKENS
    same = sum(a == b for a, b in zip(with_graphs, eager))
    same_async = sum(a == b for a, b in zip(with_graphs, overlapped))
    ok = (max(gaps) < GAP_OK and bool(graph_steps) and all(d["explained"] for d in divergences)
          and all(r["bitwise_equal_padded_eager"] for r in replay))
    return dict(preset=preset, dtype=dtype, token_budget=budget, elapsed_s=elapsed,
                max_gap_in_std=max(gaps), exact_argmax=exact, tokens=total,
                graph_steps=len(graph_steps), graph_batch_sizes=sorted(set(graph_steps)),
                capture_s=graphs.capture_seconds, capture_mib=(graphs.capture_bytes or 0) / 2**20,
                graph_vs_eager_identical=same, async_vs_sync_identical=same_async,
                sequences=len(prompts), divergences=divergences,
                replay=replay, ok=ok)


CASES = [("smollm2-135m", "bfloat16", 8192),
         ("smollm2-135m", "bfloat16", 97),  # chunked, mixed steps
         ("smollm2-135m", "float16", 256),
         ("llama3-1b", "bfloat16", 512)]


def _print(rows: list[dict]) -> None:
    print(f"{'preset':14} {'dtype':9} {'budget':>6} {'exact':>9} {'max gap/std':>11} "
          f"{'graph steps':>11} {'same as eager':>13} {'same as async':>13} "
          f"{'replay==eager':>13}  ok")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:14} {r['dtype']:9} {r['token_budget']:>6}  ERROR {r['error']}")
            continue
        replay = all(x["bitwise_equal_padded_eager"] for x in r["replay"])
        print(f"{r['preset']:14} {r['dtype']:9} {r['token_budget']:>6} "
              f"{r['exact_argmax']:>4}/{r['tokens']:<4} {r['max_gap_in_std']:>11.3f} "
              f"{r['graph_steps']:>11} {r['graph_vs_eager_identical']:>6}/{r['sequences']:<6} "
              f"{r['async_vs_sync_identical']:>6}/{r['sequences']:<6} {str(replay):>13}  {r['ok']}")
        for d in r["divergences"]:
            print(f"    prompt {d['prompt']} diverges at token {d['position']}: graph "
                  f"{d['graph_token']} (gap {d['graph_gap']:.3f}) vs {d.get('run', 'eager')} "
                  f"{d['eager_token']} "
                  f"(gap {d['eager_gap']:.3f}) -> {'tie' if d['explained'] else 'NOT a tie'}")
        for x in r["replay"]:
            print(f"    replay batch {x['batch']} (size {x['size']}): bitwise = padded eager "
                  f"{x['bitwise_equal_padded_eager']}, vs unpadded max |diff| "
                  f"{x['max_abs_diff_unpadded']:.3g} (rel {x['rel_diff_unpadded']:.2g})")
        if r["capture_s"] is not None:
            print(f"    capture: {r['capture_s']:.2f} s, {r['capture_mib']:.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="one tiny case on the CPU, graphs' padded path run eagerly (no capture)")
    args = ap.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "0"  # CPU reference path
        cases, device = [("tiny", "float32", 97)], "cpu"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
        if not torch.cuda.is_available():
            print("check_engine_gpu: needs CUDA (or --smoke)", file=sys.stderr)
            return 2
        cases, device = CASES, "cuda"
    rows = []
    for preset, dtype, budget in cases:
        try:
            rows.append(run_case(preset, dtype, budget, device, smoke=args.smoke))
        except Exception as e:  # record and go on: one failing case must not hide the others
            rows.append(dict(preset=preset, dtype=dtype, token_budget=budget, ok=False,
                             error=f"{type(e).__name__}: {e}"))
    _print(rows)
    if args.out:
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        with open(args.out, "w") as f:
            json.dump(dict(device=name, torch=torch.__version__,
                           date=time.strftime("%Y-%m-%d"), rows=rows), f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
