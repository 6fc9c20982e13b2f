"""Errors a user can act on. The CLI prints their message (no traceback) and exits with code 2;
the server answers them as HTTP 400 naming ``param``, the request parameter they are about."""

from __future__ import annotations


class QuickdraftError(Exception):
    """Base class: bad input or an unusable model, stated so the user can fix it.

    ``param``: the generation parameter the error is about (``"max_tokens"``, ``"temperature"``,
    ``"method"``, ``"prompt"``, ...), or None when it is about no single parameter.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFoundError(QuickdraftError):
    """A model name that is neither bundled nor an existing file."""


class VocabularyMismatchError(QuickdraftError):
    """Target and draft do not share one vocabulary (size or token texts)."""


class ContextOverflowError(QuickdraftError):
    """The prompt (plus what must be generated) does not fit in the model's context."""


class EngineBusyError(QuickdraftError):
    """An engine runs one generation at a time (its models hold one KV cache each)."""


class InvalidParameterError(QuickdraftError, ValueError):
    """A sampling or generation parameter outside its valid range."""


class UnknownMethodError(QuickdraftError):
    """A decoding method that is not registered, or that this engine cannot run (no draft model
    loaded, a backend without a capability it needs)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="method")


class HeadsMismatchError(QuickdraftError):
    """Trained draft heads (Medusa, EAGLE) loaded on a target they were not trained on."""


class BuildMismatchError(QuickdraftError):
    """llama.cpp in this environment was compiled for a CPU with instruction sets this one lacks."""
