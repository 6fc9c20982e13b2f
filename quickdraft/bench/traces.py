"""Traces: what the target answers and what each model-based source proposes along that answer,
recorded once with the real models, so any policy can be priced later on any machine's costs
(replay.py) without running a model.

A :class:`Trace` holds one prompt-turn: its prompt tokens, the target's greedy answer (``path``,
plain decoding's tokens) and, for every position i of it, the draft model's greedy continuation
of ``prompt + path[:i]`` (``chains[i]``, ``chain`` tokens). Sources that read only the context
(suffix matches, prompt n-grams) need nothing recorded: replay runs them. Everything is token
ids, so a trace is the same on every machine.

Recording a chain costs one draft token per position while the draft agrees with the answer
(``chains[i + 1]`` is ``chains[i][1:]`` and one more token), ``chain`` tokens where it does not.

Lookahead's drafts come from the target's own predictions on its Jacobi window, off the answer's
path, which a trace cannot hold; instead ``lookahead[config]`` records the schedule of a real
greedy run of that configuration (:data:`LOOKAHEAD_CONFIGS`): per step the tokens its forward
evaluated and the tokens it emitted, which is all that pricing that fixed policy on another
machine needs.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import QuickdraftError

TRACES = Path(__file__).parent / "data" / "traces.json.gz"
CHAIN = 16  # draft tokens recorded per position: auto's longest draft
# lookahead configurations recorded: (window, ngram, guesses) by label; the draft budget is
# guesses x (ngram - 1), every n-gram in full
LOOKAHEAD_CONFIGS = {"W4 N3 G4": (4, 3, 4), "W10 N4 G6": (10, 4, 6)}


@dataclass(frozen=True)
class Trace:
    """One prompt-turn (see the module docstring). ``ended``: the answer ended on an
    end-of-generation token (not part of ``path``) rather than at the token limit."""

    task: str
    prompt_id: str
    turn: int
    prompt: tuple[int, ...]
    path: tuple[int, ...]
    chains: tuple[tuple[int, ...], ...]
    ended: bool
    lookahead: dict = field(default_factory=dict, compare=False)  # config label -> [[forward tokens, emitted tokens], ...]

    @property
    def name(self) -> str:
        return f"{self.task} {self.prompt_id}" + (f" turn {self.turn + 1}" if self.turn else "")


def record_chains(draft, context: Sequence[int], path: Sequence[int], chain: int = CHAIN) -> list[tuple[int, ...]]:
    """The draft model's greedy continuation (``chain`` tokens) of ``context + path[:i]`` for every
    i < len(path). ``draft``: a backend (single-sequence protocol), left empty afterwards."""
    chains: list[tuple[int, ...]] = []
    current: list[int] = []
    for i in range(len(path)):
        if i and current and current[0] == path[i - 1]:
            current = current[1:]  # greedy: the continuation after its own first token is the same
        else:
            current = []
        logits = draft.prefill([*context, *path[:i], *current], last_logits=True)
        while len(current) < chain:
            current.append(int(np.argmax(logits)))
            if len(current) < chain:
                logits = draft.forward(current[-1:])[0]
        chains.append(tuple(current))
    draft.rollback(0)
    return chains


def record_lookahead(engine, prompt: Sequence[int], max_tokens: int) -> dict[str, list[list[int]]]:
    """Per configuration of :data:`LOOKAHEAD_CONFIGS`, the schedule of a greedy lookahead run on
    ``prompt`` with ``engine``'s target: [forward tokens, emitted tokens] per step (the forward
    carries the pending token, the draft's tree and the Jacobi branch)."""
    from ..engine import Engine
    from ..proposers.lookahead import LookaheadOptions

    schedules = {}
    for label, (window, ngram, guesses) in LOOKAHEAD_CONFIGS.items():
        rows = 1 + LookaheadOptions(window, ngram, guesses).branch_rows
        lookahead = Engine(engine.target, method="lookahead", chat=False, prior=engine.prior, window=window,
                           ngram=ngram, guesses=guesses)
        request = lookahead.prepare(list(prompt), max_tokens=max_tokens, num_draft=guesses * (ngram - 1))
        steps, drafted = [], 0
        with lookahead.exclusive():
            generation = lookahead.start(request)
            generation.prefill()
            while not generation.done:
                lookahead.step([generation])
                stats = generation.stats
                steps.append([rows + stats.drafted_tokens - drafted, stats.accepted_lengths[-1]])
                drafted = stats.drafted_tokens
            lookahead.release(generation)
        schedules[label] = steps
    return schedules


def record(engine, prompts, max_tokens: int, chain: int = CHAIN, on_trace: Callable[[Trace], None] = lambda t: None,
           done: Sequence[tuple] = ()) -> list[Trace]:
    """Traces of every prompt-turn of ``prompts`` (bench.tasks.BenchPrompt): the target's greedy
    answer by plain decoding (a later turn carries the earlier answers) and the draft model's
    chains along it. ``engine``: an Engine with a draft model. ``done``: (task, prompt_id, turn)
    keys to skip (a resumed recording); their answers are computed again for the next turn."""
    draft = engine.draft_model()
    if draft is None:
        raise QuickdraftError("recording traces needs a draft model", param="draft")
    if engine.bridge is not None:
        raise QuickdraftError("recording traces needs a draft model of the target's vocabulary", param="draft")
    traces = []
    for prompt in prompts:
        messages: list[dict] = []
        for turn, question in enumerate(prompt.turns):
            messages = [*messages, {"role": "user", "content": question}]
            request = engine.prepare(messages, method="ar", max_tokens=max_tokens, temperature=0)
            answer = engine.generate(request)
            if (prompt.task, prompt.prompt_id, turn) not in done:
                trace = Trace(prompt.task, prompt.prompt_id, turn, request.tokens, tuple(answer.token_ids),
                              tuple(record_chains(draft, request.tokens, answer.token_ids, chain)),
                              answer.finish_reason == "stop",
                              record_lookahead(engine, request.tokens, len(answer.token_ids)))
                traces.append(trace)
                on_trace(trace)
            messages = [*messages, {"role": "assistant", "content": answer.text}]
    return traces


def save_traces(traces: Sequence[Trace], path: Path, about: dict) -> None:
    """Write ``{"about": ..., "traces": [...]}`` gzipped (``about``: models, machine, agreement)."""
    doc = {"about": about, "traces": [asdict(t) for t in traces]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), mtime=0))
    tmp.replace(path)


def load_traces(path: Path = TRACES) -> tuple[dict, list[Trace]]:
    """(about, traces) from a file written by :func:`save_traces`."""
    try:
        doc = json.loads(gzip.decompress(Path(path).read_bytes()))
    except (OSError, ValueError) as e:
        raise QuickdraftError(f"cannot read traces from {path}: {e}") from None
    traces = [Trace(t["task"], t["prompt_id"], t["turn"], tuple(t["prompt"]), tuple(t["path"]),
                    tuple(tuple(c) for c in t["chains"]), t["ended"], t.get("lookahead", {})) for t in doc["traces"]]
    return doc.get("about", {}), traces
