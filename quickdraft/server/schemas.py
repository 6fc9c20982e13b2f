"""Request bodies of the OpenAI-compatible endpoints, as pydantic models.

Only what quickdraft can honour is accepted. Fields OpenAI clients commonly send are accepted at
their neutral value and refused otherwise (``n=2``, ``logprobs=true``, ``tools=[...]``): a
client that asks for something we do not do gets a 400 saying so, never a silent approximation.
Unknown fields are ignored, as OpenAI-compatible servers usually do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_NUM_DRAFT = 64

# field -> the value that means "feature not used"; anything else is refused with a 400.
_NEUTRAL: dict[str, Any] = {
    "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "logprobs": False,
    "top_logprobs": 0, "tools": [], "functions": [], "echo": False,
    "best_of": 1, "suffix": "", "response_format": {"type": "text"},
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
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    speculative: SpeculativeOptions | None = None
    # Accepted at their neutral value only (see _NEUTRAL).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, n: int | None) -> int:
        if n not in (None, 1):
            raise ValueError(f"only n=1 is supported (one choice per request), got n={n}")
        return 1

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


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``. ``max_completion_tokens`` is OpenAI's newer ``max_tokens``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_max_tokens(self):
        if self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``: ``prompt`` is raw text (no chat template) or token ids; a batch
    of one prompt is accepted (OpenAI allows lists of prompts)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

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
