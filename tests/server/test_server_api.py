"""The server through the real ``openai`` client: same greedy output as the engine, streaming,
concurrency without mixing, every bad input a 4xx in OpenAI's error format, and metrics."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import quickdraft

from serverutil import MODEL, sample, scrape, wait_idle

MESSAGES = [{"role": "system", "content": "you are terse"}, {"role": "user", "content": "hello world"}]
GREEDY = dict(max_tokens=24, temperature=0)


def collect_chat_stream(stream) -> tuple[str, list]:
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


# --- output equals the engine's ---------------------------------------------------------------

def test_chat_completion_greedy_equals_the_engine(client, reference_engine):
    expected = reference_engine.generate(MESSAGES, **GREEDY)
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY)
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.total_tokens == expected.prompt_tokens + len(expected.token_ids)
    spec = reply.model_extra["speculative"]
    assert spec["method"] == "draft" and spec["num_draft"] == 4
    assert spec["generated_tokens"] == len(expected.token_ids) and spec["drafted_tokens"] > 0


def test_chat_completion_stream_equals_the_engine(client, reference_engine):
    expected = reference_engine.generate(MESSAGES, **GREEDY)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    text, chunks = collect_chat_stream(stream)
    assert text == expected.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == expected.finish_reason
    assert finals[0].model_extra["speculative"]["generated_tokens"] == len(expected.token_ids)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.token_ids)


def test_completion_greedy_equals_the_engine_on_the_raw_prompt(client, reference_engine):
    prompt = "def main(): return"
    expected = reference_engine.generate(prompt, chat=False, **GREEDY)
    reply = client.completions.create(model=MODEL, prompt=prompt, **GREEDY)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens  # no chat template around it
    streamed = client.completions.create(model=MODEL, prompt=prompt, stream=True, **GREEDY)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason


def test_completion_of_token_ids(client, reference_engine):
    ids = reference_engine.prompt_tokens("the quick brown fox", chat=False)
    expected = reference_engine.generate(ids, **GREEDY)
    reply = client.completions.create(model=MODEL, prompt=ids, **GREEDY)
    assert reply.choices[0].text == expected.text and reply.usage.prompt_tokens == len(ids)


def test_speculative_field_picks_method_and_budget_without_changing_output(client):
    base = client.chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY)
    for method, num_draft in [("ar", None), ("ngram", 3), ("draft", 2)]:
        spec = {"method": method} | ({"num_draft": num_draft} if num_draft is not None else {})
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={"speculative": spec},
                                               **GREEDY)
        assert reply.choices[0].message.content == base.choices[0].message.content  # lossless
        stats = reply.model_extra["speculative"]
        assert stats["method"] == method
        if method == "ar":
            assert stats["drafted_tokens"] == 0
        else:
            assert stats["num_draft"] == num_draft and len(stats["acceptance_by_position"]) <= num_draft


def test_typical_acceptance_is_opt_in_and_marked_lossy_in_the_response(client, reference_engine):
    """``speculative.acceptance: "typical"`` switches a request to the lossy rule, and its
    ``speculative`` field says so (``lossless: false``, how far it moved); greedy it is exact; a
    request that does not ask stays lossless."""
    sampled = dict(max_tokens=24, temperature=1.0, seed=3)
    typical = {"speculative": {"acceptance": "typical", "posterior_threshold": 0.05}}
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body=typical, **sampled)
    spec = reply.model_extra["speculative"]
    assert spec["acceptance"] == "typical" and spec["lossless"] is False and spec["tv_per_token"] >= 0
    expected = reference_engine.generate(MESSAGES, **sampled, acceptance=quickdraft.TypicalAcceptance(0.05))
    assert reply.choices[0].message.content == expected.text
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, **sampled).model_extra["speculative"]
    assert plain["acceptance"] == "exact" and plain["lossless"] is True and "tv_per_token" not in plain
    greedy = client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body=typical, **GREEDY)
    assert greedy.model_extra["speculative"]["lossless"] is True
    assert greedy.choices[0].message.content == reference_engine.generate(MESSAGES, **GREEDY).text


def test_sampling_with_a_seed_equals_the_engine(client, reference_engine):
    options = dict(max_tokens=24, temperature=0.8, top_p=0.9, seed=7)
    expected = reference_engine.generate(MESSAGES, **options)
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, **options)
    assert reply.choices[0].message.content == expected.text


def test_stop_strings(client, reference_engine):
    full = reference_engine.generate("hello world", chat=False, max_tokens=40, temperature=0).text
    stop = full[12:15]
    reply = client.completions.create(model=MODEL, prompt="hello world", max_tokens=40, temperature=0, stop=[stop])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].text == full[:full.find(stop)]


def test_eight_concurrent_streams_complete_unmixed(server, reference_engine):
    """Chat and completion streams at once, with different methods, lengths and stop strings, in
    the server's continuous batch: each gets exactly its own greedy output, as served alone."""
    words = ["alpha", "return", "class", "print", "value", "yield", "while", "lambda"]
    methods = ["ar", "draft", "ngram", "suffix", "auto", "draft-tree", "ngram-tree", "draft"]
    cases = [(i, f"request {i}: {word} the code", methods[i], 16 + 3 * i) for i, word in enumerate(words)]

    def alone(i, prompt, method, max_tokens, stop=()):
        options = dict(temperature=0, max_tokens=max_tokens, method=method, stop=stop)
        if i % 2:
            return reference_engine.generate([{"role": "user", "content": prompt}], **options).text
        return reference_engine.generate(prompt, chat=False, **options).text

    stops = {i: [alone(i, p, m, n)[5:8]] if i in (2, 5) else [] for i, p, m, n in cases}  # two end on a stop string
    expected = {prompt: alone(i, prompt, method, n, stops[i]) for i, prompt, method, n in cases}
    before = scrape(server)

    def run(case):
        i, prompt, method, max_tokens = case
        options = dict(model=MODEL, stream=True, temperature=0, max_tokens=max_tokens, stop=stops[i] or None,
                       extra_body={"speculative": {"method": method}})
        with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60) as c:
            if i % 2:
                stream = c.chat.completions.create(messages=[{"role": "user", "content": prompt}], **options)
                return prompt, collect_chat_stream(stream)[0]
            stream = c.completions.create(prompt=prompt, **options)
            return prompt, "".join(chunk.choices[0].text for chunk in stream)

    with ThreadPoolExecutor(8) as pool:
        results = dict(pool.map(run, cases))
    assert results == expected
    assert len(set(results.values())) > 1  # the prompts really lead to different outputs
    after = scrape(server)
    batched = sum(after.get(("quickdraft_batch_size_bucket", (("le", le),)), 0)
                  - before.get(("quickdraft_batch_size_bucket", (("le", le),)), 0) for le in ("1.0",))
    steps = (after[("quickdraft_batch_size_count", ())] - before.get(("quickdraft_batch_size_count", ()), 0))
    assert steps > batched  # some steps carried more than one request
    step_count = after[("quickdraft_step_seconds_count", ())] - before.get(("quickdraft_step_seconds_count", ()), 0)
    assert step_count == steps and after[("quickdraft_step_seconds_sum", ())] > 0  # each step's wall time


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL


