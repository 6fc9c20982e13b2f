"""Continuous batching on the tiny models: generations in sequences of their own, stepped
together in one forward, answer exactly what each answers alone (F32 cache: batched and
one-token logits agree to ~1e-5, so greedy outputs are token for token equal)."""

from pathlib import Path

import pytest
from distributions import two_token_distribution
from scipy.stats import chisquare

from quickdraft import Memory
from quickdraft.errors import InvalidParameterError
from quickdraft.sampling import SamplingParams

REQUESTS = [  # (prompt, options): different methods, lengths, stop strings, trees, sampling
    ("the quick brown fox", dict(method="ar", max_tokens=30)),
    ("def main(): return", dict(method="draft", max_tokens=41, num_draft=3)),
    ("hello world hello world hello", dict(method="ngram", max_tokens=25)),
    ("a b c d e f g", dict(method="suffix", max_tokens=37)),
    ("hello world hello world hello", dict(method="auto", max_tokens=44)),
    ("the quick brown fox", dict(method="draft-tree", max_tokens=20, num_draft=6)),
    ("so the cat is here, the dog is there, the", dict(method="ngram-tree", max_tokens=28, num_draft=6)),
    ("one two three", dict(method="draft", max_tokens=33, temperature=0.9, seed=7)),
]


def batched_results(engine, requests, stagger: int = 0, ride: bool = False):
    """Generate ``requests`` in one batch (all joining before the first step, or one every
    ``stagger`` steps, prefilled in chunks of 5 tokens: on their own, or with ``ride`` in the
    running generations' steps, as the server does); their results in order."""
    prepared = [engine.prepare(p, **o) for p, o in requests]
    order = {id(r): n for n, r in enumerate(prepared)}
    out = [None] * len(prepared)
    running, joining, queue, step = [], [], list(prepared), 0
    with engine.exclusive():
        while queue or running or joining:
            if queue and (stagger == 0 or step % stagger == 0):
                generation = engine.start(queue.pop(0), batched=True)
                if ride and running:
                    joining.append(generation)
                else:
                    while not generation.prefill(chunk=5):
                        pass
                    running.append(generation)
                if stagger == 0 and queue:
                    continue  # everyone joins before the first step
            chunk = joining[0].next_chunk(5) if joining else None
            engine.step(running, prefill=[chunk] if chunk else [])
            if joining and joining[0].prefill_done():
                running.append(joining.pop(0))
            for g in [g for g in running if g.done]:
                engine.release(g)
                running.remove(g)
                out[order[id(g.request)]] = g.result()
            step += 1
    return out


@pytest.mark.parametrize("stagger, ride", [(0, False), (3, False), (2, True)])
def test_every_request_in_a_batch_answers_what_it_answers_alone(tiny_engine, stagger, ride):
    alone = [tiny_engine.generate(p, **o) for p, o in REQUESTS]
    tiny_engine.memory = Memory()
    together = batched_results(tiny_engine, REQUESTS, stagger, ride)
    for (prompt, options), a, b in zip(REQUESTS, alone, together):
        assert b.token_ids == a.token_ids, (prompt, options)
        assert b.text == a.text and b.finish_reason == a.finish_reason
    assert sum(r.stats["drafted_tokens"] for r in together) > 0
    tiny_engine.clear_caches()  # frees the finished requests' sequences kept as prefix donors
    assert tiny_engine.target.free_cells() == tiny_engine.target.n_ctx  # nothing else held


