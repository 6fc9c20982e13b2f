"""The pure parts of the server: request schemas, option mapping, response and chunk shapes."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from quickdraft.errors import ContextOverflowError, InvalidParameterError, QuickdraftError, UnknownMethodError
from quickdraft.requests import Request
from quickdraft.proposers import METHODS
from quickdraft.verifiers import TypicalAcceptance
from quickdraft.records import TokenLogprob
from quickdraft.sampling import SamplingParams
from quickdraft.server.protocol import (APIError, Reply, chat_logprobs, choice_requests, engine_error, engine_prompt,
                                        error_param, generation_options, model_not_found, speculative_summary, sse,
                                        text_logprobs, usage, validation_error)
from quickdraft.server.schemas import ChatCompletionRequest, CompletionRequest

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_defaults_follow_openai_and_the_engine():
    options = generation_options(ChatCompletionRequest(**CHAT))
    assert options == {"max_tokens": None, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": None, "stop": [],
                       "presence_penalty": 0.0, "frequency_penalty": 0.0, "logit_bias": {}, "logprobs": None,
                       "method": None, "num_draft": None, "grammar": None, "tools": None,
                       "acceptance": None}


def test_speculative_and_sampling_fields_map_to_engine_keywords():
    request = ChatCompletionRequest(**CHAT, temperature=0, top_p=0.5, top_k=3, seed=9, stop="END", max_tokens=5,
                                    speculative={"method": "ngram", "num_draft": 6}, presence_penalty=0.5,
                                    frequency_penalty=-1, logit_bias={"12": -100}, logprobs=True, top_logprobs=3)
    assert generation_options(request) == {"max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": 3, "seed": 9,
                                           "stop": ["END"], "presence_penalty": 0.5, "frequency_penalty": -1,
                                           "logit_bias": {"12": -100}, "logprobs": 3, "method": "ngram",
                                           "num_draft": 6, "grammar": None, "tools": None,
                                           "acceptance": None}
    typical = ChatCompletionRequest(**CHAT, speculative={"acceptance": "typical", "posterior_alpha": 0.5})
    assert generation_options(typical)["acceptance"] == TypicalAcceptance(posterior_alpha=0.5)


def test_logprobs_fields_per_endpoint():
    assert generation_options(ChatCompletionRequest(**CHAT, logprobs=True))["logprobs"] == 0
    assert generation_options(ChatCompletionRequest(**CHAT, logprobs=False, top_logprobs=0))["logprobs"] is None
    assert generation_options(CompletionRequest(model="m", prompt="x", logprobs=2))["logprobs"] == 2
    assert generation_options(CompletionRequest(model="m", prompt="x", logprobs=0))["logprobs"] == 0
    assert generation_options(CompletionRequest(model="m", prompt="x"))["logprobs"] is None


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


@pytest.mark.parametrize("fields, param", [
    ({"n": 0}, "n"), ({"n": 17}, "n"), ({"stop": [""]}, "stop"), ({"stop": ["x"] * 17}, "stop"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"), ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"functions": [{"name": "f"}]}, None), ({"tool_choice": "auto"}, "tool_choice"),
    ({"speculative": {"method": "draft", "draft_path": "/etc/passwd"}}, "speculative.draft_path"),
    ({"seed": -1}, "seed"), ({"temperature": float("nan")}, "temperature"), ({"temperature": 2.01}, "temperature"),
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.1}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"top_logprobs": -1, "logprobs": True}, "top_logprobs"),
    ({"logprobs": 3}, "logprobs"), ({"presence_penalty": float("inf")}, "presence_penalty"),
    ({"logit_bias": {"5": "much"}}, "logit_bias")])
def test_refused_fields(fields, param):
    with pytest.raises(ValidationError) as error:
        ChatCompletionRequest(**CHAT, **fields)
    refusal = validation_error(error.value.errors())
    assert refusal.status == 400
    assert refusal.param == param or (param is None and next(iter(fields)) in refusal.message)


@pytest.mark.parametrize("fields, param", [({"logprobs": 6}, "logprobs"), ({"logprobs": -1}, "logprobs"),
                                           ({"echo": True}, None), ({"best_of": 2}, None)])
def test_refused_completion_fields(fields, param):
    with pytest.raises(ValidationError) as error:
        CompletionRequest(model="m", prompt="x", **fields)
    refusal = validation_error(error.value.errors())
    assert refusal.param == param or (param is None and next(iter(fields)) in refusal.message)


def test_neutral_values_of_unsupported_features_are_accepted():
    ChatCompletionRequest(**CHAT, n=1, logprobs=False, presence_penalty=0, frequency_penalty=0.0, tools=[],
                          logit_bias={}, response_format={"type": "text"}, user="someone")


def test_openai_ranges_are_accepted_at_their_ends():
    ChatCompletionRequest(**CHAT, temperature=2, top_p=1, n=16, logprobs=True, top_logprobs=20, seed=2**63 - 1,
                          presence_penalty=-2, frequency_penalty=2, logit_bias={"0": -100, "7": 100})
    CompletionRequest(model="m", prompt="x", logprobs=5, temperature=0)


def request_of(sampling: SamplingParams) -> Request:
    return Request((1, 2), 4, sampling, (), METHODS["ar"], 0, "fixed")


def test_choices_greedy_share_one_generation_and_sampled_ones_are_seeded_apart():
    greedy = request_of(SamplingParams(seed=3))
    assert choice_requests(greedy, 4) == [greedy]
    sampled = choice_requests(request_of(SamplingParams(temperature=0.8, seed=10)), 3)
    assert [r.sampling.seed for r in sampled] == [10, 11, 12]
    assert all(r.sampling.temperature == 0.8 and r.tokens == (1, 2) for r in sampled)
    unseeded = choice_requests(request_of(SamplingParams(temperature=1.0)), 2)
    assert [r.sampling.seed for r in unseeded] == [None, None]


def test_model_not_found_names_what_is_served():
    error = model_not_found("qwen2.5-coder-1", ("tiny", "tiny.gguf"))
    assert (error.status, error.param, error.code) == (404, "model", "model_not_found")
    assert "'tiny'" in error.message and "tiny.gguf" in error.message


TOKENS = {5: b"he", 6: b"llo", 7: b"\xe2\x82"}  # 7: part of a character


def test_chat_logprobs_shape():
    logprobs = [TokenLogprob(5, -0.1, ((5, -0.1), (6, -2.5))), TokenLogprob(7, -1.0, ())]
    body = chat_logprobs(logprobs, TOKENS.__getitem__)
    assert body["refusal"] is None
    he, llo = {"token": "he", "bytes": [104, 101]}, {"token": "llo", "bytes": [108, 108, 111]}
    assert body["content"][0] == {**he, "logprob": -0.1, "top_logprobs": [{**he, "logprob": -0.1},
                                                                          {**llo, "logprob": -2.5}]}
    assert body["content"][1]["bytes"] == [0xE2, 0x82] and body["content"][1]["top_logprobs"] == []


def test_text_logprobs_shape():
    logprobs = [TokenLogprob(5, -0.1, ((6, -0.05),)), TokenLogprob(6, -0.7, ((6, -0.7),))]
    body = text_logprobs(logprobs, TOKENS.__getitem__, offset=3)
    assert body == {"tokens": ["he", "llo"], "token_logprobs": [-0.1, -0.7],
                    "top_logprobs": [{"llo": -0.05, "he": -0.1}, {"llo": -0.7}], "text_offset": [3, 5]}
    assert text_logprobs([], TOKENS.__getitem__) == {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                                     "text_offset": []}


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
    body = reply.response([reply.choice(0, "hi", "stop")], usage(3, 1),
                          speculative_summary("draft", 4, {"accepted_lengths": [1]}))
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
    assert reply.response([reply.choice(0, "t", "length")], usage(1, 1), {})["choices"][0]["text"] == "t"
    assert reply.chunk("x", index=2)["choices"][0]["index"] == 2
    chunk = reply.chunk("abc")
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["text"] == "abc"
    line = sse(chunk)
    assert line.startswith("data: ") and line.endswith("\n\n") and json.loads(line[6:]) == chunk
    assert sse("[DONE]") == "data: [DONE]\n\n"


def test_api_error_body_is_openais_shape():
    assert set(APIError(400, "m").body()["error"]) == {"message", "type", "param", "code"}
