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
         method: str | None = None, num_draft: int | None = None, min_confidence: float = 0.0, controller: str = "fixed",
         n_ctx: int = 4096,
         n_threads: int | None = None, n_gpu_layers: int = 0, precise: bool = False, chat: bool = True,
         verbose: bool = False, backend: str = "llamacpp", dtype: str = "bfloat16", device: str | None = None,
         **proposer_options) -> Engine:
    """Load a target (bundled name or GGUF path) and optionally a draft model into an Engine.

    ``method`` defaults to ``auto``: per step the best of a suffix draft, a draft-model draft (when
    ``draft`` is given) and a plain step. Other methods stay available per request:
    ``engine.generate(prompt, method="ar")``. ``num_draft``: cap on draft tokens per step
    (default 16 for ``auto``, 4 for the others). ``precise``: F32 KV
    cache without flash attention (see LlamaCppBackend). ``controller``: ``fixed`` drafts
    ``num_draft`` tokens every step; ``adaptive`` picks the length (0 included) that maximises
    expected tokens per second. It and ``auto`` start from the target's forward cost curve,
    measured in about 20 one-token steps the first time a model is loaded with a thread count
    (and dtype, for torch), then cached (``quickdraft calibrate`` measures a careful one).

    ``backend="torch"`` runs the models with transformers instead (``pip install
    'quickdraft[torch]'``): ``target``/``draft`` are then transformers model directories or GGUF
    files (dequantized on load), in ``dtype`` ("float32", "bfloat16", "float16") on ``device``
    (default: cuda when present); it adds the ``layerskip``, ``medusa`` and ``eagle`` methods.
    ``proposer_options`` go to the proposers (e.g. ``skip_layers=[...]`` for layerskip,
    ``heads=DIR`` for medusa and eagle: heads made by ``quickdraft train``).
    """
    from .calibrate import relative_cost

    if backend == "torch":
        from .backends.torch_hf import TorchBackend

        model = TorchBackend(target, dtype=dtype, device=device, n_ctx=n_ctx, n_threads=n_threads, verbose=verbose)
        tag = f"torch-{dtype}"
    elif backend == "llamacpp":
        from .backends.llamacpp import LlamaCppBackend

        model = LlamaCppBackend(target, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                                precise=precise, verbose=verbose)
        tag = ""
    else:
        raise QuickdraftError(f"unknown backend {backend!r}; choose llamacpp or torch")
    return Engine(model, method=method or "auto", num_draft=num_draft, chat=chat, controller=controller,
                  relative_cost=relative_cost(model, tag=tag), draft=str(draft) if draft else None,
                  min_confidence=min_confidence, **proposer_options)


__all__ = ["Acceptance", "Draft", "Engine", "GenerationResult", "Piece", "QuickdraftError",
           "SamplingParams", "Stream", "load", "__version__"]
