"""Tree drafts through the engine on the tiny models: greedy output equals AR token for token,
and the tree proposers really propose trees (so the tests exercise tree verification)."""

import numpy as np
import pytest

from quickdraft import Engine
from quickdraft.proposers.draft_model import DraftTreeOptions, DraftTreeProposer
from quickdraft.proposers.ngram import NgramTreeOptions, NgramTreeProposer
from quickdraft.sampling import SamplingParams
from quickdraft.tree import layout

PROMPTS = ["the quick brown fox", "def main(): return", "hello world hello world hello", "a b c d e f g"]


@pytest.mark.parametrize("branch, expand", [(1, 1), (3, 1), (2, 2), (4, 3)])
@pytest.mark.parametrize("num_draft", [2, 8, 16])
def test_draft_tree_greedy_equals_ar(tiny_pair, tiny_engine, branch, expand, num_draft):
    engine = Engine(tiny_engine.target, draft=tiny_engine.draft_model(), method="draft-tree", chat=False,
                    tree_branch=branch, tree_expand=expand)
    for prompt in PROMPTS:
        ar = tiny_engine.generate(prompt, max_tokens=40, method="ar")
        tree = engine.generate(prompt, max_tokens=40, num_draft=num_draft)
        assert tree.token_ids == ar.token_ids, (prompt, branch, expand, num_draft)
        assert tree.stats["target_forwards"] < ar.stats["target_forwards"]


def test_draft_tree_is_a_tree_within_budget(tiny_engine):
    proposer = DraftTreeProposer(tiny_engine.draft_model(), DraftTreeOptions())
    context = tiny_engine.target.tokenize("def main(): return the", special=False)
    proposer.begin(context)
    for budget in (1, 5, 16):
        draft = proposer.propose(context, budget, SamplingParams(), np.random.default_rng(0))
        assert len(draft) == budget and draft.q is None
        tree = layout(draft.tree_parents())
        assert draft.parents is None or len(tree.leaves) > 1  # a one-branch tree is sent as a chain
        if budget == 16:  # the tiny draft is confident, so small budgets may stay a chain
            assert len(tree.leaves) > 1, "a wide-enough budget should branch"
        for node in range(len(tree)):  # distinct siblings (the deterministic rule's precondition)
            kids = [draft.tokens[c - 1] for c in tree.children[node]]
            assert len(kids) == len(set(kids))
        # the draft model's cache is back to the context, ready for the next step
        assert proposer.model.tokens == context and proposer.model.main._tree is None


def test_ngram_tree_proposes_a_tree_and_stays_exact(tiny_engine):
    # "the" is followed by three different words earlier in the prompt
    prompt = "so the cat is here, the dog is there, the bird is gone, the"
    proposer = NgramTreeProposer(NgramTreeOptions())
    context = tiny_engine.target.tokenize(prompt, special=False)
    draft = proposer.propose(context, 8, SamplingParams(), np.random.default_rng(0))
    assert draft.parents is not None and len(layout(draft.tree_parents()).leaves) >= 3
    ar = tiny_engine.generate(prompt, max_tokens=40, method="ar", chat=False)
    tree = tiny_engine.generate(prompt, max_tokens=40, method="ngram-tree", num_draft=8, chat=False)
    assert tree.token_ids == ar.token_ids
    assert tree.stats["drafted_tokens"] > 0
