"""Shared fixtures: tiny random-weight GGUF models the tests write themselves (no downloads).

The suite never depends on what a machine has cached: measured cost curves and tolerances go to
an empty directory made for this run (models may stay in the shared cache, they are verified).
"""

import os
import tempfile
from pathlib import Path

import pytest

os.environ["QUICKDRAFT_CALIBRATION"] = tempfile.mkdtemp(prefix="quickdraft-test-calibration-")

from quickdraft.testing import make_tiny_pair  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(target, draft) GGUF paths sharing a vocabulary; the draft often agrees with the target."""
    return make_tiny_pair(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_target_backend(tiny_pair):
    from quickdraft.backends.llamacpp import LlamaCppBackend

    # precise: F32 KV cache, no flash attention, so batched and one-token logits agree to ~1e-5
    # and greedy comparisons are not at the mercy of f16 rounding at near-ties.
    return LlamaCppBackend(tiny_pair[0], n_ctx=512, n_batch=64, precise=True)


# The tiny models' forward costs about the same for 1 or 17 tokens (a few milliseconds), so
# speculation pays on them: the prior the test engines start from says so (a real engine measures it).
FLAT_PRIOR_CURVE = [1.0 + 0.05 * k for k in range(17)]


@pytest.fixture(scope="session")
def flat_prior():
    """The prior the tiny models' test engines start from (FLAT_PRIOR_CURVE)."""
    from quickdraft.control import Prior

    return Prior(curve=FLAT_PRIOR_CURVE)


@pytest.fixture(scope="session")
def tiny_engine(tiny_pair, tiny_target_backend, flat_prior):
    """One engine with every method available (the draft model is loaded once)."""
    from quickdraft import Engine

    return Engine(tiny_target_backend, method="draft", num_draft=4, draft=str(tiny_pair[1]), chat=False,
                  prior=flat_prior)
