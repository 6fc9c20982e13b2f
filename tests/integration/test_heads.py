"""Trained draft heads (Medusa, EAGLE) on tiny random-weight transformers models: offsets,
losslessness, training, save/load and the wrong-target error. No downloads."""

import dataclasses
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from quickdraft import Engine  # noqa: E402
from quickdraft.backends.torch_hf import TorchBackend  # noqa: E402
from quickdraft.errors import HeadsMismatchError, QuickdraftError  # noqa: E402
from quickdraft.heads import DraftVocab, EagleHead, MedusaHeads, describe_target, load_for_target  # noqa: E402
from quickdraft.heads.common import HeadConfig, most_frequent, save_heads  # noqa: E402
from quickdraft.heads.eagle import KVCache  # noqa: E402
from quickdraft.heads.train import TrainOptions, new_head, target_rows, train_head, windows  # noqa: E402
from quickdraft.proposers import METHODS, Registry, Resources, parse_options  # noqa: E402
from quickdraft.testing_torch import write_tiny_hf  # noqa: E402

PROMPTS = ["def add(a, b):", "the user asked the assistant", "for i in range(len(data)):", "x"]
KINDS = ["medusa", "eagle"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread avoids torch's thread hand-offs on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_hf(tmp_path_factory.mktemp("heads") / "target", n_layer=2)


@pytest.fixture(scope="module")
def backend(tiny) -> TorchBackend:
    return TorchBackend(tiny, dtype="float32")


def random_chunks(n: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 400, (length,), generator=g).tolist() for _ in range(n)]


TRAINED_STARTS = random_chunks(32, 3, seed=7)


def own_text_chunks(backend: TorchBackend, n: int, length: int) -> list[list[int]]:
    """Chunks of the target's own greedy continuations of random starts: what heads must learn."""
    engine = Engine(backend, method="ar", chat=False)
    out = []
    for start in TRAINED_STARTS[:n]:
        out.append(start + engine.generate(start, max_tokens=length - 3).token_ids)
    return [c for c in out if len(c) == length]


def same_as_ar(engine, prompts, max_tokens: int, **options) -> dict[str, int]:
    """Generate every prompt with AR and with the engine's method (keywords ``options``), assert
    the same tokens, and return the drafted and accepted tokens summed over the prompts."""
    totals = {"drafted_tokens": 0, "accepted_tokens": 0}
    for prompt in prompts:
        ar = engine.generate(prompt, max_tokens=max_tokens, method="ar")
        spec = engine.generate(prompt, max_tokens=max_tokens, **options)
        assert spec.token_ids == ar.token_ids, (engine.method, options, prompt)
        for key in totals:
            totals[key] += spec.stats[key]
    return totals


def save_untrained(backend, kind: str, directory: Path, **options) -> Path:
    head = new_head(kind, backend.model, **options)
    torch.manual_seed(0)
    for p in head.parameters():  # untrained but not identity: drafts are random, some accepted
        p.data.normal_(0, 0.02)
    config = HeadConfig(kind=kind, target=describe_target(backend.model), draft_vocab=backend.vocab_size,
                        shape=head.shape)
    save_heads(directory, config, head, None)
    return directory


@pytest.fixture(scope="module")
def trained(backend, tmp_path_factory) -> dict[str, Path]:
    """Heads of both kinds trained for a few hundred steps on the target's own text."""
    root = tmp_path_factory.mktemp("trained")
    chunks = own_text_chunks(backend, 24, 64)
    out = {}
    for kind in KINDS:
        train_head(kind, backend.model, backend.tokenize, root / kind, cache_root=root / "cache", chunks=iter(chunks),
                   options=TrainOptions(max_steps=300, chunk=64, window=48, batch=8, draft_vocab=0,
                                        lr=3e-3, noise=0.0, max_chunks=24))
        out[kind] = root / kind
    return out


# --- offsets ----------------------------------------------------------------------------------

