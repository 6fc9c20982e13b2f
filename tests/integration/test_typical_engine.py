"""Typical acceptance through the engine, the command line and the bench on the tiny models:
opt-in only, marked lossy in every result, stats line and bench row, exactly greedy at
temperature 0, and (the documented expectation) detectably not the target's distribution."""

import json

import pytest
from scipy.stats import chisquare
from typer.testing import CliRunner

from quickdraft import Engine, TypicalAcceptance
from quickdraft.bench.runner import BenchConfig, run_bench
from quickdraft.cli import app
from quickdraft.errors import InvalidParameterError, QuickdraftError
from quickdraft.sampling import SamplingParams

from distributions import two_token_distribution

PROMPT = "the code of the world"
SAMPLED = dict(max_tokens=32, temperature=1.0, seed=5)


def test_it_is_never_the_default_and_is_marked_lossy_in_the_result(tiny_engine):
    plain = tiny_engine.generate(PROMPT, **SAMPLED)
    assert plain.stats["acceptance"] == "exact" and plain.stats["lossless"] is True
    assert "tv_per_token" not in plain.stats
    typical = tiny_engine.generate(PROMPT, **SAMPLED, acceptance="typical")
    assert typical.stats["acceptance"] == "typical" and typical.stats["lossless"] is False
    assert 0 < typical.stats["tv_per_token"] < 1
    assert typical.to_dict()["stats"]["lossless"] is False
    with pytest.raises(InvalidParameterError) as e:
        tiny_engine.prepare(PROMPT, acceptance="medusa")
    assert e.value.param == "acceptance"


@pytest.mark.parametrize("method", ["draft", "ngram", "auto", "draft-tree"])
def test_greedy_typical_acceptance_is_plain_greedy_decoding(tiny_engine, method):
    for prompt in (PROMPT, "def return value", "hello world hello world hello"):
        plain = tiny_engine.generate(prompt, max_tokens=40, method="ar")
        typical = tiny_engine.generate(prompt, max_tokens=40, method=method, acceptance="typical")
        assert typical.token_ids == plain.token_ids, (method, prompt)
        assert typical.stats["lossless"] is True and typical.stats["acceptance"] == "typical"


def test_an_engine_default_and_its_thresholds(tiny_pair, tiny_target_backend, flat_prior):
    engine = Engine(tiny_target_backend, method="draft", num_draft=4, draft=str(tiny_pair[1]), chat=False,
                    prior=flat_prior, acceptance=TypicalAcceptance(posterior_threshold=0.01))
    assert engine.prepare(PROMPT).acceptance == TypicalAcceptance(0.01, 0.3)
    assert engine.prepare(PROMPT, acceptance="exact").acceptance.lossless
    loose = engine.generate(PROMPT, **SAMPLED)
    strict = engine.generate(PROMPT, **SAMPLED, acceptance=TypicalAcceptance(posterior_threshold=0.5,
                                                                             posterior_alpha=1.0))
    assert loose.stats["acceptance_rate"] > strict.stats["acceptance_rate"]


def test_its_output_is_detectably_not_the_targets_distribution(tiny_pair, tiny_target_backend, flat_prior):
    """The documented expectation: a chi-square of the first two sampled tokens against the
    target's exact distribution rejects typical acceptance (p < 1e-3), while the same test passes
    the lossless rule on the same draws' count. Top-k 3 keeps the support at 9 pairs; a
    threshold of 0.3 makes the rule accept tokens the target gives up to a third, which a draft
    of 50% agreement proposes often."""
    draft = make_disagreeing_draft(tiny_pair)
    engine = Engine(tiny_target_backend, method="draft", num_draft=2, draft=str(draft), chat=False,
                    prior=flat_prior)
    params = SamplingParams(temperature=1.0, top_k=3)
    prompt = engine.prompt_tokens(PROMPT)
    exact = two_token_distribution(engine.target, prompt, params)
    draws = 600

    def p_value(acceptance) -> float:
        counts = {pair: 0 for pair in exact}
        for seed in range(draws):
            out = engine.generate(prompt, max_tokens=2, temperature=1.0, top_k=3, seed=seed, acceptance=acceptance)
            counts[tuple(out.token_ids)] += 1
        pairs = sorted(exact)
        return float(chisquare([counts[k] for k in pairs], [exact[k] * draws for k in pairs]).pvalue)

    assert p_value(TypicalAcceptance(posterior_threshold=0.3, posterior_alpha=1.0)) < 1e-3
    assert p_value("exact") > 1e-3


