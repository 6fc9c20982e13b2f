"""Turn a results.json (schema in ``quickdraft.bench``) into report.md, PNG plots and terminal tables.

Everything here is a pure function of the results dict, so a report can be rebuilt from any
results.json, including an interrupted run's: every section is optional, and a missing one is
named in report.md instead of raising. matplotlib (the ``bench`` extra) is imported only by the
plotting functions; without it report.md is still written and says the plots were skipped.

Words: a *unit* is one (task, prompt_id, turn); *speedup* is AR time / speculative time for the
same tokens (docs/design.md); ``ar`` is plain decoding, the 1.0 line in every speedup plot.

Example::

    results = json.loads(Path("results.json").read_text())
    paths = write_report(results, Path("bench-out"))   # [bench-out/report.md, bench-out/speedup.png, ...]
    rich.print(summary_table(results))
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from .metrics import AR_METHOD, CHECK_KINDS, geometric_mean

DIVERGENCE = "real divergence"
DPI = 120
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SUMMARY_HEADERS = ("task", "method", "speedup (geo mean, min-max)", "median",
                   "mean accepted length", "acceptance rate", "tok/s", "checks", "output")
TERMINAL_HEADERS = ("task", "method", "speedup [min-max]", "median", "tau", "accept", "tok/s", "checks", "output")
TERMINAL_PEER_HEADERS = ("peer", "method", "status", "runs", "tok/s [min-max]", "speedup [min-max]", "equal")
PEER_HEADERS = ("peer", "method", "status", "runs", "tok/s (median, min-max)",
                "speedup vs own baseline", "equal to reference")


# ---------------------------------------------------------------------------------------------
# Reading the results dict tolerantly


def _rows(results: dict, key: str) -> list[dict]:
    """The list of row objects under ``key`` (a list, or a dict of rows); [] when absent."""
    value = results.get(key) if isinstance(results, dict) else None
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return []
    return [row for row in value if isinstance(row, dict)]


def _num(value: Any) -> float | None:
    """A finite float, or None for None, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _floats(values: Any) -> list[float | None]:
    """A list of ``_num`` values; [] when ``values`` is not a sequence."""
    if not isinstance(values, (list, tuple)):
        return []
    return [_num(v) for v in values]


def _median(values: Iterable[Any]) -> float | None:
    finite = [v for v in map(_num, values) if v is not None]
    return statistics.median(finite) if finite else None


def _ordered(preferred: Any, seen: Iterable[Any]) -> list[str]:
    """Names in ``preferred`` order (e.g. config["methods"]) then any others in order seen."""
    out: list[str] = []
    for name in list(preferred if isinstance(preferred, (list, tuple)) else []) + list(seen):
        if name is not None and str(name) not in out:
            out.append(str(name))
    return out


def _config(results: dict) -> dict:
    config = results.get("config") if isinstance(results, dict) else None
    return config if isinstance(config, dict) else {}


def _present(results: dict, rows: Sequence[dict], key: str) -> list[str]:
    """The ``key`` values (task or method) found in ``rows``, in config order where the config
    lists them, so a partial run does not plot empty groups."""
    seen = _ordered([], (r.get(key) for r in rows))
    return [name for name in _ordered(_config(results).get(key + "s"), seen) if name in seen]


def _tasks(results: dict, rows: Sequence[dict]) -> list[str]:
    return _present(results, rows, "task")


def _methods(results: dict, rows: Sequence[dict]) -> list[str]:
    return _present(results, rows, "method")


def _summary_index(results: dict) -> dict[tuple[str, str], dict]:
    return {(str(r.get("task")), str(r.get("method"))): r for r in _rows(results, "summary")}


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_speedup(value: Any, low: Any = None, high: Any = None, brackets: str = "()") -> str:
    """Example: fmt_speedup(1.234, 0.95, 1.5) == "1.23x (0.95-1.50)"; None gives "-"."""
    v, lo, hi = _num(value), _num(low), _num(high)
    if v is None:
        return "-"
    text = f"{v:.2f}x"
    if lo is not None and hi is not None:
        text += f" {brackets[0]}{lo:.2f}-{hi:.2f}{brackets[1]}"
    return text


def fmt_pct(value: Any) -> str:
    """A fraction as a percentage: fmt_pct(0.7834) == "78.3%"; None gives "-"."""
    v = _num(value)
    return "-" if v is None else f"{100 * v:.1f}%"


