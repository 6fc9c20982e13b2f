"""Prometheus metrics of one server, in its own registry (no process-wide globals).

Counters of tokens and times add up over all generations; ``finish_reason`` on
``quickdraft_generations_total`` is ``stop``, ``length``, ``cancelled`` (the client went away),
``timeout`` or ``error``. Acceptance by draft position i (0-based) is two counters: drafts
longer than i (``quickdraft_drafted_by_position_total``) and, of those, drafts whose token i was
accepted (``quickdraft_accepted_by_position_total``); their ratio is the acceptance rate at i.
Draft statistics come from the engine's stats, so they count finished generations only.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Every metric the server exports; ``render()`` gives the Prometheus text format."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.http_requests = Counter("quickdraft_http_requests", "HTTP requests answered, by endpoint and status.",
                                     ["endpoint", "status"], registry=r)
        self.errors = Counter("quickdraft_errors", "Error responses (including errors sent inside a stream), "
                              "by HTTP status and OpenAI error code.", ["status", "code"], registry=r)
        self.generations = Counter("quickdraft_generations", "Generations run by the engine, by method and "
                                   "how they ended.", ["method", "finish_reason"], registry=r)
        self.prompt_tokens = Counter("quickdraft_prompt_tokens", "Prompt tokens of the generations run.",
                                     registry=r)
        self.completion_tokens = Counter("quickdraft_completion_tokens", "Tokens generated.", ["method"],
                                         registry=r)
        self.drafted_tokens = Counter("quickdraft_drafted_tokens", "Draft tokens proposed (finished generations).",
                                      ["method"], registry=r)
        self.accepted_tokens = Counter("quickdraft_accepted_tokens", "Draft tokens accepted by the target.",
                                       ["method"], registry=r)
        self.target_forwards = Counter("quickdraft_target_forwards", "Target forward passes (steps).",
                                       ["method"], registry=r)
        self.drafted_by_position = Counter("quickdraft_drafted_by_position", "Drafts with more than "
                                           "`position` tokens.", ["method", "position"], registry=r)
        self.accepted_by_position = Counter("quickdraft_accepted_by_position", "Drafts whose token at "
                                            "`position` was accepted.", ["method", "position"], registry=r)
        self.draft_seconds = Counter("quickdraft_draft_seconds", "Time spent proposing drafts.", ["method"],
                                     registry=r)
        self.verify_seconds = Counter("quickdraft_verify_seconds", "Time spent in target forwards and "
                                      "verification.", ["method"], registry=r)
        self.prefill_seconds = Counter("quickdraft_prefill_seconds", "Time spent prefilling prompts.", ["method"],
                                       registry=r)
        self.queue_wait = Histogram("quickdraft_queue_wait_seconds", "Time a request waited for an engine.",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.time_to_first_token = Histogram("quickdraft_time_to_first_token_seconds", "From arrival to the "
                                             "first generated text.", buckets=_LATENCY_BUCKETS, registry=r)
        self.request_duration = Histogram("quickdraft_generation_duration_seconds", "From arrival to the end "
                                          "of the generation.", buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("quickdraft_batch_size", "Requests in a step (continuous batching).",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r)
        self.step_seconds = Histogram("quickdraft_step_seconds", "Wall time of one engine step over the batch "
                                      "(drafts, the target forward, acceptance).",
                                      buckets=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0),
                                      registry=r)
        self.request_acceptance = Histogram("quickdraft_request_acceptance", "Acceptance rate of each finished "
                                            "generation that drafted.", ["method"],
                                            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), registry=r)
        self.queue_length = Gauge("quickdraft_queue_length", "Requests waiting for an engine.", registry=r)
        self.running = Gauge("quickdraft_requests_running", "Requests being generated now.", registry=r)

    def track_queue(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        """Read the queue's state when scraped (always current, nothing to keep in step)."""
        self.queue_length.set_function(waiting)
        self.running.set_function(running)

    def observe_generation(self, method: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
                           stats: dict | None) -> None:
        """One generation ended; ``stats`` is the engine's stats dict (None if it did not finish)."""
        self.generations.labels(method, finish_reason).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.labels(method).inc(completion_tokens)
        if not stats:
            return
        self.drafted_tokens.labels(method).inc(stats.get("drafted_tokens", 0))
        if stats.get("drafted_tokens"):
            self.request_acceptance.labels(method).observe(stats.get("acceptance_rate", 0.0))
        self.accepted_tokens.labels(method).inc(stats.get("accepted_tokens", 0))
        self.target_forwards.labels(method).inc(stats.get("target_forwards", 0))
        self.draft_seconds.labels(method).inc(stats.get("draft_time_s", 0.0))
        self.verify_seconds.labels(method).inc(stats.get("verify_time_s", 0.0))
        self.prefill_seconds.labels(method).inc(stats.get("prefill_time_s", 0.0))
        accepted = stats.get("accepted_by_position", [])
        for position, drafted in enumerate(stats.get("drafted_by_position", [])):
            self.drafted_by_position.labels(method, str(position)).inc(drafted)
            self.accepted_by_position.labels(method, str(position)).inc(accepted[position])

    def render(self) -> bytes:
        return generate_latest(self.registry)