def test_medusa_head_k_is_trained_on_the_token_k_plus_2_after_its_hidden_state():
    """With an identity LM head and untrained (identity) heads, a hidden state that *is* the
    one-hot of labels[t + k + 1] scores accuracy 1 for head k exactly when the offsets are right."""
    V = H = 16
    lm_head = torch.nn.Linear(H, V, bias=False)
    lm_head.weight.data = torch.eye(V)
    vocab = DraftVocab(lm_head, None)
    labels = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(0))
    heads = MedusaHeads(H, num_heads=3)
    for k in range(3):
        hidden = torch.zeros(1, 40, H)
        hidden[0, :40 - k - 1] = 10 * torch.eye(V)[labels[0, k + 1:]]
        _, accuracy = heads.loss(vocab, hidden, labels, labels)
        assert accuracy[k] == 1.0, (k, accuracy)
        assert all(a < 0.5 for j, a in enumerate(accuracy) if j != k), (k, accuracy)


def test_eagle_incremental_feeding_equals_one_pass():
    """The head's KV cache: feeding positions in pieces gives the one-pass outputs."""
    torch.manual_seed(0)
    head = EagleHead(32, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64)
    features, embeds = torch.randn(1, 10, 32), torch.randn(1, 10, 32)
    full = head(features, embeds, torch.arange(10))
    cache, parts = KVCache(), []
    for a, b in ((0, 4), (4, 5), (5, 10)):
        parts.append(head(features[:, a:b], embeds[:, a:b], torch.arange(a, b), cache))
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    cache.crop(4)
    assert torch.allclose(head(features[:, 4:6], embeds[:, 4:6], torch.arange(4, 6), cache), full[:, 4:6], atol=1e-5)


def test_draft_vocabulary_maps_back_to_full_ids():
    tokens = torch.tensor([5, 5, 5, 9, 9, 2, 7, 7, 7, 7])
    ids = most_frequent(tokens, vocab_size=12, size=3)
    assert ids.tolist() == [5, 7, 9]
    assert most_frequent(tokens, 12, 0) is None and most_frequent(tokens, 12, 12) is None
    assert most_frequent(tokens, 12, 8).tolist() == [2, 5, 7, 9]  # only tokens that occur
    lm_head = torch.nn.Linear(4, 12, bias=False)
    vocab = DraftVocab(lm_head, ids)
    assert len(vocab) == 3
    assert vocab.from_full(torch.tensor([7, 2, 9])).tolist() == [1, -100, 2]
    assert vocab.to_full(torch.tensor([0, 2])).tolist() == [5, 9]
    h = torch.randn(4)
    assert torch.allclose(vocab.logits(h), lm_head(h)[ids])


# --- the proposers read the right hidden rows ------------------------------------------------

def fresh_hidden(backend, tokens) -> torch.Tensor:
    """The target's final hidden states of ``tokens`` from scratch [T, H]."""
    return target_rows(backend.model, tokens)[0]


def watching(method: str, watch) -> Registry:
    """The registered methods, with ``watch(proposer)`` called on each proposer of ``method`` the
    engine makes (one per request), before it is used."""
    spec = METHODS[method]

    def make(resources, memory, options):
        proposer = spec.make(resources, memory, options)
        watch(proposer)
        return proposer

    return Registry(dataclasses.replace(s, make=make) if s is spec else s for s in METHODS)


def made(backend, method: str, **options):
    """A proposer of ``method`` for one request on ``backend``, built from its declaration (with a
    fresh memory), as the engine builds it."""
    spec = METHODS[method]
    resources, parsed = Resources(backend), parse_options(spec, options)
    return spec.make(resources, spec.memory(resources, parsed), parsed)


