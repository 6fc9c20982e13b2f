"""The bench's plots (matplotlib Figure objects, no pyplot state), each a pure function of a
results dict that returns None when its data is missing; :func:`write_plots` writes those that
have data. matplotlib (the ``bench`` extra) is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .metrics import AR_METHOD
from .views import (calibration_rows, draft_cost, methods_in, number, numbers,
                    ordered, peer_groups, result_rows, summary_index, tasks_in)

DPI = 120
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



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
    rows = [r for r in result_rows(results, "summary") if with_ar or r.get("method") != AR_METHOD]
    if not any(number(r.get(key)) is not None for r in rows):
        return None
    index = summary_index(results)
    tasks = tasks_in(results, rows)
    methods = [m for m in methods_in(results, rows) if with_ar or m != AR_METHOD]
    colors = _colors(methods_in(results, result_rows(results, "summary")))
    fig = _figure(max(7.5, 2.5 + 0.6 * len(tasks) * max(len(methods), 1)), 4.5)
    ax = fig.subplots()
    value = lambda t, m: number(index.get((t, m), {}).get(key))  # noqa: E731
    errors = None if error_keys is None else (
        lambda t, m: tuple(number(index.get((t, m), {}).get(k)) for k in error_keys))
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
    rows = [r for r in result_rows(results, "summary") if numbers(r.get("acceptance_by_position"))]
    if not rows:
        return None
    tasks = tasks_in(results, rows)
    colors = _colors(methods_in(results, result_rows(results, "summary")))
    styles = ["-", "--", ":", "-."]
    fig = _figure(7.5, 4.5)
    ax = fig.subplots()
    longest = 1
    for row in rows:
        ys = [math.nan if v is None else v for v in numbers(row["acceptance_by_position"])]
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
    rows = [r for r in calibration_rows(results) if number(r["k"]) is not None and r["relative"] is not None]
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
    bound = number(bound)
    return 0.0 if value is None or bound is None else abs(bound - value)


def plot_peers(results: dict):
    """Two panels per peer+method: tokens/s (median, min-max) and speedup vs its own baseline."""
    groups = [g for g in peer_groups(results) if g.get("method") is not None]
    if not groups:
        return None
    labels = [f"{g['peer']}\n{g['method']}" for g in groups]
    colors = _colors(ordered([], (g["method"] for g in groups)))
    bar_colors = [colors[g["method"]] for g in groups]
    fig = _figure(max(8.0, 1.2 * len(groups) * 2), 4.5)
    left, right = fig.subplots(1, 2)

    def panel(ax, key: str, ylabel: str, title: str, fmt: str) -> None:
        values = [number(g.get(key)) for g in groups]
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
