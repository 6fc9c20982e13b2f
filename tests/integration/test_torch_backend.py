"""The torch backend on tiny random-weight transformers models: cache semantics, hidden states,
tree forward, layer subsets, and greedy exactness of every method through the unchanged Engine."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import quickdraft  # noqa: E402
from quickdraft import Engine  # noqa: E402
from quickdraft.backends.torch_hf import TorchBackend  # noqa: E402
from quickdraft.errors import QuickdraftError  # noqa: E402
from quickdraft.proposers import METHODS, Resources  # noqa: E402
from quickdraft.proposers.layerskip import LayerSkipOptions  # noqa: E402
from quickdraft.testing_torch import make_tiny_hf_pair, write_tiny_hf  # noqa: E402

PROMPTS = ["the quick brown fox", "def main(): return", "hello world hello world hello", "a b c d e f g"]
# float32 on CPU: a batched forward and one-token forwards differ by ~1e-6 relative (different
# matmul blocking); logits have a standard deviation of 8, so this bound is far below any margin.
ATOL = 1e-3


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    return make_tiny_hf_pair(tmp_path_factory.mktemp("tiny-hf"), n_layer=6)


@pytest.fixture(scope="module")
def backend(hf_pair):
    # one thread: tiny matrices gain nothing from two, and on a busy machine two spin and wait
    return TorchBackend(hf_pair[0], n_ctx=512, n_threads=1, dtype="float32")


@pytest.fixture(scope="module")
def engine(hf_pair, backend):
    # layerskip with a fixed skip set: on random weights the search rightly finds that skipping
    # does not pay and would not draft at all (test_layerskip_search_... covers the search).
    return Engine(backend, method="draft", draft=str(hf_pair[1]), chat=False, skip_layers=[3])


def ids(backend, text="def main(): return the value of the test"):
    return backend.tokenize(text, special=False)


def test_batched_forward_equals_one_token_forwards(backend):
    tokens = ids(backend)
    backend.prefill([])
    batched = backend.forward(tokens)
    backend.rollback(0)
    single = np.concatenate([backend.forward([t]) for t in tokens])
    assert batched.shape == (len(tokens), backend.vocab_size) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=ATOL)
    assert (batched.argmax(-1) == single.argmax(-1)).all()


def test_rollback_and_prefix_reuse(backend):
    tokens = ids(backend)
    backend.prefill(tokens[:-3])
    first = backend.forward(tokens[-3:])
    backend.rollback(len(tokens) - 3)
    assert backend.tokens == tokens[:-3]
    assert all(layer.get_seq_length() == len(tokens) - 3 for layer in backend.cache.layers)
    np.testing.assert_allclose(backend.forward(tokens[-3:]), first, atol=ATOL)
    last = backend.prefill(tokens, last_logits=True)  # everything cached: re-evaluates the last token
    np.testing.assert_allclose(last, first[-1], atol=ATOL)
    assert backend.tokens == tokens


def fresh_hidden(backend, tokens) -> torch.Tensor:
    """The final hidden states of ``tokens`` from scratch, outside the backend's cache [T, H]."""
    with torch.no_grad():
        return backend.decoder(input_ids=torch.tensor([tokens])).last_hidden_state[0]


def cache_state(backend) -> tuple:
    """What the backend's cache holds: its tokens, every layer's length and the hidden states."""
    return (list(backend.tokens), [layer.get_seq_length() for layer in backend.cache.layers],
            backend.hidden_states(0, len(backend.tokens)))


def test_last_hidden_is_the_lm_head_input(backend):
    tokens = ids(backend)
    backend.prefill(tokens[:-2])
    logits = backend.forward(tokens[-2:])
    hidden = backend.last_hidden
    assert hidden.shape == (2, backend.model.config.hidden_size)
    np.testing.assert_allclose(backend.lm_head(hidden).detach().numpy(), logits, atol=1e-5)


