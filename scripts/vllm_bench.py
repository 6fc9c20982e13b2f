"""Bench row for quickdraft inside vLLM: our drafter against vLLM's native ngram and suffix methods
and no speculation, same prompts, same engine settings (run in the vLLM venv, see docs/vllm.md).

    build/venv-vllm/bin/python scripts/vllm_bench.py --model qwen2.5-coder-0.5b-instruct --max-tokens 96
    build/venv-vllm/bin/python scripts/vllm_bench.py --model ./hf-model-dir --methods none,quickdraft,ngram

--model: a transformers model directory or Hugging Face id, a .gguf file or a bundled quickdraft
model name (a GGUF is dequantized once by transformers into --cache, as quickdraft's torch backend
loads it; needs the gguf and accelerate packages), or "tiny" (a random-weight Qwen2 written on the
spot, as tests/vllm use). Each method runs in a fresh process and engine; prompts run one at a time (batch 1, after one warm-up request) and then all at once
(batch = number of prompts). Greedy; every output is compared with the no-speculation one.
Reports tokens/s (generated tokens / wall time), drafted and accepted tokens from vLLM's own
counters, and mean accepted length (tokens per verified step of a request). "suffix" needs the
arctic-inference package and is skipped (with the reason) when it is missing.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

DRAFTER = "quickdraft.integrations.vllm.QuickdraftProposer"
REPO = Path(__file__).resolve().parent.parent


def method_configs(k: int) -> dict[str, dict | None]:
    return {
        "none": None,
        "quickdraft": {"method": "custom_class", "model": DRAFTER, "num_speculative_tokens": k},
        "ngram": {"method": "ngram", "num_speculative_tokens": min(k, 5), "prompt_lookup_max": 5,
                  "prompt_lookup_min": 2},
        "suffix": {"method": "suffix", "num_speculative_tokens": k},
    }


def prompts(limit: int) -> list[str]:
    """Input-grounded code edits (the answer mostly copies the prompt, like quickdraft's code-edit
    task) over small functions of Python's standard library, and two open questions."""
    import json as json_module
    import shlex
    import textwrap

    sources = [textwrap.dedent(inspect.getsource(f)) for f in
               (shlex.quote, textwrap.indent, json_module.dumps, textwrap.dedent)]
    edits = [f"Add type hints to this code and change nothing else:\n\n```python\n{s}```" for s in sources]
    questions = ["Explain the difference between a list and a tuple in Python, with examples.",
                 "Write a Python function that merges two sorted lists."]
    picked = [*edits[: max(1, limit - 1)], *questions][:limit]
    return picked


def resolve_model(name: str, cache: Path) -> Path:
    if name == "tiny":
        spec = importlib.util.spec_from_file_location("vllm_tests_conftest", REPO / "tests/vllm/conftest.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        path = cache / "tiny-qwen2"
        if not (path / "config.json").exists():
            module.write_tiny_qwen2(path)
        return path
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if not path.exists() and "/" in name:
        return Path(name)  # a Hugging Face model id: vLLM fetches it
    if not path.exists():
        from quickdraft.models import resolve_model as resolve_bundled

        path = Path(resolve_bundled(name))
    out = cache / (path.stem + "-hf")
    if not (out / "config.json").exists():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"dequantizing {path} into {out} (once) ...", file=sys.stderr, flush=True)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.bfloat16)
        config = loaded.config
        if hasattr(config, "quantization_config"):  # marks the GGUF origin; transformers will not save that
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def counters(llm) -> dict[str, float]:
    return {m.name.removeprefix("vllm:spec_decode_"): m.value for m in llm.get_metrics()
            if m.name.startswith("vllm:spec_decode_num") and getattr(m, "value", None) is not None}


