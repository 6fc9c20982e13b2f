"""Request bodies of the OpenAI-compatible endpoints, as pydantic models.

Only what quickdraft can honour is accepted. Fields OpenAI clients commonly send that quickdraft
does not do are accepted at their neutral value and refused otherwise (``tools=[...]``,
``response_format``, ``echo``): a client that asks for something we do not do gets a 400 saying
so, never a silent approximation. Ranges are OpenAI's documented ones (``temperature`` 0..2,
``n`` here at most 16, ``top_logprobs`` 0..20, completions' ``logprobs`` 0..5); the penalties'
and ``logit_bias``'s are checked by ``Engine.prepare`` (-2..2, -100..100, keys token ids), whose
errors name the parameter too. Unknown fields are ignored, as OpenAI-compatible servers usually do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_NUM_DRAFT = 64
MAX_CHOICES = 16  # n: choices per request at most (each one is a generation of its own when sampling)
MAX_TEMPERATURE = 2.0
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs (OpenAI's range)
MAX_COMPLETION_LOGPROBS = 5  # the completions endpoint's logprobs (OpenAI's range)

# field -> the value that means "feature not used"; anything else is refused with a 400.
_NEUTRAL: dict[str, Any] = {
    "tools": [], "functions": [], "echo": False, "best_of": 1, "suffix": "", "response_format": {"type": "text"},
}


class SpeculativeOptions(BaseModel):
    """The ``speculative`` request field: how this request is decoded (the output does not change).

    method: a registered method name (``ar``, ``draft``, ``ngram``, ...; default: the server's).
    num_draft: draft budget, at most this many tokens per step (default: the server's).
    """

    model_config = ConfigDict(extra="forbid")

    method: str | None = Field(None, min_length=1, max_length=64)
    num_draft: int | None = Field(None, ge=0, le=MAX_NUM_DRAFT)


class StreamOptions(BaseModel):
    include_usage: bool = False


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat message; ``content`` may be a string or a list of text parts (joined)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict[str, str]:
        """The ``{"role", "content"}`` form chat templates take (``developer`` is a system turn)."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


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
    # Accepted at their neutral value only (see _NEUTRAL).
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

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
        for name, neutral in _NEUTRAL.items():
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