def test_hidden_states_of_every_cached_position(backend):
    """Kept for every cached position however it got there (a cached prefix, a rolled-back chain,
    a tree's kept path), untouched by partial rows and replays, in the model's dtype."""
    context = ids(backend)
    backend.prefill(context)
    backend.prefill(context[:4])  # a rollback: the rows of positions 0..3 stay
    backend.prefill(context)  # only positions 4.. are evaluated again
    backend.forward([40, 50])
    backend.rollback(len(context) + 1)
    backend.forward_tree([60, 70, 80], [-1, 0, 0])
    backend.keep([0, 2])
    backend.forward_layers([90], [0, 2])
    backend.drop_partial()
    last = backend.last_hidden.clone()
    backend.replay(4)
    assert torch.equal(backend.last_hidden, last)  # a replay is no forward
    tokens = context + [40, 60, 80]
    assert backend.tokens == tokens
    hidden = backend.hidden_states(0, len(tokens))
    assert hidden.dtype == backend.model.dtype
    np.testing.assert_allclose(hidden.numpy(), fresh_hidden(backend, tokens).numpy(), atol=1e-4)
    assert torch.equal(backend.hidden_states(3, 5), hidden[3:5])
    assert backend.hidden_states(5, 5).shape == (0, backend.model.config.hidden_size)
    with pytest.raises(QuickdraftError, match="holds"):
        backend.hidden_states(0, len(tokens) + 1)


def test_text_round_trips_through_tokens(backend):
    text = "def add(a, b):\n    return a + b  # ünïcödé 🙂"
    assert b"".join(backend.token_bytes(t) for t in backend.tokenize(text)).decode() == text
    assert backend.tokenize("<|im_end|>", special=True) == [backend.eos_token]
    assert backend.eos_token not in backend.tokenize("<|im_end|>", special=False)
    assert backend.is_end_of_generation(backend.eos_token)


def test_tree_forward_equals_per_path_forward(backend):
    """Every node's logits equal those of its root-to-node path evaluated as a plain chain."""
    context = ids(backend)
    tokens = [40, 50, 60, 70, 80, 90, 100]
    parents = [-1, 0, 0, 1, 1, 2, 5]
    backend.prefill(context)
    tree = backend.forward_tree(tokens, parents)
    assert backend.tokens == context
    for node in range(len(tokens)):
        path = [node]
        while parents[path[-1]] != -1:
            path.append(parents[path[-1]])
        path.reverse()
        backend.prefill(context)
        chain = backend.forward([tokens[i] for i in path])
        np.testing.assert_allclose(tree[node], chain[-1], atol=ATOL)
        assert tree[node].argmax() == chain[-1].argmax()


def test_keep_leaves_the_path_in_the_cache(backend):
    context = ids(backend)
    tokens, parents, path = [40, 50, 60, 70, 80], [-1, 0, 0, 2, 2], [0, 2, 4]
    backend.prefill(context)
    backend.forward_tree(tokens, parents)
    with pytest.raises(QuickdraftError):
        backend.keep([0, 1, 4])  # 4 is not a child of 1
    backend.keep(path)
    assert backend.tokens == context + [40, 60, 80]
    after_keep = backend.forward([33, 34])
    backend.prefill(context + [40, 60, 80])
    np.testing.assert_allclose(after_keep, backend.forward([33, 34]), atol=ATOL)


def test_extend_tree_equals_evaluating_the_whole_tree_at_once(backend):
    context = ids(backend)
    tokens, parents = [40, 50, 60, 70, 80, 90], [-1, 0, 0, 1, 2, 4]
    backend.prefill(context)
    whole = backend.forward_tree(tokens, parents)
    backend.keep([0])
    backend.prefill(context)
    first = backend.forward_tree(tokens[:3], parents[:3])
    rest = backend.extend_tree(tokens[3:], parents[3:])
    np.testing.assert_allclose(np.concatenate([first, rest]), whole, atol=ATOL)
    backend.keep([0, 2, 4, 5])
    assert backend.tokens == context + [40, 60, 80, 90]