def test_requests_drafting_trees_keep_no_more_sequence_ids_than_the_context_has(tiny_pair, flat_prior):
    """Batched requests drafting token trees in a context of 16 llama.cpp sequence ids (n_batch
    16): each tree takes an id per node beyond its root and its sequence keeps them for its next
    tree, so six live requests of 7-node trees once held more than there are ('all 16 llama.cpp
    sequence ids are in use'); stepped in turn (one tree a forward), the context takes kept ids
    back when it runs dry, and every answer is its own alone."""
    from quickdraft import Engine
    from quickdraft.backends.llamacpp import LlamaCppBackend

    target = LlamaCppBackend(tiny_pair[0], n_ctx=512, n_batch=16, precise=True)
    engine = Engine(target, method="draft-tree", num_draft=6, draft=str(tiny_pair[1]), chat=False, prior=flat_prior)
    requests = [engine.prepare(p, max_tokens=n, method=m, num_draft=6) for p, m, n in [
        ("the quick brown fox", "draft-tree", 30), ("so the cat is here, the dog is there, the", "ngram-tree", 28),
        ("def main(): return", "draft-tree", 25), ("hello world hello world hello", "ngram-tree", 33),
        ("a b c d e f g", "draft-tree", 22), ("one two three", "draft-tree", 27)]]
    alone = [engine.generate(r).token_ids for r in requests]
    engine.memory = Memory()
    with engine.exclusive():
        running = [engine.start(r, batched=True) for r in requests]
        for g in running:
            g.prefill()
        while any(not g.done for g in running):
            for g in running:
                if not g.done:
                    engine.step([g])
        for g in running:
            engine.release(g)
    assert [g.result().token_ids for g in running] == alone
    assert sum(g.result().stats["drafted_tokens"] for g in running) > 0
    target.close()


def test_stop_strings_end_a_request_without_disturbing_the_others(tiny_engine):
    full = tiny_engine.generate("the quick brown fox", max_tokens=40, method="draft").text
    stop = full[12:15]
    requests = [("the quick brown fox", dict(method="draft", max_tokens=40, stop=[stop])),
                ("def main(): return", dict(method="ngram", max_tokens=40))]
    alone = [tiny_engine.generate(p, **o) for p, o in requests]
    together = batched_results(tiny_engine, requests)
    assert together[0].finish_reason == "stop" and together[0].text == full[:full.find(stop)]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]


def test_sampling_in_a_batch_follows_the_target_distribution(tiny_engine):
    """The first two tokens of a sampled request, drafted by the draft model and verified in a
    batch beside a greedy request, against the exact target distribution (chi-square, fixed
    seeds; p-value floor 1e-3); top-k 3 keeps the support at 9 pairs."""
    params = SamplingParams(temperature=1.0, top_k=3)
    target = tiny_engine.target
    prompt = target.tokenize("hello world hello world hello", special=False)
    exact = two_token_distribution(target, prompt, params)
    draws, counts = 600, dict.fromkeys(exact, 0)
    for seed in range(draws):
        results = batched_results(tiny_engine, [
            (prompt, dict(method="draft", max_tokens=3, temperature=1.0, top_k=3, seed=seed, num_draft=3)),
            ("the quick brown fox", dict(method="ngram", max_tokens=4))])
        counts[tuple(results[0].token_ids[:2])] += 1
    keys = sorted(exact)
    assert chisquare([counts[k] for k in keys], [exact[k] * draws for k in keys]).pvalue > 1e-3, (counts, exact)


def test_a_new_sequence_shares_the_prompt_prefix_a_live_one_holds(tiny_engine):
    """A request joining the batch starts from the longest start of its prompt another running
    request holds (shared cells, nothing computed again), and answers what it answers alone, also
    after the request it shared with has ended and freed its sequence."""
    prompts = [("the quick brown fox jumps over", 5), ("the quick brown fox sleeps", 24)]
    alone = [tiny_engine.generate(p, max_tokens=n, method="ar").token_ids for p, n in prompts]
    target = tiny_engine.target
    a, b = (tiny_engine.prepare(p, max_tokens=n, method="ar") for p, n in prompts)
    with tiny_engine.exclusive():
        tiny_engine.clear_caches()
        first = tiny_engine.start(a, batched=True)
        first.prefill()
        second = tiny_engine.start(b, batched=True)
        shared = next(i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y)
        assert second.sequence.tokens == list(b.tokens[:shared]) and shared > 2
        second.prefill()
        running = [first, second]
        while running:
            tiny_engine.step(running)
            for g in [g for g in running if g.done]:
                tiny_engine.release(g)  # the first ends while the second still reads the shared cells
                running.remove(g)
        assert [first.result().token_ids, second.result().token_ids] == alone
        tiny_engine.clear_caches()
    assert target.free_cells() == target.n_ctx


