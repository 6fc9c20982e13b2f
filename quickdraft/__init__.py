"""quickdraft: lossless speculative decoding for local LLMs.

    from quickdraft import load
    engine = load()                                   # the bundled Qwen2.5-Coder 1.5B + 0.5B pair
    result = engine.generate("def fib(n):", max_tokens=64)
    for piece in engine.stream("Write a haiku", max_tokens=32): print(piece.text, end="")
"""

from __future__ import annotations

from pathlib import Path

from . import proposers  # noqa: F401  (registers the methods)
from .engine import Engine, Stream
from .errors import QuickdraftError
from .models import DEFAULT_DRAFT, DEFAULT_TARGET
from .sampling import SamplingParams
from .types import Acceptance, Draft, GenerationResult, Piece

__version__ = "0.1.0"


def load(target: str | Path = DEFAULT_TARGET, draft: str | Path | None = DEFAULT_DRAFT, *,
         method: str | None = None, num_draft: int = 4, min_confidence: float = 0.0, controller: str = "fixed",
         n_ctx: int = 4096,
         n_threads: int | None = None, n_gpu_layers: int = 0, precise: bool = False, chat: bool = True,
         verbose: bool = False, heads: str | Path | None = None) -> Engine:
    """Load a target (bundled name or GGUF path) and optionally a draft model into an Engine.

    ``method`` defaults to ``draft`` when a draft model is given, else ``ngram``. Other methods
    stay available per request: ``engine.generate(prompt, method="ar")``. ``precise``: F32 KV
    cache without flash attention (see LlamaCppBackend). ``controller``: ``fixed`` drafts
    ``num_draft`` tokens every step; ``adaptive`` picks the length (0 included) that maximises
    expected tokens per second, starting from the cost curve ``quickdraft calibrate`` cached.
    ``heads``: a directory of trained draft heads for ``method="medusa"`` or ``"eagle"``
    (``quickdraft train``; they need the torch backend).
    """
    from .backends.llamacpp import LlamaCppBackend
    from .bench.calibrate import cached_relative_cost

    backend = LlamaCppBackend(target, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                              precise=precise, verbose=verbose)
    method = method or ("draft" if draft else "ngram")
    return Engine(backend, method=method, num_draft=num_draft, chat=chat, controller=controller,
                  relative_cost=cached_relative_cost(backend.path, backend.n_threads),
                  draft=str(draft) if draft else None, min_confidence=min_confidence,
                  heads=str(heads) if heads else None)


__all__ = ["Acceptance", "Draft", "Engine", "GenerationResult", "Piece", "QuickdraftError",
           "SamplingParams", "Stream", "load", "__version__"]
