"""Turn a results.json (schema in ``quickdraft.bench``) into report.md, PNG plots and terminal tables.

Everything here is a pure function of the results dict (read through views.py), so a report can
be rebuilt from any results.json, including an interrupted run's: every section is optional, and
a missing one is named in report.md instead of raising. The plots are plots.py's; without
matplotlib (the ``bench`` extra) report.md is still written and says the plots were skipped.

Words: a *unit* is one (task, prompt_id, turn); *speedup* is AR time / speculative time for the
same tokens (docs/design.md); ``ar`` is plain decoding, the 1.0 line in every speedup plot.

Example::

    results = json.loads(Path("results.json").read_text())
    paths = write_report(results, Path("bench-out"))   # [bench-out/report.md, bench-out/speedup.png, ...]
    rich.print(summary_table(results))
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from .metrics import AR_METHOD, CHECK_KINDS
from .plots import write_plots
from .views import (DIVERGENCE, calibration_rows, check_counts, config_of, divergence_total, divergent_samples,
                    draft_cost, draft_sources, methods_in, number, numbers, ordered, peer_groups, result_rows, tasks_in)


SUMMARY_HEADERS = ("task", "method", "speedup (geo mean, min-max)", "median",
                   "mean accepted length", "acceptance rate", "tok/s", "checks", "output")
TERMINAL_HEADERS = ("task", "method", "speedup [min-max]", "median", "tau", "accept", "tok/s", "checks", "output")
TERMINAL_PEER_HEADERS = ("peer", "method", "status", "runs", "tok/s [min-max]", "speedup [min-max]", "equal")
PEER_HEADERS = ("peer", "method", "status", "runs", "tok/s (median, min-max)",
                "speedup vs own baseline", "equal to reference")


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_speedup(value: Any, low: Any = None, high: Any = None, brackets: str = "()") -> str:
    """Example: fmt_speedup(1.234, 0.95, 1.5) == "1.23x (0.95-1.50)"; None gives "-"."""
    v, lo, hi = number(value), number(low), number(high)
    if v is None:
        return "-"
    text = f"{v:.2f}x"
    if lo is not None and hi is not None:
        text += f" {brackets[0]}{lo:.2f}-{hi:.2f}{brackets[1]}"
    return text


def fmt_pct(value: Any) -> str:
    """A fraction as a percentage: fmt_pct(0.7834) == "78.3%"; None gives "-"."""
    v = number(value)
    return "-" if v is None else f"{100 * v:.1f}%"


def fmt_num(value: Any, digits: int = 2) -> str:
    v = number(value)
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_checks(checks: Any) -> str:
    """Example: {"exact": 5, "near-tie": 1, "real divergence": 0} -> "5 exact, 1 near-tie"."""
    if not isinstance(checks, dict):
        return "-"
    parts = []
    for kind in ordered(CHECK_KINDS, checks):
        count = int(number(checks.get(kind)) or 0)
        if count:
            parts.append(f"{count} {kind.upper() if kind == DIVERGENCE else kind}")
    return ", ".join(parts) or "-"


def fmt_checks_short(checks: Any) -> str:
    """The terminal's compact form: {"exact": 3, "near-tie": 1} -> "3/4 exact, 1 tie";
    any real divergence shows as "N DIVERGED"."""
    if not isinstance(checks, dict):
        return "-"
    counts = {str(k): int(number(v) or 0) for k, v in checks.items()}
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
    tv = number(row.get("tv_per_token"))
    return "LOSSY" + (f": TV {tv:.3f}/token" if tv is not None else "")


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


# ---------------------------------------------------------------------------------------------
# Terminal tables


def summary_table(results: dict) -> Table:
    """The terminal summary: one row per summary entry, speedups coloured against 1.0."""
    table = Table(title="quickdraft bench: speedup over plain decoding (same run); "
                  "tau = mean accepted length, accept = acceptance rate")
    for i, header in enumerate(TERMINAL_HEADERS):
        table.add_column(Text(header), justify="right" if 2 <= i < 7 else "left", no_wrap=i < 7)
    rows = result_rows(results, "summary")
    for row in rows:
        cells = summary_cells(row, brackets="[]")
        texts = cells[:7] + [fmt_checks_short(row.get("checks")), cells[8]]
        cells = [Text(c) for c in texts]
        speedup = number(row.get("speedup"))
        if speedup is not None and row.get("method") != AR_METHOD:
            cells[2].stylize("green" if speedup >= 1 else "red")
        if "DIVERGED" in cells[7].plain:
            cells[7].stylize("bold red")
        if "LOSSY" in cells[8].plain:
            cells[8].stylize("bold yellow")
        table.add_row(*cells)
    if not rows:
        table.caption = f"no summary yet ({len(result_rows(results, 'samples'))} samples recorded)"
    elif divergence_total(results):
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
    config = config_of(results)
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
        cost = system.get("draft_cost")
        draft = f"; the draft model's token cost {cost:.2f} of a step" if cost else ""
        lines.append(f"From the calibration cache (measured on this CPU and build): the target's forward cost "
                     f"for 1..9 new tokens relative to one, {curve}{draft}. The target's KV cache kept the prompt "
                     f"prefix between samples, which only prefill time sees (speedups are decode time).")
    return lines + [""]


def section_repeats(results: dict) -> list[str]:
    """Every repeat's speedup, per prompt-turn and method."""
    samples = [s for s in result_rows(results, "samples") if s.get("method") != AR_METHOD]
    if not samples:
        return []
    by_unit: dict[tuple, dict[str, list]] = {}
    for s in samples:
        unit = (s.get("task"), s.get("prompt_id"), s.get("turn"))
        by_unit.setdefault(unit, {}).setdefault(str(s.get("method")), []).append((s.get("repeat"), s.get("speedup")))
    methods = methods_in(results, samples)
    rows = [[f"{task} {pid}" + (f" turn {turn + 1}" if turn else ""),
             *(" / ".join(fmt_num(v) for _, v in sorted(by_unit[unit].get(m, []), key=lambda rv: rv[0] or 0))
               or "-" for m in methods)]
            for unit in by_unit for task, pid, turn in [unit]]
    return ["## Every repeat", "", "Speedup of each repeat (repeat 0 first), per prompt-turn.", "",
            md_table(("prompt-turn", *methods), rows), ""]