def test_prompts_that_arrive_together_share_their_opening_once_the_first_chunk_is_in(tiny_engine):
    """Requests started together hold nothing of each other's prompts; once the first one's chunk
    is in, the others' next chunk begins after the opening they share with it (counted as cached,
    not computed), every answer is its answer alone, and with prompt_cache=False nothing is shared."""
    prompts = [("the quick brown fox jumps over", 9), ("the quick brown fox sleeps", 24),
               ("the quick brown cat", 17)]
    alone = [tiny_engine.generate(p, max_tokens=n, method="draft").token_ids for p, n in prompts]
    requests = [tiny_engine.prepare(p, max_tokens=n, method="draft") for p, n in prompts]
    shared = [next(i for i, (x, y) in enumerate(zip(requests[0].tokens, r.tokens)) if x != y) for r in requests[1:]]
    try:
        for cache in (True, False):
            tiny_engine.prompt_cache = cache
            with tiny_engine.exclusive():
                tiny_engine.clear_caches()
                generations = [tiny_engine.start(r, batched=True) for r in requests]
                assert all(g.sequence.tokens == [] for g in generations)
                generations[0].prefill()
                chunks = [g.next_chunk() for g in generations[1:]]
                skipped = [len(r.tokens) - 1 - len(c.tokens) for r, c in zip(requests[1:], chunks)]
                assert skipped == (shared if cache else [0, 0]) and min(shared) > 2
                tiny_engine.target.forward_batch(chunks)
                running = list(generations)
                while running:
                    for g in running:
                        g.prefill_done()
                    tiny_engine.step(running)
                    for g in [g for g in running if g.done]:
                        tiny_engine.release(g)
                        running.remove(g)
                assert [g.result().token_ids for g in generations] == alone
                assert [g.stats.cached_tokens for g in generations[1:]] == (shared if cache else [0, 0])
                tiny_engine.clear_caches()
    finally:
        tiny_engine.prompt_cache = True
    assert tiny_engine.target.free_cells() == tiny_engine.target.n_ctx


def test_finished_sequences_stay_as_prefix_donors_and_a_continuation_adopts_them(tiny_engine):
    """One request after another in the batched path: the finished request's sequences (the
    target's and the draft model's) stay as prefix donors. A request sharing only its prompt's
    opening takes those cells by tag and leaves the finished one retired (its conversation may go
    on); a request that continues it (the next turn: its prompt and answer, then more) adopts it,
    computing only what is new. Every answer is its answer alone."""
    first_prompt, n = "the quick brown fox jumps over", 9
    first_answer = tiny_engine.generate(first_prompt, max_tokens=n, method="draft").token_ids
    a = tiny_engine.prepare(first_prompt, max_tokens=n, method="draft")
    prompts = [(first_prompt, n), ("the quick brown fox sleeps", 24),
               ([*a.tokens, *first_answer, *a.tokens[-3:]], 12)]  # token ids: the conversation goes on
    alone = [tiny_engine.generate(p, max_tokens=n, method="draft").token_ids for p, n in prompts]
    target, draft = tiny_engine.target, tiny_engine.draft_model()
    a, b, c = (tiny_engine.prepare(p, max_tokens=n, method="draft") for p, n in prompts)
    shared = next(i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y)

    def run(request):
        generation = tiny_engine.start(request, batched=True)
        held = (list(generation.sequence.tokens), list(generation.resources.draft.tokens))
        generation.prefill()
        while not generation.done:
            tiny_engine.step([generation])
        tiny_engine.release(generation)
        return generation, held

    with tiny_engine.exclusive():
        tiny_engine.clear_caches()
        first, _ = run(a)
        second, held = run(b)
        assert second.sequence is not first.sequence and held == (list(b.tokens[:shared]), list(b.tokens[:shared]))
        assert shared > 2 and first.sequence in target._retired and first.resources.draft in draft._retired
        third, held = run(c)
        assert third.sequence is first.sequence and third.resources.draft is first.resources.draft  # adopted
        assert len(held[0]) >= len(a.tokens) + len(first_answer) - 1 and held[0] == list(c.tokens[:len(held[0])])
        assert third.stats.cached_tokens == len(held[0])
        assert [g.result().token_ids for g in (first, second, third)] == alone
        assert target.free_cells() < target.n_ctx and draft.free_cells() < draft.n_ctx  # held as donors
        tiny_engine.clear_caches()
    assert target.free_cells() == target.n_ctx and draft.free_cells() == draft.n_ctx


