"""Batched sampling on the device: one step's logits (N, V) -> N token ids (+ logprobs).

Order (as vLLM): logit bias -> min_tokens suppression -> penalties -> greedy rows take the argmax
of these processed logits; random rows divide by temperature, keep the top-k, then the top-p
nucleus, then the min-p set, and draw.

Reproducible seeds. Every row carries a 64-bit seed and its output step (the number of tokens it
has generated so far). The random number for token ``t`` is a counter-based hash of
``(seed, step, t)`` computed with vectorized integer ops on the device (engine/seeded_noise.py),
so a request's draw depends on its seed, step and logits only: not on its row, the batch size
or other requests.
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

Cost, in passes over (N, V): the noise is ~11 int64 passes (hash) + ~8 float32 ones, so when
every random row has top-k it is drawn only for the max_top_k candidates (same tokens as the
full path, tested). Top-p sorts the vocabulary (as vLLM). Greedy-only batches skip all of it.
On CUDA the draw itself (hash + noise + argmax) is one fused Triton pass over the logits
(``seeded_noise.gumbel_argmax``, kernels/sampling.py): the hash is 32-bit integer math, bit for
bit the same as the PyTorch path.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import torch

from tritium.engine.logprobs import LogprobsTensors, TokenLogprobs, gather_logprobs
from tritium.engine.sampling_params import SamplingParams
from tritium.engine.seeded_noise import gumbel_argmax

__all__ = [
    "Sampler",
    "SamplerOutput",
    "SamplingMetadata",
    "apply_filters",
    "apply_penalties",
    "sequence_seed",
    "validate_sampling_params",
]

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


def _keep_top_k(z: torch.Tensor, top_k: torch.Tensor, max_k: int) -> torch.Tensor:
    """Exactly-k keep mask (N, V) from ``torch.topk(max_k)``; ties at the k-th value go to the
    lower ids. Rows with top_k >= V keep everything."""
    max_k = min(max_k, z.shape[1])
    thr = torch.topk(z, max_k, dim=-1).values  # (N, max_k), descending
    thr = thr.gather(1, (top_k.clamp(max=max_k) - 1)[:, None])  # (N, 1): the k-th largest
    above = z > thr
    tied = z == thr
    need = top_k[:, None] - above.sum(-1, keepdim=True)  # tied tokens still to keep
    keep = above | (tied & (tied.cumsum(-1, dtype=torch.int32) <= need))  # int32: 3x faster
    return keep | (top_k >= z.shape[1])[:, None]


def _keep_top_p(sorted_z: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Nucleus keep mask over logits sorted by (logit desc, id asc), removed ones at -inf.

    Keeps token j iff the mass strictly before it is < p of the total, so the boundary token is
    in. Unnormalized ``exp(z - z_max)`` and one cumsum, whose prefix values do not depend on
    how many -inf entries follow: the same mask over K candidates or over all V tokens.
    """
    z_max = sorted_z[:, :1].clamp(min=torch.finfo(sorted_z.dtype).min)  # all -inf: no NaN
    mass = torch.exp(sorted_z - z_max)  # (N, K)
    cum = mass.cumsum(dim=-1)
    return (cum - mass < top_p[:, None] * cum[:, -1:]) | (top_p >= 1.0)[:, None]


def _min_p_floor(z_max: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """(N, 1): ``p >= min_p * p_max`` is ``z >= z_max + log(min_p)`` (-inf when min_p = 0)."""
    return z_max + torch.log(min_p.float())[:, None]


def apply_filters(
    z: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
    max_top_k: int | None = None,
) -> torch.Tensor:
    """Top-k, then top-p, then min-p, over the whole vocabulary. Out of place.

    Args:
        z: (N, V) float32 logits already divided by temperature.
        top_k: (N,) int64 in [1, V] (V: off for that row), or None: off for every row.
        top_p: (N,) float in (0, 1] (1: off), or None. Nucleus of the top-k renormalized
            distribution.
        min_p: (N,) float in [0, 1] (0: off), or None. Keeps ``p >= min_p * p_max``;
            renormalizing after top-k/top-p leaves that ratio unchanged.
        max_top_k: the largest top_k below V (a host int): with top-p off, the exact-k mask comes
            from ``torch.topk(max_top_k)`` instead of a sort. None: V.
    Returns:
        (N, V) float32: z with removed tokens at -inf.
    """
    v = z.shape[1]
    keep = None
    if top_p is not None:
        sorted_z, order = torch.sort(z, dim=-1, descending=True, stable=True)  # ties: id asc
        if top_k is not None:
            in_top_k = torch.arange(v, device=z.device)[None, :] < top_k[:, None]
            sorted_z = sorted_z.masked_fill(~in_top_k, -math.inf)
        keep_sorted = _keep_top_p(sorted_z, top_p)
        if top_k is not None:
            keep_sorted &= in_top_k
        keep = torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)
    elif top_k is not None:
        keep = _keep_top_k(z, top_k, v if max_top_k is None else max_top_k)
    if min_p is not None:
        above = z >= _min_p_floor(z.max(dim=-1, keepdim=True).values, min_p)
        keep = above if keep is None else keep & above
    return z if keep is None else z.masked_fill(~keep, -math.inf)


