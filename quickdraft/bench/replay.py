"""Replay: price decoding policies on a machine profile, from recorded traces, with the real engine.

A trace (traces.py) says what the target answers and what the draft model proposes at every
position of that answer; a profile (profiles.py) says what a target forward over n new tokens and
a draft token cost on some machine. Replay runs the real :class:`~quickdraft.engine.Engine`, its
real methods and auto's real controller, on two backends that answer from the trace and advance a
virtual clock by the profile's costs:

- :class:`ReplayTarget`: a row after a context on the answer's path predicts the answer's next
  token; any other row predicts a token that is never in a trace (greedy verification reads no
  row past the first rejection, so those rows are never used). A forward over n tokens costs
  ``profile.seconds(n)``; the prompt's prefill costs nothing (speedups are per decode time).
- :class:`ReplayDraft`: after the answer's first i tokens and j drafted ones it predicts
  ``chains[i][j]``. One token costs the profile's draft token; a catch-up over m tokens what
  control.catch_up says (the profile's measured prefill rate, or the curve's end: the cost auto
  assumes too).

Tokens are renumbered into a small vocabulary per trace (every source compares tokens only for
equality), so a row is a few thousand floats. Every sample starts from a fresh engine (cold),
greedy; each output is checked to be the trace's answer token for token.

:func:`hindsight` compares auto with every fixed (source, k) per profile and task: the geometric
mean of per-prompt speedups over plain decoding, as the bench reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..backends.base import common_prefix, reusable_prefix
from ..engine import Engine
from ..errors import QuickdraftError
from ..profiles import MachineProfile
from .metrics import geometric_mean
from .traces import Trace

FIXED_SOURCES = ("draft", "suffix", "ngram")
FIXED_KS = (1, 2, 3, 4, 6, 8, 12, 16)


class VirtualClock:
    """Seconds that pass only when a replay backend says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Replayed:
    """A single-sequence backend answering from a trace: ``tokens`` is its cache, ``_next(context)``
    the token a row after ``context`` predicts, ``_cost(n)`` what evaluating n tokens costs."""

    name = "replay"
    build = "replay of recorded traces"
    capabilities: frozenset[str] = frozenset()
    n_threads = None
    eos_token = -1

    def __init__(self, vocab_size: int, clock: VirtualClock, path: str) -> None:
        self.vocab_size, self.clock, self.path = vocab_size, clock, Path(path)
        self.n_ctx = 1 << 20
        self.tokens: list[int] = []

    def _next(self, context: Sequence[int]) -> int:
        raise NotImplementedError

    def _cost(self, n: int) -> float:
        raise NotImplementedError

    def _rows(self, start: int, count: int) -> np.ndarray:
        """One-hot rows [count, V] after ``tokens[:start + 1]`` .. ``tokens[:start + count]``."""
        rows = np.zeros((count, self.vocab_size), dtype=np.float32)
        for i in range(count):
            rows[i, self._next(self.tokens[:start + i + 1])] = 1.0
        return rows

    def prefill(self, tokens: Sequence[int], *, last_logits: bool = False) -> np.ndarray | None:
        new = len(tokens) - reusable_prefix(self.tokens, tokens, last_logits=last_logits)
        self.tokens = list(tokens)
        if new:
            self.clock.advance(self._cost(new))
        return self._rows(len(tokens) - 1, 1)[0] if last_logits else None

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        start = len(self.tokens)
        self.tokens += list(tokens)
        self.clock.advance(self._cost(len(tokens)))
        return self._rows(start, len(tokens))

    def rollback(self, length: int) -> None:
        del self.tokens[length:]

    def close(self) -> None:
        pass

    def token_bytes(self, token: int) -> bytes:
        return b""

    def token_text(self, token: int) -> bytes:
        return b""  # the replayed target and draft share one vocabulary, of ids without text

    def is_end_of_generation(self, token: int) -> bool:
        return False


class ReplayTarget(_Replayed):
    """The target of a trace (see the module docstring); ``reference`` is prompt + answer."""

    def __init__(self, reference: Sequence[int], vocab_size: int, clock: VirtualClock, profile: MachineProfile,
                 prompt_length: int) -> None:
        super().__init__(vocab_size, clock, f"{profile.name}-target")
        self.reference, self.profile, self.prompt_length = list(reference), profile, prompt_length

    def prefill(self, tokens: Sequence[int], *, last_logits: bool = False) -> np.ndarray | None:
        self.tokens = list(tokens)  # the prompt: free (speedups are per decode time)
        return self._rows(len(tokens) - 1, 1)[0] if last_logits else None

    def _next(self, context: Sequence[int]) -> int:
        n = len(context)
        if n < len(self.reference) and context[self.prompt_length:] == self.reference[self.prompt_length:n]:
            return self.reference[n]
        return self.vocab_size - 1  # off the path: a token no trace has

    def _cost(self, n: int) -> float:
        return self.profile.seconds(n)