def fmt_num(value: Any, digits: int = 2) -> str:
    v = _num(value)
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_checks(checks: Any) -> str:
    """Example: {"exact": 5, "near-tie": 1, "real divergence": 0} -> "5 exact, 1 near-tie"."""
    if not isinstance(checks, dict):
        return "-"
    parts = []
    for kind in _ordered(CHECK_KINDS, checks):
        count = int(_num(checks.get(kind)) or 0)
        if count:
            parts.append(f"{count} {kind.upper() if kind == DIVERGENCE else kind}")
    return ", ".join(parts) or "-"


def fmt_checks_short(checks: Any) -> str:
    """The terminal's compact form: {"exact": 3, "near-tie": 1} -> "3/4 exact, 1 tie";
    any real divergence shows as "N DIVERGED"."""
    if not isinstance(checks, dict):
        return "-"
    counts = {str(k): int(_num(v) or 0) for k, v in checks.items()}
    total = sum(counts.values())
    if not total:
        return "-"
    parts = [f"{counts.get('exact', 0)}/{total} exact"]
    if counts.get("near-tie"):
        parts.append(f"{counts['near-tie']} tie")
    if counts.get(DIVERGENCE):
        parts.append(f"{counts[DIVERGENCE]} DIVERGED")
    return ", ".join(parts)


def _fmt_value(value: Any) -> str:
    """A config value on one line: dicts as k=v, lists comma-joined, None as "none"."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt_value(v) for v in value) or "-"
    return str(value)


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """A GitHub Markdown table; the columns whose indexes are in ``right`` are right-aligned.

    Example: md_table(["a", "n"], [["x", 1]], right=[1]) == "| a | n |\n| --- | ---: |\n| x | 1 |".
    """
    right = set(right)
    align = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_cells(row: dict, brackets: str = "()") -> list[str]:
    """One summary row's cells, in SUMMARY_HEADERS order (shared by Markdown and terminal)."""
    return [
        str(row.get("task", "-")),
        str(row.get("method", "-")),
        fmt_speedup(row.get("speedup"), row.get("speedup_min"), row.get("speedup_max"), brackets),
        fmt_speedup(row.get("speedup_median")),
        fmt_num(row.get("mean_accepted_length")),
        fmt_pct(row.get("acceptance_rate")),
        fmt_num(row.get("tokens_per_second"), 1),
        fmt_checks(row.get("checks")),
        fmt_output(row),
    ]


def fmt_output(row: dict) -> str:
    """Whether a row's output is the target's own, or how far a lossy acceptance rule moved it:
    'target's' or 'LOSSY: TV 0.031/token' (verifiers/typical.py)."""
    if row.get("lossless", True):
        return "target's"
    tv = _num(row.get("tv_per_token"))
    return "LOSSY" + (f": TV {tv:.3f}/token" if tv is not None else "")


# ---------------------------------------------------------------------------------------------
# Aggregates the report needs beyond the summary


def check_counts(results: dict) -> dict[str, Counter]:
    """Equality-check counts per method: from samples when there are any (plus "unchecked" for
    speculative samples without a check), else from the summary's ``checks``."""
    samples = _rows(results, "samples")
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
    for row in _rows(results, "summary"):
        checks = row.get("checks")
        if isinstance(checks, dict):
            counter = counts.setdefault(str(row.get("method")), Counter())
            for kind, n in checks.items():
                counter[str(kind)] += int(_num(n) or 0)
    return counts


def divergent_samples(results: dict) -> list[dict]:
    """Samples whose check found a real divergence (the lossless guarantee failed)."""
    return [s for s in _rows(results, "samples")
            if isinstance(s.get("check"), dict) and s["check"].get("result") == DIVERGENCE]


def _divergence_total(results: dict) -> int:
    return sum(c.get(DIVERGENCE, 0) for c in check_counts(results).values())


