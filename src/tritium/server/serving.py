"""/v1/completions and /v1/chat/completions: requests -> engine jobs -> responses or SSE streams.

One HTTP request becomes one engine request per prompt (completions accept a batch of prompts;
choice ``index = prompt_index * n + sequence_index``, as OpenAI). Prompts are tokenized here, so
length errors are answered before admission and usage counts are exact: ``prompt_tokens`` counts
each prompt once, ``completion_tokens`` every generated token of every choice.

Streams send a chunk whenever a choice's text grows (engine outputs are cumulative; deltas are
cut here), then ``data: [DONE]``. Admission, disconnects and the SSE response are in jobs.py.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from tritium.engine.async_engine import EngineDeadError, RequestAbortedError
from tritium.engine.sampling_params import SamplingParams
from tritium.server.errors import APIError
from tritium.server.jobs import (
    Job,
    SSEResponse,
    abort_unfinished,
    merged,
    run_to_end,
    sse,
    stream_error,
    submit,
    usage_of,
)
from tritium.server.logprobs import chat_logprobs, completion_logprobs
from tritium.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    SamplingFields,
    UsageInfo,
)

if TYPE_CHECKING:
    from tritium.server.api import ServerState

logger = logging.getLogger(__name__)

MAX_STOP = 16


# ----------------------------------------------------------------------------- prompts
def completion_prompts(state: ServerState, req: CompletionRequest) -> list[tuple[str, list[int]]]:
    """(text, token ids) of every prompt of a completion request."""
    tok = state.engine.tokenizer
    p = req.prompt
    if isinstance(p, str):
        raw: list[Any] = [p]
    elif len(p) == 0:
        raise APIError(400, "prompt must not be empty", param="prompt")
    elif isinstance(p[0], int):
        raw = [p]
    else:
        raw = list(p)
    out = []
    for item in raw:
        if isinstance(item, str):
            out.append((item, list(tok.encode(item))))
        else:
            check_token_ids(state, item, "prompt")
            out.append((tok.decode(item), list(item)))
    return out


def chat_prompt(state: ServerState, req: ChatCompletionRequest) -> tuple[str, list[int]]:
    """Render the messages with the model's chat template and tokenize the result."""
    tok = state.engine.tokenizer
    messages = []
    for i, m in enumerate(req.messages):
        if m.content is None:
            raise APIError(400, f"messages.{i}.content must be a string",
                           param=f"messages.{i}.content")
        content = m.content if isinstance(m.content, str) else "\n".join(p.text for p in m.content)
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": content})
    if getattr(tok, "chat_template", None) is None:
        raise APIError(400, "this model has no chat template; use /v1/completions",
                       param="messages")
    try:
        text = tok.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=req.add_generation_prompt)
    except Exception as e:  # noqa: BLE001 - template errors (e.g. role order) are the client's
        raise APIError(400, f"the chat template rejected the messages: {e}",
                       param="messages") from e
    return text, list(tok.encode(text, add_special_tokens=False))


def check_token_ids(state: ServerState, ids: list[int], param: str) -> None:
    vocab = vocab_size(state)
    if vocab is not None:
        for t in ids:
            if not 0 <= t < vocab:
                raise APIError(400, f"token id {t} is outside the vocabulary [0, {vocab})",
                               param=param)


def vocab_size(state: ServerState) -> int | None:
    config = getattr(state.engine.engine, "model_config", None)
    return getattr(config, "vocab_size", None)


