"""Peers: the speculative decoding people already use, on the same prompts and models as our bench.

Each peer runs greedy generation on our prompt token ids, against *its own* plain generation,
interleaved per prompt (plain, then its speculative methods, the order rotated per repeat), with
the same ``max_tokens``, and stops at any end-of-generation token of the GGUF vocabulary (the set
llama.cpp and our engine stop at). A peer that cannot run here (a package not installed, too
little memory, a model it cannot load) does not stop the bench: its ``peer_status`` says why.

=================== ============== ==================================================================
peer                method         what runs
=================== ============== ==================================================================
llama-cpp-python    plain          ``Llama.generate(tokens, temp=0)``
llama-cpp-python    prompt-lookup  the same, on a second ``Llama`` built with
                                   ``draft_model=LlamaPromptLookupDecoding(num_pred_tokens=N)``
transformers        plain          ``model.generate(ids, do_sample=False)``, the models dequantized
                                   from the same GGUF files (``from_pretrained(dir, gguf_file=)``)
transformers        assisted       ``assistant_model=draft``, ``num_assistant_tokens=N`` (constant
                                   schedule; HF's default confidence threshold kept)
transformers        prompt-lookup  ``prompt_lookup_num_tokens=N``
=================== ============== ==================================================================

Rows (``results.json["peers"]``)::

    peer, method, task, prompt_id, turn, repeat,
    new_tokens          end-of-generation token excluded
    time_s              the whole call, prompt processing included
    first_token_s       until the first new token(s); first_chunk: how many came then
    tokens_per_second   decode speed: tokens after the first chunk / the time after it (our
                        samples leave prefill out the same way)
    speedup             the peer's own plain decode seconds per token over this row's, same
                        prompt and repeat; 1.0 for plain; None when that plain row is not at hand
    equal_to_reference  tokens == our AR tokens (None without a reference)
    config              the peer's settings and versions (num_pred_tokens, dtype, load_s, ...)

The "first chunk" is the first token, except for transformers' assisted generation, whose first
step may emit several. Worked example: 64 new tokens in 4.0 s, the first after 0.4 s: 63 / 3.6 =
17.5 tokens per second; plain did 64 in 6.0 s, first after 0.4 s (63 / 5.6 = 11.25): speedup
17.5 / 11.25 = 1.56.

The transformers peer loads bfloat16 by default. Measured on the 2-core Sapphire Rapids machines
we bench on (AMX-BF16; Qwen2.5-Coder 1.5B + 0.5B, 64 tokens, warm, machine otherwise idle):
plain generation ran at 5.0-6.0 tokens per second in bfloat16 against 2.7 in float32, assisted
generation paid in bfloat16 (1.3-1.9x) but not in float32 (0.98x), and the process peaked at
6.4 GB instead of 10.6 GB. Loading (dequantizing) took about the same either way: 45-60 s for the
target and 35 s for the draft. bfloat16 is not the float32 that the dequantized GGUF would give,
so ``equal_to_reference`` records whether that changed the output (it did not, on those prompts).
``PEERS["transformers"] = functools.partial(TransformersPeer, dtype="float32")`` runs float32.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Protocol, Sequence

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["PEERS", "LlamaCppPythonPeer", "Peer", "PeerOutput", "PeerPrompt", "PeerSetup",
           "PeerUnavailable", "TransformersPeer", "peer_key", "run_peers"]

ROW_KEY = ("peer", "method", "task", "prompt_id", "turn", "repeat")
TORCH_HINT = "pip install 'quickdraft[torch]'"
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class PeerPrompt:
    """One prompt-turn unit: the chat-templated prompt as token ids (from the GGUF tokenizer
    through llama.cpp) and our AR output for it (None if there is none)."""

    task: str
    prompt_id: str
    turn: int
    prompt_tokens: list[int]
    reference_tokens: list[int] | None


@dataclass(frozen=True)
class PeerSetup:
    """What every peer is built from. ``n_ctx``: the longest prompt plus ``max_tokens`` plus a
    draft fits (see ``context_size``)."""

    target_path: Path
    draft_path: Path
    num_draft: int
    n_ctx: int
    n_threads: int


class PeerOutput(NamedTuple):
    """One generation: new tokens (end-of-generation token excluded), seconds for the whole call,
    seconds until the first new tokens arrived and how many came then (None, 0 if none did)."""

    tokens: list[int]
    time_s: float
    first_token_s: float | None
    first_chunk: int


class PeerUnavailable(Exception):
    """The peer cannot run on this machine (a package is missing, too little memory); its status
    becomes ``skipped: <message>``. Any other exception makes it ``failed: <message>``."""


class Peer(Protocol):
    """A tool we compare against, registered in ``PEERS`` (rows carry the registry name).
    ``load`` imports and loads (it may raise ``PeerUnavailable``), ``generate`` runs one greedy
    generation from an empty cache, ``close`` frees the models (also after a failed load)."""

    methods: tuple[str, ...]  # "plain" first
    config: dict              # recorded in every row (after load)

    def load(self) -> None: ...
    def generate(self, method: str, prompt_tokens: Sequence[int], max_tokens: int) -> PeerOutput: ...
    def close(self) -> None: ...


def eog_tokens(path: Path) -> frozenset[int]:
    """Every token llama.cpp treats as end of generation in the GGUF at ``path`` (EOS, EOT,
    ``<|im_end|>``, ...), read from its vocabulary alone."""
    import llama_cpp as ll

    logger = logging.getLogger("llama-cpp-python")  # where llama.cpp's log lines go
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    ll.llama_backend_init()
    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ValueError(f"llama.cpp could not read the vocabulary of {path}")
    try:
        vocab = ll.llama_model_get_vocab(model)
        return frozenset(t for t in range(ll.llama_vocab_n_tokens(vocab)) if ll.llama_vocab_is_eog(vocab, t))
    finally:
        ll.llama_model_free(model)


def _until_eog(tokens: Sequence[int], eog: frozenset[int]) -> list[int]:
    out = []
    for t in tokens:
        if t in eog:
            break
        out.append(int(t))
    return out


# --- llama-cpp-python ------------------------------------------------------------------------
class LlamaCppPythonPeer:
    """llama-cpp-python's high-level ``Llama``: plain, and its prompt lookup draft model.

    Two ``Llama`` objects share the (memory-mapped) GGUF: a plain one, and one with
    ``draft_model=LlamaPromptLookupDecoding(num_pred_tokens=N)``. The draft one keeps logits for
    every position (``logits_all``: n_ctx x vocab floats, 0.3 GB at n_ctx 512 for Qwen), which
    is why ``n_ctx`` is kept to what the prompts need. Each run starts from an empty cache.
    """

    name = "llama-cpp-python"
    methods = ("plain", "prompt-lookup")

    def __init__(self, setup: PeerSetup) -> None:
        self.setup = setup
        self.config = {"num_pred_tokens": setup.num_draft, "max_ngram_size": 2, "n_ctx": setup.n_ctx,
                       "n_threads": setup.n_threads}
        self._llms: dict = {}
        self._eog: frozenset[int] = frozenset()

    def load(self) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise PeerUnavailable("llama_cpp not installed; pip install llama-cpp-python")
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.config["version"] = llama_cpp.__version__
        self._eog = eog_tokens(self.setup.target_path)
        common = dict(model_path=str(self.setup.target_path), n_ctx=self.setup.n_ctx,
                      n_threads=self.setup.n_threads, n_threads_batch=self.setup.n_threads, verbose=False)
        self._llms["plain"] = llama_cpp.Llama(**common)
        # logits_all explicitly: with a draft model Llama keeps all logits, but sizes its score
        # buffer by the argument (n_batch rows), which overflows past n_batch positions.
        lookup = LlamaPromptLookupDecoding(max_ngram_size=2, num_pred_tokens=self.setup.num_draft)
        self._llms["prompt-lookup"] = llama_cpp.Llama(**common, logits_all=True, draft_model=lookup)

    def generate(self, method: str, prompt_tokens: Sequence[int], max_tokens: int) -> PeerOutput:
        llm = self._llms[method]
        tokens: list[int] = []
        first = None
        start = time.perf_counter()
        llm.reset()  # no run reuses a cached prefix
        for token in llm.generate(list(prompt_tokens), temp=0.0, repeat_penalty=1.0):
            if first is None:
                first = time.perf_counter() - start
            if token in self._eog:
                break
            tokens.append(int(token))
            if len(tokens) >= max_tokens:
                break
        return PeerOutput(tokens, time.perf_counter() - start, first, min(1, len(tokens)))

    def close(self) -> None:
        for llm in self._llms.values():
            with contextlib.suppress(Exception):
                llm.close()
        self._llms.clear()


# --- Hugging Face transformers ---------------------------------------------------------------
class _FirstChunkTimer:
    """A transformers streamer that notes when the first new tokens arrive (its first ``put``
    is the prompt)."""

    def __init__(self, start: float) -> None:
        self.start, self.puts, self.first_s, self.first_tokens = start, 0, None, 0

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_s = time.perf_counter() - self.start
            self.first_tokens = int(value.numel())

    def end(self) -> None:
        pass


def _gguf_parameters(path: Path) -> int:
    """Number of weights in a GGUF file (what dequantization turns into floats)."""
    import gguf

    return sum(int(t.n_elements) for t in gguf.GGUFReader(str(path)).tensors)


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class TransformersPeer:
    """Hugging Face transformers: plain, assisted generation with the draft model, prompt lookup.

    Both models are dequantized from the GGUF files (``AutoModelForCausalLM.from_pretrained(dir,
    gguf_file=name)``, 45-60 s for the Qwen target and 35 s for its draft on 2 cores) into ``dtype``
    ("bfloat16" by default, see the module docstring, or "float32"). The assistant drafts
    ``num_draft`` tokens per step with a constant schedule, so repeats do not influence each other.
    """

    name = "transformers"
    methods = ("plain", "assisted", "prompt-lookup")

    def __init__(self, setup: PeerSetup, *, dtype: str = "bfloat16") -> None:
        if dtype not in ("bfloat16", "float32", "float16"):
            raise ValueError(f"dtype must be bfloat16, float32 or float16, not {dtype!r}")
        self.setup, self.dtype = setup, dtype
        self.config: dict = {"dtype": dtype, "num_assistant_tokens": setup.num_draft,
                             "num_assistant_tokens_schedule": "constant",
                             "prompt_lookup_num_tokens": setup.num_draft, "max_matching_ngram_size": 2,
                             "n_threads": setup.n_threads}
        self._target = self._draft = None
        self._eog: list[int] = []
        self._threads_before: int | None = None

    def load(self) -> None:
        for module, why in (("torch", TORCH_HINT), ("transformers", TORCH_HINT), ("gguf", TORCH_HINT),
                            ("accelerate", "transformers needs it to load GGUF files; pip install accelerate")):
            if importlib.util.find_spec(module) is None:
                raise PeerUnavailable(f"{module} not installed; {why}")
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        self._check_memory()
        self.config.update(torch=torch.__version__, transformers=transformers.__version__)
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.setup.n_threads)
        self._eog = sorted(eog_tokens(self.setup.target_path))
        load_s = {}
        for role, path in (("target", self.setup.target_path), ("draft", self.setup.draft_path)):
            start = time.perf_counter()
            model = _quietly(lambda: AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=getattr(torch, self.dtype)))
            model.eval()
            load_s[role] = round(time.perf_counter() - start, 1)
            if role == "target":
                self._target = model
            else:
                self._draft = model
        self._draft.generation_config.num_assistant_tokens = self.setup.num_draft
        self._draft.generation_config.num_assistant_tokens_schedule = "constant"
        threshold = getattr(self._draft.generation_config, "assistant_confidence_threshold", None)
        self.config.update(load_s=load_s, assistant_confidence_threshold=0.4 if threshold is None else threshold)

    def _check_memory(self) -> None:
        """Skip (rather than be killed by the OOM killer) when the dequantized models cannot fit."""
        available = _available_bytes()
        if available is None:
            return
        sizes = [_gguf_parameters(p) for p in (self.setup.target_path, self.setup.draft_path)]
        per_weight = 4 if self.dtype == "float32" else 2
        # Both models resident, plus float32 copies of the larger one's tensors while converting
        # (measured peak: 8.8 GB for the 1.5B target in float32, 7.2 GB resident after loading).
        need = sum(sizes) * per_weight + max(sizes) + (1 << 30)
        if need > available:
            raise PeerUnavailable(f"needs about {need / 2**30:.1f} GiB of memory for the {self.dtype} models, "
                                  f"{available / 2**30:.1f} GiB available")

    def generate(self, method: str, prompt_tokens: Sequence[int], max_tokens: int) -> PeerOutput:
        import torch

        ids = torch.tensor([list(prompt_tokens)], dtype=torch.long)
        extra = {"plain": {}, "assisted": {"assistant_model": self._draft},
                 "prompt-lookup": {"prompt_lookup_num_tokens": self.setup.num_draft,
                                   "max_matching_ngram_size": 2}}[method]
        start = time.perf_counter()
        timer = _FirstChunkTimer(start)
        with torch.inference_mode():
            out = _quietly(lambda: self._target.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                num_beams=1, eos_token_id=self._eog, pad_token_id=self._eog[0], streamer=timer, **extra))
        elapsed = time.perf_counter() - start
        tokens = _until_eog(out[0, ids.shape[1]:].tolist(), frozenset(self._eog))[:max_tokens]
        return PeerOutput(tokens, elapsed, timer.first_s, min(timer.first_tokens, len(tokens)))

    def close(self) -> None:
        self._target = self._draft = None
        gc.collect()
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)


def _quietly(fn: Callable):
    """Run ``fn`` with transformers' warnings and progress bars (the GGUF conversion writes a
    tqdm bar to stderr) kept off the terminal, where a rich progress display may be running."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return fn()
    finally:
        hf_logging.set_verbosity(verbosity)


