"""Batched sampling on the device: one step's logits (N, V) -> N token ids (+ logprobs).

Order (as vLLM): logit bias -> min_tokens suppression -> penalties -> greedy rows take the argmax
of these processed logits; random rows divide by temperature, keep the top-k, then the top-p
nucleus, then the min-p set, and draw.

Reproducible seeds. Every row carries a 64-bit seed and its output step (the number of tokens it
has generated so far). The random number for token ``t`` is a counter-based hash of
``(seed, step, t)`` computed with vectorized integer ops on the device, so a request's draw
depends on its seed, step and logits only: not on its row, the batch size or other requests.
The engine gives every sequence a seed when the request is created (:func:`sequence_seed`:
``seed + i`` for the i-th of n sequences of a seeded request, as vLLM; a random 63-bit seed for an
unseeded one), and passes it on every step, including after preemption.

The draw is an exponential race (Gumbel-max): ``argmax_t(z_t - log E_t)`` with
``E_t ~ Exp(1)`` picks token t with probability ``softmax(z)_t``. ``E = -log1p(-u)`` with ``u`` a
32-bit uniform offset by half a step, so E's smallest values are resolved to 2**-32 = 2.3e-10 and
tokens of probability down to ~1e-8 are drawn at their probability within ~2%.

Tie-breaking is deterministic: top-k keeps exactly k tokens and top-p ranks tokens by (logit
descending, token id ascending), so among equal logits the lower id is kept first; greedy takes
the lowest id among equal maxima.

Host syncs: none. :meth:`SamplingMetadata.build` moves small host lists to the device once per
step; the caller does one ``.tolist()`` of the result (:meth:`SamplerOutput.tolist`).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import torch

from tritium.engine.logprobs import LogprobsTensors, TokenLogprobs, gather_logprobs
from tritium.engine.sampling_params import SamplingParams

__all__ = [
    "Sampler",
    "SamplerOutput",
    "SamplingMetadata",
    "apply_filters",
    "apply_penalties",
    "exponential_from_bits",
    "gumbel_noise",
    "random_bits",
    "sequence_seed",
    "validate_sampling_params",
]

_M32 = 0xFFFFFFFF
# lowbias32 multipliers (Wellons' integer-hash search): full avalanche, low bias.
_MIX_A = 0x7FEB352D
_MIX_B = 0x846CA68B
# Arbitrary constants (digits of pi) that separate the two key chains.
_KEY_C0 = 0x243F6A88
_KEY_C1 = 0x85A308D3
_SAMPLING_EPS = 1e-5  # temperatures below this are greedy (vLLM's threshold)
_MAX_ABS_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values


@dataclass
class SamplerOutput:
    """Result of one step, on the device.

    Fields:
        sampled_token_ids: (N,) int64.
        logprobs: raw-logit logprobs of the sampled tokens with the top ``max_num_logprobs``
            tokens per row, or None when no row asked for logprobs.
    """

    sampled_token_ids: torch.Tensor
    logprobs: LogprobsTensors | None

    def tolist(self) -> tuple[list[int], list[TokenLogprobs] | None]:
        """Token ids and logprobs as Python values, with a single device-to-host copy."""
        if self.logprobs is None:
            return self.sampled_token_ids.tolist(), None
        packed = torch.cat([self.sampled_token_ids[:, None].double(), self.logprobs.packed()], 1)
        rows = packed.tolist()  # host sync here (the only one)
        ids = [int(r[0]) for r in rows]
        return ids, LogprobsTensors.unpack_rows([r[1:] for r in rows], self.logprobs.num_logprobs)


# -- counter-based random numbers ------------------------------------------------------------


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` in place for x in [0, 2**32), without int64 overflow.

    For c >= 2**31, ``x * c = x * (c - 2**31) + x * 2**31`` and ``x * 2**31 mod 2**32`` is
    ``(x & 1) << 31``; every intermediate stays below 2**63.
    """
    if c < 1 << 31:
        return x.mul_(c).bitwise_and_(_M32)
    low_bit = (x & 1) << 31
    return x.mul_(c - (1 << 31)).add_(low_bit).bitwise_and_(_M32)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash, in place, on int64 tensors holding values in [0, 2**32)."""
    x ^= x >> 16
    _mul32(x, _MIX_A)
    x ^= x >> 15
    _mul32(x, _MIX_B)
    x ^= x >> 16
    return x


def random_bits(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """32 random bits per (row, token), a pure function of (seed, step, token id).

    Two 32-bit keys per row are hashed out of (seed, step) along two chains (so distinct
    (seed, step) pairs share a stream with probability ~2**-64), then each token id is hashed
    under them: ``mix32(mix32(t + k1) ^ k2)``.

    Args:
        seeds: (N,) int64 (any 64-bit pattern). steps: (N,) int64 >= 0.
    Returns:
        (N, V) int64 in [0, 2**32).
    """
    s_lo = seeds & _M32
    s_hi = (seeds >> 32) & _M32  # arithmetic shift, then masked: the high word as unsigned
    st = steps & _M32
    k1 = _mix32(_mix32(_mix32(st ^ _KEY_C0) ^ s_lo) ^ s_hi)  # (N,)
    k2 = _mix32(_mix32(_mix32(s_hi ^ _KEY_C1) ^ st) ^ s_lo)  # (N,)
    tok = torch.arange(vocab_size, dtype=torch.int64, device=seeds.device)
    x = (tok[None, :] + k1[:, None]).bitwise_and_(_M32)  # (N, V)
    _mix32(x)
    x ^= k2[:, None]
    return _mix32(x)


def exponential_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """32 random bits -> ``E ~ Exp(1)`` in float32, same shape.

    ``u = (bits + 0.5) / 2**32`` in (0, 1) (capped below 1 in float32), ``E = -log1p(-u)``:
    small E, the ones that let unlikely tokens win, keep the full 32-bit resolution (the
    smallest is 2**-33); the largest is ~16.6, cutting off a tail of mass 2**-24.
    """
    u = (bits.float() + 0.5) * 2.0**-32
    u = u.clamp_(max=1.0 - 2.0**-24)  # float32 rounding of bits near 2**32 would give 1.0
    return torch.log1p(-u).neg_()


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``-log E`` with ``E ~ Exp(1)``, i.e. Gumbel noise, per (row, token). (N, V) float32."""
    return exponential_from_bits(random_bits(seeds, steps, vocab_size)).log_().neg_()