@pytest.mark.parametrize("num_draft", [1, 3])
def test_medusa_anchor_is_the_hidden_state_of_the_last_cached_position(backend, trained, num_draft):
    seen = []

    def watch(proposer):
        propose = proposer.propose

        def spy(context, budget, sampling, rng):
            seen.append((list(context), proposer.anchor.clone()))
            return propose(context, budget, sampling, rng)

        proposer.propose = spy

    engine = Engine(backend, method="medusa", heads=str(trained["medusa"]), chat=False,
                    methods=watching("medusa", watch))
    result = engine.generate(TRAINED_STARTS[0], max_tokens=30, num_draft=num_draft)
    assert result.stats["accepted_tokens"] > 0  # so rows other than 0 are taken too
    assert len(seen) > 5
    for context, anchor in seen:
        assert torch.allclose(anchor, fresh_hidden(backend, context[:-1])[-1], atol=1e-4), len(context)


def test_eagle_reads_the_true_features_of_every_context_position(backend, trained):
    fed, proposer_context = {}, [None]

    def watch(proposer):
        feed, propose = proposer._feed, proposer.propose

        def spy(features, next_tokens, start):
            if start + len(features) <= len(proposer_context[0]) - 1:  # true features, not draft guesses
                for i, f in enumerate(features):
                    fed[start + i] = (f.clone(), next_tokens[i])
            return feed(features, next_tokens, start)

        def remember(context, *args):
            proposer_context[0] = list(context)
            return propose(context, *args)

        proposer._feed, proposer.propose = spy, remember

    engine = Engine(backend, method="eagle", heads=str(trained["eagle"]), chat=False, methods=watching("eagle", watch))
    first = engine.generate(TRAINED_STARTS[0], max_tokens=30, num_draft=3)
    assert first.stats["accepted_tokens"] > 0
    for reused in (False, True):
        context = proposer_context[0]
        truth = fresh_hidden(backend, context[:-1])
        assert sorted(fed) == list(range(min(fed), len(context) - 1))
        assert (min(fed) > 0) == reused  # a follow-up prompt reuses the head's cache of its prefix
        for position, (feature, next_token) in fed.items():
            assert next_token == context[position + 1]
            assert torch.allclose(feature, truth[position], atol=1e-4), position
        fed.clear()
        same_as_ar(engine, [TRAINED_STARTS[0] + first.token_ids + TRAINED_STARTS[1]], 20, num_draft=3)


@pytest.mark.parametrize("kind", KINDS)
def test_begin_reads_a_cached_prompt_without_running_the_target(backend, trained, kind, monkeypatch):
    """The prompt's prefix is already cached, so the prefill evaluates nothing (``last_hidden`` is
    empty): the proposer reads the features from the backend's kept hidden states; it neither
    runs nor rolls back the target. The output stays AR's."""
    prompt = TRAINED_STARTS[2] + TRAINED_STARTS[3]
    proposer = made(backend, kind, heads=str(trained[kind]))
    backend.prefill(prompt)
    backend.prefill(prompt[:-1])  # what the engine does: nothing is evaluated again
    assert len(backend.last_hidden) == 0
    tokens, lengths = list(backend.tokens), [layer.get_seq_length() for layer in backend.cache.layers]
    hidden = backend.hidden_states(0, len(tokens))
    with monkeypatch.context() as m:
        for name in ("prefill", "forward", "rollback", "forward_tree", "forward_layers", "replay"):
            m.setattr(backend, name, lambda *a, name=name, **k: pytest.fail(f"begin() called target.{name}"))
        proposer.begin(prompt)
    assert backend.tokens == tokens and [layer.get_seq_length() for layer in backend.cache.layers] == lengths
    assert torch.equal(backend.hidden_states(0, len(tokens)), hidden)
    truth = fresh_hidden(backend, prompt[:-1])
    features = proposer.anchor[None] if kind == "medusa" else proposer.pending
    assert torch.allclose(features, truth[len(truth) - len(features):], atol=1e-4)
    assert len(features) == (1 if kind == "medusa" else len(truth))

    engine = Engine(backend, method=kind, heads=str(trained[kind]), chat=False)
    assert same_as_ar(engine, [prompt], 20, num_draft=3)["drafted_tokens"] > 0  # AR leaves the prompt cached


