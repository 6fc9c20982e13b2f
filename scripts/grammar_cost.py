"""What a grammar engine costs on our step: the candidates measured on the bundled target's vocabulary.

    .venv/bin/python scripts/grammar_cost.py [--repeats 5] [--draft 4] [--engines llguidance,xgrammar,...]

Candidates (each from PyPI): llguidance, xgrammar, outlines-core, and llama.cpp's own GBNF
grammar sampler through llama-cpp-python. For one realistic JSON schema (an invoice extraction:
nested objects, an array of objects, enums, numbers, dates as strings) and the tokens of a valid
answer to it (Qwen2.5's tokenizer, 151,936 tokens), each engine is timed on:

- setup: what it builds once per vocabulary (not per request);
- compile: the schema compiled for this vocabulary (once per request, or cached per schema);
- token: one plain decoding step's work: the mask of allowed tokens at the current position,
  then advancing by the emitted token, for every token of the answer;
- row: one verified row of a speculative step: at positions along the answer, a draft of
  ``--draft`` tokens (the answer's own next tokens) is checked the way verification does:
  the mask of every row (the state advanced through the draft tokens before it), then the state
  rolled back (or, for llama.cpp, which cannot roll back, forked before the draft); the step's
  time divided by its rows.

Then the chosen engine as the engine runs it (``quickdraft``): per verified row,
``Constraint.allowed`` (the masks of a draft's rows, unpacked to one bool per token) and
``sampling.constrain`` (the logits of the others set to -inf) on float32 rows of the vocabulary's
width, and per token the forced run (``Constraint.forced``, auto's ``grammar`` source) and the
advance.

Each is repeated ``--repeats`` times (min and median reported, milliseconds). JSON whitespace: fixed
separators ", " and ": " where the engine offers them (llguidance, xgrammar); outlines-core and
llama.cpp's converter allow any whitespace between tokens (their own defaults). The masks are
also checked to agree between engines on the answer (every answer token allowed by every engine).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from typing import Callable

import numpy as np

import quickdraft
from quickdraft.grammar import JSON_FORMAT, Grammar
from quickdraft.sampling import constrain
from quickdraft.system import cpu_info

SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": "string"},
        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "currency": {"type": "string", "enum": ["EUR", "USD", "GBP", "CHF"]},
        "vendor": {"type": "object", "properties": {
            "name": {"type": "string"}, "vat_id": {"type": "string"},
            "address": {"type": "object", "properties": {
                "street": {"type": "string"}, "city": {"type": "string"}, "postal_code": {"type": "string"},
                "country": {"type": "string"}},
                "required": ["street", "city", "postal_code", "country"], "additionalProperties": False}},
            "required": ["name", "vat_id", "address"], "additionalProperties": False},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "description": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1},
            "unit_price": {"type": "number"}},
            "required": ["description", "quantity", "unit_price"], "additionalProperties": False}},
        "total": {"type": "number"},
        "paid": {"type": "boolean"},
    },
    "required": ["invoice_number", "date", "currency", "vendor", "items", "total", "paid"],
    "additionalProperties": False,
}

ANSWER = {
    "invoice_number": "INV-2024-0173", "date": "2024-03-18", "currency": "EUR",
    "vendor": {"name": "Bäckerei Müller GmbH", "vat_id": "DE811907980",
               "address": {"street": "Hauptstraße 12", "city": "Freiburg", "postal_code": "79098",
                           "country": "Germany"}},
    "items": [{"description": "Sourdough loaves", "quantity": 40, "unit_price": 3.2},
              {"description": "Croissants", "quantity": 120, "unit_price": 0.95},
              {"description": "Delivery", "quantity": 1, "unit_price": 15}],
    "total": 257.0, "paid": False,
}


class Engine:
    """One candidate: ``setup()`` once, ``compile()`` per schema, then a matcher with ``mask()``
    (the allowed tokens now, into its own buffer), ``advance(token)``, ``rollback(n)`` (or
    ``fork()`` when it cannot roll back)."""

    name = ""
    rolls_back = True

    def __init__(self, engine: quickdraft.Engine) -> None:
        self.engine, self.vocab_size = engine, engine.target.vocab_size

    def setup(self) -> None: ...
    def compile(self) -> None: ...
    def start(self) -> None: ...
    def mask(self) -> np.ndarray: ...
    def advance(self, token: int) -> None: ...
    def rollback(self, n: int) -> None: ...

    def allows(self, token: int) -> bool:
        mask = self.mask()
        return bool((mask[token // 32] >> np.uint32(token % 32)) & 1)


class Llguidance(Engine):
    name = "llguidance 1.9"

    def setup(self) -> None:
        self.vocabulary = self.engine.vocabulary()

    def compile(self) -> None:
        from llguidance import LLMatcher
        self.grammar = Grammar.json_schema(SCHEMA)
        self.vocabulary.check(self.grammar)
        self.matcher = LLMatcher(self.vocabulary.tokenizer, self.grammar.text, log_level=0)

    def start(self) -> None:
        self.matcher.reset()
        self.buffer = np.zeros((self.vocab_size + 31) // 32, dtype=np.uint32)

    def mask(self) -> np.ndarray:
        self.matcher.unsafe_compute_mask_ptr(self.buffer.ctypes.data, self.buffer.nbytes)
        return self.buffer

    def advance(self, token: int) -> None:
        assert self.matcher.consume_token(token), self.matcher.get_error()

    def rollback(self, n: int) -> None:
        self.matcher.rollback(n)


class XGrammar(Engine):
    name = "xgrammar 0.2"

    def setup(self) -> None:
        import xgrammar
        target = self.engine.target
        vocab = [target.token_bytes(t) or target.token_text(t) for t in range(self.vocab_size)]
        stops = [t for t in range(self.vocab_size) if not target.token_bytes(t) and target.is_end_of_generation(t)]
        self.info = xgrammar.TokenizerInfo(vocab, xgrammar.VocabType.RAW, vocab_size=self.vocab_size,
                                           stop_token_ids=stops)
        self.compiler = xgrammar.GrammarCompiler(self.info, max_threads=2, cache_enabled=False)

    def compile(self) -> None:
        import xgrammar
        compiled = self.compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                                     separators=(", ", ": "))
        self.matcher = xgrammar.GrammarMatcher(compiled, max_rollback_tokens=64)

    def start(self) -> None:
        import xgrammar
        self.matcher.reset()
        self.tensor = xgrammar.allocate_token_bitmask(1, self.vocab_size)

    def mask(self) -> np.ndarray:
        self.matcher.fill_next_token_bitmask(self.tensor)
        return self.tensor[0].numpy().view(np.uint32)

    def advance(self, token: int) -> None:
        assert self.matcher.accept_token(token)

    def rollback(self, n: int) -> None:
        self.matcher.rollback(n)


class OutlinesCore(Engine):
    name = "outlines-core 0.2"

    def setup(self) -> None:
        from outlines_core import Vocabulary
        target = self.engine.target
        tokens: dict[bytes, list[int]] = {}
        eos = next(t for t in range(self.vocab_size) if not target.token_bytes(t) and target.is_end_of_generation(t))
        for t in range(self.vocab_size):
            if target.token_bytes(t):
                tokens.setdefault(target.token_bytes(t), []).append(t)
        self.vocabulary = Vocabulary(eos, tokens)

    def compile(self) -> None:
        from outlines_core import Guide, Index
        from outlines_core.json_schema import build_regex_from_schema
        self.index = Index(build_regex_from_schema(json.dumps(SCHEMA)), self.vocabulary)
        self.guide = Guide(self.index, max_rollback=64)

    def start(self) -> None:
        self.guide.reset()
        self.buffer = np.zeros((self.vocab_size + 31) // 32, dtype=np.int32)

    def mask(self) -> np.ndarray:
        self.guide.write_mask_into(self.buffer.ctypes.data, self.buffer.size, 4)
        return self.buffer.view(np.uint32)

    def advance(self, token: int) -> None:
        self.guide.advance(token, return_tokens=False)

    def rollback(self, n: int) -> None:
        self.guide.rollback_state(n)


class LlamaCppGBNF(Engine):
    """llama.cpp's grammar sampler: its mask is applied to a full candidate array (every token's
    logit), which it edits; no rollback, so a speculative step forks the state (a clone)."""

    name = "llama.cpp GBNF (llama-cpp-python 0.3.36)"
    rolls_back = False

    def setup(self) -> None:
        import llama_cpp as ll
        self.ll = ll
        self.vocab = self.engine.target._vocab
        self.data = np.zeros(self.vocab_size, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        pointer = ctypes.cast(self.data.ctypes.data, ctypes.POINTER(ll.llama_token_data))
        self.array = ll.llama_token_data_array(pointer, self.vocab_size, -1, False)

    def compile(self) -> None:
        from llama_cpp.llama_grammar import json_schema_to_gbnf
        self.gbnf = json_schema_to_gbnf(json.dumps(SCHEMA)).encode()
        self.base = self.ll.llama_sampler_init_grammar(self.vocab, self.gbnf, b"root")
        assert self.base, "llama.cpp refused the grammar"

    def start(self) -> None:
        self.states = [self.ll.llama_sampler_clone(self.base)]

    def mask(self) -> np.ndarray:
        self.data["id"], self.data["logit"] = np.arange(self.vocab_size), 0.0  # every token a candidate
        self.array.size, self.array.selected, self.array.sorted = self.vocab_size, -1, False
        self.ll.llama_sampler_apply(self.states[-1], ctypes.byref(self.array))
        allowed = np.zeros(self.vocab_size, dtype=bool)
        allowed[self.data["id"][np.isfinite(self.data["logit"])]] = True
        return np.packbits(allowed, bitorder="little").view(np.uint32)

    def advance(self, token: int) -> None:
        self.ll.llama_sampler_accept(self.states[-1], token)

    def fork(self) -> None:
        self.states.append(self.ll.llama_sampler_clone(self.states[-1]))

    def drop(self) -> None:
        self.ll.llama_sampler_free(self.states.pop())


ENGINES = {"llguidance": Llguidance, "xgrammar": XGrammar, "outlines-core": OutlinesCore, "llamacpp": LlamaCppGBNF}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(candidate: Engine, answer: list[int], repeats: int, draft: int) -> dict:
    out: dict[str, list[float]] = {"setup": [timed(candidate.setup)], "compile": [], "token": [], "row": []}
    for _ in range(repeats):
        out["compile"].append(timed(candidate.compile))
        candidate.start()
        start = time.perf_counter()
        for token in answer:  # a plain decoding step per token: the mask, then the emitted token
            candidate.mask()
            candidate.advance(token)
        out["token"].append((time.perf_counter() - start) / len(answer))
        candidate.start()
        rows = 0
        start = time.perf_counter()
        for i, token in enumerate(answer[:-draft]):  # a verification step at every position
            if not candidate.rolls_back:
                candidate.fork()
            for j in range(draft):
                candidate.mask()
                candidate.advance(answer[i + j])
            candidate.mask()
            rows += draft + 1
            if candidate.rolls_back:
                candidate.rollback(draft)
            else:
                candidate.drop()
            candidate.advance(token)
        out["row"].append((time.perf_counter() - start) / rows)
    candidate.start()
    refused = 0
    for token in answer:
        refused += not candidate.allows(token)
        candidate.advance(token)
    return {"name": candidate.name, "refused": refused,
            **{k: {"min_ms": 1e3 * min(v), "median_ms": 1e3 * statistics.median(v)} for k, v in out.items()}}


def measure_quickdraft(engine: quickdraft.Engine, answer: list[int], repeats: int, draft: int) -> dict:
    """The engine's own path on llguidance: rows masked and applied, the forced run and the advance."""
    grammar = Grammar.json_schema(SCHEMA)
    logits = np.random.default_rng(0).standard_normal((draft + 1, engine.target.vocab_size)).astype(np.float32)
    out: dict[str, list[float]] = {"compile": [], "token": [], "row": []}
    for _ in range(repeats):
        out["compile"].append(timed(lambda: engine.vocabulary().check(grammar)))
        constraint = engine.vocabulary().constraint(grammar)
        rows, start = 0, time.perf_counter()
        for i, token in enumerate(answer[:-draft]):
            before = [tuple(answer[i:i + j]) for j in range(draft + 1)]
            constrain(logits, constraint.allowed(before))
            rows += draft + 1
            constraint.advance([token])
        out["row"].append((time.perf_counter() - start) / rows)
        constraint = engine.vocabulary().constraint(grammar)
        start = time.perf_counter()
        for token in answer:
            constraint.forced(16)
            constraint.advance([token])
        out["token"].append((time.perf_counter() - start) / len(answer))
    return {"name": "quickdraft: llguidance masks applied (rows); forced run + advance (token)", "refused": 0,
            "setup": {"min_ms": 0.0, "median_ms": 0.0},
            **{k: {"min_ms": 1e3 * min(v), "median_ms": 1e3 * statistics.median(v)} for k, v in out.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--draft", type=int, default=4, help="draft tokens per verification step")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    engine = quickdraft.load(draft=None, calibrate=False)
    text = json.dumps(ANSWER, ensure_ascii=False, separators=(JSON_FORMAT["item_separator"],
                                                              JSON_FORMAT["key_separator"]))
    answer = engine.target.tokenize(text, special=False)
    results = [measure(ENGINES[name](engine), answer, args.repeats, args.draft) for name in args.engines.split(",")]
    results.append(measure_quickdraft(engine, answer, args.repeats, args.draft))
    if args.json:
        print(json.dumps({"cpu": cpu_info().to_dict(), "answer_tokens": len(answer), "results": results}, indent=2))
        return
    print(f"CPU: {cpu_info().model}; vocabulary {engine.target.vocab_size} tokens; answer {len(answer)} tokens; "
          f"draft {args.draft}; {args.repeats} repeats; ms, min / median")
    print("| engine | setup (once) | compile | per token (mask + advance) | per draft row | answer tokens refused |")
    print("|---|---|---|---|---|---|")
    for r in results:
        cell = lambda k: f"{r[k]['min_ms']:.3f} / {r[k]['median_ms']:.3f}"  # noqa: E731
        print(f"| {r['name']} | {r['setup']['min_ms']:.0f} | {cell('compile')} | {cell('token')} | {cell('row')} "
              f"| {r['refused']} |")


if __name__ == "__main__":
    main()
