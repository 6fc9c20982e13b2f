"""Request bodies of the OpenAI-compatible endpoints, as pydantic models.

Only what quickdraft can honour is accepted. Fields OpenAI clients commonly send that quickdraft
does not do are accepted at their neutral value and refused otherwise (``functions``, ``echo``,
``tools`` on text completions): a client that asks for something we do not do gets a 400 saying
so, never a silent approximation. ``response_format`` (``text``, ``json_object``, ``json_schema``)
and chat's ``tools``/``tool_choice`` are constrained decoding (grammar.py, server/tools.py). Ranges are OpenAI's documented ones (``temperature`` 0..2,
``n`` here at most 16, ``top_logprobs`` 0..20, completions' ``logprobs`` 0..5); the penalties'
and ``logit_bias``'s are checked by ``Engine.prepare`` (-2..2, -100..100, keys token ids), whose
errors name the parameter too. Unknown fields are ignored, as OpenAI-compatible servers usually do.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .tools import arguments_object

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_NUM_DRAFT = 64
MAX_CHOICES = 16  # n: choices per request at most (each one is a generation of its own when sampling)
MAX_TEMPERATURE = 2.0
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs (OpenAI's range)
MAX_COMPLETION_LOGPROBS = 5  # the completions endpoint's logprobs (OpenAI's range)

MAX_TOOLS = 128
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's function and response_format names


class SpeculativeOptions(BaseModel):
    """The ``speculative`` request field: how this request is decoded (the output does not change,
    unless ``acceptance`` opts into a lossy rule).

    method: a registered method name (``ar``, ``draft``, ``ngram``, ...; default: the server's).
    num_draft: draft budget, at most this many tokens per step (default: the server's).
    acceptance: ``exact`` (lossless) or ``typical`` (Medusa's typical acceptance: LOSSY when
    sampling; the response's ``speculative`` field then says ``"lossless": false``); default: the
    server's. posterior_threshold, posterior_alpha: typical acceptance's options.
    """

    model_config = ConfigDict(extra="forbid")

    method: str | None = Field(None, min_length=1, max_length=64)
    num_draft: int | None = Field(None, ge=0, le=MAX_NUM_DRAFT)
    acceptance: str | None = Field(None, min_length=1, max_length=64)
    posterior_threshold: float | None = None
    posterior_alpha: float | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class CalledFunction(BaseModel):
    name: str = Field(min_length=1)
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _arguments_are_an_object(cls, arguments: str) -> str:
        arguments_object(arguments)  # a ValueError names the field
        return arguments


class ToolCall(BaseModel):
    """A tool call of an assistant message in the history (what an earlier answer returned)."""

    id: str = ""
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    """One chat message; ``content`` may be a string or a list of text parts (joined). An
    assistant's may carry ``tool_calls``, a ``tool`` message answers one (``tool_call_id``)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The form chat templates take: ``{"role", "content"}`` (``developer`` is a system turn),
        an assistant's ``tool_calls`` with their arguments as objects (as Hugging Face templates
        render them), a tool message's ``tool_call_id`` and ``name``."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": arguments_object(c.function.arguments)}} for c in self.tool_calls]
        out.update({k: v for k, v in (("tool_call_id", self.tool_call_id), ("name", self.name)) if v is not None})
        return out


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema the answer must be valid against (any JSON
    object when absent); ``strict`` is accepted either way: the schema is always enforced."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: ``text`` (no constraint), ``json_object`` (one JSON object) or
    ``json_schema`` (JSON valid against ``json_schema.schema``)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is given with, and only with, type 'json_schema'")
        return self


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the one function to call."""

    type: Literal["function"]
    function: FunctionName


class _GenerationRequest(BaseModel):
    """Fields shared by chat and text completions. ``None`` means "the default"."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: int | None = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    speculative: SpeculativeOptions | None = None
    presence_penalty: float | None = Field(None, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    # Accepted at their neutral value only (see _NEUTRAL).
    functions: list[Any] | None = None

    # field -> the value that means "feature not used"; anything else is refused with a 400.
    _NEUTRAL: ClassVar[dict[str, Any]] = {"functions": []}

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(not s or len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"stop strings must be 1 to {MAX_STOP_LENGTH} characters long")
        return stops

    @model_validator(mode="after")
    def _unsupported_features(self):
        for name, neutral in self._NEUTRAL.items():
            value = getattr(self, name, None)
            if value is not None and value != neutral:
                raise ValueError(f"'{name}' is not supported by this server (got {value!r})")
        return self

    def stop_strings(self) -> list[str]:
        return self.stop or []  # normalized to a list by the validator

    def choices(self) -> int:
        return self.n or 1


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``. ``max_completion_tokens`` is OpenAI's newer ``max_tokens``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("tools")
    @classmethod
    def _distinct_names(cls, tools: list[Tool] | None) -> list[Tool] | None:
        names = [tool.function.name for tool in tools or []]
        if len(set(names)) < len(names):
            raise ValueError("function names must be distinct")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_names_a_tool(cls, choice, info):
        names = [tool.function.name for tool in info.data.get("tools") or []]
        if choice not in (None, "none") and not names:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"no tool is named {choice.function.name!r} (tools: {', '.join(names)})")
        return choice

    def tool_choice_name(self) -> str:
        """``none``, ``auto``, ``required`` or the function's name; ``none`` without tools."""
        if not self.tools:
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or "auto"

    @model_validator(mode="after")
    def _one_max_tokens(self):
        if self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, top: int | None, info):
        if top and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return top

    def top_logprobs_asked(self) -> int | None:
        """Alternatives per token whose log-probabilities the response reports (None: no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``: ``prompt`` is raw text (no chat template) or token ids; a batch
    of one prompt is accepted (OpenAI allows lists of prompts)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None
    tools: list[Any] | None = None

    _NEUTRAL: ClassVar[dict[str, Any]] = {"functions": [], "tools": [], "echo": False, "best_of": 1, "suffix": ""}

    def top_logprobs_asked(self) -> int | None:
        """Alternatives per token whose log-probabilities the response reports (None: no logprobs)."""
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, prompt):
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ValueError(f"only one prompt per request is supported, got {len(prompt)}")
            prompt = prompt[0]
        if len(prompt) == 0:
            raise ValueError("the prompt is empty")
        return prompt
