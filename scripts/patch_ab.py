"""Two builds of llama.cpp's libraries on the same forward, stepped alternately (patches/llama.cpp).

    .venv/bin/python scripts/patch_ab.py A_LIB_DIR B_LIB_DIR [--context 330] [--sequences 16]
        [--prompt 0] [--interleave 0] [--reps 40]

Each build runs in a process of its own (llama-cpp-python loads its libraries from
``LLAMA_CPP_LIB_PATH``), with the default target, ``--sequences`` sequences of ``--context``
tokens in one unified cache (as the server holds them under load). The two processes then take
turns (A B, B A, ...) at the same forward: one new token in every sequence (``--prompt 0``), or
a prompt chunk of ``--prompt`` tokens in a sequence of its own. ``--interleave N``: after their
prompts the sequences take N steps of one token each first, so their later cells alternate in the
cache as decoding under load leaves them. Printed: each build's median and minimum, the median of
the paired ratios B/A (with its 10th-90th percentiles), on this CPU, and whether every step's
logits were bit-identical in the two builds.

The patched libraries are the installed ones (``.venv/lib/python3.*/site-packages/llama_cpp/lib``);
an unpatched build of the same source with the same flags: ``cmake -S
build/llama-cpp-python-<version>-src/vendor/llama.cpp`` after ``patch -R -p1`` in a copy of it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time


def serve_steps(context: int, sequences: int, prompt: int, interleave: int) -> None:
    """The worker: set up, say ready, then time one forward per line read (its number seeds the
    tokens); answers the seconds and a hash of the logits."""
    from quickdraft.backends.base import Chunk
    from quickdraft.backends.llamacpp import LlamaCppBackend
    from quickdraft.models import DEFAULT_TARGET, resolve_model

    backend = LlamaCppBackend(resolve_model(DEFAULT_TARGET), n_ctx=16384)
    held = []
    for i in range(sequences):
        sequence = backend.new_sequence()
        sequence.prefill([(7 * i + 13 * j) % 5000 + 100 for j in range(context)])
        held.append(sequence)
    for k in range(interleave):
        backend.forward_batch([Chunk(s, [300 + (7 * k + i) % 1000]) for i, s in enumerate(held)])
    length = context + interleave
    fresh = backend.new_sequence()
    print("ready", flush=True)
    for line in sys.stdin:
        k = int(line)
        start = time.perf_counter()
        if prompt:
            rows = backend.forward_batch([Chunk(fresh, [(31 * k + j) % 5000 + 100 for j in range(prompt)],
                                                rows="none")])
        else:
            rows = backend.forward_batch([Chunk(s, [500 + k % 100]) for s in held])
        seconds = time.perf_counter() - start
        print(seconds, hashlib.sha1(b"".join(r.tobytes() for r in rows)).hexdigest(), flush=True)
        for sequence in [fresh] if prompt else held:
            sequence.rollback(0 if prompt else length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("libs", nargs=2, help="two directories of llama.cpp's libraries (A, then B)")
    parser.add_argument("--context", type=int, default=330)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=0, help="a prompt chunk of this many tokens (0: one row a sequence)")
    parser.add_argument("--interleave", type=int, default=0,
                        help="steps of one token a sequence after the prompts (cells alternating in the cache)")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve_steps(args.context, args.sequences, args.prompt, args.interleave)
        return
    from quickdraft.system import cpu_info

    command = [sys.executable, __file__, *args.libs, "--worker", "--context", str(args.context),
               "--sequences", str(args.sequences), "--prompt", str(args.prompt), "--interleave", str(args.interleave)]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env={**os.environ, "LLAMA_CPP_LIB_PATH": os.path.abspath(lib)})
               for lib in args.libs]
    for worker in workers:
        if worker.stdout.readline().strip() != "ready":
            sys.exit(f"a worker failed to start (libraries in {args.libs})")
    times: list[list[float]] = [[], []]
    identical = True
    for k in range(args.reps):
        hashes = {}
        for i in (0, 1) if k % 2 == 0 else (1, 0):
            workers[i].stdin.write(f"{k}\n")
            workers[i].stdin.flush()
            seconds, hashes[i] = workers[i].stdout.readline().split()
            times[i].append(float(seconds))
        identical &= hashes[0] == hashes[1]
    for worker in workers:
        worker.stdin.close()
        worker.wait()
    ratios = sorted(b / a for a, b in zip(*times))
    shape = f"a {args.prompt}-token prompt chunk" if args.prompt else f"{args.sequences} one-token rows"
    cells = f"{args.context} tokens" + (f" and {args.interleave} interleaved" if args.interleave else "")
    print(f"{cpu_info().name}; {shape}, {args.sequences} sequences of {cells} in the cache, "
          f"{args.reps} alternating steps")
    for name, values in zip("AB", times):
        print(f"  {name}: median {statistics.median(values) * 1e3:.1f} ms, min {min(values) * 1e3:.1f} ms")
    print(f"  B/A paired: median {statistics.median(ratios):.3f} "
          f"({ratios[len(ratios) // 10]:.3f}-{ratios[-len(ratios) // 10 - 1]:.3f}); logits bit-identical: {identical}")


if __name__ == "__main__":
    main()
