"""Turns sharing one model server through the pipeline: they wait in its queue, not inside the server."""

from __future__ import annotations

import asyncio
import time

from assistant.events import AnswerStarted, Queued, TurnFinished
from assistant.pipeline import Pipeline
from assistant.settings import Settings
from routing.client import ModelClient
from tests.fake_openai_server import FakeOpenAIServer, Script

SMALL = "Phi-4-mini-instruct-generic-cpu"


class NoSources:
    def search(self, query: str, k: int):
        return []


async def run_turn(pipeline: Pipeline, question: str) -> list:
    return [event async for event in pipeline.run(question, options=None)]


async def test_turns_wait_in_line_and_the_first_token_limit_counts_from_the_request():
    # Each answer takes ~0.5 s to start; the first-token limit is 1.2 s. Four turns at once would
    # exceed it inside the server (the last starts after ~2 s); in the app's queue each is alone when sent.
    with FakeOpenAIServer([SMALL]) as fake:
        fake.default_script = Script(tokens=[" ok"] * 5, first_token_delay=0.5, token_delay=0.01)
        settings = Settings(model_endpoint=fake.base_url, routing_mode="small", first_token_timeout_s=1.2, _env_file=None)
        client = ModelClient.from_settings(settings)
        pipeline = Pipeline(settings, client, knowledge=NoSources())
        try:
            started = time.perf_counter()
            turns = await asyncio.gather(*(run_turn(pipeline, f"question {n}") for n in range(4)))
            elapsed = time.perf_counter() - started
        finally:
            await client.close()
    records = [events[-1].record for events in turns]
    assert all(isinstance(events[-1], TurnFinished) for events in turns)
    assert all(record.answered_by == SMALL and record.text == " ok" * 5 for record in records), [(r.answered_by, r.text, [n.message for n in r.notices]) for r in records]
    assert fake.max_in_flight == 1 and len(fake.requests) == 4
    assert elapsed > 4 * 0.5  # one after another, longer than the first-token limit
    waited = [[e for e in events if isinstance(e, Queued)] for events in turns]
    assert sorted(len(w) > 0 for w in waited) == [False, True, True, True]
    first_positions = sorted(w[0].position for w in waited if w)
    assert first_positions == [1, 2, 3]
    for events in turns:  # a Queued never follows the leg's start
        names = [type(e).__name__ for e in events]
        if "Queued" in names:
            assert max(i for i, n in enumerate(names) if n == "Queued") < names.index("AnswerStarted")


async def test_a_cancelled_turn_waiting_in_line_never_reaches_the_server():
    with FakeOpenAIServer([SMALL]) as fake:
        fake.default_script = Script(tokens=[" ok"] * 5, first_token_delay=0.3)
        settings = Settings(model_endpoint=fake.base_url, routing_mode="small", _env_file=None)
        client = ModelClient.from_settings(settings)
        pipeline = Pipeline(settings, client, knowledge=NoSources())
        try:
            first = asyncio.create_task(run_turn(pipeline, "first"))
            await asyncio.sleep(0.1)
            seen: list = []

            async def second_turn():
                async for event in pipeline.run("second"):
                    seen.append(event)

            second = asyncio.create_task(second_turn())
            for _ in range(100):
                if any(isinstance(e, Queued) for e in seen):
                    break
                await asyncio.sleep(0.01)
            second.cancel()
            await asyncio.gather(second, return_exceptions=True)
            await first
            await asyncio.sleep(0.3)
        finally:
            await client.close()
    assert any(isinstance(e, Queued) for e in seen) and not any(isinstance(e, AnswerStarted) for e in seen)
    assert len(fake.requests) == 1 and client.queue.waiting == 0 and client.queue.running == 0