class ReplayDraft(_Replayed):
    """The draft model of a trace (see the module docstring)."""

    def __init__(self, reference: Sequence[int], chains: Sequence[Sequence[int]], vocab_size: int,
                 clock: VirtualClock, profile: MachineProfile, prompt_length: int) -> None:
        super().__init__(vocab_size, clock, f"{profile.name}-draft")
        self.reference, self.chains, self.profile = list(reference), chains, profile
        self.prompt_length = prompt_length

    def _next(self, context: Sequence[int]) -> int:
        on_path = common_prefix(context, self.reference)
        i, rest = on_path - self.prompt_length, context[on_path:]
        if 0 <= i < len(self.chains) and len(rest) < len(self.chains[i]) and \
                tuple(rest) == tuple(self.chains[i][:len(rest)]):
            return self.chains[i][len(rest)]
        return self.vocab_size - 1

    def _cost(self, n: int) -> float:
        return self.profile.catch_up_s(n)


@dataclass(frozen=True)
class Policy:
    """A decoding policy: a method and its draft budget (None: the method's default)."""

    method: str
    k: int | None = None

    @property
    def label(self) -> str:
        return self.method if self.k is None else f"{self.method} k={self.k}"


def fixed_policies(sources: Sequence[str] = FIXED_SOURCES, ks: Sequence[int] = FIXED_KS) -> list[Policy]:
    """Every fixed (source, k): the method drafting up to k tokens every step."""
    return [Policy(s, k) for s in sources for k in ks]


def compact(trace: Trace) -> tuple[list[int], list[int], list[list[int]], int]:
    """The trace renumbered into a small vocabulary: (prompt, path, chains, vocabulary size), the
    last id of the vocabulary kept for "off the path"."""
    ids: dict[int, int] = {}

    def renumber(tokens: Iterable[int]) -> list[int]:
        return [ids.setdefault(t, len(ids)) for t in tokens]

    prompt, path = renumber(trace.prompt), renumber(trace.path)
    chains = [renumber(c) for c in trace.chains]
    return prompt, path, chains, len(ids) + 1


@dataclass(frozen=True)
class Sample:
    """One replayed generation: decode seconds on the profile, tokens, where drafts came from and,
    for auto, why (``stats["why"]``)."""

    trace: Trace
    policy: Policy
    profile: str
    seconds: float
    tokens: int
    forwards: int
    sources: dict
    why: dict = field(default_factory=dict, compare=False)


def replay_sample(trace: Trace, profile: MachineProfile, policy: Policy, agreement: float | None = None,
                  make_engine: Callable[..., Engine] = Engine) -> Sample:
    """Run ``policy`` on ``trace`` with ``profile``'s costs from a fresh engine; ``agreement``: the
    draft's prior agreement auto starts from (the traces' pair), else the profile's."""
    prompt, path, chains, vocab = compact(trace)
    clock = VirtualClock()
    reference = [*prompt, *path]
    target = ReplayTarget(reference, vocab, clock, profile, len(prompt))
    draft = ReplayDraft(reference, chains, vocab, clock, profile, len(prompt))
    engine = make_engine(target, draft=draft, method=policy.method, num_draft=policy.k, chat=False,
                         prior=profile.prior(agreement), clock=clock)
    result = engine.generate(prompt, max_tokens=len(path), temperature=0.0)
    if result.token_ids != path:
        at = common_prefix(result.token_ids, path)
        raise QuickdraftError(f"replay of {trace.name} with {policy.label} on {profile.name} parted from the "
                              f"recorded answer at token {at}: a lossless method must not")
    s = result.stats
    return Sample(trace, policy, profile.name, s["total_time_s"] - s["prefill_time_s"], s["generated_tokens"],
                  s["target_forwards"], s.get("draft_sources", {}), s.get("why", {}))


@dataclass(frozen=True)
class Verdict:
    """auto against the best fixed (source, k) in hindsight on one profile and task (geometric
    means of per-prompt speedups over plain decoding)."""

    profile: str
    task: str
    auto: float
    best: float
    best_policy: str

    @property
    def ratio(self) -> float:
        return self.auto / self.best