def peer_groups(results: dict) -> list[dict]:
    """One dict per (peer, method) with rows, plus one per peer that has a status but no rows,
    so a peer that could not run is always listed with its reason.

    Keys: peer, method, status, runs, tps, tps_min, tps_max, speedup (geometric mean),
    speedup_min, speedup_max, equal (count True), compared (count not None).
    """
    rows = _rows(results, "peers")
    status = results.get("peer_status") if isinstance(results.get("peer_status"), dict) else {}
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        grouped.setdefault((str(r.get("peer")), str(r.get("method"))), []).append(r)
    out = []
    for peer in _ordered(list(status), (r.get("peer") for r in rows)):
        peer_status = str(status.get(peer, "unknown (no peer_status entry)"))
        methods = [m for (p, m) in grouped if p == peer]
        if not methods:
            out.append({"peer": peer, "method": None, "status": peer_status, "runs": 0})
        for method in methods:
            group = grouped[(peer, method)]
            tps = [v for v in (_num(r.get("tokens_per_second")) for r in group) if v is not None]
            speedups = [v for v in (_num(r.get("speedup")) for r in group) if v is not None]
            equal = [r.get("equal_to_reference") for r in group if r.get("equal_to_reference") is not None]
            out.append({
                "peer": peer, "method": method, "status": peer_status, "runs": len(group),
                "tps": _median(tps), "tps_min": min(tps, default=None), "tps_max": max(tps, default=None),
                "speedup": geometric_mean(map(_num, speedups)),
                "speedup_min": min(speedups, default=None), "speedup_max": max(speedups, default=None),
                "equal": sum(bool(e) for e in equal), "compared": len(equal),
            })
    return out


def peer_cells(group: dict, brackets: str = "()") -> list[str]:
    """One peer group's cells, in PEER_HEADERS order."""
    if group.get("method") is None:
        return [group["peer"], "-", group["status"], "0", "-", "-", "-"]
    tps = fmt_num(group.get("tps"), 1)
    if group.get("tps_min") is not None and group.get("tps_max") is not None:
        tps += f" {brackets[0]}{group['tps_min']:.1f}-{group['tps_max']:.1f}{brackets[1]}"
    equal = f"{group['equal']}/{group['compared']}" if group.get("compared") else "-"
    return [group["peer"], group["method"], group["status"], str(group["runs"]), tps,
            fmt_speedup(group.get("speedup"), group.get("speedup_min"), group.get("speedup_max"), brackets),
            equal]


def calibration_rows(results: dict) -> list[dict]:
    """Rows {k, median_ms, min_ms, max_ms, relative} from calibration["target"]; relative is
    taken from the data, or computed against k=1 (the first k if there is no k=1)."""
    calibration = results.get("calibration")
    target = calibration.get("target") if isinstance(calibration, dict) else None
    if not isinstance(target, dict):
        return []
    ks = target.get("k") if isinstance(target.get("k"), list) else []
    med, lo, hi, rel = (_floats(target.get(key)) for key in ("median_s", "min_s", "max_s", "relative"))
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
    token_s = _num(draft.get("token_s")) if isinstance(draft, dict) else None
    rows = calibration_rows(results)
    base = rows[0]["base_s"] if rows else None
    if token_s is None or not base:
        return None
    return token_s, token_s / base


# ---------------------------------------------------------------------------------------------
# Terminal tables


def summary_table(results: dict) -> Table:
    """The terminal summary: one row per summary entry, speedups coloured against 1.0."""
    table = Table(title="quickdraft bench: speedup over plain decoding (same run); "
                  "tau = mean accepted length, accept = acceptance rate")
    for i, header in enumerate(TERMINAL_HEADERS):
        table.add_column(Text(header), justify="right" if 2 <= i < 7 else "left", no_wrap=i < 7)
    rows = _rows(results, "summary")
    for row in rows:
        cells = summary_cells(row, brackets="[]")
        texts = cells[:7] + [fmt_checks_short(row.get("checks")), cells[8]]
        cells = [Text(c) for c in texts]
        speedup = _num(row.get("speedup"))
        if speedup is not None and row.get("method") != AR_METHOD:
            cells[2].stylize("green" if speedup >= 1 else "red")
        if "DIVERGED" in cells[7].plain:
            cells[7].stylize("bold red")
        if "LOSSY" in cells[8].plain:
            cells[8].stylize("bold yellow")
        table.add_row(*cells)
    if not rows:
        table.caption = f"no summary yet ({len(_rows(results, 'samples'))} samples recorded)"
    elif _divergence_total(results):
        table.caption = "[bold red]REAL DIVERGENCE: speculative output differed from plain decoding[/]"
    return table


def peer_table(results: dict) -> Table | None:
    """Peers (llama-cpp-python, HF assisted generation) per method, with each peer's status;
    None when the results have neither peer rows nor peer statuses."""
    groups = peer_groups(results)
    if not groups:
        return None
    table = Table(title="peers on the same prompts: speedup vs each peer's own plain generation; "
                  "equal = outputs equal to the AR reference")
    for i, header in enumerate(TERMINAL_PEER_HEADERS):
        table.add_column(Text(header), justify="right" if i >= 3 else "left", no_wrap=i in (3, 4, 5))
    for group in groups:
        cells = [Text(c) for c in peer_cells(group, brackets="[]")]
        if not str(group["status"]).startswith("ok"):
            cells[2].stylize("yellow")
        table.add_row(*cells)
    return table


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib Figure objects, no pyplot state)


