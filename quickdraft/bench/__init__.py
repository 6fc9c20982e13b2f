"""Spec-Bench-style measurement: speedup over plain decoding measured in the same run.

Modules: ``tasks`` (prompts from installed data or a JSONL file), ``runner`` (interleaved runs,
checkpoint/resume, equality checks), ``metrics`` (pure summaries), ``calibrate`` (verify cost
curve), ``report`` (report.md, plots, terminal table), ``peers`` (llama-cpp-python and Hugging
Face assisted generation on the same prompts).

results.json schema
-------------------
``config``: what was run (models, tasks, methods, max_tokens, repeat, limit, num_draft, ...).

``samples``: one object per (task, prompt_id, turn, repeat, method)::

    task, prompt_id, turn, repeat, method, config {num_draft, temperature, ...},
    prompt_tokens, new_tokens, time_s (whole call), prefill_time_s, decode_time_s,
    draft_time_s, verify_time_s, target_forwards, drafted_tokens, accepted_tokens,
    accepted_lengths [tokens emitted per step], acceptance_by_position [float],
    tokens_per_second (new_tokens / decode_time_s), ended_on_eos,
    speedup (AR decode seconds per token / this sample's, AR of the same unit and repeat; 1 for ar),
    check ({result: exact | near-tie | real divergence, index, margin, tolerance, summary} or null),
    text

``summary``: one object per (task, method)::

    task, method, prompts (prompt-turn units), samples,
    speedup (geometric mean over units of each unit's median over repeats),
    speedup_median, speedup_min, speedup_max (over units' medians),
    mean_accepted_length (tokens per target forward, bonus and a final EOS included), acceptance_rate,
    acceptance_by_position, tokens_per_second (median over samples), tokens_per_second_min/_max,
    draft_time_s, verify_time_s (totals), checks {exact, near-tie, real divergence: counts}

``calibration``: ``{"target": {"k": [..], "median_s": [..], "min_s": [..], "max_s": [..],
"relative": [median_s / median_s at k=1]}, "draft": {"token_s": float} | null, "context_tokens": int}``

``peers``: rows ``{peer, method, task, prompt_id, turn, repeat, new_tokens, time_s,
first_token_s, first_chunk, tokens_per_second (after the first chunk, like our decode speed),
speedup (against the peer's own plain generation), equal_to_reference, config}``;
``peer_status``: ``{peer: "ok" | "skipped: <why>" | "failed: <why>"}``.
"""
