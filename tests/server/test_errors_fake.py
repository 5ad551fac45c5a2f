"""Every bad input gets an HTTP 4xx with OpenAI's error body, and the server keeps serving."""

from __future__ import annotations

import pytest
from server_utils import FAKE_MODEL, HTTP

MSG = [{"role": "user", "content": "hi"}]

# (path, body or raw bytes, status, code or None, param or None)
BAD = [
    ("/v1/chat/completions", b"{not json", 400, "invalid_json", None),
    ("/v1/chat/completions", b"[1, 2]", 400, "invalid_json", None),
    ("/v1/chat/completions", b"\xff\xfe", 400, "invalid_json", None),
    ("/v1/chat/completions", b"[" * 20000 + b"]" * 20000, 400, "invalid_json", None),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
     b'"temperature": NaN}', 400, None, "temperature"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": "3"}, 400, None, "max_tokens"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": 10**30}, 400,
     "context_length_exceeded", "max_tokens"),
    ("/v1/chat/completions", {"messages": MSG, "seed": 2**70}, 400, None, "seed"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": 2.5}, 400, None, "max_tokens"),
    ("/v1/chat/completions", {"messages": MSG, "temperature": "hot"}, 400, None, "temperature"),
    ("/v1/chat/completions", {"messages": MSG, "stream": "yes"}, 400, None, "stream"),
    ("/v1/chat/completions", {"messages": MSG, "n": True}, 400, None, "n"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, None, "messages"),
    ("/v1/chat/completions", {"messages": MSG, "stop": 5}, 400, None, None),
    ("/v1/chat/completions", {"messages": MSG, "model": "gpt-9"}, 404, "model_not_found",
     "model"),
    ("/v1/completions", {"prompt": "x", "model": "nope"}, 404, "model_not_found", "model"),
    ("/v1/chat/completions", {"messages": MSG, "temperature": 2.5}, 400, None, "temperature"),
    ("/v1/chat/completions", {"messages": MSG, "temperature": -1}, 400, None, "temperature"),
    ("/v1/chat/completions", {"messages": MSG, "top_p": 0}, 400, None, "top_p"),
    ("/v1/chat/completions", {"messages": MSG, "top_p": 1.5}, 400, None, "top_p"),
    ("/v1/chat/completions", {"messages": MSG, "n": 0}, 400, None, "n"),
    ("/v1/chat/completions", {"messages": MSG, "n": 1000}, 400, None, "n"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": 0}, 400, None, "max_tokens"),
    ("/v1/chat/completions", {"messages": MSG, "max_completion_tokens": -3}, 400, None,
     "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": MSG, "presence_penalty": 3}, 400, None,
     "presence_penalty"),
    ("/v1/chat/completions", {"messages": MSG, "frequency_penalty": -2.5}, 400, None,
     "frequency_penalty"),
    ("/v1/chat/completions", {"messages": MSG, "min_p": 2}, 400, None, "min_p"),
    ("/v1/chat/completions", {"messages": MSG, "repetition_penalty": 0}, 400, None,
     "repetition_penalty"),
    ("/v1/chat/completions", {"messages": MSG, "top_k": -5}, 400, None, "top_k"),
    ("/v1/chat/completions", {"messages": MSG, "logprobs": True, "top_logprobs": 21}, 400,
     None, "top_logprobs"),
    ("/v1/chat/completions", {"messages": MSG, "top_logprobs": 2}, 400, None, "top_logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, 400, None, "logprobs"),
    ("/v1/chat/completions", {"messages": MSG, "logit_bias": {"abc": 1}}, 400, None,
     "logit_bias"),
    ("/v1/chat/completions", {"messages": MSG, "logit_bias": {"5": 200}}, 400, None,
     "logit_bias"),
    ("/v1/chat/completions", {"messages": MSG, "logit_bias": {"999999": 1}}, 400, None,
     "logit_bias"),
    ("/v1/chat/completions", {"messages": MSG, "min_tokens": 9, "max_tokens": 3}, 400, None,
     None),
    ("/v1/chat/completions", {"messages": MSG, "stop": ""}, 400, None, "stop"),
    ("/v1/chat/completions", {"messages": MSG, "stop": [str(i) for i in range(17)]}, 400, None,
     "stop"),
    ("/v1/chat/completions", {"messages": MSG, "stop_token_ids": [100000]}, 400, None,
     "stop_token_ids"),
    ("/v1/chat/completions", {"messages": []}, 400, None, "messages"),
    ("/v1/chat/completions", {}, 400, None, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, None,
     "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, None, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     400, None, None),
    ("/v1/chat/completions", {"messages": MSG, "tools": [{"type": "function"}]}, 400, None,
     "tools"),
    ("/v1/completions", {}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": []}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 100000]}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": "x" * 600}, 400, "context_length_exceeded", "prompt"),
    ("/v1/completions", {"prompt": "x" * 500, "max_tokens": 100}, 400,
     "context_length_exceeded", "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 600}]}, 400,
     "context_length_exceeded", "messages"),
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, 400, None, "suffix"),
]


@pytest.mark.parametrize("path,body,status,code,param", BAD,
                         ids=[f"{i}-{b if isinstance(b, bytes) else list(b)}"[:60]
                              for i, (_, b, *_) in enumerate(BAD)])
def test_bad_request(fake_server, path, body, status, code, param):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = HTTP.post(f"{fake_server.url}{path}", timeout=10, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] in ("invalid_request_error", "not_found_error")
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param or (err["param"] or "").startswith(param), err


def test_unknown_route_and_method(fake_server):
    r = HTTP.get(f"{fake_server.url}/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = HTTP.get(f"{fake_server.url}/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_still_serving_after_bad_inputs(fake_server):
    for _, body, *_ in BAD[:10]:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        HTTP.post(f"{fake_server.url}/v1/chat/completions", timeout=10, **kw)
    r = HTTP.post(f"{fake_server.url}/v1/chat/completions",
                   json={"model": FAKE_MODEL, "messages": MSG, "max_tokens": 3}, timeout=10)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert fake_server.wait_idle()["tritium:kv_cache_usage_perc"] == 0
