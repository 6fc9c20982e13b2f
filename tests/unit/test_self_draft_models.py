"""Self-drafts (``--draft self:<type>``): the target's own low-bit copy, made by llama.cpp's
quantizer, cached and stamped; never another target's; clear errors for what cannot be made."""

from pathlib import Path

import pytest

from quickdraft import models
from quickdraft.errors import InvalidParameterError
from quickdraft.testing import write_tiny_gguf


@pytest.fixture()
def target(tmp_path) -> Path:
    return write_tiny_gguf(tmp_path / "target.gguf", seed=0)


def test_types_are_parsed_case_insensitively_and_bad_ones_named():
    assert models.self_draft_type("self:Q4_0").name == "Q4_0"
    assert models.self_draft_type("self:q3_k_m").name == "Q3_K_M"
    assert models.self_draft_type("qwen2.5-coder-0.5b-instruct") is None
    assert models.self_draft_type("./self.gguf") is None
    with pytest.raises(InvalidParameterError, match="importance matrix") as e:
        models.self_draft_type("self:IQ3_XXS")
    assert e.value.param == "draft" and "q2_k" in str(e.value)
    with pytest.raises(InvalidParameterError, match="unknown type 'q9_9'.*q4_0") as e:
        models.self_draft_type("self:q9_9")
    assert e.value.param == "draft"
    assert not set(models.SELF_DRAFT_REFUSED) & set(models.SELF_DRAFT_TYPES)


def test_made_once_stamped_with_the_source_digest_and_reused(target, tmp_path):
    kind = models.SELF_DRAFT_TYPES["q4_0"]
    path = models.ensure_self_draft(target, kind, progress=False, cache=tmp_path / "cache")
    assert path.parent == tmp_path / "cache" / "self-drafts" and path.name.endswith(".q4_0.gguf")
    stamp = (path.parent / (path.name + ".sha256")).read_text().split()
    assert stamp[0] == models.file_digest(target, cache=tmp_path / "cache") and stamp[1] == "Q4_0"
    assert "llama-cpp-python" in stamp
    made = path.stat().st_mtime_ns
    assert models.ensure_self_draft(target, kind, progress=False, cache=tmp_path / "cache") == path
    assert path.stat().st_mtime_ns == made  # reused, not made again
    assert not list(path.parent.glob("*.partial"))


def test_a_changed_or_other_target_never_reuses_a_copy(target, tmp_path):
    cache, kind = tmp_path / "cache", models.SELF_DRAFT_TYPES["q8_0"]
    first = models.ensure_self_draft(target, kind, progress=False, cache=cache)
    before = first.read_bytes()
    other = write_tiny_gguf(tmp_path / "other" / "target.gguf", seed=1)  # same name, another file
    second = models.ensure_self_draft(other, kind, progress=False, cache=cache)
    assert second != first and second.read_bytes() != before
    write_tiny_gguf(target, seed=2)  # the same path, new weights: the copy is made again
    third = models.ensure_self_draft(target, kind, progress=False, cache=cache)
    assert third == first and third.read_bytes() != before


def test_digests_are_remembered_until_the_file_changes(target, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    digest = models.file_digest(target, cache=cache)
    monkeypatch.setattr(models, "_sha256_of", lambda path: pytest.fail("hashed again"))
    assert models.file_digest(target, cache=cache) == digest
    monkeypatch.undo()
    write_tiny_gguf(target, seed=3)
    assert models.file_digest(target, cache=cache) != digest


def test_resolve_draft_and_clear_errors(target, tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path / "cache"))
    assert models.resolve_draft(str(target), target) == target  # any other draft: a path as given
    made = models.resolve_draft("self:q4_0", target, progress=False)
    assert made.exists() and made.parent.name == "self-drafts"
    with pytest.raises(InvalidParameterError, match="must be a .gguf file") as e:
        models.resolve_draft("self:q4_0", tmp_path)  # a model directory (the torch backend)
    assert e.value.param == "draft"


def test_load_refuses_a_bad_type_before_loading_anything(target):
    from quickdraft import load

    with pytest.raises(InvalidParameterError, match="importance matrix"):
        load("/no/such/target.gguf", "self:iq1_s")