def _figure(width: float = 8.0, height: float = 4.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="tight")


def _colors(names: Sequence[str]) -> dict[str, Any]:
    """A stable colour per name (tab10), so a method keeps its colour across plots."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _grouped_bars(ax, groups: Sequence[str], series: Sequence[str], colors: dict,
                  value: Callable[[str, str], float | None],
                  error: Callable[[str, str], tuple[float | None, float | None]] | None = None,
                  label_fmt: str = "{:.2f}") -> None:
    """Bars at x = group, one per series; missing values leave a gap. ``error`` gives (low, high)."""
    width = 0.8 / max(len(series), 1)
    for j, name in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        heights = [value(g, name) for g in groups]
        ys = [math.nan if h is None else h for h in heights]
        yerr = None
        if error is not None:
            below, above = [], []
            for g, h in zip(groups, heights):
                low, high = error(g, name)
                below.append(0.0 if h is None or low is None else max(h - low, 0.0))
                above.append(0.0 if h is None or high is None else max(high - h, 0.0))
            yerr = [below, above]
        ax.bar(xs, ys, width * 0.95, label=name, color=colors.get(name), yerr=yerr,
               capsize=3, error_kw={"elinewidth": 1, "alpha": 0.8})
        tops = [None if h is None else h + (yerr[1][i] if yerr else 0.0) for i, h in enumerate(heights)]
        _value_labels(ax, xs, tops, ["" if h is None else label_fmt.format(h) for h in heights])
    ax.set_xticks(range(len(groups)), groups)


def _value_labels(ax, xs: Sequence[float], tops: Sequence[float | None], labels: Sequence[str]) -> None:
    """Write each label just above its bar (or error bar) and leave headroom for it."""
    for x, top, label in zip(xs, tops, labels):
        if top is not None and label:
            ax.annotate(label, (x, top), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
    finite = [t for t in tops if t is not None]
    if finite:
        ax.set_ylim(0, max(max(finite) * 1.12, ax.get_ylim()[1]))


def plot_speedup(results: dict):
    """Grouped bars of summary speedup (geometric mean) per task and method, min-max error bars."""
    return _summary_bars(
        results, "speedup", with_ar=True, error_keys=("speedup_min", "speedup_max"), label_fmt="{:.2f}x",
        line_label="plain decoding", ylabel="speedup over plain decoding (x)",
        title="Speedup over plain decoding per task\n(geometric mean over prompts; error bars: min-max)")


def plot_accepted_length(results: dict):
    """Grouped bars of mean accepted length (tokens per target forward) per task and method."""
    return _summary_bars(
        results, "mean_accepted_length", with_ar=False, line_label="plain decoding (1 token)",
        ylabel="tokens per target forward (bonus included)", title="Mean accepted length per task")


def _summary_bars(results: dict, key: str, *, with_ar: bool, line_label: str, ylabel: str, title: str,
                  error_keys: tuple[str, str] | None = None, label_fmt: str = "{:.2f}"):
    """Grouped bars of summary ``key`` per task and method with a reference line at 1.0 (None
    when no row has the value). ``with_ar``: include the ``ar`` rows."""
    rows = [r for r in _rows(results, "summary") if with_ar or r.get("method") != AR_METHOD]
    if not any(_num(r.get(key)) is not None for r in rows):
        return None
    index = _summary_index(results)
    tasks = _tasks(results, rows)
    methods = [m for m in _methods(results, rows) if with_ar or m != AR_METHOD]
    colors = _colors(_methods(results, _rows(results, "summary")))
    fig = _figure(max(7.5, 2.5 + 0.6 * len(tasks) * max(len(methods), 1)), 4.5)
    ax = fig.subplots()
    value = lambda t, m: _num(index.get((t, m), {}).get(key))  # noqa: E731
    errors = None if error_keys is None else (
        lambda t, m: tuple(_num(index.get((t, m), {}).get(k)) for k in error_keys))
    _grouped_bars(ax, tasks, methods, colors, value, errors, label_fmt=label_fmt)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label=line_label)
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.15))
    ax.set_xlabel("task")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_acceptance_by_position(results: dict):
    """A line per (task, method): acceptance rate at each draft position (1-based)."""
    rows = [r for r in _rows(results, "summary") if _floats(r.get("acceptance_by_position"))]
    if not rows:
        return None
    tasks = _tasks(results, rows)
    colors = _colors(_methods(results, _rows(results, "summary")))
    styles = ["-", "--", ":", "-."]
    fig = _figure(7.5, 4.5)
    ax = fig.subplots()
    longest = 1
    for row in rows:
        ys = [math.nan if v is None else v for v in _floats(row["acceptance_by_position"])]
        longest = max(longest, len(ys))
        task = str(row.get("task"))
        ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=4,
                color=colors.get(str(row.get("method"))),
                linestyle=styles[tasks.index(task) % len(styles)] if task in tasks else "-",
                label=f"{task} / {row.get('method')}")
    ax.set_xticks(range(1, longest + 1))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("draft position (1 = first drafted token)")
    ax.set_ylabel("acceptance rate")
    ax.set_title("Acceptance by draft position")
    ax.legend(title="task / method", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return fig


def plot_verify_cost(results: dict):
    """Relative target forward time vs k new tokens, with y = k and y = 1 references."""
    rows = [r for r in calibration_rows(results) if _num(r["k"]) is not None and r["relative"] is not None]
    if not rows:
        return None
    ks = [float(r["k"]) for r in rows]
    rel = [r["relative"] for r in rows]
    base_ms = 1e3 * rows[0]["base_s"] if rows[0]["base_s"] else None
    fig = _figure(7.5, 4.5)
    ax = fig.subplots()
    if base_ms and all(r["min_ms"] is not None and r["max_ms"] is not None for r in rows):
        ax.fill_between(ks, [r["min_ms"] / base_ms for r in rows], [r["max_ms"] / base_ms for r in rows],
                        alpha=0.25, color="tab:blue", label="min-max")
    ax.plot(ks, rel, marker="o", color="tab:blue", label="target forward (median)")
    ax.plot(ks, ks, linestyle="--", color="gray", label="k sequential single-token steps (y = k)")
    ax.axhline(1.0, linestyle=":", color="black", label="one single-token step (y = 1)")
    cost = draft_cost(results)
    if cost is not None:
        token_s, fraction = cost
        ax.text(0.98, 0.97, f"draft model: {1e3 * token_s:.2f} ms per token\n"
                f"= {fraction:.2f} of a target single-token step",
                transform=ax.transAxes, ha="right", va="top", fontsize=9,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
    calibration = results.get("calibration") or {}
    context = calibration.get("context_tokens")
    ax.set_xlabel("k new tokens in one target forward")
    ax.set_ylabel("time relative to a single-token forward")
    title = "Verify cost: one forward over k tokens"
    ax.set_title(title + (f" (context {context} tokens)" if context is not None else ""))
    ax.set_ylim(bottom=0, top=max(max(rel), 1.0) * 1.5 if max(ks) > max(rel) * 1.5 else None)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def _gap(value: float | None, bound: Any) -> float:
    """Error-bar length from ``value`` to ``bound`` (0 when either is missing)."""
    bound = _num(bound)
    return 0.0 if value is None or bound is None else abs(bound - value)


def plot_peers(results: dict):
    """Two panels per peer+method: tokens/s (median, min-max) and speedup vs its own baseline."""
    groups = [g for g in peer_groups(results) if g.get("method") is not None]
    if not groups:
        return None
    labels = [f"{g['peer']}\n{g['method']}" for g in groups]
    colors = _colors(_ordered([], (g["method"] for g in groups)))
    bar_colors = [colors[g["method"]] for g in groups]
    fig = _figure(max(8.0, 1.2 * len(groups) * 2), 4.5)
    left, right = fig.subplots(1, 2)

    def panel(ax, key: str, ylabel: str, title: str, fmt: str) -> None:
        values = [_num(g.get(key)) for g in groups]
        ys = [math.nan if v is None else v for v in values]
        below = [_gap(v, g.get(key + "_min")) for v, g in zip(values, groups)]
        above = [_gap(v, g.get(key + "_max")) for v, g in zip(values, groups)]
        ax.bar(range(len(groups)), ys, color=bar_colors, yerr=[below, above], capsize=3)
        _value_labels(ax, range(len(groups)), [None if v is None else v + a for v, a in zip(values, above)],
                      ["" if v is None else fmt.format(v) for v in values])
        ax.set_xticks(range(len(groups)), labels, fontsize=8)
        ax.set_xlabel("peer / method")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)

    panel(left, "tps", "tokens / s (median; bars: min-max)", "Peer throughput", "{:.1f}")
    panel(right, "speedup", "speedup (x)", "Peer speedup vs its own plain generation", "{:.2f}x")
    right.axhline(1.0, color="black", linestyle="--", linewidth=1, label="peer's plain generation")
    right.set_ylim(0, max(right.get_ylim()[1], 1.15))
    right.legend(fontsize=8)
    return fig


def plot_specs() -> list[tuple[str, str, Callable]]:
    """(file name, caption, builder) for every plot; a builder returns None when its data is missing."""
    return [
        ("speedup.png", "Speedup over plain decoding", plot_speedup),
        ("accepted_length.png", "Mean accepted length", plot_accepted_length),
        ("acceptance_by_position.png", "Acceptance by draft position", plot_acceptance_by_position),
        ("verify_cost.png", "Verify cost vs k", plot_verify_cost),
        ("peers.png", "Peers", plot_peers),
    ]


def write_plots(results: dict, out_dir: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Write every plot that has data; returns ([(caption, path)], [notes on plots not written])."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [], ["matplotlib is not installed (pip install 'quickdraft[bench]'): no plots"]
    written, notes = [], []
    for name, caption, build in plot_specs():
        try:
            fig = build(results)
            if fig is None:
                notes.append(f"`{name}`: not drawn, no data for it in these results")
                continue
            path = out_dir / name
            fig.savefig(path, dpi=DPI)
            written.append((caption, path))
        except Exception as error:  # a malformed optional section must not lose the report
            notes.append(f"`{name}`: FAILED ({type(error).__name__}: {error})")
    return written, notes


# ---------------------------------------------------------------------------------------------
# report.md sections (each returns Markdown lines)


CONFIG_ORDER = ("models", "target", "draft", "tasks", "methods", "max_tokens", "repeat", "repeats",
                "limit", "num_draft", "temperature", "warm", "date", "system")


def machine_line(config: dict) -> str:
    """'AMD EPYC (2 cores), llama-cpp-python 0.3.36, native build for ..., 2 threads' from the
    ``system`` a run recorded (or its older free-text ``machine``)."""
    system = config.get("system")
    if not isinstance(system, dict):
        return str(config.get("machine") or "")
    cpu = system.get("cpu") or {}
    return (f"{cpu.get('model', '?')} ({cpu.get('cores', '?')} cores; {' '.join(cpu.get('instruction_sets', []))}), "
            f"{system.get('build', '?')}, {system.get('threads', '?')} threads")


def section_state(results: dict) -> list[str]:
    """What every sample started from: the honest-bench statement, and what came from disk."""
    config = _config(results)
    system = config.get("system") if isinstance(config.get("system"), dict) else {}
    lines = ["## How the samples ran", "",
             "Every sample started from a fresh engine memory, the state a new user's engine has: no suffix "
             "store of earlier outputs, no learned acceptance or costs (cold). Methods ran back to back per "
             "prompt-turn, in an order rotated per repeat."]
    if config.get("warm"):
        lines.append("Rows named `<method> (warm)` ran the same method after the task's earlier prompt-turns, in "
                     "order, with one memory per task, method and repeat fed only by those warm runs: what a server "
                     "that had answered them would know. No prompt-turn ever followed itself.")
    if system.get("cost_curve"):
        curve = ", ".join(f"{c:.2f}" for c in system["cost_curve"][:9])
        draft = f"; the draft model's token cost {system['draft_cost']:.2f} of a step" if system.get("draft_cost") else ""
        lines.append(f"From the calibration cache (measured on this CPU and build): the target's forward cost "
                     f"for 1..9 new tokens relative to one, {curve}{draft}. The target's KV cache kept the prompt "
                     f"prefix between samples, which only prefill time sees (speedups are decode time).")
    return lines + [""]


def section_repeats(results: dict) -> list[str]:
    """Every repeat's speedup, per prompt-turn and method."""
    samples = [s for s in _rows(results, "samples") if s.get("method") != AR_METHOD]
    if not samples:
        return []
    by_unit: dict[tuple, dict[str, list]] = {}
    for s in samples:
        unit = (s.get("task"), s.get("prompt_id"), s.get("turn"))
        by_unit.setdefault(unit, {}).setdefault(str(s.get("method")), []).append((s.get("repeat"), s.get("speedup")))
    methods = _methods(results, samples)
    rows = [[f"{task} {pid}" + (f" turn {turn + 1}" if turn else ""),
             *(" / ".join(fmt_num(v) for _, v in sorted(by_unit[unit].get(m, []), key=lambda rv: rv[0] or 0))
               or "-" for m in methods)]
            for unit in by_unit for task, pid, turn in [unit]]
    return ["## Every repeat", "", "Speedup of each repeat (repeat 0 first), per prompt-turn.", "",
            md_table(("prompt-turn", *methods), rows), ""]