def test_finished_sequences_keep_at_most_retain_cells_least_recently_used_first(tiny_target_backend):
    """Retired sequences beyond the newest are freed, least recently used first, while they hold
    more than ``retain_cells`` cells; a retired one whose opening a new sequence takes counts as
    used."""
    backend = tiny_target_backend
    backend.forget_retired()
    saved, backend.retain_cells = backend.retain_cells, 100
    try:
        done = []
        for k in range(3):  # 40 cells each, openings of their own
            s = backend.new_sequence()
            s.prefill([10 + k] + [5 + i % 40 for i in range(39)])
            done.append(s)
        for s in done:
            backend.release(s)
        assert backend._retired == done[1:]  # 120 cells > 100: the oldest went
        opening = backend.new_sequence([11, 5, 6, 99])  # shares 3 of done[1]'s 40 cells: tags them
        assert opening.tokens == [11, 5, 6] and backend._retired == [done[2], done[1]]
        backend.release(opening)  # 83 cells: all kept
        assert backend._retired == [done[2], done[1], opening]
        big = backend.new_sequence()
        big.prefill([7] * 150)
        backend.release(big)  # over the budget alone: the newest always stays, the rest go
        assert backend._retired == [big] and backend.free_cells() == backend.n_ctx - 150
    finally:
        backend.retain_cells = saved
        backend.forget_retired()
    assert backend.free_cells() == backend.n_ctx


def test_retain_cells_is_checked():
    from quickdraft.backends.llamacpp import LlamaCppBackend

    with pytest.raises(InvalidParameterError, match="retain_cells"):
        LlamaCppBackend(Path(__file__), retain_cells=-1)


def test_a_forward_that_needs_a_retired_sequences_cells_frees_them(tiny_engine):
    """A released sequence's cells go to the first forward that needs them."""
    target = tiny_engine.target
    with tiny_engine.exclusive():
        tiny_engine.clear_caches()
        live = target.new_sequence()
        done = target.new_sequence()
        done.prefill([5 + i % 50 for i in range(target.n_ctx - 10)])
        target.release(done)
        assert target.free_cells() == 10
        live.prefill([7] * 40)  # needs 30 cells more than are free while the retired one holds them
        assert live.tokens == [7] * 40 and target.free_cells() == target.n_ctx - 40
        target.release(live)
        tiny_engine.clear_caches()


def test_a_request_that_cannot_start_keeps_no_sequence(tiny_target_backend, flat_prior, tmp_path):
    """The draft model fails to open when the first request that needs it starts: the target's
    sequence made for that request is freed, not left holding ids and cells."""
    from quickdraft import Engine
    from quickdraft.errors import QuickdraftError

    missing = tmp_path / "no-such-draft.gguf"
    engine = Engine(tiny_target_backend, method="ar", draft=str(missing), chat=False, prior=flat_prior)
    held = len(tiny_target_backend._sequences)
    with pytest.raises(QuickdraftError):
        engine.start(engine.prepare("hello world", max_tokens=4, method="draft"), batched=True)
    assert len(tiny_target_backend._sequences) == held
