"""Tree forward in the llama.cpp backend on the tiny models: one llama_decode for a whole token
tree equals evaluating each root-to-leaf path on its own, and keep() leaves the cache exactly as
if the kept path had been forwarded as a chain.

Tolerance: with ``precise=True`` (F32 KV cache, no flash attention) batched and one-token logits
differ by ~1e-5 on these models (the logits have std 8), so we allow 1e-3 and also require
identical argmaxes.
"""

import numpy as np
import pytest

from quickdraft.errors import InvalidParameterError, QuickdraftError
from quickdraft.tree import chain_parents, layout

TOL = 1e-3
TREES = [
    (-1,),                                 # the root alone (a plain step)
    (-1, 0, 1, 2),                         # a chain
    (-1, 0, 0, 1),                         # the tree.py docstring example
    (-1, 0, 0, 0, 1, 1, 4, 3, 2, 6, 6),    # wider and deeper, leaves on several depths
    (-1,) + (0,) * 8,                      # one level of 8 siblings
    (-1, 0, 0, 1, 1, 2, 2, 3, 4, 5),       # levels in index order (for the level-by-level test)
]


@pytest.fixture
def backend(tiny_target_backend):
    prompt = tiny_target_backend.tokenize("def hello(world): return the", special=False)
    tiny_target_backend.prefill(prompt)
    yield tiny_target_backend
    pending = tiny_target_backend.main._tree is not None
    if pending:  # do not break the tests that share this backend
        tiny_target_backend.keep((0,))
    assert not pending, "a test left a tree awaiting keep()"