def section_config(results: dict) -> list[str]:
    config = config_of(results)
    if not config:
        return ["## Configuration", "", "_No `config` in these results._", ""]
    keys = [k for k in CONFIG_ORDER if k in config] + [k for k in config if k not in CONFIG_ORDER]
    return ["## Configuration", ""] + [f"- **{k}**: {_md_cell(_fmt_value(config[k]))}" for k in keys] + [""]


def section_missing(results: dict) -> list[str]:
    """What a partial run lacks, said once near the top."""
    missing = []
    if not config_of(results):
        missing.append("`config`")
    if not result_rows(results, "samples"):
        missing.append("`samples`")
    if not result_rows(results, "summary"):
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
    total = divergence_total(results)
    if not total:
        return []
    return [f"> **WARNING: {total} REAL DIVERGENCE(S).** Speculative output differed from plain "
            "decoding beyond the near-tie tolerance: the lossless guarantee failed. "
            "See *Equality checks* below.", ""]


def section_summary(results: dict) -> list[str]:
    rows = result_rows(results, "summary")
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
    samples = result_rows(results, "samples")
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
    rows = [r for r in result_rows(results, "summary") if numbers(r.get("acceptance_by_position"))]
    if not rows:
        return ["## Acceptance by draft position", "", "_No acceptance-by-position data._", ""]
    lines = ["## Acceptance by draft position", "",
             "Fraction of steps whose drafted token at position i was accepted.", ""]
    for task in tasks_in(results, rows):
        task_rows = [r for r in rows if str(r.get("task")) == task]
        width = max(len(numbers(r["acceptance_by_position"])) for r in task_rows)
        table = []
        for r in task_rows:
            values = numbers(r["acceptance_by_position"])
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
    kinds = ordered(CHECK_KINDS, (k for c in counts.values() for k in c))
    lines += ["Each speculative output compared with plain decoding of the same prompt: *exact*, "
              "*near-tie* (differs where the target's top logits tie within tolerance), or "
              "*real divergence*.", "",
              md_table(["method"] + kinds, [[m] + [c.get(k, 0) for k in kinds] for m, c in counts.items()],
                       right=range(1, len(kinds) + 1)), ""]
    bad = divergent_samples(results)
    if bad or divergence_total(results):
        lines += [f"**WARNING: {divergence_total(results)} REAL DIVERGENCE(S).**", ""]
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
    rows = [r for r in result_rows(results, "summary") if r.get("constrained")]
    if not rows:
        return []
    return ["## Structured output", "", "Answers constrained to a JSON schema (the prompt's), and how many are "
            "valid against it (an answer cut by max_tokens is not).", "",
            md_table(["task", "method", "valid"], [[r["task"], r["method"], f"{r['valid']}/{r['constrained']}"]
                                                  for r in rows], right=[2]), ""]


def section_sources(results: dict) -> list[str]:
    """Per task and method, the steps each draft source took (for methods that choose one per step)."""
    sources = draft_sources(results)
    if not sources:
        return []
    rows = [[task, method, ", ".join(f"{name} {steps}" for name, steps in counter.most_common()),
             f"{1 - counter['plain'] / max(sum(counter.values()), 1):.0%}"]
            for (task, method), counter in sources.items()]
    return ["## Draft sources", "", "Steps drafted by each source, summed over the samples (plain: a step "
            "without a draft), and the share of steps that drafted.", "",
            md_table(["task", "method", "steps by source", "drafted"], rows, right=[3]), ""]


def section_plots(written: Sequence[tuple[str, Path]], notes: Sequence[str]) -> list[str]:
    lines = ["## Plots", ""]
    for caption, path in written:
        lines += [f"![{caption}]({path.name})", ""]
    lines += [f"- {note}" for note in notes]
    return lines + ([""] if notes else [])


def render_markdown(results: dict, written: Sequence[tuple[str, Path]] = (),
                    notes: Sequence[str] = ()) -> str:
    """The whole report.md text (plots referenced by file name, relative to report.md)."""
    config = config_of(results)
    lines = ["# quickdraft benchmark report", ""]
    if config.get("date") is not None:
        machine = machine_line(config)
        lines += [f"Run of {config['date']}" + (f" on {machine}." if machine else "."), ""]
    lines += section_divergence_warning(results) + section_missing(results)
    for section in (section_config, section_state, section_summary, section_repeats,
                    section_acceptance_by_position, section_sources, section_checks, section_validity,
                    section_calibration, section_peers):
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
