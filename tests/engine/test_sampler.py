"""Sampler tests (CPU): filters keep exactly the right tokens, penalties match the formula,
seeded draws do not depend on the batch, and draws follow the softmax probabilities."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from tritium.engine.logprobs import compute_prompt_logprobs
from tritium.engine.sampler import (
    Sampler,
    SamplingMetadata,
    apply_filters,
    sequence_seed,
)
from tritium.engine.sampling_params import SamplingParams as SP
from tritium.engine.seeded_noise import exponential_from_bits, gumbel_noise, random_bits

EOS = 0


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small ops: on the shared 2-core machine, 2 intra-op threads make them 10-30x slower
    under load (threads wait for each other), so these tests run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(params, prompts=None, outputs=None, seeds=None, vocab=13, eos=(EOS,)):
    n = len(params)
    prompts = prompts if prompts is not None else [[] for _ in range(n)]
    outputs = outputs if outputs is not None else [[] for _ in range(n)]
    seeds = seeds if seeds is not None else [sequence_seed(p.seed, 0) for p in params]
    return SamplingMetadata.build(params, prompts, outputs, seeds, list(eos), vocab, "cpu")


def sample(logits, params, **kw):
    meta = build(params, vocab=logits.shape[1], **kw)
    return Sampler()(logits, meta)


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper chi-square quantile (z = 3.09: p = 0.001), Wilson-Hilferty approximation."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def chi2(observed: list[int], probs: list[float]) -> float:
    total = sum(observed)
    return sum((o - total * p) ** 2 / (total * p) for o, p in zip(observed, probs))


def softmax64(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) if x != -math.inf else 0.0 for x in xs]
    s = sum(e)
    return [x / s for x in e]


def kept(masked: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row > -math.inf).flatten().tolist()) for row in masked]


# -- greedy, bias, min_tokens, penalties ------------------------------------------------------


def test_greedy_is_argmax_with_lowest_id_on_ties():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 37, generator=g)
    logits[3, [4, 9, 30]] = 10.0  # tie: the lowest id wins
    out = sample(logits, [SP(temperature=0.0) for _ in range(5)])
    expected = logits.argmax(-1)
    expected[3] = 4
    assert out.sampled_token_ids.tolist() == expected.tolist()
    assert out.logprobs is None


def test_greedy_takes_argmax_of_processed_logits_and_input_is_untouched():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.5]])
    before = logits.clone()
    out = sample(logits, [SP(temperature=0.0, logit_bias={2: 2.5})])
    assert out.sampled_token_ids.tolist() == [2]
    torch.testing.assert_close(logits, before, rtol=0, atol=0)


def test_logit_bias_adds_to_listed_tokens_only():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 11, generator=g)
    params = [SP(logit_bias={1: -100.0, 7: 3.5}), SP(), SP(logit_bias={10: 100})]
    out = Sampler.process_logits(logits, build(params, vocab=11))
    expected = logits.clone()
    expected[0, 1] -= 100.0
    expected[0, 7] += 3.5
    expected[2, 10] += 100.0
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # a +100 bias makes the token the certain draw
    draws = sample(logits.repeat(50, 1)[:50], [SP(seed=s, logit_bias={4: 100}) for s in range(50)])
    assert set(draws.sampled_token_ids.tolist()) == {4}


def test_min_tokens_suppresses_eos_and_stop_ids_until_reached():
    v = 9
    logits = torch.zeros(4, v)
    logits[:, [EOS, 5, 6]] = 50.0  # EOS and stop tokens dominate
    params = [
        SP(min_tokens=3, stop_token_ids=[5]),  # 2 outputs: suppress EOS and 5 (6 is no stop id)
        SP(min_tokens=3, stop_token_ids=[5]),  # 3 outputs: min reached, nothing suppressed
        SP(min_tokens=2, stop_token_ids=[5], ignore_eos=True),  # EOS kept, 5 suppressed
        SP(min_tokens=1, stop_token_ids=[5, 6]),  # everything hot suppressed
    ]
    outputs = [[1, 2], [1, 2, 3], [], []]
    meta = build(params, outputs=outputs, vocab=v)
    out = Sampler.process_logits(logits, meta)
    inf_cols = [set(torch.nonzero(r == -math.inf).flatten().tolist()) for r in out]
    assert inf_cols == [{EOS, 5}, set(), {5}, {EOS, 5, 6}]
    for seed in range(20):
        ids = sample(logits, [SP(seed=seed, **_kw(p)) for p in params], outputs=outputs)
        tok = ids.sampled_token_ids.tolist()
        assert tok[0] == 6 and tok[2] in (EOS, 6) and tok[3] not in (EOS, 5, 6)


def _kw(p: SP) -> dict:
    return dict(min_tokens=p.min_tokens, stop_token_ids=p.stop_token_ids, ignore_eos=p.ignore_eos)


def reference_penalties(row, prompt, output, rep, pres, freq):
    """Plain-Python vLLM/OpenAI penalties for one row."""
    counts = Counter(output)
    seen = set(prompt) | set(output)
    out = []
    for t, z in enumerate(row):
        if t in seen:
            z = z / rep if z > 0 else z * rep
        out.append(z - freq * counts[t] - pres * (1.0 if counts[t] > 0 else 0.0))
    return out


def test_penalties_match_reference_formula():
    v = 17
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, v, generator=g) * 3
    params = [
        SP(repetition_penalty=1.7),
        SP(presence_penalty=1.5),
        SP(frequency_penalty=-0.75),
        SP(repetition_penalty=0.6, presence_penalty=-0.5, frequency_penalty=2.0),
        SP(),  # neutral row in a penalized batch: unchanged
    ]
    prompts = [[1, 2, 2, 16], [3, 4], [5], [0, 7, 7, 9], [1, 2, 3]]
    outputs = [[4, 4, 5], [3, 8, 8, 8], [5, 5, 6, 16], [7, 9, 9, 9, 10], [1, 1]]
    meta = build(params, prompts, outputs, vocab=v)
    assert not meta.no_penalties
    out = Sampler.process_logits(logits, meta)
    for i, p in enumerate(params):
        ref = reference_penalties(logits[i].tolist(), prompts[i], outputs[i],
                                  p.repetition_penalty, p.presence_penalty, p.frequency_penalty)
        # float32 arithmetic vs float64 reference on logits of size ~5
        torch.testing.assert_close(out[i], torch.tensor(ref), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out[4], logits[4], rtol=0, atol=0)


# -- filters ----------------------------------------------------------------------------------


def test_top_k_keeps_exactly_the_k_largest_both_paths():
    v = 29
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, v, generator=g)
    z[3] = torch.tensor([float(i % 4) for i in range(v)])  # heavy ties: ids 3, 7, 11, ... = 3.0
    top_k = torch.tensor([1, 5, v, 6])
    ref = [set(sorted(range(v), key=lambda t: (-z[i, t].item(), t))[: top_k[i]])
           for i in range(4)]
    assert ref[3] == {3, 7, 11, 15, 19, 23}  # ties at the boundary go to the lower ids
    by_sort = apply_filters(z, top_k, None, None, max_top_k=None)
    by_topk = apply_filters(z, top_k, None, None, max_top_k=6)
    assert kept(by_sort) == ref
    assert kept(by_topk) == ref
    torch.testing.assert_close(by_sort, by_topk, rtol=0, atol=0)
    assert torch.equal(by_sort[by_sort > -math.inf], z[by_sort > -math.inf])  # kept are untouched


def test_top_k_support_by_sampling():
    v, k, n = 11, 4, 1500
    g = torch.Generator().manual_seed(4)
    row = torch.randn(v, generator=g)
    out = sample(row.expand(n, v).contiguous(), [SP(temperature=3.0, top_k=k, seed=s)
                                                  for s in range(n)])
    assert set(out.sampled_token_ids.tolist()) == set(torch.topk(row, k).indices.tolist())


def reference_top_p(probs: list[float], p: float) -> set[int]:
    order = sorted(range(len(probs)), key=lambda t: (-probs[t], t))
    keep, mass = set(), 0.0
    for t in order:
        if mass >= p:
            break
        keep.add(t)
        mass += probs[t]
    return keep


def test_top_p_keeps_smallest_set_reaching_p():
    z = torch.log(torch.tensor([[0.125, 0.5, 0.125, 0.25]] * 4))
    top_p = torch.tensor([0.4, 0.6, 0.74, 0.76])
    out = apply_filters(z, None, top_p, None)
    # 0.6: token 1 alone has 0.5 < 0.6, so the boundary token 3 (0.25) is included
    assert kept(out) == [{1}, {1, 3}, {1, 3}, {0, 1, 3}]  # 0.76: the tie 0/2 goes to id 0
    uniform = torch.zeros(1, 8)
    assert kept(apply_filters(uniform, None, torch.tensor([0.5]), None)) == [{0, 1, 2, 3}]


def test_top_p_random_distributions_against_reference():
    v = 23
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, v, generator=g) * 2
    probs = [softmax64(r) for r in z.double().tolist()]
    top_p, refs = [], []
    for i, pr in enumerate(probs):
        cum = sorted(pr, reverse=True)
        masses = [sum(cum[: j + 1]) for j in range(v)]
        j = 2 + i  # p halfway between two cumulative masses: far from any boundary
        top_p.append((masses[j] + masses[j + 1]) / 2)
        refs.append(reference_top_p(pr, top_p[-1]))
        assert len(refs[-1]) == j + 2
    assert kept(apply_filters(z, None, torch.tensor(top_p), None)) == refs


def test_min_p_keeps_tokens_above_fraction_of_max():
    v = 31
    g = torch.Generator().manual_seed(6)
    z = torch.randn(4, v, generator=g) * 2
    min_p = [0.0, 0.05, 0.3, 1.0]
    refs = []
    for i, pr in enumerate(softmax64(r) for r in z.double().tolist()):
        pmax = max(pr)
        assert all(abs(q - min_p[i] * pmax) > 1e-4 * pmax for q in pr) or min_p[i] in (0, 1)
        refs.append({t for t, q in enumerate(pr) if q >= min_p[i] * pmax})
    out = apply_filters(z, None, None, torch.tensor(min_p))
    assert kept(out) == refs
    assert len(refs[3]) == 1 and len(refs[0]) == v


def test_combined_filters_and_temperature_against_reference():
    v, temp = 20, 0.7
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(1, v, generator=g) * 2
    k, p, mp = 9, 0.8, 0.25
    zs = [x / temp for x in logits[0].double().tolist()]
    order = sorted(range(v), key=lambda t: (-zs[t], t))[:k]
    pk = softmax64([zs[t] for t in order])  # top-k renormalized, in order
    keep_p = {order[j] for j in reference_top_p(pk, p)}
    pmax = max(pk)
    ref = {t for t in keep_p if softmax64(zs)[t] >= mp * softmax64(zs)[order[0]]}
    assert all(abs(q - mp * pmax) > 1e-3 for q in pk) and 2 < len(ref) < len(keep_p)
    z = (logits / temp).float()
    out = apply_filters(z, torch.tensor([k]), torch.tensor([p]), torch.tensor([mp]))
    assert kept(out) == [ref]
    n = 3000
    draws = sample(logits.expand(n, v).contiguous(),
                   [SP(temperature=temp, top_k=k, top_p=p, min_p=mp, seed=s) for s in range(n)])
    assert set(draws.sampled_token_ids.tolist()) == ref


# -- distribution and seeds -------------------------------------------------------------------


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.5, None), (2.0, 3)])
def test_draws_follow_softmax_across_seeds(temperature, top_k):
    v, n = 5, 20000
    row = torch.tensor([1.0, 0.5, 0.0, -0.5, -2.0])
    out = sample(row.expand(n, v).contiguous(),
                 [SP(temperature=temperature, top_k=top_k, seed=s) for s in range(n)])
    zs = [x / temperature for x in row.tolist()]
    if top_k is not None:
        zs = [z if t < top_k else -math.inf for t, z in enumerate(zs)]  # row is sorted
    probs = softmax64(zs)
    counts = Counter(out.sampled_token_ids.tolist())
    support = [t for t in range(v) if probs[t] > 0]
    assert set(counts) <= set(support)
    stat = chi2([counts[t] for t in support], [probs[t] for t in support])
    assert stat < chi2_critical(len(support) - 1), stat


def test_draws_follow_softmax_across_steps_of_one_seed():
    v, n = 5, 20000
    row = torch.tensor([0.3, -1.0, 1.2, 0.0, -0.2])
    seeds = torch.full((n,), 987654321, dtype=torch.long)
    steps = torch.arange(n)
    draws = (row + gumbel_noise(seeds, steps, torch.arange(v))).argmax(-1)
    counts = Counter(draws.tolist())
    stat = chi2([counts[t] for t in range(v)], softmax64(row.tolist()))
    assert stat < chi2_critical(v - 1), stat


def test_small_probability_is_drawn_at_its_rate():
    n, p_small = 1_000_000, 1e-4
    z = torch.tensor([0.0, math.log(p_small / (1 - p_small))])
    draws = (z + gumbel_noise(torch.arange(n), torch.zeros(n, dtype=torch.long), 2)).argmax(-1)
    hits = int(draws.sum())
    expected = n * p_small
    assert abs(hits - expected) < 4.5 * math.sqrt(expected), hits


def test_exponential_keeps_32_bit_resolution_near_zero():
    bits = torch.tensor([0, 1, 2, 3, 100, 4095, 2**24 + 1, 2**32 - 1], dtype=torch.long)
    e = exponential_from_bits(bits).double()
    u = (bits.double() + 0.5) * 2.0**-32
    ref = -torch.log1p(-u)
    # the small ones (what tokens of probability 1e-7 race against) are exact to float32
    torch.testing.assert_close(e[:-1], ref[:-1], rtol=1e-6, atol=0)
    assert e[0] > 0 and e[1] > e[0] and math.isfinite(e[-1]) and 16 < e[-1] < 17


def test_same_request_same_tokens_whatever_the_batch():
    v = 41
    g = torch.Generator().manual_seed(8)
    others = [SP(temperature=0.0), SP(temperature=1.3, top_p=0.7, seed=5), SP(min_p=0.1),
              SP(repetition_penalty=1.2, logit_bias={3: 2.0}), SP(top_k=2, logprobs=3)]
    for target in (SP(temperature=0.8, top_p=0.9, seed=1234), SP(top_k=7, seed=99),
                   SP(temperature=1.1, seed=-7)):
        row, out_ids = torch.randn(v, generator=g), []
        for step in range(6):
            alone = sample(row[None], [target], outputs=[out_ids])
            tok = alone.sampled_token_ids.item()
            for pos, size in ((0, 3), (2, 6), (5, 6)):
                params = [others[i % len(others)] for i in range(size - 1)]
                params.insert(pos, target)
                logits = torch.randn(size, v, generator=g)
                logits[pos] = row
                outs = [[1, 2]] * size
                outs[pos] = out_ids
                batch = sample(logits, params, outputs=outs, prompts=[[4, 5, 6]] * size)
                assert batch.sampled_token_ids[pos].item() == tok, (target, step, pos, size)
            out_ids = out_ids + [tok]


def test_top_k_candidate_path_draws_like_full_vocabulary_path():
    """Rows all with top-k draw among candidates only; one row without top-k sends the batch
    through the full-vocabulary path. Same tokens either way, ties included (bf16 logits)."""
    v, n = 300, 400
    g = torch.Generator().manual_seed(11)
    row = (torch.randn(v, generator=g) * 2).to(torch.bfloat16).float()  # many exact ties
    for kw in (dict(top_k=40), dict(top_k=25, top_p=0.7), dict(top_k=60, min_p=0.05),
               dict(top_k=30, top_p=0.9, min_p=0.02, temperature=0.6)):
        params = [SP(seed=s, **kw) for s in range(n)]
        outs = [[1] * (s % 7) for s in range(n)]
        cand_meta = build(params, outputs=outs, vocab=v)
        full_meta = build(params + [SP()], outputs=outs + [[]], vocab=v)
        assert cand_meta.all_top_k and not full_meta.all_top_k
        cand = Sampler()(row.expand(n, v).contiguous(), cand_meta).sampled_token_ids
        full = Sampler()(row.expand(n + 1, v).contiguous(), full_meta).sampled_token_ids[:n]
        assert torch.equal(cand, full), kw
        assert len(set(cand.tolist())) > 5
    # top-k and top-p boundaries both inside one group of tied logits: lower ids go first
    tied_ids = [250, 17, 120, 3, 99, 42]
    row = torch.full((v,), -5.0)
    row[7] = 3.0
    row[tied_ids] = 1.0
    # top-5 keeps 7 and tied 3, 17, 42, 99; token 7 has mass 0.65, each tied one 0.088: p = 0.75
    # needs two of them, the two lowest ids
    params = [SP(seed=s, top_k=5, top_p=0.75) for s in range(n)]
    cand = Sampler()(row.expand(n, v).contiguous(), build(params, vocab=v)).sampled_token_ids
    full_meta = build(params + [SP()], vocab=v)
    full = Sampler()(row.expand(n + 1, v).contiguous(), full_meta).sampled_token_ids[:n]
    assert torch.equal(cand, full) and set(cand.tolist()) == {7, 3, 17}


def test_different_seeds_differ_and_sequence_seeds():
    v, steps = 50, 30
    flat = torch.zeros(1, v)
    runs = []
    for seed in (1, 2, 1):
        runs.append([sample(flat, [SP(seed=seed)], outputs=[[0] * s]).sampled_token_ids.item()
                     for s in range(steps)])
    assert runs[0] == runs[2] and runs[0] != runs[1]
    assert sequence_seed(10, 3) == 13 and sequence_seed(10) == 10
    assert sequence_seed(None) != sequence_seed(None)
    assert 0 <= sequence_seed(None) < 2**63


def _py_mix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x735A2D97) & 0xFFFFFFFF
    return x ^ (x >> 15)


def test_random_bits_match_python_reference_hash():
    seeds = [0, 1, -1, 2**63 - 1, -(2**63), 123456789012345]
    steps = [0, 7, 2**31 - 1, 3, 1, 65536]
    v = 5
    bits = random_bits(torch.tensor(seeds), torch.tensor(steps), v)
    per_row_ids = torch.tensor([[4, 0], [2, 2], [1, 3], [0, 4], [3, 1], [4, 4]])
    bits_ids = random_bits(torch.tensor(seeds), torch.tensor(steps), per_row_ids)
    for i, (seed, step) in enumerate(zip(seeds, steps)):
        lo, hi = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
        key = _py_mix32(_py_mix32(_py_mix32(step ^ 0x243F6A88) ^ lo) ^ hi)
        ref = [_py_mix32(_py_mix32(t ^ 0x85A308D3) ^ key) for t in range(v)]
        assert bits[i].tolist() == ref
        assert bits_ids[i].tolist() == [ref[t] for t in per_row_ids[i].tolist()]
    # the high seed word matters
    a = random_bits(torch.tensor([5, 5 + 2**32]), torch.zeros(2, dtype=torch.long), 8)
    assert not torch.equal(a[0], a[1])


def test_random_bits_are_uniform_and_uncorrelated():
    n = 2**16
    crit63, crit255 = chi2_critical(63), chi2_critical(255)
    zeros = torch.zeros(n, dtype=torch.long)
    streams = {
        "tokens": random_bits(torch.tensor([42]), torch.tensor([3]), n)[0],
        "seeds": random_bits(torch.arange(n), zeros, 1)[:, 0],
        "steps": random_bits(torch.full((n,), 42), torch.arange(n), 1)[:, 0],
    }
    for name, x in streams.items():
        assert int(x.min()) >= 0 and int(x.max()) < 2**32
        for shift in (26, 0):  # top 6 bits, low 6 bits
            counts = torch.bincount((x >> shift) & 63, minlength=64).tolist()
            assert chi2(counts, [1 / 64] * 64) < crit63, (name, shift)
        pairs = ((x[:-1] >> 28) * 16 + (x[1:] >> 28)).clamp(max=255)  # neighbours, 16 x 16
        counts = torch.bincount(pairs, minlength=256).tolist()
        assert chi2(counts, [1 / 256] * 256) < crit255, name
        ones = torch.stack([(x >> b) & 1 for b in range(32)]).sum(-1).double()
        assert ((ones - n / 2).abs() < 5 * math.sqrt(n / 4)).all(), name


# -- logprobs ---------------------------------------------------------------------------------


def test_logprobs_are_raw_log_softmax_with_correct_ranks():
    v = 19
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(4, v, generator=g)
    params = [SP(logprobs=None), SP(logprobs=0, temperature=0.0),
              SP(logprobs=3, temperature=0.4, seed=1, logit_bias={5: 3.0}),
              SP(logprobs=5, temperature=1.5, repetition_penalty=1.5, seed=2)]
    meta = build(params, outputs=[[1], [2], [3], [4, 4]], vocab=v)
    assert meta.max_num_logprobs == 5
    out = Sampler()(logits, meta)
    lp = torch.log_softmax(logits.double(), -1)
    ids = out.sampled_token_ids.tolist()
    tl = out.logprobs
    assert tl.token_ids.shape == (4, 5) and tl.logprobs.shape == (4, 5)
    for i in range(4):
        ref_order = sorted(range(v), key=lambda t: -lp[i, t].item())
        assert tl.token_ids[i].tolist() == ref_order[:5]
        torch.testing.assert_close(tl.logprobs[i].double(), lp[i, ref_order[:5]])
        torch.testing.assert_close(tl.sampled_logprobs[i].double(), lp[i, ids[i]])
        assert tl.sampled_ranks[i].item() == 1 + sum(lp[i, t] > lp[i, ids[i]] for t in range(v))
    assert tl.sampled_ranks[1].item() == 1  # greedy without processing: the argmax
    host_ids, host_lp = out.tolist()
    assert host_ids == ids and len(host_lp) == 4
    assert host_lp[2].top_token_ids == tl.token_ids[2].tolist()
    assert host_lp[3].rank == tl.sampled_ranks[3].item()
    assert host_lp[3].logprob == tl.sampled_logprobs[3].item()


def test_prompt_logprobs():
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(6, 12, generator=g).to(torch.bfloat16)
    target = torch.tensor([3, 0, 11, 5, 5, 2])
    res = compute_prompt_logprobs(logits, target, 2)
    lp = torch.log_softmax(logits.float(), -1)
    torch.testing.assert_close(res.sampled_logprobs, lp[torch.arange(6), target])
    assert res.token_ids.tolist() == lp.topk(2).indices.tolist()
    assert res.sampled_ranks.tolist() == [
        1 + int((lp[i] > lp[i, target[i]]).sum()) for i in range(6)]
    assert compute_prompt_logprobs(logits, target, 0).token_ids.shape == (6, 0)
    with pytest.raises(ValueError, match="target_ids"):
        compute_prompt_logprobs(logits, target[:3], 2)
    with pytest.raises(ValueError, match="k must be"):
        compute_prompt_logprobs(logits, target, -1)
    with pytest.raises(TypeError, match="float"):
        compute_prompt_logprobs(logits.long(), target, 1)


# -- metadata, edge cases, invalid input ------------------------------------------------------


def test_flags_and_bfloat16_logits():
    meta = build([SP(temperature=0.0), SP(top_k=5), SP(top_k=50)], vocab=13)
    assert not meta.all_greedy and not meta.all_random and meta.no_penalties
    assert meta.top_k.tolist() == [1, 5, 13] and meta.max_top_k == 5 and not meta.all_top_k
    assert meta.no_top_p and meta.no_min_p and meta.max_num_logprobs is None
    assert meta.output_counts is None and meta.logit_bias is None and meta.min_tokens_mask is None
    out = Sampler()(torch.randn(3, 13).to(torch.bfloat16), meta)
    assert out.sampled_token_ids.dtype == torch.int64 and out.sampled_token_ids.shape == (3,)


def test_empty_batch():
    meta = build([], vocab=7)
    out = Sampler()(torch.empty(0, 7), meta)
    assert out.sampled_token_ids.shape == (0,) and out.tolist() == ([], None)


def test_invalid_inputs_raise():
    v = 10
    with pytest.raises(ValueError, match="seeds has 0 rows"):
        SamplingMetadata.build([SP()], [[]], [[]], [], [EOS], v, "cpu")
    with pytest.raises(TypeError, match="seeds must be ints"):
        SamplingMetadata.build([SP()], [[]], [[]], [None], [EOS], v, "cpu")
    with pytest.raises(ValueError, match="vocab_size"):
        build([SP()], vocab=0)
    with pytest.raises(ValueError, match="logit_bias token id 10"):
        build([SP(logit_bias={10: 1.0})], vocab=v)
    with pytest.raises(ValueError, match="logit_bias for token 3"):
        build([SP(logit_bias={3: 150.0})], vocab=v)
    with pytest.raises(TypeError, match="logit_bias keys"):
        build([SP(logit_bias={"3": 1.0})], vocab=v)
    with pytest.raises(ValueError, match="stop token id 12"):
        build([SP(stop_token_ids=[12])], vocab=v)
    with pytest.raises(ValueError, match="eos token id 10"):
        build([SP()], vocab=v, eos=(10,))
    with pytest.raises(ValueError, match="token id 11"):
        build([SP(presence_penalty=1.0)], outputs=[[1, 11]], vocab=v)
    with pytest.raises(TypeError, match="SamplingParams"):
        SamplingMetadata.build([{"temperature": 1.0}], [[]], [[]], [1], [EOS], v, "cpu")
    meta = build([SP(), SP()], vocab=v)
    with pytest.raises(ValueError, match="does not match"):
        Sampler()(torch.zeros(3, v), meta)
    with pytest.raises(ValueError, match="does not match"):
        Sampler()(torch.zeros(2, v + 1), meta)
    with pytest.raises(TypeError, match="float"):
        Sampler()(torch.zeros(2, v, dtype=torch.long), meta)
    with pytest.raises(ValueError, match=r"\(N, V\)"):
        Sampler()(torch.zeros(v), meta)
    with pytest.raises(TypeError, match="seed"):
        sequence_seed("7")
