"""The model client against a scripted OpenAI-compatible server on loopback (real HTTP, real SSE)."""

from __future__ import annotations

import asyncio
import time

import pytest

from rag.tokens import count_message_tokens, count_tokens
from routing.client import (
    ModelClient,
    ModelNotFound,
    ModelTimeout,
    ServerRejected,
    ServerUnreachable,
    StreamInterrupted,
    ModelName,
    explain_alias,
    resolve_alias,
)
from tests.fake_openai_server import FakeOpenAIServer, Script, _free_port

SMALL_ID = "Phi-4-mini-instruct-generic-cpu"
LARGE_ID = "gpt-oss-20b-generic-cpu"
MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is BM25?"}]


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer([SMALL_ID, LARGE_ID]) as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh_scripts(server):
    server.scripts.clear()
    server.requests.clear()
    yield


@pytest.fixture
async def client(server):
    model_client = ModelClient(server.base_url)
    yield model_client
    await model_client.close()


async def wait_until(predicate, timeout_s: float = 3.0) -> bool:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


# ----------------------------------------------------------------------------------------- aliases


def test_resolve_alias_prefers_exact_then_case_insensitive_then_prefix():
    served = ["phi-4-mini-instruct-generic-gpu", "Phi-4-mini-instruct-generic-cpu", "PHI-4-MINI"]
    assert resolve_alias("Phi-4-mini-instruct-generic-cpu", served) == "Phi-4-mini-instruct-generic-cpu"
    assert resolve_alias("phi-4-mini", served) == "PHI-4-MINI"
    assert resolve_alias("phi-4-mini-instruct", ["x", SMALL_ID]) == SMALL_ID
    assert resolve_alias("phi-4-mini", [LARGE_ID, SMALL_ID]) == SMALL_ID
    # Contained rather than prefixed: the shortest such id.
    assert resolve_alias("oss-20b", ["openai-gpt-oss-20b-generic-cpu", "gpt-oss-20b"]) == "gpt-oss-20b"


def test_resolve_alias_without_match_lists_what_is_served():
    with pytest.raises(ModelNotFound) as caught:
        resolve_alias("llama-3", [SMALL_ID, LARGE_ID])
    message = str(caught.value)
    assert "llama-3" in message and SMALL_ID in message and LARGE_ID in message
    assert caught.value.served == [SMALL_ID, LARGE_ID]
    with pytest.raises(ModelNotFound, match=r"\(none\)"):
        resolve_alias("phi-4-mini", [])


async def test_client_resolves_alias_against_served_models(server, client):
    assert await client.resolve(SMALL_ID) == SMALL_ID
    assert await client.resolve(SMALL_ID.lower()) == SMALL_ID
    assert await client.resolve("phi-4-mini") == SMALL_ID
    assert await client.resolve("gpt-oss-20b") == LARGE_ID
    response = await client.complete("phi-4-mini", MESSAGES)
    assert response.model == SMALL_ID
    assert response.alias == "phi-4-mini"
    assert server.requests[-1].model == SMALL_ID


async def test_unknown_alias_raises_model_not_found_listing_served(server, client):
    with pytest.raises(ModelNotFound) as caught:
        async with client.stream("mistral-7b", MESSAGES):
            pass
    assert SMALL_ID in str(caught.value) and LARGE_ID in str(caught.value)
    assert server.requests == []  # nothing was sent to a model that does not exist


# ----------------------------------------------------------------------------------------- usage and logprobs


async def test_usage_from_server_is_not_estimated(server, client):
    server.script(SMALL_ID, Script(tokens=["One", " two", " three", "."], prompt_tokens=17))
    response = await client.complete("phi-4-mini", MESSAGES)
    assert response.text == "One two three."
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (17, 4)
    assert response.usage.estimated is False
    assert response.finish_reason == "stop"
    assert response.complete and not response.cancelled


async def test_missing_usage_is_estimated_with_tiktoken(server, client):
    tokens = ["Retrieval", " ranks", " chunks", " by", " BM25", " score", "."]
    server.script(SMALL_ID, Script(tokens=tokens, send_usage=False))
    response = await client.complete("phi-4-mini", MESSAGES)
    assert response.usage.estimated is True
    assert response.usage.completion_tokens == count_tokens("".join(tokens))
    assert response.usage.prompt_tokens == count_message_tokens(MESSAGES)


async def test_logprobs_present_are_collected_per_token(server, client):
    server.script(SMALL_ID, Script(tokens=["a", "b", "c"], logprobs=[-0.1, -0.5, -2.0]))
    response = await client.complete("phi-4-mini", MESSAGES)
    assert response.token_logprobs == pytest.approx([-0.1, -0.5, -2.0])
    body = server.requests[-1].body
    assert body["logprobs"] is True and body["top_logprobs"] == 1


