"""Errors a user can act on. The CLI prints their message (no traceback) and exits with code 2."""


class QuickdraftError(Exception):
    """Base class: bad input or an unusable model, stated so the user can fix it."""


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


class HeadsMismatchError(QuickdraftError):
    """Trained draft heads (Medusa, EAGLE) loaded on a target they were not trained on."""
