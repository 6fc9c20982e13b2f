"""A llama.cpp backend asked from several threads at once (the server's HTTP side and its worker
both read token bytes; parallel drafting runs two models' forwards at once)."""

import os
import threading
import time

import pytest

from quickdraft.backends.llamacpp import LlamaCppBackend
from quickdraft.errors import QuickdraftError
from quickdraft.system import hand_over_compute


def test_token_bytes_from_two_threads_are_each_tokens_own(tiny_pair, tiny_target_backend):
    """Each call once wrote into one buffer the backend shared: a reply's logprob entry could
    carry another token's text beside its own bytes (seen in CI as '[' for '<')."""
    tokens = list(range(tiny_target_backend.vocab_size))
    alone = [tiny_target_backend.token_bytes(t) for t in tokens]
    wrong: list[tuple[int, bytes]] = []
    for _ in range(5):
        backend = LlamaCppBackend(tiny_pair[0], n_ctx=64)  # nothing asked of it yet

        def ask(order, backend=backend):
            for t in order:
                if backend.token_bytes(t) != alone[t]:
                    wrong.append((t, backend.token_bytes(t)))

        threads = [threading.Thread(target=ask, args=(order,)) for order in (tokens, tokens[::-1])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        backend.close()
    assert not wrong, wrong[:5]


def test_set_threads_is_checked_and_reported(tiny_target_backend):
    before = tiny_target_backend.n_threads
    tiny_target_backend.set_threads(1)
    assert tiny_target_backend.n_threads == tiny_target_backend.main.n_threads == 1
    tiny_target_backend.set_threads(before)
    with pytest.raises(QuickdraftError, match="at least one thread"):
        tiny_target_backend.set_threads(0)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _settles(expected, timeout_s: float = 5.0) -> int:
    """The process's thread count once ``expected(count)`` holds (threads end a moment after they are told)."""
    deadline = time.monotonic() + timeout_s
    while not expected(count := _threads()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts the process's threads in /proc")
def test_hand_over_compute_ends_the_calling_threads_team(tiny_pair):
    """A thread that decoded keeps a team of compute threads for as long as it lives, which slows
    every other thread's decodes (system.hand_over_compute); handing over ends that team, and a
    later decode here builds a new one."""
    backend = LlamaCppBackend(tiny_pair[0], n_ctx=64, n_threads=2)
    try:
        backend.prefill([1, 2], last_logits=True)
        with_team = _threads()
        assert hand_over_compute()
        without = _settles(lambda n: n < with_team)
        assert without < with_team
        backend.prefill([3], last_logits=True)
        assert _threads() > without
    finally:
        backend.close()
