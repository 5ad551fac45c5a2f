"""The offline API: ``LLM(model).generate(prompts, params)``, as in vLLM.

    from tritium import LLM, SamplingParams
    llm = LLM()                                   # the embedded SmolLM2-135M-Instruct
    outs = llm.generate(["Hello, my name is"], SamplingParams(temperature=0, max_tokens=32))
    print(outs[0].outputs[0].text)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence as SequenceABC
from typing import Any

from tqdm.auto import tqdm

from tritium.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from tritium.engine.llm_engine import LLMEngine
from tritium.engine.outputs import RequestOutput
from tritium.engine.sampling_params import SamplingParams

Prompt = str | list[int] | dict


class LLM:
    """A continuous-batching engine for offline generation.

    Args:
        model: a .gguf file or Hugging Face model folder; None = the embedded SmolLM2-135M.
        tokenizer: a tokenizer folder or .gguf file replacing the model's own (vLLM's name);
            gives a "random:<preset>" model text prompts, chat and detokenization.
        dtype: "auto" (float32 on CPU, bfloat16 on CUDA), "float32", "bfloat16", "float16".
        device: "cpu", "cuda", ...; None = CUDA when available.
        block_size, num_kv_blocks, gpu_memory_utilization, enable_prefix_caching,
        kv_cache_dtype, cpu_kv_cache_gb: the paged KV cache (see ``CacheConfig``).
        max_num_seqs, max_num_batched_tokens, max_model_len: the batch (``SchedulerConfig``).
        seed: the engine's own seed.
        skip_tokenizer_init: no tokenizer: prompts are token ids, outputs have empty text
            (implied by models without one, e.g. "random:llama3-8b").
        enforce_eager, max_cudagraph_capture_size: CUDA graphs for decode steps (on by
            default on CUDA; see ``EngineConfig``).
        async_scheduling: overlap the host's per-step work with the device's previous step
            (see ``EngineConfig``).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        tokenizer: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        seed: int = 0,
        block_size: int = 16,
        num_kv_blocks: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = True,
        kv_cache_dtype: str = "auto",
        cpu_kv_cache_gb: float = 1.0,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        max_model_len: int | None = None,
        skip_tokenizer_init: bool = False,
        enforce_eager: bool = False,
        max_cudagraph_capture_size: int | None = None,
        async_scheduling: bool = False,
    ) -> None:
        config = EngineConfig(
            model=model, tokenizer=tokenizer, dtype=dtype, device=device, seed=seed,
            skip_tokenizer_init=skip_tokenizer_init, enforce_eager=enforce_eager,
            max_cudagraph_capture_size=max_cudagraph_capture_size,
            async_scheduling=async_scheduling,
            scheduler=SchedulerConfig(
                max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                max_model_len=max_model_len,
            ),
            cache=CacheConfig(
                block_size=block_size, num_kv_blocks=num_kv_blocks,
                gpu_memory_utilization=gpu_memory_utilization,
                enable_prefix_caching=enable_prefix_caching, kv_cache_dtype=kv_cache_dtype,
                cpu_kv_cache_gb=cpu_kv_cache_gb,
            ),
        )
        self.engine = LLMEngine(config)
        self.tokenizer = self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | SequenceABC[Prompt],
        sampling_params: SamplingParams | SequenceABC[SamplingParams] | None = None,
        use_tqdm: bool | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in the prompts' order.

        Args:
            prompts: a string, a list of token ids, ``{"prompt_token_ids": [...]}``, or a list
                of those.
            sampling_params: one for all prompts, or one per prompt; None = defaults.
            use_tqdm: show a progress bar; None = when stderr is a terminal.
        """
        prompts = _as_prompt_list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        ids = []
        for prompt, p in zip(prompts, params):
            if isinstance(prompt, dict):
                prompt = prompt.get("prompt_token_ids", prompt.get("prompt"))
            ids.append(self.engine.add_request(None, prompt, p))
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict[str, str]] | list[list[dict[str, str]]],
        sampling_params: SamplingParams | SequenceABC[SamplingParams] | None = None,
        use_tqdm: bool | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Apply the chat template to one conversation or a list of them, then generate."""
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.apply_chat_template(c, add_generation_prompt) for c in convs]
        return self.generate(prompts, sampling_params, use_tqdm)

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """A conversation -> prompt token ids, through the model's own chat template."""
        if self.tokenizer is None:
            raise ValueError("chat needs a tokenizer; this LLM runs without one "
                             "(skip_tokenizer_init)")
        if not messages:
            raise ValueError("messages must not be empty")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"each message needs 'role' and 'content', got {m!r}")
        out = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True
        )
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return list(out)

    def _run(self, request_ids: list[str], use_tqdm: bool | None) -> list[RequestOutput]:
        if use_tqdm is None:
            use_tqdm = sys.stderr.isatty()
        final: dict[str, RequestOutput] = {}
        with tqdm(total=len(request_ids), desc="generate", unit="req", disable=not use_tqdm,
                  file=sys.stderr) as bar:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step(final_only=True):
                    if out.finished:
                        final[out.request_id] = out
                        bar.update(1)
        return [final[r] for r in request_ids]


def _as_prompt_list(prompts: Any) -> list[Prompt]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        if prompts and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
            return [list(prompts)]  # one tokenized prompt
        return list(prompts)
    raise TypeError(f"prompts must be a string, token ids, or a list of them; got {prompts!r}")
