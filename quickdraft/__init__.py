"""quickdraft: lossless speculative decoding for local LLMs.

    from quickdraft import load
    engine = load()                                   # the bundled Qwen2.5-Coder 1.5B + 0.5B pair
    result = engine.generate("def fib(n):", max_tokens=64)
    for piece in engine.stream("Write a haiku", max_tokens=32): print(piece.text, end="")
"""

from __future__ import annotations

from pathlib import Path

from .backends import BACKENDS, COMMON_SETTINGS, DEFAULT_BACKEND, backend_spec
from .engine import Engine, Memory, Stream
from .requests import Request
from .errors import QuickdraftError
from .grammar import Grammar
from .models import DEFAULT_DRAFT, DEFAULT_TARGET, resolve_model, self_draft_type
from .proposers import METHODS
from .sampling import SamplingParams
from .system import quickdraft_version, use_batch_invariant_llama
from .records import Acceptance, Draft, GenerationResult, Piece
from .verifiers import AcceptanceRule, TypicalAcceptance

__version__ = quickdraft_version()


def load(target: str | Path = DEFAULT_TARGET, draft: str | Path | None = DEFAULT_DRAFT, *,
         backend: str = DEFAULT_BACKEND, method: str = "auto", num_draft: int | None = None,
         controller: str = "fixed", chat: bool = True, default_max_tokens: int | None = None,
         calibrate: bool = True, acceptance: str | AcceptanceRule = "exact", **settings) -> Engine:
    """Load a target (bundled name or path) and optionally a draft model into an Engine.

    ``method`` defaults to ``auto``: per step the best of a suffix draft, a draft-model draft (when
    ``draft`` is given) and a plain step. Every registered method stays available per request:
    ``engine.generate(prompt, method="ar")``. ``num_draft``: the draft cap per step (default: the
    method's, 16 for ``auto``, 4 for the others). ``controller``: ``fixed`` drafts ``num_draft``
    tokens every step; ``adaptive`` picks the length (0 included) that maximises expected tokens
    per second. Both it and ``auto`` start from the target's forward cost curve and the draft's
    cost per token, measured in a few steps the first time a model is loaded on this machine and
    build, then cached (``calibrate=False`` skips that; ``quickdraft calibrate`` measures a
    careful curve). ``default_max_tokens``: cap for requests that do not say (never beyond what
    fits the context). The draft model is loaded when a method first uses it; ``draft="self:q4_0"``
    (any ``self:<type>`` of ``models.SELF_DRAFT_TYPES``) drafts with a low-bit copy of the target
    itself, made by llama.cpp's quantizer on first use and cached. ``acceptance``: the default
    acceptance rule, ``exact`` (lossless); ``"typical"`` (or ``TypicalAcceptance(...)`` with its
    thresholds) is Medusa's LOSSY rule when sampling, marked as such in every result.
    ``prompt_cache=False``: every prompt computed in full, nothing reused from earlier requests
    (Engine; by default a request starts from the longest start of its prompt the cache holds).

    ``backend`` names the backend (``quickdraft.backends.BACKENDS``): ``llamacpp`` (GGUF; settings
    ``n_ctx``, ``n_threads``, ``n_gpu_layers``, ``precise``, ...) or ``torch`` (``pip install
    'quickdraft[torch]'``: transformers model directories or GGUF files, dequantized; settings
    ``dtype``, ``device``, ...; it adds ``layerskip``, ``medusa`` and ``eagle``); llama.cpp's
    ``batch_invariant=True`` makes every answer independent of its batch and drafts (``make
    batch-invariant`` first; see LlamaCppBackend). Other keywords
    are method options, each given to the methods that declare it (``min_confidence``,
    ``skip_layers``, ``heads=DIR`` for the heads made by ``quickdraft train``, ...).
    """
    if draft is not None:
        self_draft_type(str(draft))  # fail fast on a self:<type> llama.cpp cannot make, before loading anything
    spec = backend_spec(backend)
    backend_settings = {k: settings.pop(k) for k in list(settings) if k in COMMON_SETTINGS or k in spec.settings}
    if backend_settings.get("batch_invariant"):
        use_batch_invariant_llama()  # before llama.cpp is loaded
    model = spec.open(resolve_model(str(target)), **backend_settings)
    return Engine(model, draft=draft, method=method, num_draft=num_draft, controller=controller, chat=chat,
                  calibrate=calibrate, default_max_tokens=default_max_tokens, acceptance=acceptance, **settings)


__all__ = ["BACKENDS", "METHODS", "Acceptance", "AcceptanceRule", "Draft", "Engine", "GenerationResult", "Grammar",
           "Memory", "Piece", "QuickdraftError", "Request", "SamplingParams", "Stream", "TypicalAcceptance", "load",
           "__version__"]