# --- bad input: a 4xx with OpenAI's error object, and the server keeps serving ---------------------

LONG = "hello " * 600  # more tokens than the 512-token context
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

BAD_REQUESTS = [
    # (endpoint, body, status, param)
    ("chat", "{not json", 400, None),
    ("chat", {"model": MODEL}, 400, "messages"),
    ("chat", {"messages": CHAT["messages"]}, 400, "model"),
    ("chat", {**CHAT, "messages": "hi"}, 400, "messages"),
    ("chat", {**CHAT, "messages": []}, 400, "messages"),
    ("chat", {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("chat", {**CHAT, "max_tokens": "lots"}, 400, "max_tokens"),
    ("chat", {**CHAT, "temperature": "hot"}, 400, "temperature"),
    ("chat", {**CHAT, "model": "gpt-4o"}, 404, "model"),
    ("chat", {**CHAT, "temperature": -0.5}, 400, "temperature"),
    ("chat", {**CHAT, "top_p": 0}, 400, "top_p"),
    ("chat", {**CHAT, "temperature": 2.5}, 400, "temperature"),
    ("chat", {**CHAT, "n": 0}, 400, "n"),
    ("chat", {**CHAT, "n": 17}, 400, "n"),
    ("chat", {**CHAT, "max_tokens": -1}, 400, "max_tokens"),
    ("chat", {**CHAT, "seed": -5}, 400, "seed"),
    ("chat", {**CHAT, "stop": [""]}, 400, "stop"),
    ("chat", {**CHAT, "presence_penalty": 2.5}, 400, "presence_penalty"),
    ("chat", {**CHAT, "frequency_penalty": -3}, 400, "frequency_penalty"),
    ("chat", {**CHAT, "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ("chat", {**CHAT, "logit_bias": {"999999": 1}}, 400, "logit_bias"),
    ("chat", {**CHAT, "logit_bias": {"newline": 1}}, 400, "logit_bias"),
    ("chat", {**CHAT, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("chat", {**CHAT, "top_logprobs": 3}, 400, "top_logprobs"),
    ("chat", {**CHAT, "functions": [{"name": "f"}]}, 400, None),
    ("chat", {**CHAT, "response_format": {"type": "xml"}}, 400, "response_format.type"),
    ("chat", {**CHAT, "tool_choice": "required"}, 400, "tool_choice"),
    ("chat", {**CHAT, "max_tokens": 100_000}, 400, "max_tokens"),
    ("chat", {**CHAT, "messages": [{"role": "user", "content": LONG}]}, 400, "messages"),
    ("chat", {**CHAT, "messages": [{"role": "user", "content": LONG}], "stream": True}, 400, "messages"),
    ("chat", {**CHAT, "speculative": {"method": "telepathy"}}, 400, "speculative.method"),
    ("chat", {**CHAT, "speculative": {"num_draft": -1}}, 400, "speculative.num_draft"),
    ("chat", {**CHAT, "speculative": {"acceptance": "medusa"}}, 400, "speculative.acceptance"),
    ("chat", {**CHAT, "speculative": {"posterior_threshold": 0.1}}, 400, "speculative.posterior_threshold"),
    ("chat", {**CHAT, "speculative": {"acceptance": "typical", "posterior_alpha": 2}}, 400,
     "speculative.posterior_alpha"),
    ("chat", {**CHAT, "speculative": {"acceptance": "exact", "posterior_alpha": 0.2}}, 400,
     "speculative.posterior_alpha"),
    ("text", {"model": MODEL, "prompt": LONG}, 400, "prompt"),
    ("text", {"model": MODEL, "prompt": "hello " * 200, "max_tokens": 400}, 400, "prompt"),
    ("text", {"model": MODEL, "prompt": [1, 2, 10**6]}, 400, "prompt"),
    ("text", {"model": MODEL, "prompt": ["one", "two"]}, 400, "prompt"),
    ("text", {"model": MODEL, "prompt": "hi", "stream": True, "temperature": -1}, 400, "temperature"),
    ("text", {"model": MODEL, "prompt": "hi", "logprobs": 6}, 400, "logprobs"),
    ("text", {"model": MODEL, "prompt": "hi", "echo": True}, 400, None),
    ("text", {"model": MODEL, "prompt": "hi", "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, None),
]


@pytest.mark.parametrize("endpoint,body,status,param", BAD_REQUESTS,
                         ids=[f"{i}-{r[3]}" for i, r in enumerate(BAD_REQUESTS)])
def test_bad_input_is_a_4xx_with_an_openai_error(server, client, endpoint, body, status, param):
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server}{path}", content=content, headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    assert client.completions.create(model=MODEL, prompt="still there?", max_tokens=2).choices[0].text


def test_oversized_body_is_413(server, client):
    response = httpx.post(f"{server}/v1/completions", content=b'{"prompt": "' + b"x" * (3 << 20) + b'"}',
                          headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert client.models.list().data


def test_the_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=-1)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="context size"):
        client.completions.create(model=MODEL, prompt=LONG, max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.post("/no/such/endpoint", cast_to=object)


# --- metrics ------------------------------------------------------------------------------------

def test_metrics_parse_and_count_what_happened(server, client):
    wait_idle(server)
    before = scrape(server)
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY)
    bad = httpx.post(f"{server}/v1/chat/completions", json={**CHAT, "temperature": -1})
    assert bad.status_code == 400
    after = scrape(server)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    spec = reply.model_extra["speculative"]
    finish = reply.choices[0].finish_reason
    assert delta("quickdraft_generations_total", method="draft", finish_reason=finish) == 1
    assert delta("quickdraft_prompt_tokens_total") == reply.usage.prompt_tokens
    assert delta("quickdraft_completion_tokens_total", method="draft") == reply.usage.completion_tokens
    assert delta("quickdraft_drafted_tokens_total", method="draft") == spec["drafted_tokens"]
    assert delta("quickdraft_accepted_tokens_total", method="draft") == spec["accepted_tokens"]
    assert delta("quickdraft_target_forwards_total", method="draft") == spec["target_forwards"]
    positions = range(len(spec["acceptance_by_position"]))
    assert sum(delta("quickdraft_drafted_by_position_total", method="draft", position=str(i))
               for i in positions) == spec["drafted_tokens"]
    assert sum(delta("quickdraft_accepted_by_position_total", method="draft", position=str(i))
               for i in positions) == spec["accepted_tokens"]
    assert delta("quickdraft_draft_seconds_total", method="draft") > 0
    assert delta("quickdraft_verify_seconds_total", method="draft") > 0
    assert delta("quickdraft_time_to_first_token_seconds_count") == 1
    assert delta("quickdraft_errors_total", status="400", code="invalid_value") == 1
    assert delta("quickdraft_http_requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert delta("quickdraft_http_requests_total", endpoint="/v1/chat/completions", status="400") == 1
    assert sample(after, "quickdraft_queue_length") == 0 and sample(after, "quickdraft_requests_running") == 0