def run(method: str, config: dict | None, model: Path, texts: list[str], args) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model), dtype=args.dtype, max_model_len=args.max_model_len, max_num_seqs=len(texts),
              enforce_eager=True, kv_cache_memory_bytes=args.kv_mib << 20, seed=0,
              speculative_config=config, disable_log_stats=False)
    try:
        greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens)
        chats = [[{"role": "user", "content": t}] for t in texts]
        llm.chat(chats[:1], greedy, use_tqdm=False)  # warm-up
        result = {"method": method}
        for mode in ("batch1", f"batch{len(texts)}"):
            before, start = counters(llm), time.perf_counter()
            if mode == "batch1":
                outs = [llm.chat([c], greedy, use_tqdm=False)[0] for c in chats]
            else:
                outs = llm.chat(chats, greedy, use_tqdm=False)
            seconds = time.perf_counter() - start
            after = counters(llm)
            delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
            generated = sum(len(o.outputs[0].token_ids) for o in outs)
            drafts, drafted, accepted = (delta.get("num_drafts", 0), delta.get("num_draft_tokens", 0),
                                         delta.get("num_accepted_tokens", 0))
            result[mode] = {"seconds": round(seconds, 3), "generated": generated,
                            "tokens_per_s": round(generated / seconds, 2), "drafted": int(drafted),
                            "accepted": int(accepted),
                            "acceptance": round(accepted / drafted, 3) if drafted else None,
                            "accepted_length": round(1 + accepted / drafts, 2) if drafts else None,
                            "outputs": [list(o.outputs[0].token_ids) for o in outs]}
        return result
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--methods", default="none,quickdraft,ngram,suffix")
    parser.add_argument("--num-speculative-tokens", "-k", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--limit", type=int, default=4, help="number of prompts")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-mib", type=int, default=1024, help="KV cache MiB (vLLM CPU)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("QUICKDRAFT_CACHE", "~/.cache/quickdraft"))
                        .expanduser() / "vllm")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one method, JSON to --out
    args = parser.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.model, args.cache)
    texts = prompts(args.limit)
    configs = method_configs(args.num_speculative_tokens)
    if args.one:
        args.out.write_text(json.dumps(run(args.one, configs[args.one], model, texts, args)))
        return
    results, skipped = [], {}
    for method in args.methods.split(","):
        if method == "suffix" and importlib.util.find_spec("arctic_inference") is None:
            skipped[method] = "arctic-inference is not installed"
            continue
        # one process per method: a second engine in a process that ran vLLM's ngram (numba) fails
        # in vLLM 0.32.0's kernel rebinding scan, and each method starts from a cold process alike
        print(f"== {method}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            argv = [a for a in sys.argv[1:] if a]
            subprocess.run([sys.executable, __file__, *argv, "--one", method, "--out", str(out)], check=True)
            results.append(json.loads(out.read_text()))

    import vllm

    reference = next((r for r in results if r["method"] == "none"), None)
    print(f"\nvLLM {vllm.__version__}, model {args.model}, {len(texts)} prompts, {args.max_tokens} tokens, greedy, "
          f"k = {args.num_speculative_tokens} (ngram {min(args.num_speculative_tokens, 5)})\n")
    print("| method | batch | tok/s | vs none | drafted | accepted | acceptance | accepted length | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for mode in [m for m in r if m.startswith("batch")]:
            row = r[mode]
            base = reference[mode] if reference else None
            speed = f"{row['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
            same = (f"{sum(a == b for a, b in zip(row['outputs'], base['outputs']))}/{len(row['outputs'])}"
                    if base else "-")
            fmt = (lambda v: "-" if v is None else v)
            print(f"| {r['method']} | {mode.removeprefix('batch')} | {row['tokens_per_s']} | {speed} | {row['drafted']} "
                  f"| {row['accepted']} | {fmt(row['acceptance'])} | {fmt(row['accepted_length'])} | {same} |")
    for method, reason in skipped.items():
        print(f"\n{method}: skipped ({reason})")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                        "skipped": skipped}, indent=1))


if __name__ == "__main__":
    main()