def tree_tokens(backend, parents, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(int(t) for t in rng.integers(261, backend.vocab_size, len(parents)))


@pytest.mark.parametrize("parents", TREES)
def test_tree_forward_equals_each_path_forward(backend, parents):
    prompt = list(backend.tokens)
    tokens = tree_tokens(backend, parents)
    logits = backend.forward_tree(tokens, parents)
    assert logits.shape == (len(parents), backend.vocab_size)
    backend.keep((0,))
    for path in layout(parents).paths:
        backend.prefill(prompt)
        ref = backend.forward([tokens[i] for i in path])
        np.testing.assert_allclose(logits[list(path)], ref, atol=TOL, rtol=0)
        assert (logits[list(path)].argmax(-1) == ref.argmax(-1)).all()
    backend.prefill(prompt)


@pytest.mark.parametrize("parents, path", [
    ((-1, 0, 0, 1), (0, 1, 3)),  # the path of the second leaf (sequence 1)
    ((-1, 0, 0, 1), (0, 2)),     # the first leaf's path (sequence 0)
    ((-1, 0, 0, 1), (0, 1)),     # stopping inside the tree
    ((-1, 0, 0, 1), (0,)),       # everything rejected
    ((-1, 0, 0, 0, 1, 1, 4, 3, 2, 6, 6), (0, 1, 4, 6, 10)),
    ((-1,) + (0,) * 8, (0, 7)),
])
def test_keep_leaves_the_path_in_the_cache(backend, parents, path):
    prompt = list(backend.tokens)
    tokens = tree_tokens(backend, parents, seed=1)
    backend.forward_tree(tokens, parents)
    backend.keep(path)
    assert backend.tokens == prompt + [tokens[i] for i in path]
    after = backend.forward([300, 301])  # the cache continues from the path, nothing else
    backend.prefill(prompt)
    ref = backend.forward([tokens[i] for i in path] + [300, 301])[-2:]
    np.testing.assert_allclose(after, ref, atol=TOL, rtol=0)
    # and a second tree on top of the kept path works the same way
    backend.rollback(len(prompt) + len(path))
    logits = backend.forward_tree(tokens, parents)
    backend.keep((0,))
    backend.prefill(prompt + [tokens[i] for i in path])
    leaf_path = layout(parents).paths[-1]
    np.testing.assert_allclose(logits[list(leaf_path)], backend.forward([tokens[i] for i in leaf_path]),
                               atol=TOL, rtol=0)
    backend.prefill(prompt)


def test_selected_rows(backend):
    prompt = list(backend.tokens)
    parents = TREES[3]
    tokens = tree_tokens(backend, parents, seed=3)
    every = backend.forward_tree(tokens, parents)
    backend.keep((0,))
    backend.rollback(len(prompt))
    some = backend.forward_tree(tokens, parents, rows=[7, 2])
    np.testing.assert_allclose(some, every[[7, 2]], atol=TOL, rtol=0)
    more = backend.extend_tree([300, 301], [7, 11], rows=[1])  # node 12 below the new node 11
    assert more.shape == (1, backend.vocab_size)
    backend.keep((0, 3, 7, 11, 12))
    assert backend.tokens == prompt + [tokens[0], tokens[3], tokens[7], 300, 301]
    backend.rollback(len(prompt))


def test_chain_tree_equals_forward_and_rollback(backend):
    prompt = list(backend.tokens)
    chain = (400, 401, 402, 403)
    logits = backend.forward_tree(chain, chain_parents(len(chain)))
    backend.keep((0, 1, 2))
    after = backend.forward([500])
    backend.prefill(prompt)
    ref = backend.forward(list(chain))
    backend.rollback(len(prompt) + 3)
    np.testing.assert_allclose(logits, ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(after, backend.forward([500]), atol=TOL, rtol=0)
    backend.prefill(prompt)


@pytest.mark.parametrize("parents", [t for t in TREES[1:] if list(layout(t).depth) == sorted(layout(t).depth)])
def test_growing_a_tree_level_by_level_equals_one_forward(backend, parents):
    """extend_tree adds nodes below evaluated ones: the rows equal the one-shot forward_tree's,
    and keep() afterwards works on the grown tree."""
    prompt = list(backend.tokens)
    tokens = tree_tokens(backend, parents, seed=2)
    whole = backend.forward_tree(tokens, parents)
    backend.keep((0,))
    backend.rollback(len(prompt))
    depth = layout(parents).depth
    grown = backend.forward_tree(tokens[:1], parents[:1])
    for level in range(1, max(depth) + 1):
        nodes = [i for i in range(len(parents)) if depth[i] == level]
        assert nodes == list(range(len(grown), len(grown) + len(nodes)))  # level order = index order here
        grown = np.concatenate([grown, backend.extend_tree([tokens[i] for i in nodes], [parents[i] for i in nodes])])
    np.testing.assert_allclose(grown, whole, atol=TOL, rtol=0)
    path = layout(parents).paths[-1]
    backend.keep(path)
    after = backend.forward([300])
    backend.prefill(prompt)
    np.testing.assert_allclose(after, backend.forward([tokens[i] for i in path] + [300])[-1:], atol=TOL, rtol=0)
    backend.prefill(prompt)


def test_tree_misuse_is_refused(backend):
    with pytest.raises(QuickdraftError, match="forward_tree"):
        backend.keep((0,))
    with pytest.raises(InvalidParameterError, match="parents"):
        backend.forward_tree((1, 2), (-1, 1))
    with pytest.raises(InvalidParameterError, match="tokens"):
        backend.forward_tree((1, 2, 3), (-1, 0))
    with pytest.raises(InvalidParameterError, match="max_tree_nodes"):
        backend.forward_tree((300,) * (backend.max_tree_nodes + 1), (-1,) + (0,) * backend.max_tree_nodes)
    with pytest.raises(QuickdraftError, match="forward_tree"):
        backend.extend_tree((300,), (0,))
    backend.forward_tree((300, 301, 302), (-1, 0, 0))
    with pytest.raises(QuickdraftError, match="keep"):
        backend.forward([5])
    with pytest.raises(QuickdraftError, match="keep"):
        backend.rollback(0)
    with pytest.raises(InvalidParameterError, match="not a child"):
        backend.keep((0, 1, 2))
    backend.keep((0, 2))


def test_the_tree_ids_sequences_keep_go_back_to_the_pool_when_it_runs_dry(tiny_pair):
    """A sequence keeps the ids its trees took (one per node beyond its own) for its next tree;
    many sequences drafting trees once held more than the context has (the server's 'all 256
    llama.cpp sequence ids in use'). With 16 ids, five sequences each evaluating 6-node trees
    (30 ids between them) in turn, and some in one forward beside a chain: every tree's rows are
    still each path's own (the ids taken back were untagged, the next tree tags them again)."""
    from quickdraft.backends.base import Chunk
    from quickdraft.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(tiny_pair[0], n_ctx=512, n_batch=16, precise=True)
    assert backend.n_seq_max == 16
    parents = (-1, 0, 0, 1, 1, 2)
    paths = layout(parents).paths
    prompt = backend.tokenize("def hello(world): return the", special=False)
    sequences = [backend.new_sequence() for _ in range(5)]
    for s in sequences:
        s.prefill(prompt)

    def check(s, tokens, logits, path):
        """``s`` evaluated tree ``tokens`` after its cache into ``logits``; keep ``path`` and compare."""
        before = list(s.tokens)
        s.keep(path)
        assert s.tokens == before + [tokens[i] for i in path]
        backend.main.prefill(before)
        np.testing.assert_allclose(logits[list(path)], backend.main.forward([tokens[i] for i in path]),
                                   atol=TOL, rtol=0)

    for step in range(3):
        for k, s in enumerate(sequences):  # one tree at a time: the others keep their ids until needed
            tokens = tree_tokens(backend, parents, seed=10 * step + k)
            check(s, tokens, s.forward_tree(tokens, parents), paths[(step + k) % len(paths)])
        chain, *trees = sequences[step:step + 3]  # a chain and two trees in one forward
        tokens = [tree_tokens(backend, parents, seed=100 + step + j) for j in range(2)]
        rows = backend.forward_batch([Chunk(chain, [300 + step]),
                                      *(Chunk(s, t, parents) for s, t in zip(trees, tokens))])
        before = chain.tokens[:-1]
        backend.main.prefill(before)
        np.testing.assert_allclose(rows[0], backend.main.forward([300 + step]), atol=TOL, rtol=0)
        for s, t, logits in zip(trees, tokens, rows[1:]):
            check(s, t, logits, paths[-1])
    backend.close()


def test_a_forward_split_into_several_decodes_returns_each_chunk_its_own_rows(tiny_pair):
    """Rows of many sequences packed into several llama_decode calls (decode_groups), a tree and
    a prompt chunk among them, give each chunk the logits it gets evaluated alone, in order."""
    from quickdraft.backends.base import Chunk
    from quickdraft.backends.llamacpp import LlamaCppBackend, decode_groups

    backend = LlamaCppBackend(tiny_pair[0], n_ctx=1024, n_batch=128, precise=True)
    rng = np.random.default_rng(3)
    prompts = [[int(t) for t in rng.integers(10, 400, 6 + i)] for i in range(7)]
    sequences = [backend.new_sequence() for _ in prompts]
    for s, p in zip(sequences, prompts):
        s.prefill(p)
    parents = (-1, 0, 0, 1)
    news = [[int(t) for t in rng.integers(10, 400, 12)] for _ in range(6)] + [[401, 402, 403, 404]]
    joining = backend.new_sequence()
    chunks = [Chunk(s, t) for s, t in zip(sequences[:6], news)]
    chunks.insert(3, Chunk(joining, [int(t) for t in rng.integers(10, 400, 20)], rows="none"))
    chunks.append(Chunk(sequences[6], news[6], parents))
    groups = decode_groups(chunks)
    assert len(groups) >= 3 and sorted(sum(groups, [])) == list(range(len(chunks)))  # the split is exercised
    rows = backend.forward_batch(chunks)
    assert rows[3].shape[0] == 0
    for (s, p), new, logits in zip(zip(sequences[:6], prompts), news, [r for i, r in enumerate(rows) if i not in (3, 7)]):
        backend.main.prefill(p)
        np.testing.assert_allclose(logits, backend.main.forward(new), atol=TOL, rtol=0)
    backend.main.prefill(prompts[6])
    for path in ((0, 1, 3), (0, 2)):  # each root-to-leaf path of the tree, as a chain
        np.testing.assert_allclose(rows[7][list(path)], backend.main.forward([news[6][i] for i in path]),
                                   atol=TOL, rtol=0)
        backend.main.rollback(len(prompts[6]))
    assert joining.tokens == chunks[3].tokens
    backend.close()


def test_decode_groups_keeps_few_sequences_together_and_prompt_chunks_apart():
    from quickdraft.backends.base import Chunk
    from quickdraft.backends.llamacpp import decode_groups

    def chunk(n, rows="all"):
        return Chunk(None, [0] * n, rows=rows)

    assert decode_groups([chunk(1)] * 16) == [list(range(16))]  # 16 rows: under one tile
    assert decode_groups([chunk(5)] * 16) == [list(range(12)), list(range(12, 16))]
    assert decode_groups([chunk(40), chunk(40)]) == [[0, 1]]  # few sequences: one call
    assert decode_groups([chunk(1), chunk(64, "none"), chunk(1)]) == [[0, 2], [1]]
    assert decode_groups([chunk(3)] * 5 + [chunk(70)], tile=8) == [[0, 1], [2, 3], [4], [5]]
    assert decode_groups([]) == []
