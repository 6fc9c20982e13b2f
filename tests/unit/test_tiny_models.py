"""The tiny random-weight GGUF models of quickdraft.testing load and behave in real llama.cpp.

The losslessness tests rest on these properties: the models load in milliseconds, tokenization
round-trips, greedy generation is deterministic and long, scoring a run of tokens in one batch
gives the same argmax at every position as scoring them one at a time (with an F32 KV cache and
flash attention off; see the quickdraft.testing docstring for the f16 cache), the prediction
depends on the context, and the draft agrees with the target often but not always.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

ll = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from quickdraft.testing import (  # noqa: E402
    DEFAULT_TINY_CHAT_TEMPLATE,
    TinyVocab,
    make_tiny_pair,
    write_tiny_gguf,
)

ARCHS = ("qwen2", "llama")
FIRST_PIECE_ID = 5 + 256  # after the 5 specials and the 256 byte tokens


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{arch: (target, draft)}."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_pair(root / arch, arch=arch) for arch in ARCHS}


def _llama(path: Path, **kw) -> ll.Llama:
    kw.setdefault("type_k", ll.GGML_TYPE_F32)
    kw.setdefault("type_v", ll.GGML_TYPE_F32)
    return ll.Llama(model_path=str(path), n_ctx=256, verbose=False, seed=0, **kw)


class RawModel:
    """The low-level path the llama.cpp backend takes: llama_decode on a batch, seq_rm to roll back."""

    def __init__(self, path: Path, *, f32_kv: bool = True, n_ctx: int = 256):
        ll.llama_backend_init()
        self.model = ll.llama_model_load_from_file(str(path).encode(), ll.llama_model_default_params())
        assert self.model, f"llama.cpp could not load {path}"
        cp = ll.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        if f32_kv:
            cp.type_k = cp.type_v = ll.GGML_TYPE_F32
            cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = ll.llama_init_from_model(self.model, cp)
        assert self.ctx
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.batch = ll.llama_batch_init(n_ctx, 0, 1)
        self.n_past = 0

    def decode(self, tokens) -> np.ndarray:
        """Append tokens after the current prefix; return their logits [len(tokens), n_vocab]."""
        b = self.batch
        b.n_tokens = len(tokens)
        for i, tok in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(tok), self.n_past + i, 1, 1
            b.seq_id[i][0] = 0
        assert ll.llama_decode(self.ctx, b) == 0
        self.n_past += len(tokens)
        return np.stack([np.ctypeslib.as_array(ll.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).copy()
                         for i in range(len(tokens))])

    def rollback(self, length: int) -> None:
        ll.llama_memory_seq_rm(ll.llama_get_memory(self.ctx), 0, length, -1)
        self.n_past = length

    def close(self) -> None:
        ll.llama_batch_free(self.batch)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)


def _random_prompts(n_vocab: int, count: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[1, *map(int, rng.integers(FIRST_PIECE_ID, n_vocab, size=length - 1))] for _ in range(count)]


def _margins(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


# --- writing ---------------------------------------------------------------------------------

def test_writing_is_fast_and_deterministic(tmp_path):
    start = time.perf_counter()
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=3)
    elapsed = time.perf_counter() - start
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=3)
    c = write_tiny_gguf(tmp_path / "c.gguf", seed=4)
    assert elapsed < 1.0
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b) != digest(c)
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_arguments_fail_fast(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        write_tiny_gguf(tmp_path / "x.gguf", arch="gpt2")
    with pytest.raises(ValueError, match="base_seed"):
        write_tiny_gguf(tmp_path / "x.gguf", perturb=0.1)
    with pytest.raises(ValueError, match="divisible"):
        write_tiny_gguf(tmp_path / "x.gguf", n_embd=60, n_head=8)


# --- vocabulary and metadata -----------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_loads_with_expected_vocab_and_metadata(pairs, arch):
    llm = _llama(pairs[arch][0])
    vocab = ll.llama_model_get_vocab(llm.model)
    assert llm.n_vocab() == TinyVocab().n_vocab
    assert 300 <= llm.n_vocab() <= 1000
    assert (llm.token_bos(), llm.token_eos()) == (1, 2)
    assert llm.metadata["general.architecture"] == arch
    assert llm.metadata["tokenizer.chat_template"] == DEFAULT_TINY_CHAT_TEMPLATE
    texts = [ll.llama_vocab_get_text(vocab, i).decode() for i in (0, 1, 2, 3, 4, 5, 5 + 0xFF)]
    assert texts == ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<0x00>", "<0xFF>"]
    assert ll.llama_vocab_is_eog(vocab, 2) and ll.llama_vocab_is_eog(vocab, 4)  # </s>, <|im_end|>
    assert ll.llama_vocab_is_control(vocab, 3) and ll.llama_vocab_is_control(vocab, 4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("text", [
    "Hello world",
    "def foo(x):\n    return x == 42  # the answer\n",
    "  leading spaces, trailing space ",
    "\ttabs\tand {braces} [1, 2] 'quotes' \"double\" ~`|\\",
    "héllo wörld ✓ 日本",  # not in the pieces: byte fallback
])
def test_tokenize_detokenize_round_trip(pairs, arch, text):
    llm = _llama(pairs[arch][0])
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert llm.detokenize(tokens).decode() == text
    with_bos = llm.tokenize(text.encode(), add_bos=True, special=False)
    assert with_bos == [1, *tokens]
    assert len(tokens) < len(text.encode())  # words merge into pieces, not one token per byte


def test_words_are_single_pieces(pairs):
    llm = _llama(pairs["qwen2"][0])
    assert len(llm.tokenize(b" the", add_bos=False)) == 1
    assert len(llm.tokenize(b"return", add_bos=False)) == 1


def test_chatml_template_tokenizes_to_control_tokens(pairs):
    import jinja2

    llm = _llama(pairs["qwen2"][0])
    text = jinja2.Template(DEFAULT_TINY_CHAT_TEMPLATE).render(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert tokens.count(3) == 3 and tokens.count(4) == 2
    assert llm.detokenize(tokens, special=True).decode() == text
    assert 3 not in llm.tokenize(text.encode(), add_bos=False, special=False)


def test_mismatched_vocabularies_really_differ(tmp_path):
    base = TinyVocab()
    bigger = TinyVocab(extra_words=("banana", "quux"))
    shuffled = TinyVocab(shuffle_seed=1)
    assert bigger.n_vocab > base.n_vocab == shuffled.n_vocab

    paths = {name: write_tiny_gguf(tmp_path / f"{name}.gguf", vocab=v)
             for name, v in (("base", base), ("bigger", bigger), ("shuffled", shuffled))}
    models = {name: _llama(p) for name, p in paths.items()}
    assert models["bigger"].n_vocab() == bigger.n_vocab != models["base"].n_vocab()

    def texts(llm):
        vocab = ll.llama_model_get_vocab(llm.model)
        return [ll.llama_vocab_get_text(vocab, i) for i in range(llm.n_vocab())]

    t_base, t_shuf = texts(models["base"]), texts(models["shuffled"])
    assert t_base[:FIRST_PIECE_ID] == t_shuf[:FIRST_PIECE_ID]         # specials and bytes stay put
    differ = sum(a != b for a, b in zip(t_base, t_shuf))
    assert differ > 0.9 * (len(t_base) - FIRST_PIECE_ID)
    assert sorted(t_base) == sorted(t_shuf)                            # same set, other ids


# --- generation --------------------------------------------------------------------------------

def _greedy(llm: ll.Llama, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    out: list[int] = []
    for tok in llm.generate(prompt, temp=0.0, reset=True):
        out.append(tok)
        if tok in (2, 4) or len(out) >= n:  # </s>, <|im_end|>
            break
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_is_deterministic_long_and_printable(pairs, arch):
    llm = _llama(pairs[arch][0])
    prompts = [llm.tokenize(p.encode()) for p in ("Hello world", "def fib(n):", "the", "import numpy as np\n",
                                                   "Once upon a time")]
    full = 0
    for prompt in prompts:
        first, second = _greedy(llm, prompt, 40), _greedy(llm, prompt, 40)
        assert first == second
        full += len(first) == 40 and not set(first) & {2, 4}
        text = llm.detokenize(first).decode()
        assert text.isascii() and all(c.isprintable() or c in "\n\t" for c in text)
    assert full >= 4  # EOS rows are shrunk: random models rarely stop early
    # and a second Llama instance on the same file gives the same tokens
    assert _greedy(_llama(pairs[arch][0]), prompts[0], 40) == _greedy(llm, prompts[0], 40)


def test_f16_weights_load_and_generate(tmp_path):
    path = write_tiny_gguf(tmp_path / "f16.gguf", f16=True)
    assert path.stat().st_size < write_tiny_gguf(tmp_path / "f32.gguf").stat().st_size
    llm = _llama(path)
    assert len(_greedy(llm, llm.tokenize(b"Hello"), 20)) == 20


# --- batched vs one-token evaluation (the losslessness tests depend on this) --------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", [0, 1], ids=["target", "draft"])
def test_batch_matches_one_token_at_a_time_raw_api(pairs, arch, which):
    """Verify-style: after a committed prefix, 8 tokens in one llama_decode vs one per call."""
    model = RawModel(pairs[arch][which])
    try:
        max_diff, min_margin = 0.0, np.inf
        for seq in _random_prompts(model.n_vocab, count=12, length=13, seed=100 + which):
            prefix, block = seq[:5], seq[5:]
            model.rollback(0)
            model.decode(prefix)
            batched = model.decode(block)
            model.rollback(len(prefix))                 # roll the block back, as the engine does
            single = np.concatenate([model.decode([tok]) for tok in block])
            assert np.array_equal(batched.argmax(-1), single.argmax(-1)), "batched argmax != one-token argmax"
            max_diff = max(max_diff, float(np.abs(batched - single).max()))
            min_margin = min(min_margin, float(_margins(batched).min()))
        print(f"\n{arch} {['target', 'draft'][which]}: max |batch - single| = {max_diff:.2e}, "
              f"min top1-top2 margin = {min_margin:.3f}")
        assert max_diff < 1e-3
    finally:
        model.close()


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_matches_one_token_at_a_time_high_level(pairs, arch):
    llm = _llama(pairs[arch][0], logits_all=True, flash_attn=False)
    for seq in _random_prompts(llm.n_vocab(), count=8, length=8, seed=7):
        llm.reset()
        llm.eval(seq)
        batched = np.array(llm.scores[: len(seq)])
        llm.reset()
        single = []
        for tok in seq:
            llm.eval([tok])
            single.append(np.array(llm.scores[llm.n_tokens - 1]))
        single = np.stack(single)
        assert np.array_equal(batched.argmax(-1), single.argmax(-1))
        assert np.abs(batched - single).max() < 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_are_well_separated(pairs, arch):
    model = RawModel(pairs[arch][0])
    margins = []
    try:
        for seq in _random_prompts(model.n_vocab, count=20, length=16, seed=5):
            model.rollback(0)
            margins.append(_margins(model.decode(seq)))
        margins = np.concatenate(margins)
    finally:
        model.close()
    assert np.median(margins) > 1.0           # logits have a standard deviation of ~8
    assert np.mean(margins < 0.01) < 0.02


@pytest.mark.parametrize("arch", ARCHS)
def test_prediction_depends_on_context(pairs, arch):
    """Same last token, different prefixes: different argmax (a stale KV cache would show)."""
    model = RawModel(pairs[arch][0])
    try:
        preds = set()
        for seq in _random_prompts(model.n_vocab, count=20, length=7, seed=11):
            model.rollback(0)
            preds.add(int(model.decode([*seq, 300])[-1].argmax()))
    finally:
        model.close()
    assert len(preds) >= 5


# --- target / draft pair ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_draft_agrees_with_target_often_but_not_always(pairs, arch):
    target, draft = RawModel(pairs[arch][0]), RawModel(pairs[arch][1])
    try:
        assert target.n_vocab == draft.n_vocab
        agree = []
        for seq in _random_prompts(target.n_vocab, count=30, length=16, seed=21):  # random contexts
            target.rollback(0)
            draft.rollback(0)
            agree += list(target.decode(seq).argmax(-1) == draft.decode(seq).argmax(-1))
        rate_random = float(np.mean(agree))

        traj = []  # along the target's own greedy continuation, as in speculative decoding
        for prompt in _random_prompts(target.n_vocab, count=10, length=4, seed=22):
            target.rollback(0)
            seq = list(prompt)
            logits = target.decode(seq)[-1]
            for _ in range(40):
                seq.append(int(logits.argmax()))
                logits = target.decode(seq[-1:])[-1]
            target.rollback(0)
            draft.rollback(0)
            t, d = target.decode(seq).argmax(-1), draft.decode(seq).argmax(-1)
            traj += list(t[len(prompt) - 1:] == d[len(prompt) - 1:])
        rate_traj = float(np.mean(traj))
    finally:
        target.close()
        draft.close()
    print(f"\n{arch}: draft/target greedy agreement: random contexts {rate_random:.2f}, "
          f"target trajectories {rate_traj:.2f}")
    assert 0.5 <= rate_random <= 0.9
    assert 0.5 <= rate_traj <= 0.95


def test_perturb_zero_with_base_seed_copies_the_base(tmp_path):
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=0)
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=9, base_seed=0)
    ra, rb = RawModel(a), RawModel(b)
    try:
        seq = _random_prompts(ra.n_vocab, 1, 10, 0)[0]
        assert np.array_equal(ra.decode(seq), rb.decode(seq))
    finally:
        ra.close()
        rb.close()