# -- logits processing -----------------------------------------------------------------------


def apply_penalties(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Repetition, frequency and presence penalties (vLLM/OpenAI formulas). Out of place.

    For token t of row i with ``c`` = count of t in the row's output and ``seen`` = t occurs in
    the prompt or the output:
        seen:  z = z / rep if z > 0 else z * rep
        z = z - freq * c - pres * (c > 0)
    """
    counts = meta.output_counts  # (N, V) int32
    seen = meta.prompt_mask | (counts > 0)  # (N, V) bool
    rep = meta.repetition_penalty[:, None]  # (N, 1)
    logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    logits = logits - meta.frequency_penalty[:, None] * counts
    return logits - meta.presence_penalty[:, None] * (counts > 0)


def _keep_top_k_by_topk(z: torch.Tensor, top_k: torch.Tensor, max_k: int) -> torch.Tensor:
    """Exactly-k keep mask from ``torch.topk(max_k)``: ties at the k-th value go to lower ids."""
    thr = torch.topk(z, max_k, dim=-1).values  # (N, max_k), descending
    thr = thr.gather(1, (top_k.clamp(max=max_k) - 1)[:, None])  # (N, 1): the k-th largest
    above = z > thr
    tied = z == thr
    need = top_k[:, None] - above.sum(-1, keepdim=True)  # tied tokens still to keep
    keep = above | (tied & (tied.cumsum(-1) <= need))
    return keep | (top_k >= z.shape[1])[:, None]  # rows with top-k off keep everything


def _keep_top_k_top_p_by_sort(
    z: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Keep mask of top-k then top-p (over the top-k renormalized distribution), via one sort.

    Top-p keeps the shortest prefix (by logit desc, id asc) whose mass reaches p: token j is
    kept iff the mass strictly before it is < p, so the boundary token is included.
    """
    n, v = z.shape
    sorted_z, order = torch.sort(z, dim=-1, descending=True, stable=True)  # (N, V) each
    pos = torch.arange(v, device=z.device)
    keep_sorted = pos[None, :] < top_k[:, None]  # (N, V)
    probs = sorted_z.masked_fill(~keep_sorted, -math.inf).softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    keep_sorted &= (mass_before < top_p[:, None]) | (top_p >= 1.0)[:, None]
    return torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)



