"""Engine configuration: one dataclass per concern, validated in ``__post_init__``.

Names and defaults follow vLLM's engine arguments (``--block-size``, ``--num-gpu-blocks-override``
is ``num_kv_blocks`` here, ``--gpu-memory-utilization``, ``--max-num-seqs``,
``--max-num-batched-tokens``, ``--max-model-len``, ``--enable-prefix-caching``,
``--kv-cache-dtype``). Pure Python: the CLI fills these, the engine resolves the ``None`` fields
(model length from the model config, block count from free device memory) with
``dataclasses.replace`` before building the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "float32", "fp8", "fp8_e4m3", "fp8_e5m2")
MODEL_DTYPES = ("auto", "float16", "bfloat16", "float32")


def _positive_int(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{' or None' if allow_none else ''}, "
                         f"got {value!r}")


@dataclass
class CacheConfig:
    """The paged KV cache.

    Attributes:
        block_size: tokens per KV block (vLLM's default 16).
        num_kv_blocks: blocks in the cache; None = as many as ``gpu_memory_utilization`` of the
            device memory allows after the weights and a profiling forward (the model runner
            resolves it).
        gpu_memory_utilization: fraction of device memory the engine may use, in (0, 1].
        enable_prefix_caching: keep full blocks, addressed by a hash of their tokens and of
            every token before them, for reuse by later requests sharing the prefix.
        kv_cache_dtype: "auto" (the model dtype) or an explicit dtype; fp8 variants store K/V
            in 8 bits.
        cpu_kv_cache_gb: on CPU, the cache's size in GiB when ``num_kv_blocks`` is None (like
            vLLM's VLLM_CPU_KVCACHE_SPACE).
    """

    block_size: int = 16
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"
    cpu_kv_cache_gb: float = 1.0

    def __post_init__(self) -> None:
        _positive_int("block_size", self.block_size)
        if not isinstance(self.cpu_kv_cache_gb, (int, float)) or self.cpu_kv_cache_gb <= 0:
            raise ValueError(f"cpu_kv_cache_gb must be > 0, got {self.cpu_kv_cache_gb!r}")
        _positive_int("num_kv_blocks", self.num_kv_blocks, allow_none=True)
        if not isinstance(self.gpu_memory_utilization, (int, float)) or not (
            0.0 < self.gpu_memory_utilization <= 1.0
        ):
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}"
            )
        if not isinstance(self.enable_prefix_caching, bool):
            raise TypeError(
                f"enable_prefix_caching must be a bool, got {self.enable_prefix_caching!r}"
            )
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}"
            )


@dataclass
class SchedulerConfig:
    """The per-step batch.

    Attributes:
        max_num_seqs: most sequences running at once (each sibling of an n > 1 request counts).
        max_num_batched_tokens: token budget of one step, shared by prefill chunks and decodes.
            Prompts longer than the budget are prefilled in chunks.
        max_model_len: most tokens (prompt + output) of one sequence; None = the model's
            ``max_position_embeddings`` (the engine resolves it).
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        _positive_int("max_num_seqs", self.max_num_seqs)
        _positive_int("max_num_batched_tokens", self.max_num_batched_tokens)
        _positive_int("max_model_len", self.max_model_len, allow_none=True)
        # Every running sequence must be able to decode in the same step.
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs})"
            )


@dataclass
class EngineConfig:
    """Everything an ``LLMEngine`` needs to start.

    Attributes:
        model: checkpoint path (HF directory or .gguf file); None = the embedded SmolLM2-135M.
        tokenizer: tokenizer folder (``AutoTokenizer.from_pretrained``) or .gguf file that
            replaces the model's own (vLLM's ``--tokenizer``); None = the model's. Gives
            ``random:<preset>`` models a tokenizer (their vocabulary is sized to it).
        dtype: weight and activation dtype; "auto" = the checkpoint's (float32 on CPU).
        device: "cuda", "cpu", ...; None = CUDA when available.
        seed: seed of the engine's own randomness (unseeded requests still draw fresh seeds).
        served_model_name: name reported by the server; None = derived from ``model``.
        skip_tokenizer_init: run without a tokenizer (vLLM's flag): prompts must be token ids,
            outputs carry token ids and empty text, stop strings are refused. Implied by
            models without a tokenizer (``random:<preset>``).
        scheduler / cache: see :class:`SchedulerConfig` and :class:`CacheConfig`.
        enforce_eager: never use CUDA graphs (vLLM's flag); CPU always runs eagerly.
        max_cudagraph_capture_size: decode steps of up to this many sequences replay a CUDA
            graph (captured at start-up for 1, 2, 4, 8, 16, 24, ... up to it); larger ones run
            eagerly. None = min(max_num_seqs, 512).
        async_scheduling: schedule and launch step N+1 before reading step N's tokens, so the
            host's per-step work overlaps the device's (vLLM's ``--async-scheduling``). Same
            outputs; a request that finishes costs one discarded row of the next step. Steps
            run synchronously while a request with logprobs, prompt logprobs or penalties is
            unfinished (those read the previous token on the host).
    """

    model: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"
    device: str | None = None
    seed: int = 0
    served_model_name: str | None = None
    skip_tokenizer_init: bool = False
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    enforce_eager: bool = False
    max_cudagraph_capture_size: int | None = None
    async_scheduling: bool = False

    def __post_init__(self) -> None:
        for name in ("enforce_eager", "async_scheduling"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _positive_int("max_cudagraph_capture_size", self.max_cudagraph_capture_size,
                      allow_none=True)
        if self.dtype not in MODEL_DTYPES:
            raise ValueError(f"dtype must be one of {MODEL_DTYPES}, got {self.dtype!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if self.tokenizer is not None and (not isinstance(self.tokenizer, str)
                                           or not self.tokenizer):
            raise TypeError(f"tokenizer must be a non-empty path or None, got {self.tokenizer!r}")
        if not isinstance(self.skip_tokenizer_init, bool):
            raise TypeError(
                f"skip_tokenizer_init must be a bool, got {self.skip_tokenizer_init!r}"
            )
        if not isinstance(self.scheduler, SchedulerConfig):
            raise TypeError(f"scheduler must be a SchedulerConfig, got {self.scheduler!r}")
        if not isinstance(self.cache, CacheConfig):
            raise TypeError(f"cache must be a CacheConfig, got {self.cache!r}")
