"""Per-request speculative statistics (the keys of ``--json``'s ``stats`` object)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .records import Acceptance, StepTimes


@dataclass
class Stats:
    """Accumulates one generation's steps.

    Definitions (docs/design.md, "Vocabulary"): a step is one target forward; mean accepted length (tau) is emitted
    tokens per target forward, bonus included (an end-of-generation token counts as emitted,
    though it is not part of the output); acceptance rate is accepted / drafted draft tokens;
    acceptance_by_position[i] is the fraction of drafts with more than i tokens whose token i
    was accepted (for a tree draft: reaching depth i + 1, and its accepted path reaching it).
    draft_lengths[k]: steps that drafted k tokens; draft_sources[s]: steps whose draft came from
    source s (methods with several sources, such as auto; "plain" for its plain steps).
    acceptance: the rule that verified the drafts; lossless: whether the output is the target's
    own under it (False only for a lossy rule, such as typical acceptance when sampling); then
    tv_per_token is how far it moved the output: the mean over generated tokens of the total
    variation distance between the distribution each was emitted from and the target's
    (verifiers/typical.py: the expected share of tokens that part from plain sampling).
    """

    generated_tokens: int = 0
    target_forwards: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    prefill_time_s: float = 0.0
    total_time_s: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, what the cache already held (prefix reuse)
    ended_on_eos: bool = False
    acceptance: str = "exact"
    lossless: bool = True
    tv: float = 0.0  # sum of Acceptance.tv
    accepted_lengths: list[int] = field(default_factory=list)  # emitted tokens per step
    draft_lengths: dict[int, int] = field(default_factory=dict)
    draft_sources: dict[str, int] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)  # per source: what it did, or why it did not draft (auto)
    _reached: list[int] = field(default_factory=list)  # drafts with > i tokens
    _kept: list[int] = field(default_factory=list)  # of those, token i accepted

    def observe(self, acceptance: Acceptance, emitted: int, times: StepTimes, source: str = "") -> None:
        """Record one step; ``emitted`` may be below len(acceptance.tokens) when a stop cut it
        short; ``source``: where its draft came from, if the method says."""
        self.target_forwards += 1
        self.generated_tokens += emitted
        self.drafted_tokens += acceptance.drafted
        self.accepted_tokens += acceptance.accepted
        self.tv += acceptance.tv
        self.draft_time_s += times.draft_s
        self.verify_time_s += times.verify_s
        self.accepted_lengths.append(emitted)
        self.draft_lengths[acceptance.drafted] = self.draft_lengths.get(acceptance.drafted, 0) + 1
        if source:
            self.draft_sources[source] = self.draft_sources.get(source, 0) + 1
        while len(self._reached) < acceptance.positions:
            self._reached.append(0)
            self._kept.append(0)
        for i in range(acceptance.positions):
            self._reached[i] += 1
            self._kept[i] += i < acceptance.accepted

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        emitted = self.generated_tokens + self.ended_on_eos
        return emitted / self.target_forwards if self.target_forwards else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens over decode time (prefill excluded, as peers report decode speed)."""
        decode = self.total_time_s - self.prefill_time_s
        return self.generated_tokens / decode if decode > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "generated_tokens": self.generated_tokens,
            "target_forwards": self.target_forwards,
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted_length": round(self.mean_accepted_length, 4),
            "acceptance_by_position": [round(k / r, 4) for k, r in zip(self._kept, self._reached)],
            "drafted_by_position": list(self._reached),
            "accepted_by_position": list(self._kept),
            "draft_time_s": round(self.draft_time_s, 4),
            "verify_time_s": round(self.verify_time_s, 4),
            "prefill_time_s": round(self.prefill_time_s, 4),
            "total_time_s": round(self.total_time_s, 4),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "ended_on_eos": self.ended_on_eos,
            "tokens_per_second": round(self.tokens_per_second, 3),
            "accepted_lengths": list(self.accepted_lengths),
            "draft_lengths": {str(k): n for k, n in sorted(self.draft_lengths.items())},
            **({"draft_sources": dict(self.draft_sources)} if self.draft_sources else {}),
            **({"why": dict(self.why)} if self.why else {}),
            "acceptance": self.acceptance,
            "lossless": self.lossless,
            **({} if self.lossless else {"tv_per_token": round(self.tv / max(self.generated_tokens, 1), 5)}),
        }

    def summary(self) -> str:
        """One human line for the CLI."""
        return (f"{self.generated_tokens} tokens in {self.total_time_s:.2f}s "
                f"({self.tokens_per_second:.1f} tok/s) | target forwards {self.target_forwards}, "
                f"mean accepted length {self.mean_accepted_length:.2f}, "
                f"acceptance {self.accepted_tokens}/{self.drafted_tokens} ({100 * self.acceptance_rate:.0f}%) | "
                f"draft {self.draft_time_s:.2f}s, verify {self.verify_time_s:.2f}s")