def _sample_top_k_candidates(z: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Draw when every row has top-k: only max_top_k candidates per row get noise.

    Same kept set, noise and lowest-id tie rule as :func:`apply_filters` over the whole
    vocabulary, so a row draws the same token on either path. (N, V) -> (N,) int64.
    """
    keep = _keep_top_k(z, meta.top_k, meta.max_top_k)  # (N, V), exactly k per row
    cand_z, cand_ids = torch.topk(z.masked_fill(~keep, -math.inf), meta.max_top_k, dim=-1)
    cand_ids, by_id = cand_ids.sort(dim=-1)  # (N, K) in id order, like the vocabulary
    cand_z = cand_z.gather(1, by_id)
    if not (meta.no_top_p and meta.no_min_p):
        sorted_z, order = torch.sort(cand_z, dim=-1, descending=True, stable=True)
        keep_sorted = torch.ones_like(sorted_z, dtype=torch.bool)
        if not meta.no_top_p:
            keep_sorted &= _keep_top_p(sorted_z, meta.top_p)
        if not meta.no_min_p:
            keep_sorted &= sorted_z >= _min_p_floor(sorted_z[:, :1], meta.min_p)
        keep = torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)
        cand_z = cand_z.masked_fill(~keep, -math.inf)
    col = gumbel_argmax(cand_z, meta.seeds, meta.steps, cand_ids)  # (N,)
    return cand_ids.gather(1, col[:, None])[:, 0]


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


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device without a sync: pinned staging, asynchronous copy."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


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
    ids = _to_device(_padded_ids(rows, vocab_size), device)  # (N, L); pad = V
    counts = torch.zeros(len(rows), vocab_size + 1, dtype=torch.int32, device=device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))
    return counts[:, :vocab_size]


def _sparse(pairs: list[tuple[int, int, float]], device) -> tuple[torch.Tensor, ...] | None:
    """(rows, token ids, values) device tensors, or None when empty."""
    if not pairs:
        return None
    rows, ids, vals = zip(*pairs)
    return (
        _to_device(torch.tensor(rows, dtype=torch.long), device),
        _to_device(torch.tensor(ids, dtype=torch.long), device),
        _to_device(torch.tensor(vals, dtype=torch.float32), device),
    )


@dataclass
class SamplingMetadata:
    """Per-step sampling settings of N rows, on the device. Build with :meth:`build`.

    Row tensors are (N,); top_k is V, top_p 1, min_p 0 where that filter is off. Greedy rows
    never use the random path, so they get temperature 1, top_k 1, top_p 1 and min_p 0 there.
    The Python flags (over the random rows) let the sampler skip whole stages.
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
    all_top_k: bool  # every random row has top_k < V: draw among max_top_k candidates only
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
            # greedy rows never use the random path's settings: make them the cheapest
            for key, val in (("temperature", 1.0 if greedy else p.temperature),
                             ("greedy", greedy), ("top_k", 1 if greedy else k),
                             ("top_p", 1.0 if greedy else p.top_p),
                             ("min_p", 0.0 if greedy else p.min_p),
                             ("repetition_penalty", p.repetition_penalty),
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
            return _to_device(torch.tensor(cols[key], dtype=dtype), device)

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
        random_ks = [k for k, g in zip(cols["top_k"], greedy) if not g]
        top_ks = [k for k in random_ks if k < vocab_size]
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
            all_top_k=bool(random_ks) and len(top_ks) == len(random_ks),
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

        (N, V) float32 in, (N, V) float32 out; the input is never written to.
        """
        if meta.logit_bias is not None or meta.min_tokens_mask is not None:
            logits = logits.clone()  # the in-place edits below must not reach the caller's
        if meta.logit_bias is not None:
            rows, ids, vals = meta.logit_bias
            logits.index_put_((rows, ids), vals, accumulate=True)
        if meta.min_tokens_mask is not None:
            rows, ids = meta.min_tokens_mask
            logits.index_put_((rows, ids), torch.full((), -math.inf, device=logits.device))
        if not meta.no_penalties:
            logits = apply_penalties(logits, meta)
        return logits

    @staticmethod
    def _sample_random(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """Temperature, filters, then the seeded Gumbel-max draw. (N,) int64."""
        z = logits / meta.temperature[:, None]  # (N, V)
        if meta.all_top_k:
            return _sample_top_k_candidates(z, meta)
        z = apply_filters(
            z,
            None if meta.no_top_k else meta.top_k,
            None if meta.no_top_p else meta.top_p,
            None if meta.no_min_p else meta.min_p,
            max_top_k=meta.max_top_k,
        )
        return gumbel_argmax(z, meta.seeds, meta.steps)

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
