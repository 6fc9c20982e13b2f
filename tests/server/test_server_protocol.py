"""The pure parts of the server: request schemas, option mapping, response and chunk shapes."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from quickdraft.errors import ContextOverflowError, InvalidParameterError, QuickdraftError, UnknownMethodError
from quickdraft.server.protocol import (APIError, Reply, engine_error, engine_prompt, error_param,
                                        generation_options, model_not_found, speculative_summary, sse, usage,
                                        validation_error)
from quickdraft.server.schemas import ChatCompletionRequest, CompletionRequest

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_defaults_follow_openai_and_the_engine():
    options = generation_options(ChatCompletionRequest(**CHAT))
    assert options == {"max_tokens": None, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": None, "stop": [],
                       "method": None, "num_draft": None}


def test_speculative_and_sampling_fields_map_to_engine_keywords():
    request = ChatCompletionRequest(**CHAT, temperature=0, top_p=0.5, top_k=3, seed=9, stop="END", max_tokens=5,
                                    speculative={"method": "ngram", "num_draft": 6})
    assert generation_options(request) == {"max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": 3, "seed": 9,
                                           "stop": ["END"], "method": "ngram", "num_draft": 6}


def test_chat_prompt_is_templated_messages_and_completion_prompt_is_raw():
    chat = ChatCompletionRequest(model="m", messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert engine_prompt(chat) == ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}],
                                   True)
    assert engine_prompt(CompletionRequest(model="m", prompt=["just one"])) == ("just one", False)
    assert engine_prompt(CompletionRequest(model="m", prompt=[[5, 6, 7]])) == ([5, 6, 7], False)


def test_max_completion_tokens_is_max_tokens():
    assert ChatCompletionRequest(**CHAT, max_completion_tokens=7).max_tokens == 7


@pytest.mark.parametrize("fields", [{"n": 2}, {"stop": [""]}, {"stop": ["x"] * 17}, {"logprobs": True},
                                    {"presence_penalty": 0.5}, {"tools": [{"type": "function"}]},
                                    {"speculative": {"method": "draft", "draft_path": "/etc/passwd"}},
                                    {"seed": -1}, {"temperature": float("nan")}])
def test_refused_fields(fields):
    with pytest.raises(ValidationError):
        ChatCompletionRequest(**CHAT, **fields)


def test_neutral_values_of_unsupported_features_are_accepted():
    ChatCompletionRequest(**CHAT, n=1, logprobs=False, presence_penalty=0, frequency_penalty=0.0, tools=[],
                          logit_bias={}, response_format={"type": "text"}, user="someone")


def test_engine_errors_become_400s_naming_the_request_field():
    overflow = engine_error(ContextOverflowError("too long", param="prompt"), prompt_param="prompt")
    assert (overflow.status, overflow.param, overflow.code) == (400, "prompt", "context_length_exceeded")
    chat_overflow = engine_error(ContextOverflowError("too long", param="prompt"), prompt_param="messages")
    assert chat_overflow.param == "messages"
    assert engine_error(ContextOverflowError("too long", param="max_tokens")).param == "max_tokens"
    bad = engine_error(InvalidParameterError("bad top_p", param="top_p"))
    assert (bad.code, bad.param) == ("invalid_value", "top_p")
    method = engine_error(UnknownMethodError("no such method"))
    assert (method.code, method.param) == ("invalid_method", "speculative.method")
    assert engine_error(QuickdraftError("no")).body() == {
        "error": {"message": "no", "type": "invalid_request_error", "param": None, "code": "invalid_request"}}


def test_error_param_names_the_field():
    assert error_param(("body", "messages", 0, "role")) == "messages[0].role"
    assert error_param(("body", "stop", "list[str]", 0)) == "stop"
    assert error_param(("body",)) is None


def test_validation_errors_read_well():
    missing = validation_error([{"loc": ("body", "messages"), "msg": "Field required", "type": "missing"}])
    assert (missing.status, missing.param, missing.message) == (400, "messages", "missing required field 'messages'")
    n = validation_error([{"loc": ("body", "n"), "msg": "Value error, only n=1 is supported", "type": "value_error"}])
    assert n.message == "invalid 'n': only n=1 is supported"
    bad_json = validation_error([{"loc": ("body", 1), "msg": "JSON decode error", "type": "json_invalid",
                                  "ctx": {"error": "Expecting value"}}])
    assert bad_json.code == "invalid_json" and "Expecting value" in bad_json.message


def test_chat_response_and_chunks():
    reply = Reply("chat", "chatcmpl-1", 123, "m")
    body = reply.response("hi", "stop", usage(3, 1), speculative_summary("draft", 4, {"accepted_lengths": [1]}))
    assert body["object"] == "chat.completion" and body["choices"][0]["message"] == {"role": "assistant",
                                                                                        "content": "hi"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert body["speculative"] == {"method": "draft", "num_draft": 4}  # per-step lists left out
    first, middle = reply.chunk("", first=True), reply.chunk("x")
    last = reply.chunk(finish_reason="length", speculative={})
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert middle["choices"][0]["delta"] == {"content": "x"} and middle["object"] == "chat.completion.chunk"
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
    assert reply.usage_chunk(usage(1, 2))["choices"] == []


def test_text_completion_chunks_and_sse():
    reply = Reply("text", "cmpl-1", 1, "m")
    assert reply.response("t", "length", usage(1, 1), {})["choices"][0]["text"] == "t"
    chunk = reply.chunk("abc")
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["text"] == "abc"
    line = sse(chunk)
    assert line.startswith("data: ") and line.endswith("\n\n") and json.loads(line[6:]) == chunk
    assert sse("[DONE]") == "data: [DONE]\n\n"


def test_api_error_body_is_openais_shape():
    assert set(APIError(400, "m").body()["error"]) == {"message", "type", "param", "code"}


def test_model_not_found_names_what_is_served():
    error = model_not_found("qwen2.5-coder-1", ("tiny", "tiny.gguf"))
    assert (error.status, error.param, error.code) == (404, "model", "model_not_found")
    assert "'tiny'" in error.message and "tiny.gguf" in error.message
