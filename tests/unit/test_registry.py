"""The method registry: every method is listed, declared and checkable without running it."""

import pytest

from quickdraft.backends import BACKENDS
from quickdraft.backends.base import TREE
from quickdraft.errors import InvalidParameterError, UnknownMethodError
from quickdraft.proposers import METHODS, parse_options


def test_the_registry_lists_every_method_in_order():
    assert METHODS.names() == ["auto", "ar", "draft", "draft-tree", "parallel", "ngram", "ngram-tree", "suffix", "lookahead", "layerskip",
                               "medusa", "eagle", "medusa-tree", "eagle-tree"]


@pytest.mark.parametrize("spec", list(METHODS), ids=lambda s: s.name)
def test_every_method_is_declared_completely(spec):
    assert spec.summary and spec.draft_model in ("none", "optional", "required")
    assert spec.draft_vocabulary in ("same", "any")
    assert spec.requires <= set().union(*(b.capabilities for b in BACKENDS.values()))  # some backend can run it
    parse_options(spec, {})  # the defaults are valid
    if spec.tree_variant:
        assert TREE in METHODS[spec.tree_variant].requires
        assert METHODS.tree_variant(spec.name) == spec.tree_variant == METHODS.tree_variant(spec.tree_variant)


def test_methods_declare_which_draft_models_they_accept():
    """What `quickdraft methods` shows: a draft of any vocabulary for draft and auto (text crosses
    between the tokenizers), the target's for draft-tree (a tree of token ids)."""
    assert METHODS["draft"].describe_draft() == "required, any vocabulary"
    assert METHODS["auto"].describe_draft() == "optional, any vocabulary"
    assert METHODS["draft-tree"].describe_draft() == "required, the target's vocabulary"
    assert METHODS["ngram"].describe_draft() == "-"


def test_unknown_methods_and_options_are_refused_by_name():
    with pytest.raises(UnknownMethodError, match="unknown method 'psychic'.*auto") as error:
        METHODS["psychic"]
    assert error.value.param == "method"
    with pytest.raises(InvalidParameterError, match="has no option 'max_ngarm'.*max_ngram") as error:
        parse_options(METHODS["ngram"], {"max_ngarm": 3})
    assert error.value.param == "max_ngarm"
    with pytest.raises(InvalidParameterError, match="must be int"):
        parse_options(METHODS["ngram"], {"max_ngram": "3"})
    with pytest.raises(InvalidParameterError, match="min_ngram <= max_ngram"):
        parse_options(METHODS["ngram"], {"max_ngram": 1, "min_ngram": 2})
    with pytest.raises(UnknownMethodError, match="no tree variant"):
        METHODS.tree_variant("ar")


def test_the_engine_refuses_an_option_no_method_declares(tiny_target_backend):
    from quickdraft import Engine

    with pytest.raises(InvalidParameterError, match="no method has an option 'min_confidance'"):
        Engine(tiny_target_backend, method="ar", min_confidance=0.5)
    with pytest.raises(UnknownMethodError, match="needs a draft model"):
        Engine(tiny_target_backend, method="draft")
    with pytest.raises(UnknownMethodError, match="hidden_states.*--backend torch"):
        Engine(tiny_target_backend, method="medusa")