def make_disagreeing_draft(tiny_pair):
    from quickdraft.testing import write_tiny_gguf

    return write_tiny_gguf(tiny_pair[0].parent / "tiny-draft-p0.3.gguf", seed=2, perturb=0.3, base_seed=0)


# --- the command line ----------------------------------------------------------------------------

runner = CliRunner()


def test_the_stats_line_and_json_say_lossy(tiny_pair):
    target, draft = tiny_pair
    args = ["generate", PROMPT, "--target", str(target), "--draft", str(draft), "--raw", "--method", "draft",
            "-n", "16", "-t", "1", "--seed", "1", "--acceptance", "typical"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "LOSSY (typical acceptance: not the target's distribution" in result.output
    out = json.loads(runner.invoke(app, [*args, "--json", "--posterior-alpha", "0.5"]).stdout.strip().splitlines()[-1])
    assert out["stats"]["lossless"] is False and out["stats"]["acceptance"] == "typical"
    bad = runner.invoke(app, [*args, "--posterior-threshold", "2"])
    assert bad.exit_code == 2 and "posterior_threshold" in bad.output
    bad = runner.invoke(app, [*args[:-1], "exact", "--posterior-alpha", "0.2"])
    assert bad.exit_code == 2 and "no option 'posterior_alpha'" in bad.output


def test_methods_lists_the_acceptance_rules_and_self_drafts():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    assert "typical" in result.output and "LOSSY" in result.output and "posterior_threshold" in result.output
    assert "self:TYPE" in result.output and "q4_0" in result.output.lower() and "iq2_xxs" in result.output


# --- the bench -----------------------------------------------------------------------------------

def test_bench_rows_are_labelled_and_report_how_far_they_moved(tiny_pair, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "the code of the world"}\n{"prompt": "hello world hello world"}\n')
    config = BenchConfig(target=str(tiny_pair[0]), draft=str(tiny_pair[1]), tasks=(), data=(str(prompts),),
                         methods=("draft", "ngram"), max_tokens=16, limit=None, repeat=1, temperature=1.0,
                         acceptance=("exact", "typical"), acceptance_options={"posterior_threshold": 0.05})
    out = tmp_path / "out"
    results = run_bench(config, out)
    rows = {r["method"]: r for r in results["summary"]}
    assert set(rows) == {"ar", "draft", "ngram", "draft (typical)", "ngram (typical)"}
    assert rows["draft (typical)"]["lossless"] is False and rows["draft (typical)"]["tv_per_token"] >= 0
    assert rows["draft"]["lossless"] is True and rows["draft"]["tv_per_token"] is None
    samples = [s for s in results["samples"] if s["method"] == "draft (typical)"]
    assert samples and all(s["acceptance"] == "typical" and s["lossless"] is False for s in samples)
    report = (out / "report.md").read_text()
    assert "| draft (typical) |" in report and "LOSSY: TV" in report
    with pytest.raises(QuickdraftError) as e:
        BenchConfig(acceptance=("exact",), acceptance_options={"posterior_alpha": 0.1})
    assert e.value.param == "posterior_alpha"
    with pytest.raises(QuickdraftError) as e:
        BenchConfig(acceptance=("typicall",))
    assert e.value.param == "acceptance"


def test_greedy_bench_rows_of_typical_acceptance_are_checked_exact(tiny_pair, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "the code of the world"}\n')
    config = BenchConfig(target=str(tiny_pair[0]), draft=str(tiny_pair[1]), tasks=(), data=(str(prompts),),
                         methods=("draft",), max_tokens=16, limit=None, repeat=1, acceptance=("typical",))
    results = run_bench(config, tmp_path / "out")
    typical = [s for s in results["samples"] if s["method"] == "draft (typical)"]
    assert typical and all(s["check"]["result"] == "exact" and s["lossless"] for s in typical)
    assert [s["method"] for s in results["samples"] if s["method"].startswith("ar")] == ["ar"]
