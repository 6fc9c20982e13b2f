"""Draft budget policies: how many tokens to draft in the next step.

A controller sees every step's acceptance and timings and answers with the next budget. The
budget is an upper bound: proposers may draft fewer (a confidence stop, no n-gram match).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .errors import InvalidParameterError
from .types import Acceptance


class Controller(Protocol):
    def budget(self) -> int:
        """Upper bound on draft tokens for the next step (0 = a plain step)."""

    def observe(self, acceptance: Acceptance, draft_time: float, verify_time: float) -> None:
        """The outcome and cost of the last step."""


@dataclass
class FixedBudget:
    """Always draft up to ``num_draft`` tokens."""

    num_draft: int = 4

    def __post_init__(self) -> None:
        if self.num_draft < 0:
            raise InvalidParameterError(f"num_draft must be >= 0, got {self.num_draft}")

    def budget(self) -> int:
        return self.num_draft

    def observe(self, acceptance: Acceptance, draft_time: float, verify_time: float) -> None:
        pass