def section_config(results: dict) -> list[str]:
    config = _config(results)
    if not config:
        return ["## Configuration", "", "_No `config` in these results._", ""]
    keys = [k for k in CONFIG_ORDER if k in config] + [k for k in config if k not in CONFIG_ORDER]
    return ["## Configuration", ""] + [f"- **{k}**: {_md_cell(_fmt_value(config[k]))}" for k in keys] + [""]


def section_missing(results: dict) -> list[str]:
    """What a partial run lacks, said once near the top."""
    missing = []
    if not _config(results):
        missing.append("`config`")
    if not _rows(results, "samples"):
        missing.append("`samples`")
    if not _rows(results, "summary"):
        missing.append("`summary` (no per-task metrics yet)")
    if not calibration_rows(results):
        missing.append("`calibration` (verify cost curve)")
    elif draft_cost(results) is None:
        missing.append("`calibration.draft` (draft model cost)")
    if not peer_groups(results):
        missing.append("`peers` (no peer comparison)")
    if not missing:
        return []
    return ["> **Partial results.** Missing: " + "; ".join(missing) + ".", ""]


def section_divergence_warning(results: dict) -> list[str]:
    total = _divergence_total(results)
    if not total:
        return []
    return [f"> **WARNING: {total} REAL DIVERGENCE(S).** Speculative output differed from plain "
            "decoding beyond the near-tie tolerance: the lossless guarantee failed. "
            "See *Equality checks* below.", ""]


