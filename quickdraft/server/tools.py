"""Tool calls (OpenAI's ``tools`` and ``tool_choice``) as constrained output in the model's own format.

The format is the one Qwen2.5's chat template (like Hermes' and Qwen3's) renders and its model was
trained to write: after optional text, one or more calls, each on lines of its own::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A model's template is taken to use it when it renders an assistant's tool call that way
(:func:`renders_tool_calls`); other templates' tools are refused. The output is held to it by a
grammar (:func:`tool_grammar`, the JSON in ``grammar.JSON_FORMAT``, each call's ``arguments``
valid against its function's ``parameters``):

- ``"none"``: the tools are in the prompt; the output is not constrained and not parsed;
- ``"auto"`` (the default): text that never writes ``<tool_call>``, then optionally calls;
- ``"required"``: one or more calls and nothing else (one when ``parallel_tool_calls`` is false);
- ``{"type": "function", "function": {"name": N}}``: one call of N and nothing else.

:class:`ToolCallParser` reads the output back, streamed or whole, into OpenAI's ``content`` and
``tool_calls`` (each ``{"id", "type": "function", "function": {"name", "arguments"}}``, the
arguments the JSON text the model wrote).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..grammar import JSON_FORMAT, Grammar

OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"
HEAD = '{"name": "'  # a call's JSON up to its name, as the grammar writes it
ARGUMENTS = '", "arguments": '  # between the name and the arguments
END = "}" + CLOSE  # after the arguments (a newline never stands raw inside the JSON)

# A probe of the format: an assistant turn with one tool call must render this way.
_PROBE_CALL = {"id": "call_0", "type": "function", "function": {"name": "probe", "arguments": {"x": 1}}}
_PROBE_TEXT = OPEN + HEAD + "probe" + ARGUMENTS + '{"x": 1}' + END


def renders_tool_calls(chat_prompt: Callable[[list[dict], Sequence[dict] | None], str | None]) -> bool:
    """Whether a model's chat template (``chat_prompt``: ``Backend.chat_prompt``) writes tool calls
    in the format above: it renders an assistant's tool call so."""
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]},
                {"role": "user", "content": "q"}]
    tools = [{"type": "function", "function": {"name": "probe", "parameters": {"type": "object"}}}]
    try:
        rendered = chat_prompt(messages, tools)
    except Exception:  # a template that cannot render tool calls at all  # noqa: BLE001
        return False
    return rendered is not None and _PROBE_TEXT in rendered