# --- lossless ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_draft", [1, 4])
def test_greedy_speculative_equals_ar_with_untrained_heads(backend, tmp_path, kind, num_draft):
    heads = save_untrained(backend, kind, tmp_path / kind, **({"num_heads": 4} if kind == "medusa" else {}))
    engine = Engine(backend, method=kind, heads=str(heads), chat=False)
    assert same_as_ar(engine, PROMPTS, 40, num_draft=num_draft)["drafted_tokens"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_trained_heads_are_accepted_and_stay_exact(backend, trained, kind):
    """Heads trained on the target's own text get drafts accepted (this fails when the training
    or drafting offsets are off by one) and the output is still exactly AR's."""
    engine = Engine(backend, method=kind, heads=str(trained[kind]), chat=False)
    totals = same_as_ar(engine, TRAINED_STARTS[:4], 40, num_draft=4)
    assert totals["accepted_tokens"] / totals["drafted_tokens"] > {"medusa": 0.05, "eagle": 0.5}[kind], (kind, totals)


def test_sampling_with_heads_runs(backend, trained):
    engine = Engine(backend, method="eagle", heads=str(trained["eagle"]), chat=False)
    result = engine.generate(PROMPTS[0], max_tokens=20, temperature=0.8, seed=1)
    assert len(result.token_ids) == 20


@pytest.mark.parametrize("kind", ["medusa-tree", "eagle-tree"])
@pytest.mark.parametrize("num_draft", [2, 6])
def test_greedy_tree_drafting_equals_ar(backend, trained, kind, num_draft):
    engine = Engine(backend, method=kind, heads=str(trained[kind.split("-")[0]]), chat=False, tree_width=2)
    assert same_as_ar(engine, [*PROMPTS[:2], *TRAINED_STARTS[:2]], 30, num_draft=num_draft)["accepted_tokens"] > 0


def test_eagle_tree_with_width_one_is_the_chain(backend, trained):
    """A one-wide tree is a chain: the same drafts as chain drafting, so the same acceptance."""
    chain = Engine(backend, method="eagle", heads=str(trained["eagle"]), chat=False)
    tree = Engine(backend, method="eagle-tree", heads=str(trained["eagle"]), chat=False, tree_width=1)
    for prompt in TRAINED_STARTS[:2]:
        a, b = chain.generate(prompt, max_tokens=30, num_draft=3), tree.generate(prompt, max_tokens=30, num_draft=3)
        assert a.token_ids == b.token_ids
        assert a.stats["accepted_tokens"] == b.stats["accepted_tokens"]


# --- training, save/load, errors ----------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_twenty_training_steps_lower_the_loss(backend, tmp_path, kind):
    from quickdraft.heads.train import HiddenCache, collect, head_loss

    chunks = own_text_chunks(backend, 8, 48)
    target = describe_target(backend.model)
    cache = HiddenCache(tmp_path / "cache", target, "test", 48)
    collect(backend.model, iter(chunks), cache, deadline=float("inf"), max_chunks=8)
    data = cache.load()
    batch = windows(data, 32, 8, torch.Generator().manual_seed(0))
    vocab = DraftVocab(backend.lm_head, None, torch.float32)
    embed = backend.model.get_input_embeddings()
    torch.manual_seed(0)
    head = new_head(kind, backend.model).float()
    before = head_loss(kind, head, vocab, embed, *batch)[0].item()
    train_head(kind, backend.model, backend.tokenize, tmp_path / "out", cache_root=tmp_path / "cache2",
               chunks=iter(chunks), options=TrainOptions(max_steps=20, chunk=48, window=32, batch=8, draft_vocab=0, lr=1e-2))
    trained_head, _, config = load_for_target(tmp_path / "out", kind, backend.model, backend.lm_head)
    after = head_loss(kind, trained_head.float(), vocab, embed, *batch)[0].item()
    assert after < 0.9 * before, (before, after)
    assert config.training["steps"] == 20 and config.training["tokens"] > 0


def test_save_load_round_trip_with_reduced_vocabulary(backend, tmp_path):
    head = new_head("medusa", backend.model, num_heads=2)
    for p in head.parameters():
        p.data.normal_(0, 0.1)
    ids = torch.tensor([3, 10, 50, 99])
    config = HeadConfig(kind="medusa", target=describe_target(backend.model), draft_vocab=4, shape=head.shape,
                        training={"tokens": 123})
    save_heads(tmp_path / "h", config, head, ids)
    loaded, vocab, loaded_config = load_for_target(tmp_path / "h", "medusa", backend.model, backend.lm_head)
    assert loaded_config == config
    h = torch.randn(backend.model.config.hidden_size)
    assert torch.equal(loaded(h), head(h))
    assert vocab.ids.tolist() == ids.tolist()
    with pytest.raises(QuickdraftError, match="medusa heads, not eagle"):
        load_for_target(tmp_path / "h", "eagle", backend.model, backend.lm_head)


def test_heads_trained_on_another_model_are_refused(backend, tmp_path, tiny):
    other = TorchBackend(write_tiny_hf(tmp_path / "other", n_layer=2, seed=3), dtype="float32")
    heads = save_untrained(other, "medusa", tmp_path / "h")
    with pytest.raises(HeadsMismatchError, match="trained on another model"):
        Engine(backend, method="medusa", heads=str(heads), chat=False)
    same_in_bf16 = TorchBackend(tiny, dtype="bfloat16")
    assert describe_target(same_in_bf16.model) == describe_target(backend.model)
    same_in_bf16.prefill([5, 6, 7])
    assert same_in_bf16.hidden_states(0, 3).dtype == torch.bfloat16  # kept as the model computes them


def test_heads_are_found_in_a_kind_subdirectory_or_the_cache(backend, tmp_path, monkeypatch):
    save_untrained(backend, "eagle", tmp_path / "both" / "eagle")
    save_untrained(backend, "medusa", tmp_path / "both" / "medusa")
    for kind in KINDS:
        assert made(backend, kind, heads=str(tmp_path / "both")).config.kind == kind
        Engine(backend, method=kind, heads=str(tmp_path / "both"), chat=False)  # loads them, or raises
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(QuickdraftError, match="needs trained heads"):
        Engine(backend, method="medusa", chat=False)
    save_untrained(backend, "medusa", tmp_path / "cache" / "heads" / "medusa")
    assert made(backend, "medusa").config.kind == "medusa"
    Engine(backend, method="medusa", chat=False)


def test_clear_errors_without_heads_or_torch_backend(backend, tiny_target_backend, tmp_path):
    with pytest.raises(QuickdraftError, match="no trained heads"):
        Engine(backend, method="eagle", heads=str(tmp_path), chat=False)
    with pytest.raises(QuickdraftError, match="hidden_states.*--backend torch"):
        Engine(tiny_target_backend, method="medusa", heads=str(tmp_path), chat=False)


# --- the command ------------------------------------------------------------------------------

def test_train_command_trains_resumes_and_refuses_to_overwrite(tiny, tmp_path):
    from typer.testing import CliRunner

    from quickdraft.cli import app

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def add(a, b):\n    return a + b\n" * 40)
    (corpus / "b.txt").write_text("the user asked the assistant for some code\n" * 40)
    args = ["train", "eagle", "--target", str(tiny), "--out", str(tmp_path / "eagle"), "--corpus", str(corpus),
            "--minutes", "0.05", "--chunk", "32", "--max-chunks", "6", "--draft-vocab", "64",
            "--backend-dtype", "float32", "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "eagle" / "config.json").read_text())
    assert config["kind"] == "eagle" and 0 < config["draft_vocab"] <= 64
    steps = config["training"]["steps"]
    assert steps > 0 and config["training"]["chunks"] == 6
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = CliRunner().invoke(app, args[:9] + ["0.1"] + args[10:] + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tmp_path / "eagle" / "config.json").read_text())["training"]["steps"] > steps
    bad = CliRunner().invoke(app, ["train", "lookahead", "--target", str(tiny)])
    assert bad.exit_code == 2 and "medusa, eagle" in bad.output