def apply_filters(
    z: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
    max_top_k: int | None = None,
) -> torch.Tensor:
    """Top-k, then top-p, then min-p, on temperature-scaled logits. Out of place.

    Args:
        z: (N, V) float32 logits already divided by temperature.
        top_k: (N,) int64 in [1, V] (V: off for that row), or None: off for every row.
        top_p: (N,) float in (0, 1] (1: off), or None: off for every row. Nucleus over the
            top-k renormalized distribution.
        min_p: (N,) float in [0, 1] (0: off), or None. Keeps ``p >= min_p * p_max``, tested in
            log space as ``z >= z_max + log(min_p)``; renormalizing after top-k/top-p leaves the
            ratio unchanged, so this is the same as min-p taken after them.
        max_top_k: the largest top_k below V (a host int). With top-p off, the exact-k mask then
            comes from ``torch.topk(max_top_k)`` instead of a full sort. None: sort.
    Returns:
        (N, V) float32: z with removed tokens at -inf.
    """
    v = z.shape[1]
    keep = None
    if top_k is not None and top_p is None and max_top_k is not None and max_top_k < v:
        keep = _keep_top_k_by_topk(z, top_k, max_top_k)
    elif top_k is not None or top_p is not None:
        if top_k is None:
            top_k = torch.full(z.shape[:1], v, dtype=torch.long, device=z.device)
        if top_p is None:
            top_p = torch.ones(z.shape[:1], dtype=torch.float32, device=z.device)
        keep = _keep_top_k_top_p_by_sort(z, top_k, top_p)
    if min_p is not None:
        floor = z.max(dim=-1, keepdim=True).values + torch.log(min_p.float())[:, None]
        keep = z >= floor if keep is None else keep & (z >= floor)
    return z if keep is None else z.masked_fill(~keep, -math.inf)


# -- per-step metadata -----------------------------------------------------------------------


def sequence_seed(seed: int | None, index: int = 0) -> int:
    """The seed of the ``index``-th sequence of a request, fixed once when it is created.

    Seeded requests: ``seed + index`` (vLLM's rule for n > 1). Unseeded ones: a fresh random
    63-bit seed, so that they still draw through the same batch-independent path.
    """
    if seed is None:
        return secrets.randbits(63)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return seed + index


def validate_sampling_params(params: SamplingParams, vocab_size: int) -> None:
    """Checks that need the vocabulary size (the engine calls it when a request is added).

    Raises ValueError/TypeError for logit_bias keys outside [0, V) or values outside
    [-100, 100], and stop_token_ids outside [0, V).
    """
    for tid, bias in (params.logit_bias or {}).items():
        if not isinstance(tid, int) or isinstance(tid, bool):
            raise TypeError(f"logit_bias keys must be int token ids, got {tid!r}")
        if not 0 <= tid < vocab_size:
            raise ValueError(f"logit_bias token id {tid} outside the vocabulary [0, {vocab_size})")
        if not isinstance(bias, (int, float)) or not abs(bias) <= _MAX_ABS_LOGIT_BIAS:
            raise ValueError(f"logit_bias for token {tid} must be in [-100, 100], got {bias!r}")
    for tid in params.stop_token_ids:
        if not isinstance(tid, int) or not 0 <= tid < vocab_size:
            raise ValueError(f"stop token id {tid!r} outside the vocabulary [0, {vocab_size})")