async def test_logprobs_absent_give_none(server, client):
    server.script(SMALL_ID, Script(tokens=["a", "b"], logprobs=None))
    response = await client.complete("phi-4-mini", MESSAGES)
    assert response.token_logprobs is None
    assert response.text == "ab"


async def test_logprobs_not_requested_are_not_sent(server, client):
    server.script(SMALL_ID, Script(tokens=["a", "b"], logprobs=[-0.1, -0.2]))
    response = await client.complete("phi-4-mini", MESSAGES, logprobs=False)
    assert "logprobs" not in server.requests[-1].body
    assert response.token_logprobs is None


async def test_server_rejecting_logprobs_gets_the_request_again_without(server, client):
    server.script(SMALL_ID, Script(tokens=["ok", "."], reject_logprobs=True))
    response = await client.complete("phi-4-mini", MESSAGES)
    assert response.text == "ok."
    assert response.token_logprobs is None
    first, second = server.requests
    assert first.body.get("logprobs") is True
    assert "logprobs" not in second.body
    # Remembered: the next call does not ask again.
    await client.complete("phi-4-mini", MESSAGES)
    assert len(server.requests) == 3 and "logprobs" not in server.requests[-1].body


# ----------------------------------------------------------------------------------------- failures


async def test_stream_cut_half_way_raises_with_partial_text(server, client):
    tokens = [f" t{i}" for i in range(10)]
    server.script(SMALL_ID, Script(tokens=tokens, drop_after=4))
    received = []
    with pytest.raises(StreamInterrupted) as caught:
        async with client.stream("phi-4-mini", MESSAGES) as stream:
            async for delta in stream:
                received.append(delta)
    partial = caught.value.partial
    assert partial.text == "".join(tokens[:4]) == "".join(received)
    assert partial.error and "interrupted" in partial.error
    assert not partial.complete
    assert partial.usage.estimated is True and partial.usage.completion_tokens == count_tokens(partial.text)
    assert "closed the connection in the middle of the answer" in str(caught.value)
    assert "tokens that arrived are kept" in str(caught.value)


async def test_first_token_timeout(server):
    server.script(SMALL_ID, Script(tokens=["late"], first_token_delay=3.0))
    client = ModelClient(server.base_url, first_token_timeout_s=0.3, stream_idle_timeout_s=5.0)
    started = time.perf_counter()
    try:
        with pytest.raises(ModelTimeout, match="start answering") as caught:
            await client.complete("phi-4-mini", MESSAGES)
    finally:
        await client.close()
    assert time.perf_counter() - started < 1.5
    partial = caught.value.partial
    assert partial.text == "" and partial.error == "timeout"
    assert partial.timings.first_token is None and partial.timings.total_s == pytest.approx(0.3, abs=0.15)
    assert partial.usage.estimated and partial.usage.completion_tokens == 0


async def test_first_token_deadline_counts_from_the_request(server):
    # Slow headers, then a slow first token: each wait alone is under the limit, together they are not.
    server.script(SMALL_ID, Script(tokens=["late"], headers_delay=0.3, first_token_delay=0.3))
    client = ModelClient(server.base_url, first_token_timeout_s=0.45, stream_idle_timeout_s=5.0)
    started = time.perf_counter()
    try:
        with pytest.raises(ModelTimeout):
            await client.complete("phi-4-mini", MESSAGES)
    finally:
        await client.close()
    # Without the deadline the call succeeds after ~0.6 s; with it, it stops at ~0.45 s (slack for a busy CPU).
    assert time.perf_counter() - started < 0.9


async def test_idle_timeout_keeps_the_text_so_far(server):
    server.script(SMALL_ID, Script(tokens=["first", " second", " third"], token_delay=3.0))
    client = ModelClient(server.base_url, first_token_timeout_s=5.0, stream_idle_timeout_s=0.3)
    started = time.perf_counter()
    try:
        with pytest.raises(ModelTimeout, match="stopped sending text") as caught:
            await client.complete("phi-4-mini", MESSAGES)
    finally:
        await client.close()
    assert time.perf_counter() - started < 1.5
    assert caught.value.partial.text == "first"
    assert caught.value.partial.error == "timeout"


async def test_connection_refused_says_what_to_start():
    endpoint = f"http://127.0.0.1:{_free_port()}/v1"
    client = ModelClient(endpoint, connect_timeout_s=1.0)
    try:
        with pytest.raises(ServerUnreachable) as caught:
            async with client.stream("phi-4-mini", MESSAGES):
                pass
    finally:
        await client.close()
    message = str(caught.value)
    assert endpoint in message
    assert "ASSISTANT_MODEL_ENDPOINT" in message and "foundry" in message.lower()