def test_all_layers_reproduce_the_full_forward_and_partial_rows_are_dropped(backend):
    context = ids(backend)
    n_layers = len(backend.decoder.layers)
    backend.prefill(context[:-2])
    full = backend.forward(context[-2:])
    backend.rollback(len(context) - 2)
    np.testing.assert_allclose(backend.forward_layers(context[-2:], list(range(n_layers))), full, atol=ATOL)
    partial = backend.forward_layers([context[-1]], [0, 2, 4])
    assert not np.allclose(partial[0], full[-1], atol=ATOL)  # skipping layers changes the prediction
    assert backend.tokens == context[:-2]
    np.testing.assert_allclose(backend.forward(context[-2:]), full, atol=ATOL)  # the partial rows are gone
    assert all(layer.get_seq_length() == len(context) for layer in backend.cache.layers)


def test_replay_equals_the_original_predictions_and_leaves_the_cache(backend):
    context = ids(backend)
    backend.prefill([])
    original = backend.forward(context)
    replayed, states = backend.replay(5, layer_states=True)
    np.testing.assert_allclose(replayed, original[-5:], atol=ATOL)
    assert states.shape == (len(backend.decoder.layers) + 1, 5, backend.model.config.hidden_size)
    assert all(layer.get_seq_length() == len(context) for layer in backend.cache.layers)


@pytest.mark.parametrize("method", ["draft", "ngram", "layerskip", "draft-tree", "ngram-tree"])
@pytest.mark.parametrize("num_draft", [1, 3, 6])
def test_greedy_speculative_equals_ar_token_for_token(engine, method, num_draft):
    drafted = accepted = 0
    for prompt in PROMPTS:
        ar = engine.generate(prompt, max_tokens=40, method="ar")
        spec = engine.generate(prompt, max_tokens=40, method=method, num_draft=num_draft)
        assert spec.token_ids == ar.token_ids, (method, prompt)
        assert spec.text == ar.text
        drafted += spec.stats["drafted_tokens"]
        accepted += spec.stats["accepted_tokens"]
    assert drafted > 0, f"{method} never drafted: the test would not exercise verification"
    if method != "ngram":
        assert 0 < accepted < drafted, "expected both accepted and rejected drafts"


def test_layerskip_search_reports_its_candidates_and_leaves_the_cache_intact(backend):
    engine = Engine(backend, method="layerskip", chat=False)
    for prompt in PROMPTS[:2]:
        assert (engine.generate(prompt, max_tokens=30).token_ids
                == engine.generate(prompt, max_tokens=30, method="ar").token_ids)
    proposer = METHODS["layerskip"].make(Resources(backend), None, LayerSkipOptions())
    prompt = engine.prepare(PROMPTS[1]).tokens
    backend.prefill(prompt[:-1])  # what the engine does before begin
    before = cache_state(backend)
    proposer.begin(prompt)  # the search replays the window
    after = cache_state(backend)
    assert after[:2] == before[:2] and torch.equal(after[2], before[2])
    search = proposer.search
    assert search["candidates"] and all(0 <= c["agreement"] <= 1 for c in search["candidates"])
    assert all(0 not in c["skipped"] and 5 not in c["skipped"] for c in search["candidates"])


def test_layerskip_choice_maximises_the_estimated_speedup():
    from quickdraft.proposers.layerskip import estimated_speedup, expected_tokens, influence_order

    assert expected_tokens(0.5, 3) == 1 + 0.5 + 0.25 + 0.125
    assert estimated_speedup(1.0, 3, 6, 4) == 5 / 3
    assert estimated_speedup(0.0, 3, 6, 4) < 1
    # layer 2 barely changes the state, layer 1 turns it: 2 is skipped first; 0 and 3 never
    states = np.array([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[0.1, 1.0]], [[1.0, 1.0]]])
    assert influence_order(states) == [2, 1]


def test_layerskip_needs_the_torch_backend(tiny_target_backend):
    with pytest.raises(QuickdraftError, match="--backend torch"):
        Engine(tiny_target_backend, method="layerskip")