def section_summary(results: dict) -> list[str]:
    rows = _rows(results, "summary")
    lines = ["## Summary", ""]
    if rows:
        lines += ["Speedup is AR time / speculative time on the same prompts in the same run: "
                  "geometric mean over prompt-turn units of each unit's median over repeats "
                  "(min-max over units). tok/s is the median over samples. Output: the target's own "
                  "(a lossless acceptance rule), or LOSSY with how far it moved from plain sampling: the "
                  "total variation distance between the distribution each token was emitted from and "
                  "the target's, per token (the expected share of tokens that part from a plain sample "
                  "coupled as closely as possible; summed over an answer, a bound on its distance).", "",
                  md_table(SUMMARY_HEADERS, [summary_cells(r) for r in rows], right=range(2, 7)), ""]
        return lines
    samples = _rows(results, "samples")
    lines += ["_No summary yet._"]
    if samples:
        counts = Counter((str(s.get("task")), str(s.get("method"))) for s in samples)
        units = {key: len({(s.get("prompt_id"), s.get("turn")) for s in samples
                           if (str(s.get("task")), str(s.get("method"))) == key}) for key in counts}
        lines += [f" {len(samples)} samples recorded so far:", "",
                  md_table(("task", "method", "samples", "prompt-turn units"),
                           [(t, m, n, units[(t, m)]) for (t, m), n in counts.items()], right=(2, 3))]
    return lines + [""]


