"""ModelRunner packing (one-token sequences first) and the padded static-buffer decode path
that CUDA graphs replay (engine/cuda_graphs.py), on CPU.

Capture and replay need a GPU (benchmarks/check_engine_gpu.py checks them); everything around
them runs here eagerly through ``DecodeGraphRunner(use_cuda_graphs=False)``: padding to a
captured size, the copies into static buffers, padding rows in the scratch block, the fixed
metadata (max_seqlen_k = max_model_len), and slicing the output. It must give the unpadded
path's results, and padding rows must touch no sequence's KV.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from factories import make_request

from tritium.engine import model_runner
from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from tritium.engine.cuda_graphs import DecodeGraphRunner, capture_sizes
from tritium.engine.llm_engine import LLMEngine
from tritium.engine.model_runner import ModelRunner, pack_step
from tritium.engine.sampling_params import SamplingParams
from tritium.engine.scheduler_output import ScheduledSequence, SchedulerOutput
from tritium.models import load_model


def test_capture_sizes():
    assert capture_sizes(1) == [1]
    assert capture_sizes(5) == [1, 2, 4, 5]
    assert capture_sizes(32) == [1, 2, 4, 8, 16, 24, 32]
    assert capture_sizes(30) == [1, 2, 4, 8, 16, 24, 30]
    with pytest.raises(ValueError, match="max_size"):
        capture_sizes(0)


def test_config_flags():
    assert EngineConfig().enforce_eager is False
    with pytest.raises(TypeError, match="enforce_eager"):
        EngineConfig(enforce_eager="yes")
    with pytest.raises(ValueError, match="max_cudagraph_capture_size"):
        EngineConfig(max_cudagraph_capture_size=0)


def _entry(prompt_len, computed, new, table, seq_len_tokens=None):
    (seq,) = make_request(f"r{prompt_len}-{computed}", prompt_len)
    return ScheduledSequence(seq=seq, num_computed_tokens=computed, num_new_tokens=new,
                             block_table=table, sample=computed + new == prompt_len)


def _out(entries):
    return SchedulerOutput(scheduled=entries, num_batched_tokens=sum(e.num_new_tokens
                                                                     for e in entries),
                           admitted_seq_ids=[], preempted_seq_ids=[], finished_seq_ids=[])


def test_pack_step_puts_one_token_sequences_first():
    bs = 4
    chunk = _entry(10, 2, 5, [7, 3])  # prompt chunk: positions 2..6, doesn't sample
    dec_a = _entry(6, 5, 1, [1, 9])  # last prompt token (e.g. after prefix hits)
    whole = _entry(3, 0, 3, [4])
    dec_b = _entry(9, 8, 1, [2, 5, 6])
    out = _out([chunk, dec_a, whole, dec_b])
    inp = pack_step(out, bs)
    assert inp.num_decodes == 2 and not inp.decode_only
    # packed: dec_a, dec_b, chunk, whole
    assert inp.seq_lens.tolist() == [6, 9, 7, 3]
    assert inp.cu_seqlens_q.tolist() == [0, 1, 2, 7, 10]
    assert inp.row_ends == [7, 1, 10, 2]  # in scheduler order
    assert inp.positions.tolist() == [5, 8, 2, 3, 4, 5, 6, 0, 1, 2]
    assert inp.input_ids.tolist() == [6, 9, 3, 4, 5, 6, 7, 1, 2, 3]  # factory tokens 1..n
    assert inp.slot_mapping.tolist() == [9 * 4 + 1, 6 * 4 + 0, 7 * 4 + 2, 7 * 4 + 3,
                                         3 * 4 + 0, 3 * 4 + 1, 3 * 4 + 2, 16, 17, 18]
    assert inp.block_tables.tolist() == [[1, 9, 0], [2, 5, 6], [7, 3, 0], [4, 0, 0]]
    meta = inp.metadata(torch.device("cpu"))
    assert meta.num_decodes == 2 and meta.max_seqlen_q == 5 and meta.max_seqlen_k == 9
    only = pack_step(_out([dec_b, dec_a]), bs)
    assert only.decode_only and only.row_ends == [1, 2]
    assert only.metadata(torch.device("cpu")).decode_only


# -- the padded static-buffer path on a random tiny model ------------------------------------


@functools.lru_cache(maxsize=2)
def _tiny_runner(max_model_len: int) -> ModelRunner:
    return ModelRunner(EngineConfig(
        model="random:tiny", device="cpu", dtype="float32",
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64,
                                  max_model_len=max_model_len),
        cache=CacheConfig(block_size=4, num_kv_blocks=24)))


def _decode_step(runner: ModelRunner, lens: list[int], seed: int) -> SchedulerOutput:
    """Decode rows of sequences with ``lens`` tokens (the last one new) on disjoint blocks,
    their cached K/V random; every other slot (the scratch block too) is NaN."""
    g = torch.Generator().manual_seed(seed)
    for kc, vc in runner.kv_caches:
        kc.fill_(float("nan"))
        vc.fill_(float("nan"))
    entries, next_block, bs = [], 0, runner.block_size
    for i, L in enumerate(lens):
        nb = -(-L // bs)
        table = list(range(next_block, next_block + nb))[::-1]  # scattered, not ascending
        next_block += nb
        (seq,) = make_request(f"s{i}", [int(t) for t in torch.randint(1, 1000, (L,), generator=g)])
        entries.append(ScheduledSequence(seq=seq, num_computed_tokens=L - 1, num_new_tokens=1,
                                         block_table=table, sample=True))
        slots = [table[p // bs] * bs + p % bs for p in range(L - 1)]
        for kc, vc in runner.kv_caches:
            flat_k, flat_v = kc.view(-1, *kc.shape[2:]), vc.view(-1, *vc.shape[2:])
            flat_k[slots] = torch.randn(len(slots), *kc.shape[2:], generator=g)
            flat_v[slots] = torch.randn(len(slots), *vc.shape[2:], generator=g)
    assert next_block <= runner.num_kv_blocks
    return _out(entries)


def _run_both(runner: ModelRunner, out: SchedulerOutput, graphs: DecodeGraphRunner):
    """(hidden, caches) of the eager path and of the padded path, from the same start."""
    start = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    inp = pack_step(out, runner.block_size)
    results = []
    for g in (None, graphs):
        for (k, v), (k0, v0) in zip(runner.kv_caches, start):
            k.copy_(k0)
            v.copy_(v0)
        runner.decode_graphs = g
        with torch.inference_mode():
            hidden = runner._forward(inp).clone()
        results.append((hidden, [(k.clone(), v.clone()) for k, v in runner.kv_caches]))
    runner.decode_graphs = None
    return results, start


def _check_padded_equals_eager(runner, lens, seed, tol):
    graphs = runner.make_decode_graphs(8, use_cuda_graphs=False)
    calls = []
    real = graphs.forward
    graphs.forward = lambda ids, *a: calls.append(ids.shape[0]) or real(ids, *a)
    out = _decode_step(runner, lens, seed)
    (eager, eager_kv), (padded, padded_kv) = _run_both(runner, out, graphs)[0]
    assert calls == [graphs.size_for(len(lens))] and calls[0] > len(lens), "no padding ran"
    assert padded.shape == eager.shape and torch.isfinite(padded).all()
    torch.testing.assert_close(padded, eager, atol=tol, rtol=tol)
    s = runner.scratch_block
    for (ke, ve), (kp, vp) in zip(eager_kv, padded_kv):
        # every sequence's block: the same K/V (NaN where nothing was written, equal_nan)
        torch.testing.assert_close(kp[:s], ke[:s], atol=tol, rtol=tol, equal_nan=True)
        torch.testing.assert_close(vp[:s], ve[:s], atol=tol, rtol=tol, equal_nan=True)
        # the padding rows wrote (only) slot 0 of the scratch block; eager never touches it
        assert torch.isfinite(kp[s, 0]).all() and ke[s].isnan().all()
        assert kp[s, 1:].isnan().all()


def test_padded_decode_equals_eager_and_keeps_every_sequence_kv():
    runner = _tiny_runner(64)
    assert runner.decode_graphs is None  # CPU: always eager
    # 3 sequences pad to 4 (one padding row), 5 pad to 8; lengths 1 (no cached key), odd, full
    # blocks (8 = 2 x 4)
    _check_padded_equals_eager(runner, [9, 1, 8], seed=0, tol=1e-5)
    _check_padded_equals_eager(runner, [3, 13, 1, 8, 6], seed=1, tol=1e-5)


def test_padded_decode_under_the_interpreter(interpret):
    """The same through the Triton kernels: static metadata with max_seqlen_k = max_model_len
    = 512 gives a lone sequence 2 decode splits (>= 256 keys each), the second one empty."""
    from tritium.kernels.paged_attention import choose_num_splits

    runner = _tiny_runner(512)
    assert choose_num_splits(1, 2, 512, 4, 16) == 2
    graphs = runner.make_decode_graphs(8, use_cuda_graphs=False)
    out = _decode_step(runner, [11], seed=2)
    (eager, _), (padded, padded_kv) = _run_both(runner, out, graphs)[0]
    torch.testing.assert_close(padded, eager, atol=1e-5, rtol=1e-5)  # fp32, split order
    _check_padded_equals_eager(runner, [5, 1, 7], seed=3, tol=1e-5)


# -- the engine: greedy tokens with the padded path equal the eager ones ----------------------


@functools.lru_cache(maxsize=1)
def _smollm():
    return load_model(None, device="cpu", dtype=torch.float32)


def _counting(sizes, run, ids, *args, **kwargs):
    sizes.append(len(ids))
    return run(ids, *args, **kwargs)


def test_engine_greedy_tokens_identical_with_padded_decode(monkeypatch):
    monkeypatch.setattr(model_runner, "load_model", lambda path, device, dtype, **kw: _smollm())
    tok = _smollm()[1]
    texts = ["The capital of France is", "Count: one, two, three,", "def fibonacci(n):",
             "The opposite of hot is", "Once upon a time, in a small village by the river"]
    prompts = [tok.encode(t) for t in texts]
    # different lengths so the batch shrinks 5 -> 1 through padded sizes (5 -> 8, 3 -> 4); a
    # 24-token budget chunks the prompts, so the first steps mix prefill chunks and decodes
    params = [SamplingParams(temperature=0.0, max_tokens=3 + 2 * i, ignore_eos=True)
              for i in range(len(prompts))]
    config = EngineConfig(device="cpu", dtype="float32", scheduler=SchedulerConfig(
        max_num_seqs=8, max_num_batched_tokens=24, max_model_len=64),
        cache=CacheConfig(block_size=16, num_kv_blocks=32))
    results, sizes = [], []
    for padded in (False, True):
        engine = LLMEngine(config)
        if padded:
            graphs = engine.runner.make_decode_graphs(8, use_cuda_graphs=False)
            graphs.run = functools.partial(_counting, sizes, graphs.run)
            engine.runner.decode_graphs = graphs
        for i, (p, sp) in enumerate(zip(prompts, params)):
            engine.add_request(str(i), p, sp)
        final = {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.finished:
                    final[o.request_id] = o.outputs[0].token_ids
            engine.scheduler.check_invariants()
        results.append([final[str(i)] for i in range(len(prompts))])
    assert results[1] == results[0]
    assert {5, 3} <= set(sizes), sizes  # padded batches ran
    assert [len(t) for t in results[0]] == [3 + 2 * i for i in range(len(prompts))]
    assert np.all(np.diff(sizes) <= 0)  # decode-only steps once prompts are in


def test_check_engine_gpu_script_smoke(tmp_path):
    """benchmarks/check_engine_gpu.py --smoke: its graph-vs-eager and replay checks on the CPU
    (the padded path run eagerly), so the GPU run does not fail on a script bug."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "check_engine_gpu.py"
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_INTERPRET": "0"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["ok"] and row["graph_steps"] > 0 and row["graph_vs_eager_identical"] == 8
    assert [r["size"] for r in row["replay"]] == [1, 4, 8]
    assert all(r["bitwise_equal_padded_eager"] for r in row["replay"])