async def test_server_gone_after_resolution_is_unreachable():
    with FakeOpenAIServer([SMALL_ID]) as short_lived:
        client = ModelClient(short_lived.base_url, connect_timeout_s=1.0)
        assert await client.resolve("phi-4-mini") == SMALL_ID
    try:
        with pytest.raises(ServerUnreachable):
            await client.complete("phi-4-mini", MESSAGES)
    finally:
        await client.close()


async def test_http_500_is_server_rejected(server, client):
    server.script(SMALL_ID, Script(status=500, error_message="model crashed"))
    with pytest.raises(ServerRejected) as caught:
        await client.complete("phi-4-mini", MESSAGES)
    assert "500" in str(caught.value) and "model crashed" in str(caught.value)


# ----------------------------------------------------------------------------------------- stopping early


async def test_cancelling_the_consumer_closes_the_upstream(server, client):
    server.script(SMALL_ID, Script(tokens=[f" w{i}" for i in range(200)], token_delay=0.02))
    seen = asyncio.Event()
    holder = {}

    async def consume():
        async with client.stream("phi-4-mini", MESSAGES) as stream:
            holder["stream"] = stream
            async for _ in stream:
                if stream.response.content_chunks >= 5:
                    seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(seen.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    response = holder["stream"].response
    assert response.cancelled is True and not response.complete
    assert response.text.startswith(" w0 w1 w2 w3 w4")
    assert response.usage.estimated is True
    record = server.requests[-1]
    assert await wait_until(lambda: record.client_disconnected)
    assert not record.completed
    assert record.tokens_sent < 60, record.tokens_sent  # of 200 over 4 s


async def test_breaking_out_of_the_loop_closes_the_upstream(server, client):
    server.script(SMALL_ID, Script(tokens=[f" w{i}" for i in range(200)], token_delay=0.02))
    async with client.stream("phi-4-mini", MESSAGES) as stream:
        async for _ in stream:
            if stream.response.content_chunks == 3:
                break
    assert stream.response.cancelled is True
    assert stream.response.text == " w0 w1 w2"
    record = server.requests[-1]
    assert await wait_until(lambda: record.client_disconnected)
    assert record.tokens_sent < 60, record.tokens_sent  # of 200 over 4 s


# ----------------------------------------------------------------------------------------- timing


async def test_timings_match_a_scripted_pace(server, client):
    """First token after 200 ms, then 50 tokens 20 ms apart.

    Expected: ttft 0.20 s (within 60 ms), generation 49 x 20 ms = 0.98 s, total ~1.18 s (within 150 ms),
    decode rate 49 / 0.98 s = 50 tok/s (within 15%). The role-only first chunk must not count as the first token.
    Wall-clock numbers on a shared CPU: up to three attempts; a systematic error fails all of them.
    """
    for attempt in range(3):
        server.script(SMALL_ID, Script(tokens=[f" t{i}" for i in range(50)], first_token_delay=0.2, token_delay=0.02))
        response = await client.complete("phi-4-mini", MESSAGES)
        timings = response.timings
        assert response.usage.completion_tokens == 50 and not response.usage.estimated
        assert timings.request_sent < timings.first_token <= timings.last_token <= timings.finished
        try:
            assert timings.ttft_s == pytest.approx(0.2, abs=0.06)
            assert timings.generation_s == pytest.approx(0.98, rel=0.15)
            assert timings.total_s == pytest.approx(1.18, abs=0.15)
            assert response.decode_tokens_per_s == pytest.approx(50.0, rel=0.15)
            return
        except AssertionError:
            if attempt == 2:
                raise


async def test_an_exception_in_the_callers_loop_marks_the_answer_cut_short(server, client):
    server.script(SMALL_ID, Script(tokens=[f" w{i}" for i in range(200)], token_delay=0.02))
    with pytest.raises(RuntimeError, match="caller failed"):
        async with client.stream("phi-4-mini", MESSAGES) as stream:
            async for _ in stream:
                raise RuntimeError("caller failed")
    assert stream.response.cancelled is True and not stream.response.complete
    assert stream.response.text == " w0"
    record = server.requests[-1]
    assert await wait_until(lambda: record.client_disconnected)


# ----------------------------------------------------------------------------------------- real servers' ids

FOUNDRY = ["Phi-4-mini-instruct-generic-cpu:5", "Phi-4-mini-instruct-cuda-gpu:5",
           "gpt-oss-20b-generic-cpu:1", "gpt-oss-20b-cuda-gpu:1"]
FOUNDRY_OLD = ["Phi-4-mini-instruct-generic-cpu", "Phi-4-mini-instruct-cuda-gpu",
               "gpt-oss-20b-generic-cpu", "gpt-oss-20b-cuda-gpu"]
OLLAMA = ["phi4-mini:latest", "gpt-oss:20b", "gpt-oss:120b", "llama3.2:3b"]
VLLM = ["microsoft/Phi-4-mini-instruct", "openai/gpt-oss-20b"]


@pytest.mark.parametrize("served, gpu, small, large", [
    (FOUNDRY, False, "Phi-4-mini-instruct-generic-cpu:5", "gpt-oss-20b-generic-cpu:1"),
    (FOUNDRY, True, "Phi-4-mini-instruct-cuda-gpu:5", "gpt-oss-20b-cuda-gpu:1"),
    (FOUNDRY_OLD, False, "Phi-4-mini-instruct-generic-cpu", "gpt-oss-20b-generic-cpu"),
    (OLLAMA, False, "phi4-mini:latest", "gpt-oss:20b"),
    (VLLM, False, "microsoft/Phi-4-mini-instruct", "openai/gpt-oss-20b"),
])
def test_default_aliases_find_each_servers_own_name(served, gpu, small, large):
    assert resolve_alias("phi-4-mini", served, prefer_gpu=gpu) == small
    assert resolve_alias("gpt-oss-20b", served, prefer_gpu=gpu) == large


@pytest.mark.parametrize("alias, served, expected", [
    ("gpt-oss:20b", ["gpt-oss-20b-generic-cpu:1"], "gpt-oss-20b-generic-cpu:1"),  # Ollama's name on Foundry
    ("phi4-mini", VLLM, "microsoft/Phi-4-mini-instruct"),
    ("microsoft/Phi-4-mini-instruct", FOUNDRY_OLD, "Phi-4-mini-instruct-generic-cpu"),
    ("openai/gpt-oss-20b", OLLAMA, "gpt-oss:20b"),
    ("phi-4-mini", ["phi4-mini:3.8b"], "phi4-mini:3.8b"),  # a size tag where the alias has none
    ("phi-4-mini", ["Phi-4-mini-instruct-Q4_K_M.gguf"], "Phi-4-mini-instruct-Q4_K_M.gguf"),  # llama.cpp file name
    ("gpt-oss-20b", ["gpt-oss:120b", "gpt-oss:20b"], "gpt-oss:20b"),  # 20b is not 120b
    ("phi-4-mini", ["Phi-4-mini-reasoning-generic-cpu:3", "Phi-4-mini-instruct-generic-cpu:5"],
     "Phi-4-mini-instruct-generic-cpu:5"),  # the same name beats a longer one that starts with it
])
def test_punctuation_vendor_tag_and_suffix_variants(alias, served, expected):
    assert resolve_alias(alias, served, prefer_gpu=False) == expected


def test_an_exact_id_wins_over_a_better_variant():
    assert resolve_alias("Phi-4-mini-instruct-cuda-gpu:5", FOUNDRY, prefer_gpu=False) == "Phi-4-mini-instruct-cuda-gpu:5"
    assert explain_alias("gpt-oss:20b", OLLAMA).how == "exact"


def test_the_choice_among_variants_is_explained():
    cpu = explain_alias("phi-4-mini", FOUNDRY, prefer_gpu=False)
    assert cpu.model == "Phi-4-mini-instruct-generic-cpu:5" and cpu.how == "same name"
    assert "Phi-4-mini-instruct-cuda-gpu:5" in cpu.note and "no GPU" in cpu.note
    assert "phi-4-mini" in cpu.describe() and "CPU variant" in cpu.describe()
    gpu = explain_alias("gpt-oss-20b", FOUNDRY, prefer_gpu=True)
    assert gpu.model == "gpt-oss-20b-cuda-gpu:1" and "GPU is present" in gpu.note
    newest = explain_alias("phi-4-mini", ["Phi-4-mini-instruct-generic-cpu:4", "Phi-4-mini-instruct-generic-cpu:5"])
    assert newest.model == "Phi-4-mini-instruct-generic-cpu:5" and "newest version (:5)" in newest.note
    single = explain_alias("gpt-oss-20b", OLLAMA)
    assert single.model == "gpt-oss:20b" and single.note == "" and "same name" in single.describe()


def test_model_names_taken_apart():
    name = ModelName.parse("microsoft/Phi-4-mini-instruct-generic-cpu:5")
    assert (name.key, name.tag, name.version, name.device) == ("phi4mini", "", 5, "cpu")
    name = ModelName.parse("gpt-oss:20b")
    assert (name.key, name.tag, name.full_key) == ("gptoss", "20b", "gptoss20b")
    assert ModelName.parse("gpt-oss-20b-cuda-gpu:1").device == "gpu"
    assert ModelName.parse("phi4-mini:latest").full_key == "phi4mini"


async def test_the_client_keeps_how_each_alias_resolved():
    with FakeOpenAIServer(FOUNDRY) as fake:
        client = ModelClient(fake.base_url)
        try:
            model = await client.resolve("phi-4-mini")
        finally:
            await client.close()
    assert client.resolutions["phi-4-mini"].model == model
    assert len(client.resolutions["phi-4-mini"].candidates) == 2