def test_a_draft_of_another_vocabulary_drafts_through_text(tmp_path, backend):
    """A draft model with more token ids than the target's is bridged (bridge.py): the answer is
    the target's own; a tree of its token ids is refused naming draft."""
    from transformers import AutoModelForCausalLM

    other = write_tiny_hf(tmp_path / "other", n_layer=1)
    model = AutoModelForCausalLM.from_pretrained(other)
    model.resize_token_embeddings(backend.vocab_size + 8)
    model.save_pretrained(other)
    engine = Engine(backend, method="draft", draft=str(other), chat=False)  # the draft model opens when first used
    ar = engine.generate("hello world", max_tokens=12, method="ar")
    assert engine.generate("hello world", max_tokens=12, num_draft=3).token_ids == ar.token_ids
    assert engine.bridge is not None
    with pytest.raises(QuickdraftError, match="vocabulary") as error:
        engine.generate("hello", max_tokens=2, method="draft-tree")
    assert error.value.param == "draft"


def test_bad_options_give_clear_errors(hf_pair):
    with pytest.raises(QuickdraftError, match="dtype"):
        TorchBackend(hf_pair[0], dtype="int8")
    with pytest.raises(QuickdraftError):
        TorchBackend(hf_pair[0].parent / "missing")


def test_cli_generate_with_the_torch_backend(hf_pair):
    import json

    from typer.testing import CliRunner

    from quickdraft.cli import app

    target, draft = hf_pair
    for method in ("draft", "layerskip"):
        result = CliRunner().invoke(app, ["generate", "def add(a, b):", "--backend", "torch", "--dtype", "float32",
                                          "--threads", "1", "--target", str(target), "--draft", str(draft),
                                          "--method", method, "-n", "16", "--json", "--check"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert out["check"]["result"] == "exact" and out["stats"]["generated_tokens"] == 16


def test_bench_runs_torch_methods(tmp_path, hf_pair):
    from quickdraft.bench.runner import BenchConfig, run_bench

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hello world hello world"}\n')
    config = BenchConfig(target=str(hf_pair[0]), draft=str(hf_pair[1]), tasks=(), data=(str(prompts),),
                         methods=("ar", "draft", "layerskip"), max_tokens=12, backend="torch", dtype="float32")
    results = run_bench(config, tmp_path / "out")
    samples = results["samples"]
    assert {s["method"] for s in samples} == {"ar", "draft", "layerskip"}
    assert all(s["check"]["result"] == "exact" for s in samples if s["method"] != "ar")
    assert results["config"]["backend"] == "torch"


def test_the_torch_path_never_loads_llama_cpp(hf_pair):
    """The torch backend, its proposers and its test models run without importing llama.cpp."""
    script = f"""
import sys

def check(when):
    loaded = [m for m in sys.modules if m.split(".")[0] == "llama_cpp" or m.endswith(".llamacpp")]
    assert not loaded, (when, loaded)

import quickdraft.backends.torch_hf
check("import quickdraft.backends.torch_hf")
import quickdraft.heads.proposers, quickdraft.heads.train, quickdraft.testing_torch
check("importing the heads and the test models")
engine = quickdraft.load({str(hf_pair[0])!r}, None, backend="torch", dtype="float32", n_threads=1, chat=False,
                         calibrate=False, skip_layers=[3])
for method in ("ar", "layerskip", "ngram-tree"):
    engine.generate("hello world", max_tokens=4, method=method)
check("generating")
"""
    here = str(Path(quickdraft.__file__).parents[1])  # this checkout, not whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr


def test_without_torch_the_error_names_the_extra(monkeypatch, hf_pair):
    monkeypatch.delitem(sys.modules, "quickdraft.backends.torch_hf", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # what a missing package looks like to import
    with pytest.raises(QuickdraftError, match=r"quickdraft\[torch\]"):
        quickdraft.load(str(hf_pair[0]), None, backend="torch")
