"""The backend registry: how a model runs (llama.cpp, or torch/transformers), by name.

Each :class:`BackendSpec` declares what its backend can do (``capabilities``, see base.py) and
which settings it takes beyond the common ones (``n_ctx``, ``n_threads``, ``verbose``); its module
is imported only when a backend of that kind is opened, so ``import quickdraft`` loads neither
llama.cpp nor torch. ``load()`` and the CLI choose backends here and nowhere else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import QuickdraftError
from .base import BATCH, HIDDEN_STATES, LAYER_SKIP, THREADS, TREE, Backend

COMMON_SETTINGS = ("n_ctx", "n_threads", "verbose")


@dataclass(frozen=True)
class BackendSpec:
    """A kind of backend: ``module``.``cls`` opened on a resolved model path.

    ``settings``: the keyword settings it takes beyond :data:`COMMON_SETTINGS`;
    ``capabilities``: what its instances can do beyond the core protocol.
    """

    name: str
    module: str
    cls: str
    capabilities: frozenset[str]
    settings: tuple[str, ...]
    summary: str

    def open(self, path: Path, **settings) -> Backend:
        """The backend for the model at ``path`` (already resolved: see models.resolve_model)."""
        unknown = sorted(set(settings) - set(COMMON_SETTINGS) - set(self.settings))
        if unknown:
            raise QuickdraftError(f"the {self.name} backend has no setting {unknown[0]!r}; its settings: "
                                  f"{', '.join((*COMMON_SETTINGS, *self.settings))}")
        cls = getattr(importlib.import_module(f"{__name__}.{self.module}"), self.cls)
        return cls(path, **settings)


BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("llamacpp", "llamacpp", "LlamaCppBackend", frozenset({TREE, BATCH, THREADS}),
                ("n_gpu_layers", "precise", "n_batch", "max_tree_nodes", "batch_invariant"),
                "GGUF models through llama.cpp: the fast CPU path"),
    BackendSpec("torch", "torch_hf", "TorchBackend", frozenset({TREE, HIDDEN_STATES, LAYER_SKIP}),
                ("dtype", "device", "max_tree_nodes"),
                "transformers models (or GGUF files, dequantized) through torch: hidden states, layer skipping, CUDA"),
)}
DEFAULT_BACKEND = "llamacpp"


def backend_spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise QuickdraftError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}",
                              param="backend") from None


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "BackendSpec", "backend_spec"]
