"""What a decode on another thread first costs every later decode on a worker thread, and what
``system.hand_over_compute`` (which the server's scheduler calls as it starts) gives back.

    .venv/bin/python scripts/thread_handover.py [--rounds 3] [--decodes 40]

Three cases, each in a fresh process (OpenMP's teams live as long as the process), interleaved
over rounds: ``worker alone`` (nothing decoded before the worker: the server with a cached
calibration), ``main decoded first`` (one 64-token prefill on the main thread first, as loading
with a fresh calibration does), ``main decoded, handed over``. Each prints the median and the
minimum of ``--decodes`` 1-token decodes of the default target on a worker thread after a
64-token prompt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time

CASES = {"worker alone": (False, False), "main decoded first": (True, False), "main decoded, handed over": (True, True)}


def one_case(main_first: bool, hand_over: bool, decodes: int) -> list[float]:
    """Seconds of each 1-token decode on a worker thread (this process's only run)."""
    from quickdraft.backends.llamacpp import LlamaCppBackend
    from quickdraft.models import DEFAULT_TARGET, resolve_model
    from quickdraft.system import hand_over_compute

    backend = LlamaCppBackend(resolve_model(DEFAULT_TARGET), n_ctx=1024)
    prompt = backend.tokenize("def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n" * 4)
    if main_first:
        backend.prefill(prompt[:64], last_logits=True)
        backend.main.clear()
    if hand_over:
        hand_over_compute()
    times: list[float] = []

    def work() -> None:
        backend.prefill(prompt[:64], last_logits=True)
        for i in range(decodes):
            start = time.perf_counter()
            backend.prefill([prompt[64 + i % 32]], last_logits=True)
            times.append(time.perf_counter() - start)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decodes", type=int, default=40)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(*CASES[args.case], args.decodes)))
        return
    from quickdraft.system import cpu_info

    medians: dict[str, list[float]] = {case: [] for case in CASES}
    for _ in range(args.rounds):
        for case in CASES:
            out = subprocess.run([sys.executable, __file__, "--case", case, "--decodes", str(args.decodes)],
                                 check=True, capture_output=True, text=True).stdout
            medians[case].append(statistics.median(json.loads(out.splitlines()[-1])))
    print(f"{cpu_info().name}; 1-token decode on a worker thread, ms, median of {args.decodes} per process, "
          f"{args.rounds} interleaved rounds")
    for case, values in medians.items():
        print(f"  {case:28s} median {statistics.median(values) * 1e3:5.1f}  min {min(values) * 1e3:5.1f}  "
              f"max {max(values) * 1e3:5.1f}")


if __name__ == "__main__":
    main()