# ---------------------------------------------------------------------------- sampling
def sampling_params(state: ServerState, req: SamplingFields, prompt_len: int,
                    max_tokens: int | None, logprobs: int | None, prompt_param: str
                    ) -> SamplingParams:
    """Map OpenAI (+ vLLM extra) fields onto SamplingParams; 400 for what cannot work."""
    limit = state.engine.max_model_len
    if prompt_len == 0:
        raise APIError(400, "the prompt is empty (0 tokens)", param=prompt_param)
    if prompt_len >= limit:
        raise APIError(400, f"this model's maximum context length is {limit} tokens, but the "
                       f"prompt has {prompt_len} tokens", param=prompt_param,
                       code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = limit - prompt_len
    elif prompt_len + max_tokens > limit:
        raise APIError(400, f"this model's maximum context length is {limit} tokens, but "
                       f"{prompt_len + max_tokens} were requested ({prompt_len} in the prompt, "
                       f"{max_tokens} for the completion); reduce the prompt or max_tokens",
                       param="max_tokens", code="context_length_exceeded")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP or any(not s for s in stop):
        raise APIError(400, f"stop must be at most {MAX_STOP} non-empty strings", param="stop")
    bias = None
    if req.logit_bias:
        bias = {}
        for key, value in req.logit_bias.items():
            if not key.lstrip("-").isdigit():
                raise APIError(400, f"logit_bias keys must be token ids, got {key!r}",
                               param="logit_bias")
            if not -100 <= value <= 100:
                raise APIError(400, f"logit_bias values must be in [-100, 100], got {value}",
                               param="logit_bias")
            bias[int(key)] = float(value)
        check_token_ids(state, list(bias), "logit_bias")
    check_token_ids(state, req.stop_token_ids or [], "stop_token_ids")
    try:
        return SamplingParams(
            n=req.n, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k, min_p=req.min_p,
            repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, seed=req.seed, max_tokens=max_tokens,
            min_tokens=req.min_tokens, stop=stop, stop_token_ids=list(req.stop_token_ids or []),
            ignore_eos=req.ignore_eos, include_stop_str_in_output=req.include_stop_str_in_output,
            logprobs=logprobs, logit_bias=bias, skip_special_tokens=req.skip_special_tokens,
        )
    except (ValueError, TypeError) as e:
        raise APIError(400, str(e)) from e


# ------------------------------------------------------------------------ completions
async def serve_completion(request: Request, state: ServerState,
                           req: CompletionRequest) -> Response:
    if req.suffix is not None:
        raise APIError(400, "suffix is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of other than n is not supported", param="best_of")
    if req.echo and req.logprobs is not None:
        raise APIError(400, "echo together with logprobs is not supported", param="echo")
    prompts = completion_prompts(state, req)
    rid = f"cmpl-{uuid.uuid4().hex}"
    jobs = [Job(f"{rid}-{i}", ids, text) for i, (text, ids) in enumerate(prompts)]
    max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default
    params = [sampling_params(state, req, len(j.prompt_ids), max_tokens, req.logprobs, "prompt")
              for j in jobs]
    await submit(state, jobs, params)
    created = int(time.time())
    model = state.model_name
    if req.stream:
        gen = _completion_stream(state, req, jobs, rid, created)
        return SSEResponse(gen, lambda: abort_unfinished(state, jobs))
    finals = await run_to_end(request, state, jobs)
    if finals is None:
        return Response(status_code=499)
    choices = []
    for j, (job, out) in enumerate(zip(jobs, finals)):
        for c in out.outputs:
            lp = (completion_logprobs(state.engine.tokenizer, c.logprobs, c.token_ids,
                                      req.logprobs, 0) if req.logprobs is not None else None)
            text = (job.prompt_text if req.echo else "") + c.text
            choices.append(CompletionChoice(index=j * req.n + c.index, text=text, logprobs=lp,
                                            finish_reason=c.finish_reason,
                                            stop_reason=c.stop_reason))
    choices.sort(key=lambda ch: ch.index)
    body = CompletionResponse(id=rid, created=created, model=model, choices=choices,
                              usage=usage_of(jobs, finals))
    return JSONResponse(body.model_dump())


async def _completion_stream(state: ServerState, req: CompletionRequest, jobs: list[Job],
                             rid: str, created: int) -> AsyncIterator[str]:
    sent_text: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    done: set[int] = set()
    finals: list[Any] = [None] * len(jobs)
    try:
        async for j, out in merged(jobs):
            finals[j] = out
            for c in out.outputs:
                idx = j * req.n + c.index
                if idx in done:
                    continue
                delta = c.text[sent_text.get(idx, 0):]
                if not delta and c.finish_reason is None:
                    continue
                first = idx not in sent_text
                lp = None
                if req.logprobs is not None:
                    lp = completion_logprobs(state.engine.tokenizer,
                                             c.logprobs[sent_tokens.get(idx, 0):],
                                             c.token_ids[sent_tokens.get(idx, 0):],
                                             req.logprobs, sent_text.get(idx, 0))
                if first and req.echo:
                    delta = jobs[j].prompt_text + delta
                choice = CompletionChoice(index=idx, text=delta, logprobs=lp,
                                          finish_reason=c.finish_reason,
                                          stop_reason=c.stop_reason)
                yield sse(CompletionResponse(id=rid, created=created, model=state.model_name,
                                             choices=[choice]))
                sent_text[idx], sent_tokens[idx] = len(c.text), len(c.token_ids)
                if c.finish_reason is not None:
                    done.add(idx)
        if req.stream_options is not None and req.stream_options.include_usage:
            yield sse(CompletionResponse(id=rid, created=created, model=state.model_name,
                                         choices=[], usage=usage_of(jobs, finals)))
    except (RequestAbortedError, EngineDeadError) as e:
        yield stream_error(e)
    yield "data: [DONE]\n\n"


# ------------------------------------------------------------------------------- chat
async def serve_chat(request: Request, state: ServerState, req: ChatCompletionRequest) -> Response:
    if req.tools or req.tool_choice not in (None, "none"):
        raise APIError(400, "tools are not supported", param="tools")
    fmt = req.response_format
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise APIError(400, "only response_format {'type': 'text'} is supported",
                       param="response_format")
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
    text, ids = chat_prompt(state, req)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    jobs = [Job(rid, ids, text)]
    k = (req.top_logprobs or 0) if req.logprobs else None
    max_tokens = req.max_completion_tokens or req.max_tokens
    params = [sampling_params(state, req, len(ids), max_tokens, k, "messages")]
    await submit(state, jobs, params)
    created = int(time.time())
    if req.stream:
        gen = _chat_stream(state, req, jobs, rid, created, k)
        return SSEResponse(gen, lambda: abort_unfinished(state, jobs))
    finals = await run_to_end(request, state, jobs)
    if finals is None:
        return Response(status_code=499)
    choices = [
        ChatChoice(index=c.index, message=AssistantMessage(content=c.text),
                   logprobs=(chat_logprobs(state.engine.tokenizer, c.logprobs, c.token_ids, k)
                             if k is not None else None),
                   finish_reason=c.finish_reason, stop_reason=c.stop_reason)
        for c in finals[0].outputs
    ]
    body = ChatCompletionResponse(id=rid, created=created, model=state.model_name,
                                  choices=choices, usage=usage_of(jobs, finals))
    return JSONResponse(body.model_dump())


async def _chat_stream(state: ServerState, req: ChatCompletionRequest, jobs: list[Job], rid: str,
                       created: int, k: int | None) -> AsyncIterator[str]:
    def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> str:
        return sse(ChatCompletionChunk(id=rid, created=created, model=state.model_name,
                                       choices=choices, usage=usage))

    sent_text: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    done: set[int] = set()
    final = None
    try:
        async for _, out in merged(jobs):
            if final is None:  # the role arrives with the first output, as vLLM sends it
                yield chunk([ChatChunkChoice(index=c.index, delta=DeltaMessage(
                    role="assistant", content="")) for c in out.outputs])
            final = out
            for c in out.outputs:
                if c.index in done:
                    continue
                delta = c.text[sent_text.get(c.index, 0):]
                if not delta and c.finish_reason is None:
                    continue
                lp = None
                if k is not None:
                    start = sent_tokens.get(c.index, 0)
                    lp = chat_logprobs(state.engine.tokenizer, c.logprobs[start:],
                                       c.token_ids[start:], k)
                yield chunk([ChatChunkChoice(index=c.index,
                                             delta=DeltaMessage(content=delta or None),
                                             logprobs=lp, finish_reason=c.finish_reason,
                                             stop_reason=c.stop_reason)])
                sent_text[c.index], sent_tokens[c.index] = len(c.text), len(c.token_ids)
                if c.finish_reason is not None:
                    done.add(c.index)
        if req.stream_options is not None and req.stream_options.include_usage:
            yield chunk([], usage_of(jobs, [final]))
    except (RequestAbortedError, EngineDeadError) as e:
        yield stream_error(e)
    yield "data: [DONE]\n\n"