def call_schema(function: dict) -> dict:
    """The JSON schema of one call of ``function`` (an OpenAI function definition): its name, then
    arguments valid against its ``parameters`` (any object when it has none)."""
    return {"type": "object", "properties": {"name": {"const": function["name"]},
                                             "arguments": function.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"], "additionalProperties": False}


def tool_grammar(functions: Sequence[dict], choice: str | dict, parallel: bool = True) -> Grammar | None:
    """The grammar of an answer under ``choice`` (see the module; None for ``"none"``).

    functions: the OpenAI function definitions (``tools[i]["function"]``), names distinct.
    choice: ``"none"``, ``"auto"``, ``"required"`` or the name of the one function to call.
    Errors in a function's parameters name ``tools`` (llguidance reports which schema).
    """
    if choice == "none":
        return None
    called = [call_schema(f) for f in functions if choice in ("auto", "required") or f["name"] == choice]
    schema = {**(called[0] if len(called) == 1 else {"anyOf": called}), "x-guidance": JSON_FORMAT}
    lines = [f"call: {json.dumps(OPEN)} %json {json.dumps(schema)} {json.dumps(CLOSE)}",
             'calls: call ("\\n" call)*' if parallel and choice in ("auto", "required") else "calls: call"]
    if choice == "auto":  # text that never writes <tool_call>, then calls or nothing
        lines += ["start: TEXT | TEXT? calls",
                  f"TEXT: /(?s:.+)/ & ~/(?s:.*){OPEN.strip()}(?s:.*)/"]
    else:
        lines.append("start: calls")
    return Grammar.lark("\n".join(lines), param="tools")


@dataclass
class ToolCallParser:
    """Reads an answer in the format above into content and tool calls, as it streams.

    :meth:`feed` takes the next text and returns the deltas it completes, in OpenAI's stream form:
    ``{"content": text}`` and ``{"tool_calls": [{"index", "id", "type", "function": {"name",
    "arguments": ""}}]}`` when a call's name is known, then ``{"tool_calls": [{"index", "function":
    {"arguments": text}}]}`` as its arguments come; :meth:`close` the rest. Text that could still
    turn out to open a call (or end one) is held back until it is known. ``calls`` and
    ``content`` hold the whole answer read so far (a call cut short keeps what it had).

    Example: feeding ``'Sure.\\n<tool_call>\\n{"name": "f", "arguments": {"a": 1}}\\n</tool_call>'``
    gives content ``"Sure."`` and one call ``f`` with arguments ``'{"a": 1}'``.
    """

    make_id: Callable[[], str]
    content: str = ""
    calls: list[dict] = field(default_factory=list)
    _buffer: str = ""
    _state: str = "text"  # "text", "head" (a call's name), "arguments"

    def feed(self, text: str) -> list[dict]:
        self._buffer += text
        deltas: list[dict] = []
        states = {"text": self._text, "head": self._head, "arguments": self._arguments}
        while True:
            before = (self._state, len(self._buffer))
            deltas += states[self._state]()
            if (self._state, len(self._buffer)) == before:
                return deltas

    def close(self) -> list[dict]:
        """The end of the answer: whatever was held back."""
        rest, self._buffer = self._buffer, ""
        if not rest:
            return []
        if self._state == "arguments":
            return [self._arguments_delta(rest)]
        self.content += rest
        return [{"content": rest}]

    # --- the states: each consumes what it can of the buffer ----------------------------------
    def _text(self) -> list[dict]:
        at = self._buffer.find(OPEN)
        if at >= 0:
            text, self._buffer, self._state = self._buffer[:at].removesuffix("\n"), self._buffer[at + len(OPEN):], "head"
        else:  # hold back an end that may start "\n<tool_call>\n"
            keep = max((k for k in range(1, min(len(OPEN), len(self._buffer)) + 1)
                        if OPEN.startswith(self._buffer[-k:]) or ("\n" + OPEN).startswith(self._buffer[-k:])), default=0)
            text, self._buffer = self._buffer[:len(self._buffer) - keep], self._buffer[len(self._buffer) - keep:]
        self.content += text
        return [{"content": text}] if text else []

    def _head(self) -> list[dict]:
        at = self._buffer.find(ARGUMENTS)
        if at < 0:
            return []
        name = self._buffer[len(HEAD):at] if self._buffer.startswith(HEAD) else self._buffer[:at]
        self._buffer, self._state = self._buffer[at + len(ARGUMENTS):], "arguments"
        call_id = self.make_id()
        self.calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}})
        return [{"tool_calls": [{"index": len(self.calls) - 1, "id": call_id, "type": "function",
                                 "function": {"name": name, "arguments": ""}}]}]

    def _arguments(self) -> list[dict]:
        at = self._buffer.find(END)
        if at >= 0:
            text, self._buffer, self._state = self._buffer[:at], self._buffer[at + len(END):].removeprefix("\n"), "text"
        else:  # hold back an end that may start END
            keep = max((k for k in range(1, min(len(END), len(self._buffer) + 1)) if END.startswith(self._buffer[-k:])),
                       default=0)
            text, self._buffer = self._buffer[:len(self._buffer) - keep], self._buffer[len(self._buffer) - keep:]
        return [self._arguments_delta(text)] if text else []

    def _arguments_delta(self, text: str) -> dict:
        self.calls[-1]["function"]["arguments"] += text
        return {"tool_calls": [{"index": len(self.calls) - 1, "function": {"arguments": text}}]}


def parse_tool_calls(text: str, make_id: Callable[[], str]) -> tuple[str, list[dict]]:
    """(content, tool calls) of a whole answer: :class:`ToolCallParser` fed all of it."""
    parser = ToolCallParser(make_id)
    parser.feed(text)
    parser.close()
    return parser.content, parser.calls


def arguments_object(arguments: Any) -> dict:
    """A request's ``tool_calls[i].function.arguments`` (OpenAI sends a JSON string) as the object
    a chat template renders; a ValueError when it is not a JSON object."""
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    if not isinstance(value, dict):
        raise ValueError("arguments must be a JSON object")
    return value
