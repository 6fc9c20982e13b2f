"""Training Medusa and EAGLE heads on a frozen target, within a time budget on a CPU.

Two phases, both resumable:

1. **Hidden states** (the expensive part): corpus text is tokenized, cut into chunks of
   ``chunk`` tokens and prefilled through the frozen target, no generation. Per chunk we keep
   the final hidden states [T, H] (bfloat16), the tokens [T] and the target's own argmax after
   each position [T] (the labels: heads learn to predict what the *target* would say). They
   are cached on disk in shards (``HiddenCache``), keyed by target and corpus, so Medusa and
   EAGLE training share them and a second run only adds chunks.
2. **Heads**: AdamW on random windows of the cached chunks, several epochs, learning rate on
   a cosine over the time budget, periodic checkpoints (``train_state.pt`` + the heads) and
   ``resume``. The draft vocabulary can be trimmed to the labels' most frequent tokens
   (EAGLE-3), which makes both training and drafting cheaper.

The default corpus is the Python standard library's own ``.py`` files: a local code corpus
every Python installation has.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import QuickdraftError
from ..system import cache_dir
from . import build_head, check_kind
from .common import DraftVocab, HeadConfig, describe_target, most_frequent, save_heads
from .eagle import EagleHead
from .medusa import MedusaHeads

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".json", ".jsonl", ".c", ".h", ".js", ".ts", ".java", ".go", ".rs")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(corpus: str | Path | None) -> list[Path]:
    """The files of a corpus: one text file, every text file under a directory, or (None) the
    standard library's ``.py`` files (site-packages excluded). Shuffled with a fixed seed, so
    a partial pass still sees many modules."""
    root = Path(corpus).expanduser() if corpus else stdlib_dir()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise QuickdraftError(f"corpus {root} is neither a file nor a directory")
    suffixes = (".py",) if corpus is None else TEXT_SUFFIXES
    files = sorted(p for p in root.rglob("*") if p.suffix in suffixes and p.is_file()
                   and "site-packages" not in p.parts and "dist-packages" not in p.parts)
    if not files:
        raise QuickdraftError(f"corpus {root} holds no text files ({', '.join(suffixes)})")
    random.Random(0).shuffle(files)
    return files


def token_chunks(files: Iterable[Path], tokenize: Callable[[str], list[int]], chunk: int) -> Iterator[list[int]]:
    """The files' tokens, concatenated in order, cut into chunks of exactly ``chunk`` tokens."""
    buffer: list[int] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        buffer += tokenize(text)
        while len(buffer) >= chunk:
            yield buffer[:chunk]
            buffer = buffer[chunk:]


@dataclass
class Data:
    """Cached training data: hidden [N, T, H] (bfloat16), tokens and labels [N, T] (int64)."""

    hidden: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def split(self, held_out: int) -> tuple["Data", "Data"]:
        n = len(self) - held_out
        return (Data(self.hidden[:n], self.tokens[:n], self.labels[:n]),
                Data(self.hidden[n:], self.tokens[n:], self.labels[n:]))


class HiddenCache:
    """Shards of (hidden, tokens, labels) for one target, corpus and chunk size, in a directory."""

    def __init__(self, root: Path, target: dict, corpus: str, chunk: int) -> None:
        key = hashlib.sha256(json.dumps([target["fingerprint"], corpus, chunk]).encode()).hexdigest()[:16]
        self.dir = Path(root).expanduser() / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.dir / "index.json"
        self.index = (json.loads(self.index_path.read_text()) if self.index_path.exists()
                      else {"target": target, "corpus": corpus, "chunk": chunk, "shards": [], "chunks": 0})

    @property
    def chunks(self) -> int:
        return self.index["chunks"]

    def add(self, hidden: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        name = f"shard-{len(self.index['shards']):05d}.safetensors"
        save_file({"hidden": hidden.contiguous(), "tokens": tokens.int().contiguous(),
                   "labels": labels.int().contiguous()}, str(self.dir / name))
        self.index["shards"].append(name)
        self.index["chunks"] += hidden.shape[0]
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.index, indent=1))
        tmp.replace(self.index_path)

    def load(self) -> Data:
        shards = [load_file(str(self.dir / name)) for name in self.index["shards"]]
        if not shards:
            raise QuickdraftError(f"no hidden states cached in {self.dir}: the time budget ended before the "
                                  "first shard; raise --minutes")
        return Data(*(torch.cat([s[k] for s in shards]) if k == "hidden" else torch.cat([s[k] for s in shards]).long()
                      for k in ("hidden", "tokens", "labels")))


