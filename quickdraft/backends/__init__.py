"""Backends run models; see base.Backend. Import a backend module (llamacpp, ...) to use it."""

from .base import Backend, check_same_vocabulary

__all__ = ["Backend", "check_same_vocabulary"]
