"""Tool calls read back from an answer (server/tools.py): whole or streamed in any pieces, the same
content and calls; the grammar of each tool_choice; the template probe."""

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from quickdraft.chat import render_chat
from quickdraft.server.tools import ToolCallParser, parse_tool_calls, renders_tool_calls, tool_grammar
from quickdraft.testing import DEFAULT_TINY_CHAT_TEMPLATE

ANSWER = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Nice}\\n", "days": 2}}\n'
          '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


def counter():
    ids = (f"call_{i}" for i in itertools.count())
    return lambda: next(ids)


def test_an_answer_reads_into_content_and_calls():
    content, calls = parse_tool_calls(ANSWER, counter())
    assert content == "Let me check."
    assert calls == [
        {"id": "call_0", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Nice}\\n", "days": 2}'}},
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Nice}\n", "days": 2}


def test_text_without_calls_is_all_content_even_where_it_looks_like_one_starting():
    assert parse_tool_calls("a < b and <tool", counter()) == ("a < b and <tool", [])
    assert parse_tool_calls("", counter()) == ("", [])


@given(st.lists(st.integers(min_value=0, max_value=len(ANSWER)), max_size=12))
def test_streamed_in_any_pieces_it_reads_the_same(cuts):
    bounds = [0, *sorted(cuts), len(ANSWER)]
    parser, deltas = ToolCallParser(counter()), []
    for start, end in zip(bounds, bounds[1:]):
        deltas += parser.feed(ANSWER[start:end])
    deltas += parser.close()
    assert (parser.content, parser.calls) == parse_tool_calls(ANSWER, counter())
    # the deltas add up as an OpenAI client adds them
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for c in d.get("tool_calls", []):
            call = calls.setdefault(c["index"], {"id": c.get("id"), "name": "", "arguments": ""})
            call["name"] += c["function"].get("name", "")
            call["arguments"] += c["function"].get("arguments", "")
    assert content == parser.content
    assert [(c["id"], c["name"], c["arguments"]) for c in calls.values()] == \
        [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in parser.calls]


def test_each_tool_choice_has_its_grammar():
    functions = [{"name": "f", "parameters": {"type": "object"}}, {"name": "g"}]
    assert tool_grammar(functions, "none") is None
    auto, required, named = (tool_grammar(functions, c) for c in ("auto", "required", "g"))
    single = tool_grammar(functions, "required", parallel=False)
    f, g = '"const": "f"', '"const": "g"'
    assert "TEXT" in auto.text and "TEXT" not in required.text
    assert f in required.text and g in required.text  # anyOf both
    assert f not in named.text and g in named.text
    assert "call)*" in required.text and "call)*" not in single.text
    assert {g.param for g in (auto, required, named)} == {"tools"}


def test_the_probe_knows_templates_that_write_hermes_tool_calls():
    tiny = lambda messages, tools: render_chat(DEFAULT_TINY_CHAT_TEMPLATE, messages, bos="", eos="",  # noqa: E731
                                               tools=tools)
    assert renders_tool_calls(tiny)
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    assert not renders_tool_calls(lambda messages, tools: render_chat(chatml, messages, bos="", eos="", tools=tools))
    assert not renders_tool_calls(lambda messages, tools: None)