def target_rows(model: nn.Module, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill ``tokens`` [T] through the frozen ``model``; return its final hidden states [T, H]
    (after the final norm) and its argmax after every position [T]."""
    device = model.get_output_embeddings().weight.device
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=torch.as_tensor([list(tokens)], device=device)).last_hidden_state[0]
        labels = torch.cat([model.get_output_embeddings()(part).argmax(-1) for part in hidden.split(128)])
    return hidden, labels


def collect(model: nn.Module, chunks: Iterator[list[int]], cache: HiddenCache, *, deadline: float,
            max_chunks: int, shard_chunks: int = 8, progress: Progress | None = None) -> None:
    """Add chunks to ``cache`` (skipping those it already holds) until ``max_chunks`` are cached,
    the corpus ends or ``deadline`` (time.monotonic()) passes."""
    task = progress.add_task("hidden states", total=max_chunks, completed=cache.chunks, info="") if progress else None
    for _ in range(cache.chunks):
        if next(chunks, None) is None:
            return
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def flush():
        if rows:
            cache.add(*(torch.stack(column) for column in zip(*rows)))
            rows.clear()

    while cache.chunks + len(rows) < max_chunks and time.monotonic() < deadline:
        tokens = next(chunks, None)
        if tokens is None:
            break
        hidden, labels = target_rows(model, tokens)
        rows.append((hidden.to("cpu", torch.bfloat16), torch.as_tensor(tokens), labels.cpu()))
        if len(rows) == shard_chunks:
            flush()
        if progress:
            progress.update(task, completed=cache.chunks + len(rows))
    flush()


def new_head(kind: str, model: nn.Module, *, num_heads: int = 4, intermediate_size: int | None = None) -> nn.Module:
    """An untrained head of ``kind`` shaped for the transformers ``model``: Medusa with
    ``num_heads`` heads (identity blocks: each drafts the LM head's own token), EAGLE as one
    decoder layer of the target (``intermediate_size`` overrides its MLP width)."""
    check_kind(kind)
    if kind == "medusa":
        return MedusaHeads(model.config.hidden_size, num_heads=num_heads)
    return EagleHead.for_target(model.config, intermediate_size)


def windows(data: Data, size: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``batch`` random windows of ``size`` consecutive positions: (hidden, tokens, labels) [B, size, ...]."""
    size = min(size, data.tokens.shape[1])
    rows = torch.randint(len(data), (batch,), generator=generator)
    starts = torch.randint(data.tokens.shape[1] - size + 1, (batch,), generator=generator)
    pick = lambda t: torch.stack([t[r, s:s + size] for r, s in zip(rows.tolist(), starts.tolist())])  # noqa: E731
    return pick(data.hidden).float(), pick(data.tokens), pick(data.labels)


def head_loss(kind: str, head: nn.Module, vocab: DraftVocab, embed: nn.Module, hidden, tokens, labels,
              noise: float = 0.0):
    """(loss, accuracy per head) of a head on a batch (see MedusaHeads.loss, EagleHead.loss)."""
    if kind == "medusa":
        return head.loss(vocab, hidden, tokens, labels)
    return head.loss(vocab, embed, hidden, tokens, labels, noise=noise)


def evaluate(kind: str, head: nn.Module, vocab: DraftVocab, embed: nn.Module, data: Data) -> list[float]:
    """Top-1 accuracy per head on whole held-out chunks (labels inside the draft vocabulary)."""
    if not len(data):
        return []
    head.eval()
    with torch.no_grad():
        _, accuracy = head_loss(kind, head, vocab, embed, data.hidden.float(), data.tokens, data.labels)
    head.train()
    return [round(a, 4) for a in accuracy]


@dataclass
class TrainOptions:
    """Knobs of :func:`train_head` (the CLI exposes them)."""

    minutes: float = 20.0  # the whole budget: hidden states, then training
    collect_share: float = 0.5  # at most this part of the budget goes to new hidden states
    max_chunks: int = 400  # hidden-state chunks to cache at most
    chunk: int = 512
    window: int = 256
    batch: int = 4
    lr: float | None = None  # default: 1e-3 Medusa, 3e-4 EAGLE
    draft_vocab: int = 16384  # at most this many of the labels' most frequent tokens; 0 = the whole vocabulary
    num_heads: int = 4  # Medusa
    intermediate_size: int | None = None  # EAGLE MLP width (default: the target's)
    noise: float = 0.05  # EAGLE feature noise
    checkpoint_s: float = 120.0
    max_steps: int | None = None
    seed: int = 0
    resume: bool = False
    overwrite: bool = False


def train_head(kind: str, model: nn.Module, tokenize: Callable[[str], list[int]], out: Path, *,
               corpus: str | Path | None = None, cache_root: Path | None = None,
               options: TrainOptions = TrainOptions(), chunks: Iterator[list[int]] | None = None,
               console=None) -> HeadConfig:
    """Train ``kind`` heads ("medusa" or "eagle") for the frozen transformers ``model`` and save
    them to ``out``. ``chunks`` replaces the corpus (token lists, for tests)."""
    out = Path(out).expanduser()
    check_kind(kind)
    state_path = out / "train_state.pt"
    if options.resume and not state_path.exists():
        raise QuickdraftError(f"nothing to resume in {out} (no train_state.pt)")
    if not options.resume and not options.overwrite and (out / "config.json").exists():
        raise QuickdraftError(f"{out} already holds trained heads: pass --resume to continue, --overwrite "
                              "to start again, or another --out")
    start = time.monotonic()
    state = torch.load(state_path, weights_only=False) if options.resume else None
    spent = state["elapsed_s"] if state else 0.0
    deadline = start + options.minutes * 60 - spent
    model.requires_grad_(False)
    target = describe_target(model)
    corpus_name = "chunks" if chunks is not None else str(Path(corpus).expanduser() if corpus else stdlib_dir())
    cache = HiddenCache(cache_root or cache_dir() / "hidden", target, corpus_name,
                        options.chunk)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        if chunks is None:
            chunks = token_chunks(corpus_files(corpus), tokenize, options.chunk)
        collect(model, chunks, cache, deadline=start + max(0.0, options.minutes * 60 - spent) * options.collect_share,
                max_chunks=options.max_chunks, progress=progress)
        data = cache.load()
        train, held_out = data.split(min(8, len(data) // 10))
        vocab_ids = (state["vocab_ids"] if state else most_frequent(train.labels, target["vocab_size"],
                                                                        options.draft_vocab))
        head = (build_head(kind, state["shape"]) if state else
                new_head(kind, model, num_heads=options.num_heads, intermediate_size=options.intermediate_size))
        if state:
            head.load_state_dict(state["head"])
        head.float().train()
        vocab = DraftVocab(model.get_output_embeddings(), vocab_ids, torch.float32)
        embed = model.get_input_embeddings()
        lr = options.lr or (1e-3 if kind == "medusa" else 3e-4)
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
        if state:
            optimizer.load_state_dict(state["optimizer"])
        step = state["step"] if state else 0
        generator = torch.Generator().manual_seed(options.seed + step)
        total = options.minutes * 60
        task = progress.add_task(f"train {kind}", total=options.max_steps or None, info="")
        last_save, losses = time.monotonic(), []
        train_start_spent = state.get("train_start_s", spent) if state else time.monotonic() - start

        def elapsed() -> float:
            return spent + time.monotonic() - start

        def checkpoint(final: bool) -> HeadConfig:
            config = HeadConfig(kind=kind, target=target, draft_vocab=len(vocab), shape=head.shape, training={
                "corpus": corpus_name, "chunk": options.chunk, "chunks": len(train), "tokens": int(train.tokens.numel()),
                "steps": step, "minutes": round(elapsed() / 60, 2), "window": options.window, "batch": options.batch,
                "lr": lr, "loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
                "held_out_accuracy": evaluate(kind, head, vocab, embed, held_out) if final else None,
                "draft_vocab_coverage": round(float((vocab.from_full(train.labels) != -100).float().mean()), 4)})
            save_heads(out, config, head, vocab_ids)
            torch.save({"step": step, "elapsed_s": elapsed(), "train_start_s": train_start_spent,
                        "optimizer": optimizer.state_dict(),
                        "head": head.state_dict(), "shape": head.shape, "vocab_ids": vocab_ids}, state_path)
            return config

        while (step < options.max_steps) if options.max_steps else (time.monotonic() < deadline):
            fraction = min(1.0, (elapsed() - train_start_spent) / max(1.0, total - train_start_spent))
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * fraction)))
            loss, accuracy = head_loss(kind, head, vocab, embed, *windows(train, options.window, options.batch, generator),
                                       noise=options.noise)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
            step += 1
            losses.append(loss.item())
            progress.update(task, advance=1, info=f"loss {losses[-1]:.3f} acc " + " ".join(f"{a:.2f}" for a in accuracy))
            if time.monotonic() - last_save > options.checkpoint_s:
                checkpoint(final=False)
                last_save = time.monotonic()
        return checkpoint(final=True)