def speedups(samples: Sequence[Sample]) -> dict[tuple[str, str, str], float]:
    """(profile, task, policy label) -> geometric mean over the task's prompt-turns of plain
    decoding's seconds per token over the policy's."""
    plain = {(s.profile, s.trace): s.seconds / s.tokens for s in samples if s.policy.method == "ar"}
    per: dict[tuple[str, str, str], list[float]] = {}
    for s in samples:
        per.setdefault((s.profile, s.trace.task, s.policy.label), []).append(
            plain[s.profile, s.trace] / (s.seconds / s.tokens))
    return {key: geometric_mean(values) for key, values in per.items()}


def hindsight(samples: Sequence[Sample]) -> list[Verdict]:
    """Per profile and task: auto's speedup, the best fixed policy's (plain decoding counts as
    one, at 1.0) and its label."""
    table = speedups(samples)
    verdicts = []
    for profile, task in dict.fromkeys((p, t) for p, t, _ in table):
        fixed = {label: v for (p, t, label), v in table.items()
                 if (p, t) == (profile, task) and label not in ("auto", "ar")}
        best_label = max(fixed, key=fixed.get) if fixed else "ar"
        best = max(fixed.get(best_label, 1.0), 1.0)
        verdicts.append(Verdict(profile, task, table[profile, task, "auto"], best,
                                best_label if best > 1.0 else "ar"))
    return verdicts


def price_schedule(trace: Trace, profile: MachineProfile, config: str) -> Sample:
    """Lookahead's recorded schedule (traces.record_lookahead) priced on ``profile``: each step's
    forward over its tokens (the draft's tree and the Jacobi branch). Its drafts depend on the
    target's predictions off the answer's path, which replay cannot give, so this fixed policy is
    priced from the real run instead of run again."""
    steps = trace.lookahead[config]
    return Sample(trace, Policy("lookahead", None), profile.name, sum(profile.seconds(rows) for rows, _ in steps),
                  sum(emitted for _, emitted in steps), len(steps), {"lookahead": len(steps)})


def lookahead_standing(traces: Sequence[Trace], profiles: Sequence[MachineProfile], agreement: float | None = None
                       ) -> list[tuple[str, str, int, float, float]]:
    """Where lookahead pays: per profile and recorded configuration, over the traces that carry its
    schedule, (profile, config, traces, lookahead's speedup over plain decoding, auto's), geometric
    means of per-prompt speedups."""
    rows = []
    for profile in profiles:
        for config in dict.fromkeys(c for t in traces for c in t.lookahead):
            chosen = [t for t in traces if config in t.lookahead]
            plain = {t: replay_sample(t, profile, Policy("ar"), agreement) for t in chosen}
            auto = {t: replay_sample(t, profile, Policy("auto"), agreement) for t in chosen}

            def speedup(sample: Sample) -> float:
                base = plain[sample.trace]
                return (base.seconds / base.tokens) / (sample.seconds / sample.tokens)

            rows.append((profile.name, config, len(chosen),
                         geometric_mean(speedup(price_schedule(t, profile, config)) for t in chosen),
                         geometric_mean(speedup(auto[t]) for t in chosen)))
    return rows


def run_replay(traces: Sequence[Trace], profiles: Sequence[MachineProfile], policies: Sequence[Policy],
               agreement: float | None = None, on_sample: Callable[[Sample], None] = lambda s: None) -> list[Sample]:
    """Every policy on every trace and profile (plain decoding included, which speedups need)."""
    if not any(p.method == "ar" for p in policies):
        policies = [Policy("ar"), *policies]
    samples = []
    for profile in profiles:
        for trace in traces:
            for policy in policies:
                samples.append(replay_sample(trace, profile, policy, agreement))
                on_sample(samples[-1])
    return samples


GOAL_OF_BEST, GOAL_OF_PLAIN = 0.95, 0.98  # auto against the best fixed policy in hindsight, and plain decoding


def passes(verdict: Verdict) -> bool:
    return verdict.ratio >= GOAL_OF_BEST and verdict.auto >= GOAL_OF_PLAIN


def markdown(verdicts: Sequence[Verdict], profiles: Sequence[MachineProfile]) -> str:
    """The verdicts as a Markdown table per profile (what the README shows)."""
    cpus = {p.name: p.cpu for p in profiles}
    lines = []
    for profile in dict.fromkeys(v.profile for v in verdicts):
        lines += [f"**{profile}** ({cpus.get(profile, '?')})", "",
                  "| task | auto | best fixed (source, k) in hindsight | its speedup | auto / best |",
                  "|---|---|---|---|---|"]
        lines += [f"| {v.task} | {v.auto:.2f}x | {v.best_policy} | {v.best:.2f}x | {v.ratio:.2f} |"
                  for v in verdicts if v.profile == profile]
        lines.append("")
    return "\n".join(lines)
