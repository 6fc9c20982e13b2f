"""The backend's cost curve: target forward time for k new tokens, and the draft's per-token time.

On a GPU the curve is nearly flat (verifying 8 tokens costs about one step); on a CPU it is not,
and that decides whether speculation pays. Measurements are interleaved over k and repeated;
each point reports median, min and max.

Measured curves are cached in :func:`~quickdraft.system.calibration_dir`, keyed by the model,
the backend and its build, the thread count, the context length and the CPU's instruction sets,
so a curve is never read on a machine or build it was not measured on. The context is
:data:`CONTEXT_TEXT`, cut to what fits the backend's context with room for the largest forward.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from statistics import median
from typing import Sequence

import numpy as np

from .backends.base import THREADS
from .control import Prior, Split
from .errors import QuickdraftError
from .system import calibration_dir, cpu_info

# What the curve is measured after: a few hundred tokens of code (841 with Qwen's tokenizer).
CONTEXT_TEXT = "def merge_sorted(a, b):\n    result = []\n    i = j = 0\n" * 24
MIN_CONTEXT = 16  # fewer tokens of context than this would not say much about a real request
MAX_K = 16  # the curve covers forwards of 1 .. MAX_K + 1 new tokens (a pending token and MAX_K drafts)
# The one-token forward is the curve's unit (every point is relative to it, and it is the prior's
# step time), so it is measured at least this often however few the repeats, spread among the
# others: one slow sample of it skews the whole curve. A fresh machine's one-pass curve once
# measured it at 51 ms where five samples a minute later gave 31.5 (30.5-32.9), pricing a
# 4-token forward at 1.8 steps instead of ~2.4.
UNIT_SAMPLES = 5


def _extra_units(ks: Sequence[int], repeats: int) -> int:
    """One-token forwards a repeat adds to its k = 1, so the unit gets ``UNIT_SAMPLES`` in all."""
    return max(0, -(-UNIT_SAMPLES // repeats) - 1) if 1 in ks else 0


def forwards(ks: Sequence[int], repeats: int) -> int:
    """How many timed target forwards :func:`calibrate` makes (``on_step`` is called after each)."""
    return repeats * (len(ks) + _extra_units(ks, repeats))


def time_forward(backend, context: Sequence[int], k: int) -> float:
    """Seconds for one forward of k new tokens after ``context`` (then rolled back)."""
    backend.prefill(context)
    new = [context[i % len(context)] for i in range(k)]
    start = time.perf_counter()
    backend.forward(new)
    elapsed = time.perf_counter() - start
    backend.rollback(len(context))
    return elapsed


def calibrate(target, context: Sequence[int], draft=None, ks: Sequence[int] = range(1, 17), repeats: int = 5,
              seed: int = 0, on_step=lambda: None, draft_context: Sequence[int] | None = None) -> dict:
    """Measure the target's forward time for each k in ``ks`` (and the draft's one-token time)
    after ``context``, in a shuffled order per repeat (k = 1, the unit, at least
    ``UNIT_SAMPLES`` times in all). ``draft_context``: the draft model's tokens
    of the same text, when its vocabulary is not the target's. Returns the ``calibration``
    object of results.json."""
    rng = np.random.default_rng(seed)
    times: dict[int, list[float]] = {k: [] for k in ks}
    draft_times: list[float] = []
    draft_context = context if draft_context is None else draft_context
    time_forward(target, context, 1)  # warm-up
    if draft is not None:
        time_forward(draft, draft_context, 1)
    for _ in range(repeats):
        for k in rng.permutation([*ks, *[1] * _extra_units(ks, repeats)]):
            times[int(k)].append(time_forward(target, context, int(k)))
            on_step()
        if draft is not None:
            draft_times.append(time_forward(draft, draft_context, 1))
    ahead = split_costs(target, context, draft, draft_context, repeats=max(repeats // 2, 2)) if draft is not None else []
    prefill_times = []
    for _ in range(2 if draft is not None else 0):  # the draft model's rate on a long forward (a catch-up)
        draft.rollback(0)
        start = time.perf_counter()
        draft.prefill(draft_context)
        prefill_times.append((time.perf_counter() - start) / len(draft_context))
    target.rollback(0)  # leave no cells held (a batching server needs them)
    if draft is not None:
        draft.rollback(0)
    med = [median(times[k]) for k in ks]
    return {
        "context_tokens": len(context),
        "target": {"k": list(ks), "median_s": med, "min_s": [min(times[k]) for k in ks],
                   "max_s": [max(times[k]) for k in ks], "relative": [m / med[0] for m in med]},
        "draft": {"token_s": median(draft_times), "relative_to_target_step": median(draft_times) / med[0],
                  "prefill_token_s": min(prefill_times), "prefill_relative": min(prefill_times) / median(draft_times),
                  "ahead": [{**split, "draft_token": split["draft_token_s"] / med[0]} for split in ahead]}
        if draft_times else None,
    }


SPLIT_KS = (1, 5, 9)  # the forward sizes a split's target scale is measured at (the median of their ratios)


def split_costs(target, context: Sequence[int], draft, draft_context: Sequence[int], repeats: int = 3) -> list[dict]:
    """What drafting ahead costs on this machine (proposers/parallel.py): for each split of the
    engine's T threads into T - D for the target and D for the draft model (D = 1, 2, 4, .. up to
    T / 2), the target's forward time over ``SPLIT_KS`` new tokens relative to the same on T
    threads (``target_scale``, the median ratio) and the draft model's seconds per token on D
    threads (``draft_token_s``). Each is measured alone, the two on T and on the split
    interleaved; the threads are the engine's again afterwards. Empty when a model's
    threads cannot be set or T < 2."""
    threads = target.n_threads or 0
    if threads < 2 or THREADS not in target.capabilities or THREADS not in draft.capabilities:
        return []
    draft_threads, splits = draft.n_threads, []
    try:
        for d in (2 ** i for i in range(threads.bit_length()) if 2 ** i <= threads // 2):
            ratios, tokens = [], []
            for _ in range(repeats):
                for k in SPLIT_KS:
                    target.set_threads(threads)
                    whole = time_forward(target, context, k)
                    target.set_threads(threads - d)
                    ratios.append(time_forward(target, context, k) / whole)
                draft.set_threads(d)
                tokens.append(time_forward(draft, draft_context, 1))
                draft.set_threads(draft_threads)
            splits.append({"target_threads": threads - d, "draft_threads": d, "target_scale": median(ratios),
                           "draft_token_s": median(tokens)})
    finally:
        target.set_threads(threads)
        draft.set_threads(draft_threads)
    return splits


TOLERANCE_POSITIONS = 48  # positions whose logits are compared between evaluation shapes
TOLERANCE_SIZES = (2, 3, 4, 5, 8, 12, 16)  # forward sizes verification uses
TOLERANCE_TOP = 8  # candidates per position whose logit differences count


def logit_spread(backend, context: Sequence[int], positions: int = TOLERANCE_POSITIONS,
                 sizes: Sequence[int] = TOLERANCE_SIZES, top: int = TOLERANCE_TOP) -> float:
    """How far the backend's arithmetic alone moves a near-tie: over the last ``positions`` tokens
    of ``context``, the largest change in the difference of two of a position's ``top`` candidate
    logits between a one-token forward (plain decoding's shape) and forwards of ``sizes`` tokens
    (verification's shapes). Kernels and caches differ between the shapes (batched matmul
    kernels, f16 KV cache), so greedy plain and speculative decoding may part where two logits are
    closer than this; never where they are farther apart."""
    start = len(context) - positions
    backend.prefill(context[:start])
    single = np.stack([backend.forward([t])[0] for t in context[start:]])  # [positions, V]
    worst = 0.0
    for size in sizes:
        for first in range(start, len(context), size):
            chunk = list(context[first:first + size])
            backend.rollback(first)
            batched = backend.forward(chunk)  # [len(chunk), V]
            for row, one in zip(batched, single[first - start:]):
                cand = np.unique(np.concatenate([np.argpartition(-one, top)[:top], np.argpartition(-row, top)[:top]]))
                gaps = (row[cand, None] - row[None, cand]) - (one[cand, None] - one[None, cand])
                worst = max(worst, float(np.abs(gaps).max()))
    backend.rollback(0)
    return worst


def near_tie_tolerance(backend) -> float:
    """The largest logit gap that the numerics alone explain for this backend and model
    (:func:`logit_spread`), from the calibration cache or measured now (about two seconds on a
    1.5B model) and cached. ``check`` certifies a divergence as a near-tie only within it."""
    context = calibration_context(backend, TOLERANCE_POSITIONS + 1)
    path = calibration_path(backend, len(context)).with_suffix(".tolerance.json")
    try:
        return float(json.loads(path.read_text())["near_tie_tolerance"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    spread = logit_spread(backend, context)
    save_calibration({"near_tie_tolerance": spread, "context_tokens": len(context),
                      "positions": TOLERANCE_POSITIONS, "sizes": list(TOLERANCE_SIZES), "top": TOLERANCE_TOP}, path)
    return spread


def calibration_context(backend, largest: int = MAX_K + 1) -> list[int]:
    """The tokens of :data:`CONTEXT_TEXT` to measure after: all that fit in the backend's context
    with room for a forward of ``largest`` new tokens."""
    room = backend.n_ctx - largest
    if room < MIN_CONTEXT:
        raise QuickdraftError(
            f"a context of {backend.n_ctx} tokens is too small to measure the forward cost curve (a forward "
            f"of up to {largest} new tokens after at least {MIN_CONTEXT} tokens of context): raise n_ctx to "
            f"at least {largest + MIN_CONTEXT}", param="n_ctx")
    return backend.tokenize(CONTEXT_TEXT, special=False)[:room]


def cost_curve(backend, repeats: int = 1) -> list[float]:
    """The backend's relative forward cost curve (index k: k + 1 new tokens, relative to one, for
    k = 0 .. MAX_K), from the cache, or measured now (about 80 one-token steps' worth) and cached.
    ``quickdraft calibrate`` measures a careful one."""
    context = calibration_context(backend)
    path = calibration_path(backend, len(context))
    cached = read_calibration(path)
    if cached is not None and len(cached["target"]["relative"]) > MAX_K:
        return cached["target"]["relative"]
    result = calibrate(backend, context, ks=range(1, MAX_K + 2), repeats=repeats)
    save_calibration(result, path)
    return result["target"]["relative"]


# What the draft model's agreement with the target is measured on: the openings of the target's
# own greedy answers (through its chat template) to a code request and a prose request, the text a
# fresh request first drafts on (the two models open answers differently more often than they part
# on running text). Neither prompt is one of the bench's.
AGREEMENT_PROMPTS = {"code": "Write a Python function that checks whether a string is a valid IPv4 address.",
                     "prose": "Describe in a short paragraph how a city can reduce traffic congestion."}
AGREEMENT_TOKENS = 48


def draft_agreement(target, draft, bridge=None, prompts: dict[str, str] = AGREEMENT_PROMPTS,
                    tokens: int = AGREEMENT_TOKENS) -> dict[str, float]:
    """How often the draft model's greedy token is the target's, per kind of answer: the target
    answers each prompt greedily (``tokens`` tokens, through its chat template when it has one),
    the draft reads the same text in one forward, and the share of positions where its argmax is
    the target's token is that kind's agreement (a greedy draft's acceptance). With a ``bridge``
    (a draft of another vocabulary, bridge.py) the draft's guess at each position is the first
    target token of a one-token draft there, as a request would draft it."""
    agreement = {}
    for kind, text in prompts.items():
        templated = target.chat_prompt([{"role": "user", "content": text}])
        prompt = target.tokenize(templated if templated is not None else text, special=templated is not None)
        target.prefill(prompt[:-1])
        out = [int(np.argmax(target.forward(prompt[-1:])[0]))]
        for _ in range(tokens - 1):
            out.append(int(np.argmax(target.forward(out[-1:])[0])))
        if bridge is None:
            draft.prefill(prompt[:-1])
            guesses = draft.forward([prompt[-1], *out[:-1]]).argmax(axis=1)  # [tokens]
        else:
            drafter, rng = bridge.drafter(draft), np.random.default_rng(0)
            guesses = np.array([(drafter.propose([*prompt, *out[:i]], 1, rng) or (-1,))[0] for i in range(tokens)])
        agreement[kind] = float((guesses == np.asarray(out)).mean())
    target.rollback(0)
    draft.rollback(0)
    return agreement


DRAFT_PRIOR_KEYS = ("relative_to_target_step", "agreement", "prefill_relative", "ahead")


def draft_measures(target, draft, bridge=None) -> dict:
    """The draft model's agreement with the target (:func:`draft_agreement`, per kind and
    their mean) and its tokens per target token on :data:`CONTEXT_TEXT` (1 for the target's
    vocabulary): the part of a draft prior beyond timings."""
    by_kind = draft_agreement(target, draft, bridge)
    ratio = len(draft.tokenize(CONTEXT_TEXT, special=False)) / len(target.tokenize(CONTEXT_TEXT, special=False))
    return {"agreement": sum(by_kind.values()) / len(by_kind), "agreement_by_kind": by_kind,
            "tokens_per_target_token": ratio}


def draft_cost(draft: dict) -> float:
    """The draft model's time per target token it drafts, relative to a target step, from a
    calibration's ``draft`` part: its time per token times its tokens per target token."""
    return draft["relative_to_target_step"] * draft.get("tokens_per_target_token", 1.0)


def draft_prior(target, draft, bridge=None) -> dict:
    """The draft model's part of the :class:`~quickdraft.control.Prior` (its fields by name):
    its time per target token it drafts relative to a target step (``draft_token``,
    :func:`draft_cost`), its agreement with the target (``draft_accept``: the mean over the
    kinds of :func:`draft_agreement`), its time per token of a long forward relative to one
    token (``draft_prefill``) and the two models' costs on split threads (``draft_ahead``,
    :func:`split_costs`; none with a ``bridge``, which drafting ahead does not take); from the
    cache, or measured now (a few steps of each on its own tokens of the calibration text, a
    prefill, the splits, and :func:`draft_measures`) and cached. ``bridge``: a draft model of
    another vocabulary (bridge.py)."""
    context = calibration_context(target)
    path = calibration_path(target, len(context), draft)
    cached = (read_calibration(path) or {}).get("draft") or {}
    if not all(key in cached for key in (*DRAFT_PRIOR_KEYS, "agreement_by_kind")):
        result = calibrate(target, context, draft, ks=[1], repeats=5, draft_context=calibration_context(draft))
        result["draft"].update(draft_measures(target, draft, bridge))
        save_calibration(result, path)
        cached = result["draft"]
    ahead = () if bridge is not None else splits(cached)
    return {"draft_token": draft_cost(cached), "draft_accept": cached["agreement"],
            "draft_prefill": cached["prefill_relative"], "draft_ahead": ahead}


def splits(draft: dict) -> tuple[Split, ...]:
    """The splits of a calibration's ``draft`` part (:func:`split_costs`) as the prior holds them."""
    return tuple(Split(s["target_threads"], s["draft_threads"], s["target_scale"], s["draft_token"])
                 for s in draft.get("ahead") or ())


def prior(target, draft=None, bridge=None) -> Prior:
    """Everything the cost models start from, for this machine: the target's curve and step time,
    and with a draft model its token cost and agreement (each cached after its first measurement)."""
    curve = cost_curve(target)
    path = calibration_path(target, len(calibration_context(target)))
    step_s = read_calibration(path)["target"]["median_s"][0]
    return Prior(curve, step_s, **(draft_prior(target, draft, bridge) if draft is not None else {}))


def calibration_path(backend, context_tokens: int, draft=None) -> Path:
    """Where a curve measured on ``backend`` (and ``draft``) after ``context_tokens`` is cached on
    this machine: the file name says the model and the settings, a digest covers the model's
    size, the backend's build and the CPU's instruction sets."""
    models = [backend] + ([draft] if draft is not None else [])
    identity = " ".join(f"{Path(m.path).name}:{_size(m.path)}" for m in models)
    digest = hashlib.sha256(f"{identity} {backend.build} {cpu_info().signature}".encode()).hexdigest()[:12]
    name = "+".join(Path(m.path).stem for m in models)
    return calibration_dir() / f"{name}-{backend.name}-threads{backend.n_threads or 'default'}-ctx{context_tokens}-{digest}.json"


def _size(path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else 0


def save_calibration(calibration: dict, path: Path) -> None:
    """Write atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(calibration, indent=1))
    tmp.replace(path)


def read_calibration(path: Path) -> dict | None:
    """A cached calibration, or None when there is none (or it is unreadable)."""
    try:
        result = json.loads(path.read_text())
        result["target"]["relative"]
        return result
    except (OSError, ValueError, KeyError, TypeError):
        return None