#: Registry: peer name -> factory taking a ``PeerSetup``.
PEERS: dict[str, Callable[[PeerSetup], Peer]] = {
    "llama-cpp-python": LlamaCppPythonPeer,
    "transformers": TransformersPeer,
}


# --- the run ---------------------------------------------------------------------------------
def peer_key(row: Mapping) -> tuple:
    """``(peer, method, task, prompt_id, turn, repeat)``: what ``done`` holds."""
    return tuple(row[k] for k in ROW_KEY)


def context_size(prompts: Sequence[PeerPrompt], max_tokens: int, num_draft: int) -> int:
    """The smallest multiple of 256 (at least 512) that holds the longest prompt, ``max_tokens``
    and one draft past them."""
    need = max((len(p.prompt_tokens) for p in prompts), default=0) + max_tokens + num_draft + 1
    return max(512, -(-need // 256) * 256)


def _rotate(methods: Sequence[str], by: int) -> list[str]:
    by %= len(methods)
    return [*methods[by:], *methods[:by]]


def _decode_seconds_per_token(row: Mapping) -> float | None:
    """Seconds per token after the first chunk (None if that is not measurable)."""
    first, chunk = row.get("first_token_s"), row.get("first_chunk", 1)
    tokens = row.get("new_tokens", 0) - chunk
    if first is None or tokens <= 0 or row["time_s"] - first <= 0:
        return None
    return (row["time_s"] - first) / tokens


def _make_row(name: str, config: dict, method: str, prompt: PeerPrompt, repeat: int, out: PeerOutput) -> dict:
    row = {"peer": name, "method": method, "task": prompt.task, "prompt_id": prompt.prompt_id,
           "turn": prompt.turn, "repeat": repeat, "new_tokens": len(out.tokens), "time_s": out.time_s,
           "first_token_s": out.first_token_s, "first_chunk": out.first_chunk}
    per_token = _decode_seconds_per_token(row)
    row["tokens_per_second"] = 1.0 / per_token if per_token else None
    row["speedup"] = None
    row["equal_to_reference"] = (None if prompt.reference_tokens is None
                                 else list(out.tokens) == list(prompt.reference_tokens))
    row["config"] = dict(config)
    return row


def _set_speedups(rows: Mapping[str, dict], plain: Mapping | None) -> None:
    base = _decode_seconds_per_token(plain) if plain else None
    for method, row in rows.items():
        mine = _decode_seconds_per_token(row)
        if method == "plain":
            row["speedup"] = 1.0
        elif base and mine:
            row["speedup"] = base / mine


def run_peers(prompts: Sequence[PeerPrompt], *, target_path: Path, draft_path: Path, max_tokens: int,
              repeat: int, num_draft: int, peers: Sequence[str] = tuple(PEERS),
              on_row: Callable[[dict], None] = lambda row: None, progress: "Progress | None" = None,
              done: "set[tuple] | Mapping[tuple, dict]" = frozenset(),
              n_threads: int | None = None) -> dict[str, str]:
    """Run each named peer on every prompt ``repeat`` times; return ``{peer: status}``.

    Every finished row goes to ``on_row`` (the caller checkpoints it), a prompt-repeat unit at a
    time, once the unit's plain row is there to compute speedups. Rows whose key (``peer_key``)
    is in ``done`` are not run again; when ``done`` maps keys to the stored rows, a stored plain
    row still serves as the baseline of a unit's new rows (with a plain set of keys those get
    ``speedup`` None). A peer with nothing left to run is not loaded. Status: ``ok``,
    ``skipped: <why>`` (cannot run here) or ``failed: <why>`` (rows finished before a failure
    are kept). Peers run one after the other and each is closed before the next loads. After
    loading, each method generates ``WARMUP_TOKENS`` once, untimed, so that one-time costs (pages
    of memory-mapped weights read from disk, buffers allocated, torch kernels selected) do not
    land on whichever method happens to run first.
    """
    from ..backends.llamacpp import default_threads

    setup = PeerSetup(Path(target_path), Path(draft_path), num_draft,
                      context_size(prompts, max_tokens, num_draft), n_threads or default_threads())
    status: dict[str, str] = {}
    for name in peers:
        status[name] = _run_peer(name, prompts, setup, max_tokens, repeat, on_row, progress, done)
    return status


def _run_peer(name: str, prompts: Sequence[PeerPrompt], setup: PeerSetup, max_tokens: int, repeat: int,
              on_row: Callable[[dict], None], progress: "Progress | None", done) -> str:
    factory = PEERS.get(name)
    if factory is None:
        return f"skipped: unknown peer {name!r} (known: {', '.join(PEERS)})"
    try:
        peer = factory(setup)
    except Exception as e:  # noqa: BLE001 - a peer must never stop the bench
        return f"failed: {_describe(e)}"
    todo = [(p, r, m) for p in prompts for r in range(repeat) for m in _rotate(peer.methods, r)
            if (name, m, p.task, p.prompt_id, p.turn, r) not in done]
    if not todo:
        return "ok"
    bar = None
    if progress is not None:
        bar = progress.add_task(f"peer {name}", total=len(todo), status="loading")
    try:
        try:
            peer.load()
        except PeerUnavailable as e:
            return f"skipped: {e}"
        except ModuleNotFoundError as e:
            return f"skipped: {e.name or e} not installed"
        except MemoryError:
            return "failed: out of memory while loading the models"
        except Exception as e:  # noqa: BLE001
            return f"failed: loading: {_describe(e)}"
        if progress is not None:
            progress.update(bar, status="warming up")
        try:
            for method in peer.methods:  # untimed: page in the weights, allocate, compile kernels
                peer.generate(method, todo[0][0].prompt_tokens, min(max_tokens, WARMUP_TOKENS))
        except Exception as e:  # noqa: BLE001
            return f"failed: warm-up ({method}): {_describe(e)}"
        return _run_units(name, peer, prompts, max_tokens, repeat, on_row, progress, bar, done)
    finally:
        peer.close()
        del peer
        gc.collect()
        if bar is not None:
            progress.update(bar, visible=False)


def _run_units(name: str, peer: Peer, prompts: Sequence[PeerPrompt], max_tokens: int, repeat: int,
               on_row: Callable[[dict], None], progress: "Progress | None", bar, done) -> str:
    speedups: dict[str, list[float]] = {}
    for prompt in prompts:
        for r in range(repeat):
            rows: dict[str, dict] = {}
            try:
                for method in _rotate(peer.methods, r):
                    key = (name, method, prompt.task, prompt.prompt_id, prompt.turn, r)
                    if key in done:
                        continue
                    if progress is not None:
                        progress.update(bar, description=f"peer {name} {prompt.prompt_id} [{method}]")
                    try:
                        out = peer.generate(method, prompt.prompt_tokens, max_tokens)
                    except MemoryError:
                        return f"failed: out of memory in {method} on {prompt.task}/{prompt.prompt_id}"
                    except Exception as e:  # noqa: BLE001
                        return f"failed: {method} on {prompt.task}/{prompt.prompt_id}: {_describe(e)}"
                    rows[method] = _make_row(name, peer.config, method, prompt, r, out)
                    if progress is not None:
                        progress.advance(bar)
            finally:  # emit what finished, even when a later method failed or was interrupted
                plain_key = (name, "plain", prompt.task, prompt.prompt_id, prompt.turn, r)
                plain = rows.get("plain") or (done.get(plain_key) if isinstance(done, Mapping) else None)
                _set_speedups(rows, plain)
                for row in rows.values():
                    on_row(row)
                    if row["method"] != "plain" and row["speedup"]:
                        speedups.setdefault(row["method"], []).append(row["speedup"])
                if progress is not None:
                    progress.update(bar, status=", ".join(
                        f"{m} {math.exp(sum(map(math.log, v)) / len(v)):.2f}x"
                        for m, v in speedups.items()))
    return "ok"


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
