"""Scheduler: one token budget per step, chunked prefill, FCFS, preemption by recompute, stops,
n > 1 siblings, aborts; a randomized workload checked against a per-request reference."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from factories import (
    EOS,
    FakeModel,
    check_step,
    make_params,
    make_request,
    make_scheduler,
    next_token,
    reference_generate,
    run_to_completion,
)

from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from tritium.engine.scheduler import Scheduler
from tritium.engine.sequence import SequenceStatus, create_sequences


def step(sched: Scheduler, model: FakeModel, tokens=None):
    out = sched.schedule()
    check_step(sched, out)
    sampled = model.step(out) if tokens is None else tokens
    updated = sched.postprocess(out, sampled)
    sched.check_invariants()
    return out, updated


def expect_reference(sched: Scheduler, seqs, **params_overrides):
    for seq in seqs:
        ref, reason, stop_reason = reference_generate(
            seq.prompt_token_ids, seq.sampling_params, seq.seed, sched.max_model_len)
        assert seq.output_token_ids == ref, seq
        assert (seq.finish_reason, seq.stop_reason) == (reason, stop_reason)


def assert_no_leaks(sched: Scheduler):
    bm = sched.block_manager
    assert not sched.running and not sched.waiting and not sched.requests
    assert bm.num_free_blocks == bm.num_blocks and not bm._holders
    assert all(b.ref_count == 0 for b in bm.blocks)
    bm.check_invariants()


# -- configuration and admission ---------------------------------------------------------------


def test_config_validation():
    with pytest.raises(ValueError, match="block_size"):
        CacheConfig(block_size=0)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        CacheConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        CacheConfig(kv_cache_dtype="int3")
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=32)
    with pytest.raises(ValueError, match="max_model_len"):
        SchedulerConfig(max_model_len=0)
    with pytest.raises(ValueError, match="dtype"):
        EngineConfig(dtype="float8")
    assert EngineConfig().cache.block_size == 16


def test_scheduler_needs_resolved_config_and_room_for_one_sequence():
    with pytest.raises(ValueError, match="max_model_len must be resolved"):
        Scheduler(SchedulerConfig(), CacheConfig(num_kv_blocks=10))
    with pytest.raises(ValueError, match="num_kv_blocks must be resolved"):
        Scheduler(SchedulerConfig(max_model_len=64), CacheConfig())
    with pytest.raises(ValueError, match="fewer than max_model_len=65"):
        make_scheduler(num_blocks=16, block_size=4, max_model_len=65)


def test_add_rejects_requests_that_can_never_run():
    sched = make_scheduler(max_model_len=64)
    with pytest.raises(ValueError, match="prompt has 64 tokens but max_model_len is 64"):
        sched.add(make_request("long", 64))
    sched.add(make_request("ok", 63))
    with pytest.raises(ValueError, match="already in the scheduler"):
        sched.add(make_request("ok", 5))
    with pytest.raises(ValueError, match="all n=2 siblings"):
        sched.add(make_request("half", 5, n=2)[:1])
    with pytest.raises(ValueError, match="at least one token"):
        make_request("empty", [])
    assert list(sched.requests) == ["ok"]


def test_sequences_of_a_request():
    import numpy as np

    sibs = create_sequences("r", np.array([5, 6, 7]), make_params(n=3, seed=10))
    assert [s.index for s in sibs] == [0, 1, 2] and [s.seed for s in sibs] == [10, 11, 12]
    assert sibs[0].prompt_token_ids == [5, 6, 7] and type(sibs[0].token_ids[0]) is int
    assert len({s.seq_id for s in sibs}) == 3
    unseeded = create_sequences("u", [1], make_params(n=2, seed=None))
    assert unseeded[0].seed != unseeded[1].seed  # fresh random seeds
    with pytest.raises(ValueError, match="must be integers"):
        create_sequences("f", [1.0, 2.0])
    with pytest.raises(ValueError, match="negative"):
        create_sequences("neg", [3, -1])
    assert sibs[0].metrics.num_output_tokens == 0 and sibs[0].status is SequenceStatus.WAITING


# -- one budget: chunks and decodes ------------------------------------------------------------


def test_long_prompt_is_chunked_and_samples_only_at_the_end():
    sched = make_scheduler(max_num_batched_tokens=16, max_model_len=64)
    model = FakeModel(64, 4)
    (seq,) = make_request("a", 50, max_tokens=3)
    sched.add(seq)
    chunks = []
    for _ in range(4):
        out, updated = step(sched, model)
        chunks.append((out.scheduled[0].num_new_tokens, out.scheduled[0].sample))
    assert chunks == [(16, False), (16, False), (16, False), (2, True)]
    assert seq.num_output_tokens == 1 and seq.num_computed_tokens == 50
    run_to_completion(sched, model)
    expect_reference(sched, [seq])
    assert_no_leaks(sched)


def test_decodes_and_prefill_chunks_share_one_step():
    sched = make_scheduler(max_num_batched_tokens=10, max_num_seqs=4)
    model = FakeModel(64, 4)
    (a,) = make_request("a", 6, max_tokens=20, ignore_eos=True)
    sched.add(a)
    step(sched, model)  # a's prefill
    (b,) = make_request("b", 30, max_tokens=2, ignore_eos=True)
    sched.add(b)
    out, _ = step(sched, model)
    assert [(s.seq.request_id, s.num_new_tokens, s.sample) for s in out.scheduled] == [
        ("a", 1, True), ("b", 9, False)]
    assert out.admitted_seq_ids == [b.seq_id] and not out.decode_only
    out, _ = step(sched, model)
    assert [(s.seq.request_id, s.num_new_tokens) for s in out.scheduled] == [("a", 1), ("b", 9)]
    run_to_completion(sched, model)
    expect_reference(sched, [a, b])
    assert_no_leaks(sched)


def test_waiting_requests_are_admitted_fcfs_within_max_num_seqs():
    sched = make_scheduler(max_num_seqs=2, max_num_batched_tokens=64)
    model = FakeModel(64, 4)
    seqs = [make_request(f"r{i}", 3, max_tokens=2, ignore_eos=True)[0] for i in range(4)]
    for s in seqs:
        sched.add(s)
    out, _ = step(sched, model)
    assert [s.seq.request_id for s in out.scheduled] == ["r0", "r1"]
    out, _ = step(sched, model)  # r0, r1 finish (max_tokens=2)
    out, _ = step(sched, model)
    assert [s.seq.request_id for s in out.scheduled] == ["r2", "r3"]
    run_to_completion(sched, model)
    assert_no_leaks(sched)


def test_waiting_head_without_blocks_is_not_overtaken():
    sched = make_scheduler(num_blocks=16, block_size=4, max_num_batched_tokens=64)
    model = FakeModel(16, 4)
    (a,) = make_request("a", 40, max_tokens=5, ignore_eos=True)
    sched.add(a)
    step(sched, model)  # a holds 10 of 16 blocks
    (b,) = make_request("b", [7] * 30, max_tokens=2, ignore_eos=True)  # needs 8 blocks
    (c,) = make_request("c", [8] * 4, max_tokens=2, ignore_eos=True)  # would fit in 1
    sched.add(b)
    sched.add(c)
    out, _ = step(sched, model)
    assert [s.seq.request_id for s in out.scheduled] == ["a"]  # c waits behind b
    run_to_completion(sched, model)
    assert b.metrics.first_scheduled_time <= c.metrics.first_scheduled_time
    expect_reference(sched, [a, b, c])
    assert_no_leaks(sched)


# -- preemption --------------------------------------------------------------------------------


def test_preempts_most_recent_and_requeues_it_first():
    # 12 blocks of 4 = 48 tokens; three 14-token prompts growing to 30 cannot all fit, and a
    # fourth request waits behind them (max_num_seqs=3).
    sched = make_scheduler(num_blocks=12, block_size=4, max_num_seqs=3,
                           max_num_batched_tokens=48, max_model_len=48)
    model = FakeModel(12, 4)
    seqs = [make_request(f"r{i}", [i + 1] * 14, max_tokens=16, ignore_eos=True)[0]
            for i in range(4)]
    for s in seqs:
        sched.add(s)
    first_preemption = None
    for _ in range(200):
        if not sched.has_unfinished_requests():
            break
        out, _ = step(sched, model)
        if out.preempted_seq_ids:
            assert not out.admitted_seq_ids  # no admissions in a step that had to preempt
            if first_preemption is None:
                first_preemption = (list(out.preempted_seq_ids),
                                    [s.seq_id for s in sched.waiting])
    assert first_preemption is not None
    preempted, waiting = first_preemption
    assert preempted[0] == seqs[2].seq_id  # the most recently admitted goes first
    # Back at the front of the queue, ahead of r3, in their admission order.
    assert waiting == [*preempted[::-1], seqs[3].seq_id]
    assert sched.num_preemptions >= 1 and seqs[2].metrics.num_preemptions >= 1
    expect_reference(sched, seqs)  # recompute gives the same tokens
    assert_no_leaks(sched)


def test_preempted_sequence_recomputes_from_cached_blocks():
    sched = make_scheduler(num_blocks=10, block_size=4, max_num_seqs=2,
                           max_num_batched_tokens=40, max_model_len=40)
    model = FakeModel(10, 4)
    a = make_request("a", [1] * 10, max_tokens=25, ignore_eos=True)[0]
    b = make_request("b", [2] * 10, max_tokens=25, ignore_eos=True)[0]
    sched.add(a)
    sched.add(b)
    run_to_completion(sched, model)
    assert b.metrics.num_preemptions >= 1
    assert sched.block_manager.prefix_cache_hits > 0  # its own full blocks came back
    expect_reference(sched, [a, b])
    assert_no_leaks(sched)


# -- stop conditions ---------------------------------------------------------------------------


def _run_one(tokens, max_model_len=64, **params):
    """One request whose sampled tokens are scripted."""
    sched = make_scheduler(max_model_len=max_model_len)
    model = FakeModel(64, 4)
    (seq,) = make_request("a", 4, **params)
    sched.add(seq)
    for t in tokens:
        step(sched, model, [t])
        if seq.is_finished:
            break
    return sched, seq


@pytest.mark.parametrize(
    "tokens, params, out_len, reason, stop_reason",
    [
        ([5, EOS, 7], {}, 2, "stop", None),
        ([5, EOS, 7, 8], {"ignore_eos": True, "max_tokens": 4}, 4, "length", None),
        ([5, 9, 7], {"stop_token_ids": [9]}, 2, "stop", 9),
        ([EOS, 9, EOS, 5], {"min_tokens": 3, "stop_token_ids": [9]}, 3, "stop", None),
        ([5, 6, 7, 8, 9, 10], {"max_tokens": 5}, 5, "length", None),
        ([5] * 20, {"max_tokens": None, "max_model_len": 10}, 6, "length", None),
    ],
)
def test_stop_conditions(tokens, params, out_len, reason, stop_reason):
    sched, seq = _run_one(tokens, **params)
    assert seq.num_output_tokens == out_len
    assert (seq.finish_reason, seq.stop_reason) == (reason, stop_reason)
    assert_no_leaks(sched)


def test_finish_for_a_stop_string_frees_blocks_and_reports_them():
    sched = make_scheduler()
    model = FakeModel(64, 4)
    (seq,) = make_request("a", 6, max_tokens=10, ignore_eos=True)
    sched.add(seq)
    step(sched, model)
    sched.finish(seq, stop_reason="###")
    assert seq.finish_reason == "stop" and seq.stop_reason == "###"
    out = sched.schedule()
    assert out.is_empty and out.finished_seq_ids == [seq.seq_id]
    sched.finish(seq, SequenceStatus.FINISHED_LENGTH)  # on a finished one: reason only
    assert seq.finish_reason == "length"
    with pytest.raises(ValueError, match="FINISHED_"):
        sched.finish(seq, SequenceStatus.RUNNING)
    assert_no_leaks(sched)


# -- aborts ------------------------------------------------------------------------------------


def test_abort_waiting_running_and_in_flight():
    sched = make_scheduler(max_num_seqs=2)
    model = FakeModel(64, 4)
    a, b, c = (make_request(r, 9, max_tokens=10, ignore_eos=True)[0] for r in "abc")
    for s in (a, b, c):
        sched.add(s)
    step(sched, model)
    assert sched.abort("c") == [c] and c.finish_reason == "abort"  # waiting
    assert sched.abort("a") == [a] and a.block_table == []  # running
    out = sched.schedule()
    assert set(out.finished_seq_ids) == {a.seq_id, c.seq_id}
    sched.abort("b")  # while its step is in flight
    sched.postprocess(out, model.step(out))
    assert b.num_output_tokens == 1 and b.finish_reason == "abort"
    assert sched.abort("b") == [] and sched.abort("unknown") == []
    assert_no_leaks(sched)


# -- n > 1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_siblings_share_prompt_blocks_and_match_separate_requests(prefix_caching):
    sched = make_scheduler(enable_prefix_caching=prefix_caching)
    model = FakeModel(64, 4)
    prompt = list(range(3, 17))  # 14 tokens: 3 full blocks shareable
    sibs = make_request("r", prompt, n=3, seed=7, max_tokens=6, ignore_eos=True)
    sched.add(sibs)
    max_refs = 0
    while sched.has_unfinished_requests():
        step(sched, model)
        max_refs = max(max_refs, *(b.ref_count for b in sched.block_manager.blocks))
    assert max_refs == 3  # all three held the prompt blocks at once
    assert [s.num_cached_tokens for s in sibs] == [0, 12, 12]
    assert [s.seed for s in sibs] == [7, 8, 9]
    # Same as three separate requests with seeds 7, 8, 9 (fresh scheduler, no sharing).
    alone = make_scheduler(enable_prefix_caching=False)
    singles = [make_request(f"s{i}", prompt, seed=7 + i, max_tokens=6, ignore_eos=True)[0]
               for i in range(3)]
    for s in singles:
        alone.add(s)
    run_to_completion(alone, FakeModel(64, 4))
    assert [s.output_token_ids for s in sibs] == [s.output_token_ids for s in singles]
    assert len({tuple(s.output_token_ids) for s in sibs}) == 3  # the seeds differ
    assert_no_leaks(sched)


def test_siblings_with_prompt_logprobs_compute_their_whole_prompt():
    sched = make_scheduler()
    model = FakeModel(64, 4)
    sibs = make_request("r", list(range(3, 17)), n=2, max_tokens=3, prompt_logprobs=1)
    sched.add(sibs)
    out, _ = step(sched, model)
    assert [s.num_new_tokens for s in out.scheduled] == [14, 14]  # no waiting, no hits
    run_to_completion(sched, model)
    assert [s.num_cached_tokens for s in sibs] == [0, 0]
    assert_no_leaks(sched)


def test_scheduler_side_imports_no_torch():
    code = ("import sys; import tritium.engine.scheduler, tritium.engine.detokenizer, "
            "tritium.engine.config, tritium.engine.outputs; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_follow_the_clock():
    now = [0.0]
    sched = make_scheduler(max_num_batched_tokens=8, clock=lambda: now[0])
    model = FakeModel(64, 4)
    (seq,) = make_request("a", 12, arrival_time=0.0, max_tokens=3, ignore_eos=True)
    sched.add(seq)
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):
        now[0] = t
        if sched.has_unfinished_requests():
            step(sched, model)
    m = seq.metrics
    assert (m.first_scheduled_time, m.first_token_time, m.finished_time) == (1.0, 2.0, 4.0)
    assert m.ttft == 2.0 and m.tpot == 1.0 and m.e2e_latency == 4.0 and m.queue_time == 1.0
    assert m.num_output_tokens == 3


# -- randomized workload -----------------------------------------------------------------------


def _random_workload(seed: int, prefix_caching: bool):
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4, 8])
    max_model_len = 48
    num_blocks = -(-max_model_len // block_size) + rng.randint(0, 48 // block_size)
    sched = make_scheduler(num_blocks=num_blocks, block_size=block_size,
                           max_num_seqs=rng.choice([3, 6]),
                           max_num_batched_tokens=rng.choice([6, 16, 40]),
                           max_model_len=max_model_len, enable_prefix_caching=prefix_caching)
    model = FakeModel(num_blocks, block_size)
    systems = [[rng.randrange(1, 50) for _ in range(rng.randint(0, 20))] for _ in range(3)]
    arrivals: dict[int, list] = {}
    for i in range(40):
        prompt = rng.choice(systems) + [rng.randrange(1, 50) for _ in range(rng.randint(1, 20))]
        max_tokens = rng.choice([None, rng.randint(2, 24)])
        params = make_params(
            n=rng.choice([1, 1, 1, 2, 3]), seed=rng.randrange(1 << 30), max_tokens=max_tokens,
            min_tokens=rng.choice([0, 0, 2]), ignore_eos=rng.random() < 0.3,
            stop_token_ids=rng.choice([[], [rng.randrange(50)]]),
            prompt_logprobs=rng.choice([None, None, None, None, 1]))
        arrivals.setdefault(rng.randrange(60), []).append((f"r{i}", prompt, params))
    return rng, sched, model, arrivals


@pytest.mark.parametrize("prefix_caching", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_random_workload(seed, prefix_caching):
    rng, sched, model, arrivals = _random_workload(seed, prefix_caching)
    all_seqs, aborted = [], set()
    chunked = max_refs = 0
    for step_no in range(5000):
        for rid, prompt, params in arrivals.pop(step_no, []):
            seqs = create_sequences(rid, prompt, params, arrival_time=float(step_no))
            sched.add(seqs)
            all_seqs.extend(seqs)
        if not arrivals and not sched.has_unfinished_requests():
            break
        if sched.requests and rng.random() < 0.03:
            rid = rng.choice(sorted(sched.requests))
            sched.abort(rid)
            aborted.add(rid)
        out = sched.schedule()
        check_step(sched, out)
        assert not (out.preempted_seq_ids and out.admitted_seq_ids)
        chunked += sum(1 for s in out.scheduled if not s.sample)
        if sched.requests and rng.random() < 0.02:  # abort while the step is in flight
            rid = rng.choice(sorted(sched.requests))
            sched.abort(rid)
            aborted.add(rid)
        sched.postprocess(out, model.step(out))
        sched.check_invariants()
        max_refs = max(max_refs, *(b.ref_count for b in sched.block_manager.blocks))
    else:
        raise AssertionError("workload did not finish")
    for seq in all_seqs:
        assert seq.is_finished, seq
        ref, reason, stop_reason = reference_generate(
            seq.prompt_token_ids, seq.sampling_params, seq.seed, sched.max_model_len)
        if seq.request_id in aborted and seq.finish_reason == "abort":
            assert seq.output_token_ids == ref[: seq.num_output_tokens], seq
        else:
            assert seq.output_token_ids == ref, seq
            assert (seq.finish_reason, seq.stop_reason) == (reason, stop_reason)
    assert_no_leaks(sched)
    # The workload exercised what it is meant to (else this test could not fail there).
    assert chunked > 0 and max_refs > 1 and aborted
    assert sched.num_preemptions > 0
    if prefix_caching:
        assert sched.block_manager.prefix_cache_hits > 0


def test_next_token_depends_on_whole_context():
    assert next_token([1, 2, 3], 0, 0) != next_token([2, 2, 3], 0, 0) or next_token(
        [1, 2, 3], 0, 1) != next_token([2, 2, 3], 0, 1)