def _to_int64(seed: object) -> int:
    """A seed as a signed 64-bit value (its low 64 bits)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seeds must be ints (see sequence_seed), got {seed!r}")
    s = seed & (2**64 - 1)
    return s - 2**64 if s >= 2**63 else s


def _padded_ids(rows: list[list[int]], pad: int) -> torch.Tensor:
    """(N, L) int64 CPU tensor of ragged id lists, padded with ``pad``; ids checked in [0, pad)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max()) if rows else 0
    ids = torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    ids = ids.reshape(len(rows), width)
    real = ids[torch.arange(width)[None, :] < lengths[:, None]]  # CPU tensors: no device sync
    if real.numel() and (real.min() < 0 or real.max() >= pad):
        bad = real[(real < 0) | (real >= pad)][0].item()
        raise ValueError(f"token id {bad} outside the vocabulary [0, {pad})")
    return ids


def _token_counts(rows: list[list[int]], vocab_size: int, device) -> torch.Tensor:
    """(N, V) int32 count of each token per row: one scatter_add over padded ids."""
    ids = _padded_ids(rows, vocab_size).to(device, non_blocking=True)  # (N, L); pad = V
    counts = torch.zeros(len(rows), vocab_size + 1, dtype=torch.int32, device=device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))
    return counts[:, :vocab_size]


def _sparse(pairs: list[tuple[int, int, float]], device) -> tuple[torch.Tensor, ...] | None:
    """(rows, token ids, values) device tensors, or None when empty."""
    if not pairs:
        return None
    rows, ids, vals = zip(*pairs)
    return (
        torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True),
        torch.tensor(ids, dtype=torch.long).to(device, non_blocking=True),
        torch.tensor(vals, dtype=torch.float32).to(device, non_blocking=True),
    )


