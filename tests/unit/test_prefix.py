"""The token-prefix helpers the caches rely on."""

from hypothesis import given
from hypothesis import strategies as st

from quickdraft.backends.base import common_prefix

tokens = st.lists(st.integers(0, 3), max_size=12)


@given(tokens, tokens)
def test_common_prefix_is_the_longest_shared_start(a, b):
    n = common_prefix(a, b)
    assert a[:n] == b[:n]
    assert n == min(len(a), len(b)) or a[n] != b[n]
    assert common_prefix(tuple(a), b) == n == common_prefix(b, a)  # whatever the sequence types
