"""Views of a bench results dict (schema in ``quickdraft.bench``), read tolerantly: a missing or
malformed section gives an empty view, never an error, so a report can be built from any
results.json, an interrupted run's included. What the report's tables and the plots share.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .metrics import AR_METHOD, geometric_mean

DIVERGENCE = "real divergence"



def result_rows(results: dict, key: str) -> list[dict]:
    """The list of row objects under ``key`` (a list, or a dict of rows); [] when absent."""
    value = results.get(key) if isinstance(results, dict) else None
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return []
    return [row for row in value if isinstance(row, dict)]


def number(value: Any) -> float | None:
    """A finite float, or None for None, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def numbers(values: Any) -> list[float | None]:
    """A list of ``number`` values; [] when ``values`` is not a sequence."""
    if not isinstance(values, (list, tuple)):
        return []
    return [number(v) for v in values]


def median_of(values: Iterable[Any]) -> float | None:
    finite = [v for v in map(number, values) if v is not None]
    return statistics.median(finite) if finite else None


def ordered(preferred: Any, seen: Iterable[Any]) -> list[str]:
    """Names in ``preferred`` order (e.g. config["methods"]) then any others in order seen."""
    out: list[str] = []
    for name in list(preferred if isinstance(preferred, (list, tuple)) else []) + list(seen):
        if name is not None and str(name) not in out:
            out.append(str(name))
    return out


def config_of(results: dict) -> dict:
    config = results.get("config") if isinstance(results, dict) else None
    return config if isinstance(config, dict) else {}


def present(results: dict, rows: Sequence[dict], key: str) -> list[str]:
    """The ``key`` values (task or method) found in ``rows``, in config order where the config
    lists them, so a partial run does not plot empty groups."""
    seen = ordered([], (r.get(key) for r in rows))
    return [name for name in ordered(config_of(results).get(key + "s"), seen) if name in seen]


def tasks_in(results: dict, rows: Sequence[dict]) -> list[str]:
    return present(results, rows, "task")


def methods_in(results: dict, rows: Sequence[dict]) -> list[str]:
    return present(results, rows, "method")


def summary_index(results: dict) -> dict[tuple[str, str], dict]:
    return {(str(r.get("task")), str(r.get("method"))): r for r in result_rows(results, "summary")}



def check_counts(results: dict) -> dict[str, Counter]:
    """Equality-check counts per method: from samples when there are any (plus "unchecked" for
    speculative samples without a check), else from the summary's ``checks``."""
    samples = result_rows(results, "samples")
    counts: dict[str, Counter] = {}
    if samples:
        for s in samples:
            method = str(s.get("method"))
            check = s.get("check")
            if isinstance(check, dict) and check.get("result"):
                counts.setdefault(method, Counter())[str(check["result"])] += 1
            elif method != AR_METHOD:
                counts.setdefault(method, Counter())["unchecked"] += 1
        return counts
    for row in result_rows(results, "summary"):
        checks = row.get("checks")
        if isinstance(checks, dict):
            counter = counts.setdefault(str(row.get("method")), Counter())
            for kind, n in checks.items():
                counter[str(kind)] += int(number(n) or 0)
    return counts


def divergent_samples(results: dict) -> list[dict]:
    """Samples whose check found a real divergence (the lossless guarantee failed)."""
    return [s for s in result_rows(results, "samples")
            if isinstance(s.get("check"), dict) and s["check"].get("result") == DIVERGENCE]


def divergence_total(results: dict) -> int:
    return sum(c.get(DIVERGENCE, 0) for c in check_counts(results).values())


def peer_groups(results: dict) -> list[dict]:
    """One dict per (peer, method) with rows, plus one per peer that has a status but no rows,
    so a peer that could not run is always listed with its reason.

    Keys: peer, method, status, runs, tps, tps_min, tps_max, speedup (geometric mean),
    speedup_min, speedup_max, equal (count True), compared (count not None).
    """
    rows = result_rows(results, "peers")
    status = results.get("peer_status") if isinstance(results.get("peer_status"), dict) else {}
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        grouped.setdefault((str(r.get("peer")), str(r.get("method"))), []).append(r)
    out = []
    for peer in ordered(list(status), (r.get("peer") for r in rows)):
        peer_status = str(status.get(peer, "unknown (no peer_status entry)"))
        methods = [m for (p, m) in grouped if p == peer]
        if not methods:
            out.append({"peer": peer, "method": None, "status": peer_status, "runs": 0})
        for method in methods:
            group = grouped[(peer, method)]
            tps = [v for v in (number(r.get("tokens_per_second")) for r in group) if v is not None]
            speedups = [v for v in (number(r.get("speedup")) for r in group) if v is not None]
            equal = [r.get("equal_to_reference") for r in group if r.get("equal_to_reference") is not None]
            out.append({
                "peer": peer, "method": method, "status": peer_status, "runs": len(group),
                "tps": median_of(tps), "tps_min": min(tps, default=None), "tps_max": max(tps, default=None),
                "speedup": geometric_mean(map(number, speedups)),
                "speedup_min": min(speedups, default=None), "speedup_max": max(speedups, default=None),
                "equal": sum(bool(e) for e in equal), "compared": len(equal),
            })
    return out


def calibration_rows(results: dict) -> list[dict]:
    """Rows {k, median_ms, min_ms, max_ms, relative} from calibration["target"]; relative is
    taken from the data, or computed against k=1 (the first k if there is no k=1)."""
    calibration = results.get("calibration")
    target = calibration.get("target") if isinstance(calibration, dict) else None
    if not isinstance(target, dict):
        return []
    ks = target.get("k") if isinstance(target.get("k"), list) else []
    med, lo, hi, rel = (numbers(target.get(key)) for key in ("median_s", "min_s", "max_s", "relative"))
    base = next((m for k, m in zip(ks, med) if k == 1 and m), next((m for m in med if m), None))

    def at(values: list, i: int) -> float | None:
        return values[i] if i < len(values) else None

    rows = []
    for i, k in enumerate(ks):
        median = at(med, i)
        relative = at(rel, i)
        if relative is None and median is not None and base:
            relative = median / base
        rows.append({"k": k, "median_ms": None if median is None else 1e3 * median,
                     "min_ms": None if at(lo, i) is None else 1e3 * at(lo, i),
                     "max_ms": None if at(hi, i) is None else 1e3 * at(hi, i),
                     "relative": relative, "base_s": base})
    return rows


def draft_cost(results: dict) -> tuple[float, float] | None:
    """(draft seconds per token, that as a fraction of one single-token target step), if known."""
    calibration = results.get("calibration")
    draft = calibration.get("draft") if isinstance(calibration, dict) else None
    token_s = number(draft.get("token_s")) if isinstance(draft, dict) else None
    rows = calibration_rows(results)
    base = rows[0]["base_s"] if rows else None
    if token_s is None or not base:
        return None
    return token_s, token_s / base


def draft_sources(results: dict) -> dict[tuple[str, str], Counter]:
    """Per (task, method), the steps each source drafted (``plain``: none drafted) summed over the
    samples that report them (``config.draft_sources``: auto's per-step choices)."""
    out: dict[tuple[str, str], Counter] = {}
    for s in result_rows(results, "samples"):
        config = s.get("config") if isinstance(s.get("config"), dict) else {}
        sources = config.get("draft_sources")
        if isinstance(sources, dict) and sources:
            counter = out.setdefault((str(s.get("task")), str(s.get("method"))), Counter())
            for source, steps in sources.items():
                counter[str(source)] += int(number(steps) or 0)
    return out