@dataclass
class SamplingMetadata:
    """Per-step sampling settings of N rows, on the device. Build with :meth:`build`.

    Row tensors are (N,); greedy rows have temperature 1 (unused); top_k is V, top_p 1, min_p 0
    where that filter is off. The Python flags let the sampler skip whole stages.
    """

    num_rows: int
    vocab_size: int
    temperature: torch.Tensor  # (N,) float32
    greedy: torch.Tensor  # (N,) bool: temperature < 1e-5
    top_k: torch.Tensor  # (N,) int64 in [1, V]
    top_p: torch.Tensor  # (N,) float32 in (0, 1]
    min_p: torch.Tensor  # (N,) float32 in [0, 1]
    repetition_penalty: torch.Tensor  # (N,) float32
    presence_penalty: torch.Tensor  # (N,) float32
    frequency_penalty: torch.Tensor  # (N,) float32
    seeds: torch.Tensor  # (N,) int64
    steps: torch.Tensor  # (N,) int64: tokens the row has generated so far
    prompt_mask: torch.Tensor | None  # (N, V) bool: token occurs in the prompt; None w/o penalties
    output_counts: torch.Tensor | None  # (N, V) int32: occurrences in the output; idem
    min_tokens_mask: tuple[torch.Tensor, torch.Tensor] | None  # (rows, token ids) to set -inf
    logit_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # (rows, ids, values)
    all_greedy: bool
    all_random: bool
    no_penalties: bool
    no_top_k: bool
    no_top_p: bool
    no_min_p: bool
    max_top_k: int | None  # largest top_k below V among rows (None: top-k off everywhere)
    max_num_logprobs: int | None  # largest params.logprobs (None: no row wants logprobs)

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        prompt_token_ids: list[list[int]],
        output_token_ids: list[list[int]],
        seeds: list[int],
        eos_token_ids: list[int],
        vocab_size: int,
        device: torch.device | str,
    ) -> SamplingMetadata:
        """Gather N rows' settings into device tensors (host work only; no device sync).

        Args:
            params: one SamplingParams per row (a request with n > 1 has n rows).
            prompt_token_ids / output_token_ids: the row's prompt and generated tokens so far;
                prompts are read only for rows with a repetition penalty.
            seeds: the row's sequence seed (:func:`sequence_seed`), any int (low 64 bits used).
            eos_token_ids: the model's EOS ids, suppressed with stop_token_ids while a row has
                fewer than min_tokens outputs (unless ignore_eos).
            vocab_size: V, the logits' last dimension.
        """
        n = len(params)
        for name, seq in (("prompt_token_ids", prompt_token_ids),
                          ("output_token_ids", output_token_ids), ("seeds", seeds)):
            if len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} rows, params has {n}")
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be an int >= 1, got {vocab_size!r}")
        for tid in eos_token_ids:
            if not isinstance(tid, int) or not 0 <= tid < vocab_size:
                raise ValueError(f"eos token id {tid!r} outside the vocabulary [0, {vocab_size})")
        cols: dict[str, list] = {k: [] for k in (
            "temperature", "greedy", "top_k", "top_p", "min_p", "repetition_penalty",
            "presence_penalty", "frequency_penalty", "seeds", "steps")}
        suppress: list[tuple[int, int, float]] = []
        bias: list[tuple[int, int, float]] = []
        for i, p in enumerate(params):
            if not isinstance(p, SamplingParams):
                raise TypeError(f"params[{i}] must be SamplingParams, got {type(p).__name__}")
            validate_sampling_params(p, vocab_size)
            greedy = p.temperature < _SAMPLING_EPS
            k = vocab_size if p.top_k is None else min(p.top_k, vocab_size)
            for key, val in (("temperature", 1.0 if greedy else p.temperature),
                             ("greedy", greedy), ("top_k", k), ("top_p", p.top_p),
                             ("min_p", p.min_p), ("repetition_penalty", p.repetition_penalty),
                             ("presence_penalty", p.presence_penalty),
                             ("frequency_penalty", p.frequency_penalty),
                             ("seeds", _to_int64(seeds[i])),
                             ("steps", len(output_token_ids[i]))):
                cols[key].append(val)
            if len(output_token_ids[i]) < p.min_tokens:
                stops = set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos_token_ids))
                suppress.extend((i, t, 0.0) for t in sorted(stops))
            bias.extend((i, t, float(b)) for t, b in (p.logit_bias or {}).items())
        return cls._from_columns(cols, params, prompt_token_ids, output_token_ids, suppress,
                                 bias, vocab_size, torch.device(device))

    @classmethod
    def _from_columns(cls, cols, params, prompt_token_ids, output_token_ids, suppress, bias,
                      vocab_size, device) -> SamplingMetadata:
        def dev(key: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(cols[key], dtype=dtype).to(device, non_blocking=True)

        n = len(params)
        rep, pres, freq = (cols["repetition_penalty"], cols["presence_penalty"],
                           cols["frequency_penalty"])
        penalized = [rep[i] != 1.0 or pres[i] != 0.0 or freq[i] != 0.0 for i in range(n)]
        prompt_mask = output_counts = None
        if any(penalized):
            # Rows without penalties contribute no ids: their neutral penalties ignore counts.
            prompts = [prompt_token_ids[i] if rep[i] != 1.0 else [] for i in range(n)]
            outputs = [output_token_ids[i] if penalized[i] else [] for i in range(n)]
            prompt_mask = _token_counts(prompts, vocab_size, device) > 0
            output_counts = _token_counts(outputs, vocab_size, device)
        greedy = cols["greedy"]
        top_ks = [k for k in cols["top_k"] if k < vocab_size]
        logprob_ks = [p.logprobs for p in params if p.logprobs is not None]
        sup = _sparse(suppress, device)
        return cls(
            num_rows=n, vocab_size=vocab_size,
            temperature=dev("temperature", torch.float32), greedy=dev("greedy", torch.bool),
            top_k=dev("top_k", torch.long), top_p=dev("top_p", torch.float32),
            min_p=dev("min_p", torch.float32),
            repetition_penalty=dev("repetition_penalty", torch.float32),
            presence_penalty=dev("presence_penalty", torch.float32),
            frequency_penalty=dev("frequency_penalty", torch.float32),
            seeds=dev("seeds", torch.long), steps=dev("steps", torch.long),
            prompt_mask=prompt_mask, output_counts=output_counts,
            min_tokens_mask=None if sup is None else sup[:2], logit_bias=_sparse(bias, device),
            all_greedy=all(greedy), all_random=not any(greedy), no_penalties=not any(penalized),
            no_top_k=not top_ks, no_top_p=all(p >= 1.0 for p in cols["top_p"]),
            no_min_p=all(p <= 0.0 for p in cols["min_p"]),
            max_top_k=max(top_ks) if top_ks else None,
            max_num_logprobs=max(logprob_ks) if logprob_ks else None,
        )


# -- the sampler -----------------------------------------------------------------------------


class Sampler:
    """Logits (N, V) + :class:`SamplingMetadata` -> :class:`SamplerOutput`, batched, no sync."""

    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        """Sample one token per row.

        Args:
            logits: (N, V) float (any float dtype; processed in float32, never modified).
            meta: this step's metadata, on logits' device.
        Returns:
            SamplerOutput: sampled ids (N,) int64; raw-logit logprobs when any row asked.
        """
        self._check(logits, meta)
        raw = logits.float()
        logprobs = None
        if meta.max_num_logprobs is not None:
            raw_logprobs = torch.log_softmax(raw, dim=-1)  # (N, V), before any processing
        logits = self.process_logits(raw, meta)
        if meta.all_greedy:
            sampled = logits.argmax(dim=-1)
        else:
            sampled = self._sample_random(logits, meta)
            if not meta.all_random:
                sampled = torch.where(meta.greedy, logits.argmax(dim=-1), sampled)
        if meta.max_num_logprobs is not None:
            logprobs = gather_logprobs(raw_logprobs, sampled, meta.max_num_logprobs)
        return SamplerOutput(sampled, logprobs)

    @staticmethod
    def process_logits(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """Logit bias, min_tokens suppression, penalties: what greedy takes the argmax of.

        (N, V) float32 in, a new (N, V) float32 out (the input is left untouched).
        """
        logits = logits.clone()
        if meta.logit_bias is not None:
            rows, ids, vals = meta.logit_bias
            logits.index_put_((rows, ids), vals, accumulate=True)
        if meta.min_tokens_mask is not None:
            rows, ids = meta.min_tokens_mask
            logits.index_put_((rows, ids), logits.new_tensor(-math.inf))
        if not meta.no_penalties:
            logits = apply_penalties(logits, meta)
        return logits

    @staticmethod
    def _sample_random(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """Temperature, filters, then the seeded Gumbel-max draw. (N,) int64."""
        z = logits / meta.temperature[:, None]  # (N, V)
        z = apply_filters(
            z,
            None if meta.no_top_k else meta.top_k,
            None if meta.no_top_p else meta.top_p,
            None if meta.no_min_p else meta.min_p,
            max_top_k=meta.max_top_k,
        )
        z += gumbel_noise(meta.seeds, meta.steps, meta.vocab_size)
        return z.argmax(dim=-1)

    @staticmethod
    def _check(logits: torch.Tensor, meta: SamplingMetadata) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            got = getattr(logits, "shape", logits)
            raise ValueError(f"logits must be an (N, V) tensor, got {got}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must be a float tensor, got {logits.dtype}")
        if tuple(logits.shape) != (meta.num_rows, meta.vocab_size):
            raise ValueError(
                f"logits shape {tuple(logits.shape)} does not match the metadata "
                f"({meta.num_rows}, {meta.vocab_size})"
            )
        if logits.device != meta.temperature.device:
            raise ValueError(
                f"logits are on {logits.device}, sampling metadata on {meta.temperature.device}"
            )
