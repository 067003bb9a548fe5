"""Reasoning models through the client: each server's streaming dialect against the scripted server."""

from __future__ import annotations

import time

import pytest

from rag.tokens import count_tokens
from routing.client import ModelClient
from tests.dialects import ANSWER_TEXT, DIALECT_IDS, DIALECTS, THOUGHT, THOUGHT_TEXT, by_name, truncated
from tests.fake_openai_server import FakeOpenAIServer, Script

MESSAGES = [{"role": "user", "content": "How many vacation days?"}]


@pytest.fixture(params=DIALECTS, ids=DIALECT_IDS)
def dialect(request):
    return request.param


@pytest.fixture
async def served(dialect):
    with FakeOpenAIServer(dialect.models()) as fake:
        client = ModelClient(fake.base_url)
        yield dialect, fake, client
        await client.close()


async def test_thinking_and_answer_arrive_apart(served):
    dialect, fake, client = served
    fake.script(dialect.large_id, dialect.large)
    parts = []
    async with client.stream("gpt-oss-20b" if "qwen" not in dialect.large_id else "qwen3-8b", MESSAGES) as stream:
        async for part in stream.parts():
            parts.append(part)
    response = stream.response
    assert response.model == dialect.large_id
    assert response.text == ANSWER_TEXT  # no markers, no thinking
    assert response.reasoning.strip() == THOUGHT_TEXT
    kinds = [kind for kind, _ in parts]
    assert kinds.index("answer") > kinds.index("reasoning")
    assert "reasoning" not in kinds[kinds.index("answer"):]
    timings = response.timings
    assert timings.first_token <= timings.first_reasoning_token <= timings.first_answer_token
    assert timings.thinking_s is not None and response.timings.first_answer_s >= response.timings.ttft_s
    assert not response.truncated
    assert response.token_logprobs is None  # nobody asked (and Foundry/Ollama would send null)


async def test_iterating_the_stream_yields_the_answer_only(served):
    dialect, fake, client = served
    fake.script(dialect.large_id, dialect.large)
    alias = "qwen3-8b" if "qwen" in dialect.large_id else "gpt-oss-20b"
    async with client.stream(alias, MESSAGES) as stream:
        deltas = [delta async for delta in stream]
    assert "".join(deltas) == ANSWER_TEXT
    assert stream.response.reasoning.strip() == THOUGHT_TEXT


async def test_reasoning_tokens_from_the_server_or_estimated(served):
    dialect, fake, client = served
    fake.script(dialect.large_id, dialect.large)
    alias = "qwen3-8b" if "qwen" in dialect.large_id else "gpt-oss-20b"
    usage = (await client.complete(alias, MESSAGES)).usage
    if dialect.large.reasoning_tokens_in_usage:
        assert (usage.reasoning_tokens, usage.reasoning_estimated) == (len(THOUGHT), False)
        assert usage.answer_tokens == len(dialect.large.tokens)
    else:
        assert usage.reasoning_estimated is True
        assert usage.reasoning_tokens == min(count_tokens(THOUGHT_TEXT), usage.completion_tokens)
    assert usage.estimated is (not dialect.large.send_usage)


async def test_budget_spent_thinking_is_flagged_truncated(served):
    dialect, fake, client = served
    fake.script(dialect.large_id, truncated(dialect.large))
    alias = "qwen3-8b" if "qwen" in dialect.large_id else "gpt-oss-20b"
    response = await client.complete(alias, MESSAGES)
    assert response.text == "" and response.reasoning
    assert response.truncated and response.finish_reason == "length"


# ----------------------------------------------------------------------------------------- one server


@pytest.fixture(scope="module")
def foundry():
    d = by_name("Foundry Local")
    with FakeOpenAIServer(d.models()) as fake:
        yield d, fake


@pytest.fixture
async def client(foundry):
    _, fake = foundry
    fake.scripts.clear()
    fake.requests.clear()
    c = ModelClient(fake.base_url, first_token_timeout_s=0.6, stream_idle_timeout_s=0.6)
    yield c
    await c.close()


async def test_long_thinking_does_not_trip_the_first_token_timeout(foundry, client):
    d, fake = foundry
    # 10 thinking tokens 0.15 s apart: 1.5 s of thinking, past the 0.6 s first-token limit.
    fake.script(d.large_id, Script(reasoning=[f" step{i}" for i in range(10)], reasoning_delay=0.15, tokens=["Yes."]))
    started = time.perf_counter()
    response = await client.complete("gpt-oss-20b", MESSAGES)
    assert time.perf_counter() - started > 1.2
    assert response.text == "Yes." and response.reasoning.count("step") == 10
    assert response.timings.thinking_s > 1.0


async def test_max_tokens_always_sent_and_effort_when_given(foundry, client):
    d, fake = foundry
    fake.script(d.large_id, d.large)
    await client.complete("gpt-oss-20b", MESSAGES, max_tokens=1500, reasoning_effort="low")
    await client.complete("phi-4-mini", MESSAGES, max_tokens=300)
    large, small = fake.requests
    assert large.body["max_tokens"] == 1500 and large.body["reasoning_effort"] == "low"
    assert small.body["max_tokens"] == 300 and "reasoning_effort" not in small.body


async def test_a_server_rejecting_reasoning_effort_is_asked_again_without(foundry, client):
    d, fake = foundry
    fake.script(d.large_id, Script(tokens=["Fine."], reject_reasoning_effort=True))
    response = await client.complete("gpt-oss-20b", MESSAGES, reasoning_effort="high")
    assert response.text == "Fine."
    assert ["reasoning_effort" in r.body for r in fake.requests] == [True, False]
    await client.complete("gpt-oss-20b", MESSAGES, reasoning_effort="high")
    assert "reasoning_effort" not in fake.requests[-1].body  # remembered


async def test_logprobs_null_from_foundry_give_no_confidence(foundry, client):
    d, fake = foundry
    fake.script(d.small_id, Script(tokens=["A", " plain", " answer."], logprobs_null=True))
    response = await client.complete("phi-4-mini", MESSAGES, logprobs=True)
    assert fake.requests[-1].body["logprobs"] is True  # asked for, accepted, and null
    assert response.token_logprobs is None and response.text == "A plain answer."
    assert response.reasoning == "" and not response.truncated


async def test_answer_cut_by_length_is_truncated(foundry, client):
    d, fake = foundry
    fake.script(d.small_id, Script(tokens=["Half", " an"], finish_reason="length"))
    response = await client.complete("phi-4-mini", MESSAGES)
    assert response.truncated and response.text == "Half an"
