"""Tree methods from the command line and in the bench, on the tiny models."""

import json

from typer.testing import CliRunner

from quickdraft.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_generate_with_tree(tiny_pair):
    target, draft = tiny_pair
    for method in ("draft", "ngram"):
        result = run("generate", "hello world hello world", "--target", target, "--draft", draft, "--raw",
                     "--method", method, "--tree", "--max-tokens", 20, "--num-draft", 6, "--json", "--check")
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert out["check"]["result"] in ("exact", "near-tie")
        assert out["stats"]["generated_tokens"] == 20


def test_tree_needs_a_method_with_a_tree_variant(tiny_pair):
    result = run("generate", "hi", "--target", tiny_pair[0], "--method", "ar", "--tree")
    assert result.exit_code == 2 and "no tree variant" in result.output


def test_bench_tree_runs_tree_variants_beside_chains(tiny_pair, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hello world hello world"}\n')
    out = tmp_path / "out"
    result = run("bench", "--tasks", "", "--data", prompts, "--methods", "draft", "--tree", "--target", tiny_pair[0],
                 "--draft", tiny_pair[1], "--max-tokens", 12, "--limit", 1, "--out", out)
    assert result.exit_code == 0, result.output
    samples = json.loads((out / "results.json").read_text())["samples"]
    assert {s["method"] for s in samples} == {"ar", "draft", "draft-tree"}
    assert all(s["check"]["result"] in ("exact", "near-tie") for s in samples if s["method"] != "ar")
