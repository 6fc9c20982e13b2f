"""The command line on tiny models: output, --json schema, --check, and clear errors."""

import json
import re

import pytest
from typer.testing import CliRunner

from quickdraft.cli import app
from quickdraft.testing import TinyVocab, write_tiny_gguf

runner = CliRunner()
STATS_KEYS = {"generated_tokens", "target_forwards", "drafted_tokens", "accepted_tokens", "acceptance_rate",
              "mean_accepted_length", "acceptance_by_position", "draft_time_s", "verify_time_s",
              "tokens_per_second"}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_generate_json_has_the_documented_schema(tiny_pair):
    target, draft = tiny_pair
    result = run("generate", "the quick brown fox", "--target", target, "--draft", draft, "--raw",
                 "--max-tokens", 20, "--num-draft", 3, "--json", "--check")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out) >= {"text", "token_ids", "finish_reason", "stats", "check"}
    assert STATS_KEYS <= set(out["stats"])
    assert out["check"]["result"] == "exact"
    assert len(out["token_ids"]) == out["stats"]["generated_tokens"] == 20


def test_generate_with_penalties_is_checked_against_plain_decoding_under_them(tiny_pair):
    target, draft = tiny_pair
    result = run("generate", "the quick brown fox", "--target", target, "--draft", draft, "--raw",
                 "--max-tokens", 24, "--method", "draft", "--presence-penalty", 0.5, "--frequency-penalty", 2,
                 "--json", "--check")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["check"]["result"] == "exact"
    plain = json.loads(run("generate", "the quick brown fox", "--target", target, "--draft", "none", "--raw",
                           "--max-tokens", 24, "--method", "ar", "--json").stdout.strip().splitlines()[-1])
    assert plain["token_ids"] != out["token_ids"]  # the penalties changed the answer


@pytest.mark.parametrize("method", ["ar", "ngram", "draft"])
def test_generate_streams_text_then_stats(tiny_pair, method):
    target, draft = tiny_pair
    result = run("generate", "hello world", "--target", target, "--draft", draft, "--method", method,
                 "--max-tokens", 12, "--temperature", 0.7, "--top-p", 0.9, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert "tok/s" in result.output and "mean accepted length" in result.output


def test_chat_template_is_applied_unless_raw(tiny_engine):
    chat = tiny_engine.prompt_tokens("hello", chat=True)
    raw = tiny_engine.prompt_tokens("hello", chat=False)
    assert len(chat) > len(raw)


@pytest.mark.parametrize("args, message", [
    (["--temperature", -1], "temperature"),
    (["--top-p", 0], "top_p"),
    (["--top-p", 1.5], "top_p"),
    (["--num-draft", -1], "num_draft"),
    (["--max-tokens", 0], "max_tokens"),
    (["--max-tokens", 100000], "context"),
    (["--method", "nope"], "unknown method"),
    (["--presence-penalty", 3], "presence_penalty"),
    (["--frequency-penalty", -2.5], "frequency_penalty"),
])
def test_bad_values_give_a_clear_error_and_nonzero_exit(tiny_pair, args, message):
    target, draft = tiny_pair
    result = run("generate", "hi", "--target", target, "--draft", draft, "--n-ctx", 256, *args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_prompt_longer_than_the_context(tiny_pair):
    target, draft = tiny_pair
    result = run("generate", "word " * 400, "--target", target, "--draft", draft, "--n-ctx", 128, "--raw")
    assert result.exit_code == 2
    assert "exceeds the context" in result.output


def test_missing_model_file(tmp_path, tiny_pair):
    result = run("generate", "hi", "--target", tmp_path / "nope.gguf", "--method", "ar")
    assert result.exit_code == 2
    assert "nope.gguf" in result.output and "qwen2.5-coder-1.5b-instruct" in result.output


def test_not_a_gguf_file(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model")
    result = run("generate", "hi", "--target", bogus, "--method", "ar")
    assert result.exit_code == 2 and "valid GGUF" in result.output


def test_a_draft_of_another_vocabulary_drafts_through_text_and_stays_exact(tmp_path, tiny_pair):
    other = write_tiny_gguf(tmp_path / "other.gguf", vocab=TinyVocab(extra_words=("zebra", "quokka")))
    result = run("generate", "hello world hello", "--target", tiny_pair[0], "--draft", other, "--method", "draft",
                 "--raw", "--max-tokens", 16, "--json", "--check")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["check"]["result"] == "exact" and out["stats"]["drafted_tokens"] > 0
    assert out["system"]["draft_vocabulary"] == "other"


def test_a_draft_of_another_vocabulary_is_refused_where_the_method_needs_the_targets(tmp_path, tiny_pair):
    shuffled = write_tiny_gguf(tmp_path / "shuffled.gguf", vocab=TinyVocab(shuffle_seed=3))
    result = run("generate", "hi", "--target", tiny_pair[0], "--draft", shuffled, "--method", "draft", "--tree")
    assert result.exit_code == 2 and "'draft-tree' drafts token ids of the target's vocabulary" in result.output
    assert re.search(r"token \d+ is b'.*' in the target", result.output) and "auto, draft" in result.output


def test_a_draft_whose_tokenizer_does_not_give_text_back_is_refused(tmp_path, tiny_pair):
    spaced = write_tiny_gguf(tmp_path / "spaced.gguf", vocab=TinyVocab(extra_words=("zebra",)), add_space_prefix=True)
    result = run("generate", "hi", "--target", tiny_pair[0], "--draft", spaced, "--method", "draft")
    assert result.exit_code == 2 and "does not give back the text it tokenized" in result.output


def test_methods_say_which_draft_models_each_accepts():
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 4}
    assert "required, any vocabulary" in rows["draft"] and "optional, any vocabulary" in rows["auto"]
    assert "required, the target's vocabulary" in rows["draft-tree"]
