"""report.md, plots and terminal tables from synthetic results (no models, runs in seconds)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
from rich.console import Console

pytest.importorskip("matplotlib")

from quickdraft.bench.plots import PNG_MAGIC  # noqa: E402
from quickdraft.bench.report import (  # noqa: E402
    fmt_checks,
    fmt_checks_short,
    fmt_pct,
    fmt_speedup,
    md_table,
    peer_table,
    summary_table,
    write_report,
)

TASKS = ("mt_bench", "code")
METHODS = ("ar", "draft", "ngram")
PLOTS = {"speedup.png", "accepted_length.png", "acceptance_by_position.png", "verify_cost.png", "peers.png"}
SKIP_REASON = "skipped: transformers is not installed"

# (task, method) -> (speedup, min, max, median, tau, acceptance rate, tok/s, acceptance by position)
NUMBERS = {
    ("mt_bench", "ar"): (1.0, 1.0, 1.0, 1.0, 1.0, None, 42.0, []),
    ("mt_bench", "draft"): (1.62, 1.21, 2.05, 1.60, 2.71, 0.58, 68.3, [0.82, 0.66, 0.52, 0.41]),
    ("mt_bench", "ngram"): (1.08, 0.91, 1.37, 1.05, 1.33, 0.21, 45.1, [0.34, 0.22, 0.15, 0.11, 0.08]),
    ("code", "ar"): (1.0, 1.0, 1.0, 1.0, 1.0, None, 41.5, []),
    ("code", "draft"): (2.04, 1.55, 2.61, 2.01, 3.42, 0.71, 84.9, [0.91, 0.80, 0.69, 0.58]),
    ("code", "ngram"): (1.47, 0.98, 2.30, 1.41, 2.10, 0.44, 61.0, [0.62, 0.48, 0.40, 0.33, 0.29]),
}


def sample(task: str, method: str, prompt_id: int, repeat: int, check: dict | None) -> dict:
    speedup, *_, tps, by_pos = NUMBERS[(task, method)]
    new = 128
    decode = new / tps
    return {
        "task": task, "prompt_id": prompt_id, "turn": 0, "repeat": repeat, "method": method,
        "config": {"num_draft": 4, "temperature": 0.0}, "prompt_tokens": 60, "new_tokens": new,
        "time_s": decode + 0.05, "prefill_time_s": 0.05, "decode_time_s": decode,
        "draft_time_s": 0.0 if method == "ar" else 0.2 * decode, "verify_time_s": 0.7 * decode,
        "target_forwards": new if method == "ar" else 50, "drafted_tokens": 0 if method == "ar" else 150,
        "accepted_tokens": 0 if method == "ar" else 78, "accepted_lengths": [1] * 4,
        "acceptance_by_position": by_pos, "tokens_per_second": tps, "speedup": speedup,
        "check": check, "text": "def f():\n    return 1 | 2",
    }


def make_results(*, divergence: bool = False) -> dict:
    """2 tasks x 3 methods x 2 prompts x 2 repeats, a summary, calibration and two peers."""
    exact = {"result": "exact", "index": None, "margin": None, "tolerance": 1.0, "summary": "exact"}
    samples = []
    for task in TASKS:
        for method in METHODS:
            for prompt_id in range(2):
                for repeat in range(2):
                    samples.append(sample(task, method, prompt_id, repeat, None if method == "ar" else exact))
    samples[7]["check"] = {"result": "near-tie", "index": 31, "margin": 0.2, "tolerance": 1.0,
                           "summary": "near-tie at token 31 (margin 0.200, tolerance 1.0)"}
    if divergence:
        samples[-1]["check"] = {"result": "real divergence", "index": 12, "margin": 4.5, "tolerance": 1.0,
                                "summary": "real divergence at token 12 (margin 4.500, tolerance 1.0)"}
    summary = []
    for (task, method), (sp, lo, hi, med, tau, rate, tps, by_pos) in NUMBERS.items():
        mine = [s for s in samples if s["task"] == task and s["method"] == method]
        checks = {"exact": 0, "near-tie": 0, "real divergence": 0}
        for s in mine:
            if s["check"]:
                checks[s["check"]["result"]] += 1
        summary.append({
            "task": task, "method": method, "prompts": 2, "samples": len(mine),
            "speedup": sp, "speedup_median": med, "speedup_min": lo, "speedup_max": hi,
            "mean_accepted_length": tau, "acceptance_rate": rate, "acceptance_by_position": by_pos,
            "tokens_per_second": tps, "tokens_per_second_min": tps * 0.9, "tokens_per_second_max": tps * 1.1,
            "draft_time_s": 0.4, "verify_time_s": 2.1, "checks": checks if method != "ar" else {},
        })
    ks = [1, 2, 3, 4, 6, 8, 12, 16]
    median = [0.020 * (1 + 0.06 * (k - 1)) for k in ks]
    calibration = {
        "target": {"k": ks, "median_s": median, "min_s": [m * 0.95 for m in median],
                   "max_s": [m * 1.08 for m in median], "relative": [m / median[0] for m in median]},
        "draft": {"token_s": 0.0062},
        "context_tokens": 512,
    }
    peers = []
    for method, tps, speedup in (("plain", 40.0, 1.0), ("prompt_lookup", 52.0, 1.3)):
        for prompt_id in range(2):
            peers.append({"peer": "llama-cpp-python", "method": method, "task": "code",
                          "prompt_id": prompt_id, "turn": 0, "repeat": 0, "new_tokens": 128,
                          "time_s": 128 / (tps + prompt_id), "tokens_per_second": tps + prompt_id,
                          "speedup": speedup, "equal_to_reference": prompt_id == 0 or method == "plain"})
    return {
        "config": {"models": {"target": "qwen2.5-coder-1.5b", "draft": "qwen2.5-coder-0.5b"},
                   "tasks": list(TASKS), "methods": list(METHODS), "max_tokens": 128, "repeat": 2,
                   "limit": 2, "num_draft": 4, "date": "2025-06-01T12:00:00",
                   "machine": "x86_64, 16 cores, AMX"},
        "samples": samples,
        "summary": summary,
        "calibration": calibration,
        "peers": peers,
        "peer_status": {"llama-cpp-python": "ok", "hf-assisted": SKIP_REASON},
    }


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[list[Path], str]:
    out = tmp_path_factory.mktemp("report")
    paths = write_report(make_results(), out)
    return paths, (out / "report.md").read_text()


def test_write_report_writes_report_and_every_plot(full_report):
    from matplotlib.image import imread

    paths, _ = full_report
    assert paths[0].name == "report.md"
    assert {p.name for p in paths[1:]} == PLOTS
    for path in paths[1:]:
        assert path.read_bytes()[:8] == PNG_MAGIC, path
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500, (path, image.shape)


def test_report_has_config_summary_rows_and_plots(full_report):
    _, md = full_report
    assert md.startswith("# quickdraft benchmark report")
    assert "x86_64, 16 cores, AMX" in md and "**max_tokens**: 128" in md
    assert "target=qwen2.5-coder-1.5b, draft=qwen2.5-coder-0.5b" in md
    assert "| code | draft | 2.04x (1.55-2.61) | 2.01x | 3.42 | 71.0% | 84.9 | 4 exact |" in md
    assert "| mt_bench | ar | 1.00x (1.00-1.00) | 1.00x | 1.00 | - | 42.0 | - |" in md
    assert "| mt_bench | ngram | 1.08x (0.91-1.37) |" in md
    assert "3 exact, 1 near-tie" in md  # the near-tie sample
    for name in PLOTS:
        assert f"]({name})" in md
    assert "Partial results" not in md
    assert "WARNING" not in md and "REAL DIVERGENCE" not in md


def test_report_per_task_acceptance_and_calibration(full_report):
    _, md = full_report
    assert "### code" in md and "### mt_bench" in md
    assert "| draft | 91.0% | 80.0% | 69.0% | 58.0% | - |" in md  # padded to ngram's 5 positions
    assert "| 1 | 20.00 | 19.00 | 21.60 | 1.00 |" in md
    assert "| 16 | 38.00 |" in md
    assert "0.31 of a target single-token step" in md  # 6.2 ms / 20 ms


def test_report_lists_skipped_peer_with_reason(full_report):
    _, md = full_report
    assert SKIP_REASON in md
    assert "| hf-assisted | - | " + SKIP_REASON in md
    assert "| llama-cpp-python | prompt_lookup | ok | 2 | 52.5 (52.0-53.0) | 1.30x (1.30-1.30) | 1/2 |" in md


def test_divergence_warning_only_when_there_is_one(tmp_path):
    write_report(make_results(divergence=True), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "WARNING: 1 REAL DIVERGENCE(S)" in md
    assert "real divergence at token 12" in md
    assert "code / prompt 1 turn 0 repeat 1 / ngram" in md
    assert "1 REAL DIVERGENCE" in md.split("## Summary")[1].split("## ")[0]  # in the summary table too


def test_partial_results_only_samples(tmp_path):
    results = make_results()
    partial = {"samples": results["samples"][:5], "summary": []}
    paths = write_report(partial, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert paths == [tmp_path / "report.md"]  # no plot has data
    assert "Partial results" in md
    for missing in ("`config`", "`summary`", "`calibration`", "`peers`"):
        assert missing in md
    assert "5 samples recorded so far" in md
    assert "| mt_bench | ar | 4 | 2 |" in md
    assert "not drawn" in md
    assert summary_table(partial).row_count == 0
    assert peer_table(partial) is None


@pytest.mark.parametrize("results", [{}, {"summary": None, "calibration": None, "peers": None},
                                     {"calibration": {"target": {"k": []}, "draft": None}},
                                     {"peer_status": {"hf-assisted": "failed: out of memory"}}])
def test_degenerate_results_never_raise(tmp_path, results):
    paths = write_report(results, tmp_path)
    assert paths[0].exists()
    md = paths[0].read_text()
    if "peer_status" in results:
        assert "failed: out of memory" in md


def test_calibration_without_draft_and_missing_values(tmp_path):
    results = make_results()
    results["calibration"]["draft"] = None
    del results["calibration"]["target"]["relative"]  # computed from median_s instead
    results["summary"][1]["speedup_min"] = None
    results["summary"][1]["acceptance_rate"] = math.nan
    results["peers"] = []
    paths = write_report(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "verify_cost.png" in {p.name for p in paths} and "peers.png" not in {p.name for p in paths}
    assert "Draft model cost: not measured." in md
    assert "`calibration.draft`" in md
    assert "| mt_bench | draft | 1.62x | 1.60x | 2.71 | - |" in md
    assert "| 16 | 38.00 | 36.10 | 41.04 | 1.90 |" in md
    assert SKIP_REASON in md  # still listed with no peer rows at all


def test_summary_table_one_row_per_summary_entry():
    results = make_results(divergence=True)
    table = summary_table(results)
    assert table.row_count == len(results["summary"])
    assert len(table.columns) == 9  # ... checks, output (the target's, or LOSSY with its TV)
    console = Console(record=True, width=220)
    console.print(table)
    text = console.export_text()
    assert "2.04x [1.55-2.61]" in text and "71.0%" in text
    assert "speedup [min-max]" in text  # not eaten as rich markup
    assert "3/4 exact, 1 DIVERGED" in text and "3/4 exact, 1 tie" in text


def test_peer_table_includes_skipped_peer():
    table = peer_table(make_results())
    assert table is not None and table.row_count == 3
    console = Console(record=True, width=220)
    console.print(table)
    assert SKIP_REASON in console.export_text()


def test_formatters():
    assert fmt_speedup(1.234, 0.95, 1.5) == "1.23x (0.95-1.50)"
    assert fmt_speedup(1.234, 0.95, 1.5, brackets="[]") == "1.23x [0.95-1.50]"
    assert fmt_speedup(None) == "-" and fmt_speedup(float("nan")) == "-"
    assert fmt_pct(0.7834) == "78.3%" and fmt_pct(None) == "-"
    assert fmt_checks({"exact": 5, "near-tie": 1, "real divergence": 0}) == "5 exact, 1 near-tie"
    assert fmt_checks({"exact": 0, "real divergence": 2}) == "2 REAL DIVERGENCE"
    assert fmt_checks({}) == "-" and fmt_checks(None) == "-"
    assert fmt_checks_short({"exact": 3, "near-tie": 1, "real divergence": 0}) == "3/4 exact, 1 tie"
    assert fmt_checks_short({"exact": 3, "real divergence": 1}) == "3/4 exact, 1 DIVERGED"
    assert fmt_checks_short({}) == "-"


def test_write_report_does_not_mutate_results(tmp_path):
    results = make_results()
    before = copy.deepcopy(results)
    write_report(results, tmp_path)
    assert results == before


def test_md_table_alignment_and_escaping():
    assert md_table(["a", "n"], [["x", 1]], right=[1]) == "| a | n |\n| --- | ---: |\n| x | 1 |"
    assert md_table(["a"], [["p|q\nr"]]).endswith("| p\\|q r |")


def test_interrupted_run_plots_only_what_it_has(tmp_path):
    results = make_results()
    results["summary"] = [r for r in results["summary"] if r["task"] == "mt_bench"][:2]  # ar, draft
    del results["calibration"], results["peers"], results["peer_status"]
    paths = write_report(results, tmp_path)
    assert {p.name for p in paths} == {"report.md", "speedup.png", "accepted_length.png",
                                       "acceptance_by_position.png"}
    md = (tmp_path / "report.md").read_text()
    assert "`calibration`" in md and "`peers`" in md and "### code" not in md


def test_report_counts_the_steps_each_draft_source_took(tmp_path):
    """auto's per-step sources (a sample's config.draft_sources) summed per task and method; a
    method that reports none has no row."""
    results = make_results()
    for s in results["samples"]:
        if s["method"] == "draft":
            s["config"] = {"draft_sources": {"grammar": 3, "plain": 5, "draft": 2}}
    write_report(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Draft sources" in md
    assert "| code | draft | plain 20, grammar 12, draft 8 | 50% |" in md
    assert "| code | ngram |" not in md.split("## Draft sources")[1].split("##")[0]