def section_acceptance_by_position(results: dict) -> list[str]:
    rows = [r for r in _rows(results, "summary") if _floats(r.get("acceptance_by_position"))]
    if not rows:
        return ["## Acceptance by draft position", "", "_No acceptance-by-position data._", ""]
    lines = ["## Acceptance by draft position", "",
             "Fraction of steps whose drafted token at position i was accepted.", ""]
    for task in _tasks(results, rows):
        task_rows = [r for r in rows if str(r.get("task")) == task]
        width = max(len(_floats(r["acceptance_by_position"])) for r in task_rows)
        table = []
        for r in task_rows:
            values = _floats(r["acceptance_by_position"])
            padded = [fmt_pct(values[i]) if i < len(values) else "-" for i in range(width)]
            table.append([str(r.get("method"))] + padded)
        headers = ["method"] + [str(i + 1) for i in range(width)]
        lines += [f"### {task}", "", md_table(headers, table, right=range(1, width + 1)), ""]
    return lines


def section_calibration(results: dict) -> list[str]:
    rows = calibration_rows(results)
    lines = ["## Verify cost (calibration)", ""]
    if not rows:
        return lines + ["_No calibration in these results._", ""]
    calibration = results["calibration"]
    if calibration.get("context_tokens") is not None:
        lines += [f"One target forward over k new tokens after {calibration['context_tokens']} "
                  "context tokens; relative = median / median at k = 1.", ""]
    lines += [md_table(("k", "median ms", "min ms", "max ms", "relative"),
                       [(r["k"], fmt_num(r["median_ms"]), fmt_num(r["min_ms"]), fmt_num(r["max_ms"]),
                         fmt_num(r["relative"])) for r in rows], right=range(5)), ""]
    cost = draft_cost(results)
    if cost is None:
        lines += ["Draft model cost: not measured.", ""]
    else:
        lines += [f"Draft model: {1e3 * cost[0]:.2f} ms per token = {cost[1]:.2f} of a target "
                  "single-token step.", ""]
    return lines


