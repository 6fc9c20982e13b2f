"""Structured output through the real ``openai`` client, streamed and not: ``response_format``
(``json_object``, ``json_schema``) and ``tools``/``tool_choice`` (tool calls as constrained output
in the tiny model's template, which writes them as Qwen2.5's does). Each answer equals constrained
plain decoding's (``ar``) under the same grammar, every one is valid against its schema, tool
calls come back as OpenAI's ``tool_calls``, and every bad input is a 400 naming its field."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from quickdraft import Grammar
from quickdraft.server import create_app
from quickdraft.server.tools import parse_tool_calls, tool_grammar
from serverutil import MODEL, make_engine, running

# The tiny vocabulary writes JSON a character at a time: tools in the prompt take ~450 tokens.
N_CTX = 2048


@pytest.fixture(scope="module")
def reference_engine(tiny_pair):
    return make_engine(tiny_pair, n_ctx=N_CTX)


@pytest.fixture(scope="module")
def server(tiny_pair):
    with running(create_app(make_engine(tiny_pair, n_ctx=N_CTX), MODEL, max_queue=16, timeout_s=60)) as url:
        yield url

MESSAGES = [{"role": "user", "content": "hello world hello world"}]
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3}},
    "required": ["name", "age", "tags"], "additionalProperties": False}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
               "required": ["city", "days"], "additionalProperties": False}}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                           "required": ["zone"], "additionalProperties": False}}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]


def chat(client, **options):
    return client.chat.completions.create(model=MODEL, messages=options.pop("messages", MESSAGES), **options)


def streamed(client, **options) -> dict:
    """The stream of one choice put together: its content, its tool calls (from their deltas, as
    an OpenAI client accumulates them) and its finish reason."""
    out = {"content": "", "calls": {}, "finish_reason": None}
    for chunk in chat(client, stream=True, **options):
        for choice in chunk.choices:
            out["content"] += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = out["calls"].setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            out["finish_reason"] = choice.finish_reason or out["finish_reason"]
    return out


def refused(call) -> dict:
    with pytest.raises(openai.BadRequestError) as error:
        call()
    return error.value.body


# --- response_format ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["ar", "draft", "ngram", "draft-tree", "auto"])
def test_json_schema_answers_are_constrained_plain_decodings(client, reference_engine, method):
    plain = reference_engine.generate(MESSAGES, max_tokens=80, temperature=0, method="ar",
                                      grammar=Grammar.json_schema(SCHEMA))
    options = dict(max_tokens=80, temperature=0, response_format=JSON_SCHEMA,
                   extra_body={"speculative": {"method": method}})
    reply = chat(client, **options)
    assert reply.choices[0].message.content == plain.text and reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(plain.text), SCHEMA)
    stream = streamed(client, **options)
    assert stream["content"] == plain.text and stream["finish_reason"] == "stop"


def test_sampled_json_schema_choices_are_all_valid(client):
    reply = chat(client, max_tokens=80, temperature=1.0, seed=3, n=4, response_format=JSON_SCHEMA,
                 extra_body={"speculative": {"method": "auto"}})
    assert len({c.message.content for c in reply.choices}) > 1
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_object_answers_open_an_object_as_plain_decoding_does(client, reference_engine):
    plain = reference_engine.generate(MESSAGES, max_tokens=40, temperature=0, method="ar",
                                      grammar=Grammar.json_object())
    reply = chat(client, max_tokens=40, temperature=0, response_format={"type": "json_object"})
    assert reply.choices[0].message.content == plain.text and plain.text.startswith("{")
    assert streamed(client, max_tokens=40, temperature=0, response_format={"type": "json_object"})["content"] == plain.text
    text = client.completions.create(model=MODEL, prompt="def main(): return", max_tokens=30, temperature=0,
                                     extra_body={"response_format": JSON_SCHEMA})
    assert text.choices[0].text == reference_engine.generate("def main(): return", chat=False, max_tokens=30,
                                                             method="ar", grammar=Grammar.json_schema(SCHEMA)).text


@pytest.mark.parametrize("response_format, param", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "("}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "response_format.json_schema.name"),
    ({"type": "json_schema"}, "response_format"),
    ({"type": "xml"}, "response_format.type"),
])
def test_bad_response_formats_are_400s_naming_the_field(client, response_format, param):
    body = refused(lambda: chat(client, max_tokens=4, response_format=response_format))
    assert body["param"] == param, body


# --- tools ----------------------------------------------------------------------------------------

def plain_tool_answer(engine, choice: str, messages=MESSAGES, parallel: bool = True, max_tokens: int = 80):
    return engine.generate(messages, tools=TOOLS, grammar=tool_grammar([WEATHER, TIME], choice, parallel),
                           max_tokens=max_tokens, temperature=0, method="ar")


@pytest.mark.parametrize("method", ["draft", "auto"])
def test_a_named_tool_is_called_with_valid_arguments(client, reference_engine, method):
    plain = plain_tool_answer(reference_engine, "get_weather")
    content, expected = parse_tool_calls(plain.text, lambda: "id")
    assert content == "" and [c["function"]["name"] for c in expected] == ["get_weather"]
    options = dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=80,
                   temperature=0, extra_body={"speculative": {"method": method}})
    reply = chat(client, **options)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    [call] = message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert call.function.arguments == expected[0]["function"]["arguments"]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["parameters"])
    stream = streamed(client, **options)
    assert stream["content"] == "" and stream["finish_reason"] == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in stream["calls"].values()] == [("get_weather", call.function.arguments)]
    assert stream["calls"][0]["id"].startswith("call_")


def test_required_calls_one_or_more_tools_each_valid(client, reference_engine):
    for parallel in (True, False):
        plain = plain_tool_answer(reference_engine, "required", parallel=parallel, max_tokens=120)
        _, expected = parse_tool_calls(plain.text, lambda: "id")
        reply = chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel, max_tokens=120,
                     temperature=0)
        calls = reply.choices[0].message.tool_calls
        assert [(c.function.name, c.function.arguments) for c in calls] == \
            [(c["function"]["name"], c["function"]["arguments"]) for c in expected]
        assert calls and (parallel or len(calls) == 1)
        schemas = {"get_weather": WEATHER["parameters"], "get_time": TIME["parameters"]}
        for c in calls:
            jsonschema.validate(json.loads(c.function.arguments), schemas[c.function.name])


def test_auto_may_answer_in_text_and_none_is_plain_decoding_with_the_tools_in_the_prompt(client, reference_engine):
    plain = plain_tool_answer(reference_engine, "auto", max_tokens=24)
    content, calls = parse_tool_calls(plain.text, lambda: "id")
    reply = chat(client, tools=TOOLS, max_tokens=24, temperature=0)  # tool_choice defaults to auto
    assert reply.choices[0].message.content == (content or None)
    assert [c.function.name for c in reply.choices[0].message.tool_calls or []] == \
        [c["function"]["name"] for c in calls]
    assert streamed(client, tools=TOOLS, max_tokens=24, temperature=0)["content"] == content
    free = reference_engine.generate(MESSAGES, tools=TOOLS, max_tokens=24, temperature=0, method="ar")
    none = chat(client, tools=TOOLS, tool_choice="none", max_tokens=24, temperature=0)
    assert none.choices[0].message.content == free.text and none.choices[0].message.tool_calls is None
    assert none.usage.prompt_tokens == free.prompt_tokens > reference_engine.generate(
        MESSAGES, max_tokens=1).prompt_tokens  # the tools are in the prompt


def test_tool_calls_and_results_in_the_history_go_through_the_template(client, reference_engine):
    history = [*MESSAGES,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 C"}]
    rendered = [MESSAGES[0], {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": {"city": "Paris", "days": 2}}}]},
                {"role": "tool", "content": "sunny, 24 C", "tool_call_id": "call_1"}]
    prompt = reference_engine.prompt_tokens(rendered, tools=TOOLS)
    plain = reference_engine.generate(rendered, tools=TOOLS, max_tokens=16, temperature=0, method="ar")
    reply = chat(client, messages=history, tools=TOOLS, tool_choice="none", max_tokens=16, temperature=0)
    assert reply.choices[0].message.content == plain.text
    assert reply.usage.prompt_tokens == len(prompt)


@pytest.mark.parametrize("options, param", [
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
    (dict(tool_choice="required"), "tool_choice"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                               "properties": {"a": {"type": 7}}}}}],
          tool_choice="required"), "tools"),
    (dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0].function.name"),
    (dict(tools=TOOLS + TOOLS[:1]), "tools"),
    (dict(tools=TOOLS, response_format=JSON_SCHEMA), "response_format"),
    (dict(messages=[*MESSAGES, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]),
     "messages[1].tool_calls[0].function.arguments"),
])
def test_bad_tool_requests_are_400s_naming_the_field(client, options, param):
    body = refused(lambda: chat(client, max_tokens=4, **options))
    assert body["param"] == param, body


def test_text_completions_refuse_tools(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body={"tools": TOOLS})
    assert "'tools' is not supported" in error.value.body["message"]
