"""Batch-invariant mode: with the batch-invariant build of llama.cpp (``make batch-invariant``)
every row of a forward is computed the same way whatever the forward's shape, so the logits a
request sees never depend on its batch, its drafts or prefix reuse: bit-identical, not close.
Each case runs in a fresh interpreter, because the build is chosen before llama.cpp is loaded."""

import json
import subprocess
import sys

import pytest

from quickdraft.system import batch_invariant_llama_dir

pytestmark = pytest.mark.skipif(not (batch_invariant_llama_dir() / "libllama.so").is_file(),
                                reason="run `make batch-invariant` (make test does)")

SCRIPT = """
import json, sys
import numpy as np
import quickdraft
from quickdraft.calibrate import calibration_context, logit_spread

invariant = sys.argv[3] == "1"
engine = quickdraft.load(sys.argv[1], sys.argv[2], n_ctx=1024, n_threads=1, chat=False, calibrate=False,
                         precise=True, **({"batch_invariant": True} if invariant else {}))
context = calibration_context(engine.target, 17)[:200]
spread = logit_spread(engine.target, context, positions=24, sizes=(2, 3, 5, 8, 17))
prompt = "hello world hello world hello"
ar = engine.generate(prompt, max_tokens=40, method="ar").token_ids
same = [engine.generate(prompt, max_tokens=40, method=m, num_draft=k).token_ids == ar
        for m in ("draft", "ngram", "auto") for k in (3, 8)]
print(json.dumps({"spread": spread, "same": same}))
"""


def run(tiny_pair, invariant: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_pair[0]), str(tiny_pair[1]), "1" if invariant else "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_row_is_bit_identical_whatever_the_shape(tiny_pair):
    invariant = run(tiny_pair, invariant=True)
    assert invariant["spread"] == 0.0  # exactly: one kernel path per row
    assert all(invariant["same"])
    default = run(tiny_pair, invariant=False)  # the negative control: the default build is not
    assert default["spread"] > 0.0


def test_choosing_it_after_llama_cpp_is_loaded_is_a_clear_error(tiny_pair):
    script = ("import quickdraft, sys\n"
              "quickdraft.load(sys.argv[1], None, n_ctx=256, calibrate=False)\n"
              "try:\n    quickdraft.load(sys.argv[1], None, n_ctx=256, calibrate=False, batch_invariant=True)\n"
              "except quickdraft.QuickdraftError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", script, str(tiny_pair[0])], capture_output=True, text=True, timeout=300)
    assert "refused:" in out.stdout and "before any model is loaded" in out.stdout, out.stderr[-2000:]