def section_peers(results: dict) -> list[str]:
    groups = peer_groups(results)
    lines = ["## Peers", ""]
    if not groups:
        return lines + ["_No peers in these results._", ""]
    lines += ["Each peer's speedup is against its own plain generation on the same prompts; "
              "equal to reference counts outputs identical to quickdraft's AR reference.", "",
              md_table(PEER_HEADERS, [peer_cells(g) for g in groups], right=range(3, 7)), ""]
    not_ok = [g for g in groups if not str(g["status"]).startswith("ok")]
    for g in {g["peer"]: g for g in not_ok}.values():
        lines.append(f"- **{g['peer']}** did not run normally: {_md_cell(g['status'])}")
    return lines + ([""] if not_ok else [])


def section_checks(results: dict) -> list[str]:
    counts = check_counts(results)
    lines = ["## Equality checks", ""]
    if not counts:
        return lines + ["_No equality checks recorded._", ""]
    kinds = _ordered(CHECK_KINDS, (k for c in counts.values() for k in c))
    lines += ["Each speculative output compared with plain decoding of the same prompt: *exact*, "
              "*near-tie* (differs where the target's top logits tie within tolerance), or "
              "*real divergence*.", "",
              md_table(["method"] + kinds, [[m] + [c.get(k, 0) for k in kinds] for m, c in counts.items()],
                       right=range(1, len(kinds) + 1)), ""]
    bad = divergent_samples(results)
    if bad or _divergence_total(results):
        lines += [f"**WARNING: {_divergence_total(results)} REAL DIVERGENCE(S).**", ""]
        for s in bad[:20]:
            check = s["check"]
            detail = check.get("summary") or f"real divergence at token {check.get('index')}"
            lines.append(f"- {s.get('task')} / prompt {s.get('prompt_id')} turn {s.get('turn')} "
                         f"repeat {s.get('repeat')} / {s.get('method')}: {_md_cell(detail)}")
        if len(bad) > 20:
            lines.append(f"- ... and {len(bad) - 20} more")
        lines.append("")
    return lines


def section_validity(results: dict) -> list[str]:
    """Structured output: per task and method, the answers valid against their JSON schema."""
    rows = [r for r in _rows(results, "summary") if r.get("constrained")]
    if not rows:
        return []
    return ["## Structured output", "", "Answers constrained to a JSON schema (the prompt's), and how many are "
            "valid against it (an answer cut by max_tokens is not).", "",
            md_table(["task", "method", "valid"], [[r["task"], r["method"], f"{r['valid']}/{r['constrained']}"]
                                                  for r in rows], right=[2]), ""]


def section_plots(written: Sequence[tuple[str, Path]], notes: Sequence[str]) -> list[str]:
    lines = ["## Plots", ""]
    for caption, path in written:
        lines += [f"![{caption}]({path.name})", ""]
    lines += [f"- {note}" for note in notes]
    return lines + ([""] if notes else [])


def render_markdown(results: dict, written: Sequence[tuple[str, Path]] = (),
                    notes: Sequence[str] = ()) -> str:
    """The whole report.md text (plots referenced by file name, relative to report.md)."""
    config = _config(results)
    lines = ["# quickdraft benchmark report", ""]
    if config.get("date") is not None:
        machine = machine_line(config)
        lines += [f"Run of {config['date']}" + (f" on {machine}." if machine else "."), ""]
    lines += section_divergence_warning(results) + section_missing(results)
    for section in (section_config, section_state, section_summary, section_repeats,
                    section_acceptance_by_position, section_checks, section_validity, section_calibration,
                    section_peers):
        lines += section(results)
    lines += section_plots(written, notes)
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: dict, out_dir: Path) -> list[Path]:
    """Write out_dir/report.md and the plots that have data; returns the paths written
    (report.md first). Works on partial results and names what is missing in report.md."""
    results = results if isinstance(results, dict) else {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, notes = write_plots(results, out_dir)
    report = out_dir / "report.md"
    report.write_text(render_markdown(results, written, notes), encoding="utf-8")
    return [report] + [path for _, path in written]
