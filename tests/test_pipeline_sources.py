"""Which retrieved chunks reach the prompt: one score floor for shared knowledge and uploads alike, since a
conversation's uploads are scored in the same collection as the knowledge base."""

import asyncio
from pathlib import Path

import pytest

from assistant.events import PromptBuilt, SourcesFound
from assistant.pipeline import Pipeline
from assistant.settings import Settings
from rag.documents import DocumentSet
from rag.knowledge import KnowledgeBase
from routing.client import ModelClient
from tests.fake_openai_server import FakeOpenAIServer, Script

SMALL = "Phi-4-mini-instruct-generic-cpu"


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer() as server:
        server.default_script = Script(tokens=["The", " answer", " is", " in", " the", " sources", " [1]", "."] * 4,
                                       logprobs=[-0.01] * 32)
        yield server


def knowledge_base(tmp_path: Path) -> KnowledgeBase:
    folder = tmp_path / "knowledge"
    folder.mkdir(parents=True)
    (folder / "cooking.md").write_text("# Cooking\n\nBoil the pasta for nine minutes in salted water.\n")
    (folder / "garden.md").write_text("# Garden\n\nWater the tomatoes every morning before the heat.\n")
    (folder / "release.md").write_text("# Releases\n\nA release train leaves when the checklist is green.\n")
    kb = KnowledgeBase(folder, tmp_path / "cache")
    kb.refresh()
    return kb


async def run(fake, kb, documents, question):
    settings = Settings(model_endpoint=fake.base_url, _env_file=None, min_source_score=1.0)
    pipeline = Pipeline(settings, ModelClient.from_settings(settings), kb)
    events = [event async for event in pipeline.run(question, documents=documents)]
    await pipeline.client.close()
    return next(e for e in events if isinstance(e, SourcesFound)), next(e for e in events if isinstance(e, PromptBuilt))


async def test_an_upload_with_the_answer_is_a_strong_source(fake, tmp_path):
    kb = knowledge_base(tmp_path)
    docs = DocumentSet(collection=kb.collection, scope="conversation-1")
    upload = tmp_path / "heron.md"
    upload.write_text("# Heron\n\nThe Heron release train departs every ninth Thursday.\n")
    docs.add_file(upload, "heron.md")
    question = "When does the Heron release train depart?"
    hits = docs.search(question, 5)
    assert hits[0].chunk.source == "heron.md" and hits[0].chunk.scope == "conversation-1"
    assert hits[0].score >= 1.0  # over the same floor as shared knowledge: it reads as a strong match
    # The same file in the shared folder would score the same: one set of collection statistics.
    shared_kb = knowledge_base(tmp_path / "shared-copy")
    (shared_kb.folder / "heron.md").write_text(upload.read_text())
    shared_kb.refresh()
    assert shared_kb.search(question, 1)[0].score == pytest.approx(hits[0].score)

    found, prompt = await run(fake, kb, docs, question)
    used = [s.chunk.source for s in prompt.sources_used]
    assert used[0] == "heron.md"
    assert found.supported
    body = fake.requests[-1].body["messages"][-1]["content"]
    assert "ninth Thursday" in body


async def test_weak_knowledge_matches_stay_out_of_the_prompt(fake, tmp_path):
    kb = knowledge_base(tmp_path)
    found, prompt = await run(fake, kb, DocumentSet(collection=kb.collection), "What colour is the sky on Mars?")
    assert all(s.score < 1.0 for s in found.sources)
    assert prompt.sources_used == [] and not found.supported


async def test_no_escalation_to_the_same_model_but_the_reason_is_said(fake, tmp_path):
    fake.script(SMALL, Script(tokens=["No", "."], logprobs=[-0.01, -0.01]))
    settings = Settings(model_endpoint=fake.base_url, _env_file=None, small_model="phi-4-mini", large_model=SMALL)
    pipeline = Pipeline(settings, ModelClient.from_settings(settings), knowledge_base(tmp_path))
    before = len(fake.requests)
    events = [event async for event in pipeline.run("When does the release train leave?")]
    await pipeline.client.close()
    from assistant.events import Escalated, Notice, TurnFinished

    assert not [e for e in events if isinstance(e, Escalated)]
    notice = next(e for e in events if isinstance(e, Notice))
    assert notice.level == "info" and "Not escalated (answer" in notice.message and SMALL in notice.message
    assert len(fake.requests) - before == 1
    assert isinstance(events[-1], TurnFinished)
    record = events[-1].record
    assert record.answered_by == SMALL
    assert record.routing.action == "not escalated" and record.routing.reason == "answer 3 chars < 40"
    assert [s.name for s in record.routing.fired] == ["length", "no citation"]  # no citation: not deciding


@pytest.mark.parametrize(
    "mode, small_model, asks_logprobs",
    [
        ("automatic", "phi-4-mini", True),  # the router reads the small model's confidence
        ("draft_refine", "phi-4-mini", True),
        ("small", "phi-4-mini", False),  # pinned: nothing reads them, and they halve llama.cpp's decode speed
        ("large", "phi-4-mini", False),
        ("automatic", "gpt-oss-20b-generic-cpu", False),  # one model serves both roles: no escalation to decide
    ],
)
async def test_logprobs_are_requested_only_when_a_routing_decision_reads_them(fake, tmp_path, mode, small_model,
                                                                              asks_logprobs):
    from routing.policy import RoutingOptions

    settings = Settings(model_endpoint=fake.base_url, _env_file=None, small_model=small_model,
                        large_model="gpt-oss-20b")
    pipeline = Pipeline(settings, ModelClient.from_settings(settings), knowledge_base(tmp_path))
    options = RoutingOptions.from_settings(settings).with_overrides({"mode": mode})
    before = len(fake.requests)
    [event async for event in pipeline.run("When does the release train leave?", options=options)]
    await pipeline.client.close()
    first = fake.requests[before]
    assert bool(first.body.get("logprobs")) is asks_logprobs


class ThreadRecordingRetriever:
    """Wraps a retriever and records the thread each search ran on; ``delay_s`` makes it a slow search."""

    def __init__(self, inner, delay_s: float = 0.0):
        self.inner, self.delay_s, self.threads = inner, delay_s, []

    def search(self, query, k):
        import threading
        import time

        self.threads.append(threading.get_ident())
        time.sleep(self.delay_s)
        return self.inner.search(query, k)


async def test_a_fast_search_runs_on_the_event_loop_and_a_slow_one_in_a_worker_thread(fake, tmp_path):
    import threading

    settings = Settings(model_endpoint=fake.base_url, _env_file=None)
    loop_thread = threading.get_ident()
    kb = knowledge_base(tmp_path)
    for delay_s, expected in ((0.0, [False, True, True]), (0.3, [False, False, False])):
        pipeline = Pipeline(settings, ModelClient.from_settings(settings), kb)
        pipeline.inline_search_ms = 100.0  # "fast" with room to spare on a loaded machine; the slow one takes 300 ms
        retriever = ThreadRecordingRetriever(kb, delay_s)
        for _ in range(3):
            found = await pipeline.retrieve("How long do I boil pasta?", pipeline_options(settings),
                                            documents=retriever, reference_text=None, retrieve=True)
            assert found.shown[0].chunk.source == "cooking.md"
        await pipeline.client.close()
        # The first search has no timing to go by: a thread. Then a fast one stays on the loop.
        assert [thread == loop_thread for thread in retriever.threads] == expected, delay_s


async def test_after_the_warm_up_search_the_first_question_searches_on_the_event_loop(fake, tmp_path):
    import threading

    settings = Settings(model_endpoint=fake.base_url, _env_file=None)
    kb = knowledge_base(tmp_path)
    pipeline = Pipeline(settings, ModelClient.from_settings(settings), kb)
    pipeline.inline_search_ms = 100.0  # "fast" with room to spare on a loaded machine
    assert pipeline.last_search_ms == float("inf")  # nothing to go by: a first question would search in a thread
    await asyncio.to_thread(pipeline.warm_up_search)  # as the app does, in the thread that loaded the knowledge
    assert pipeline.last_search_ms < 100.0
    retriever = ThreadRecordingRetriever(kb)
    found = await pipeline.retrieve("How long do I boil pasta?", pipeline_options(settings),
                                    documents=retriever, reference_text=None, retrieve=True)
    await pipeline.client.close()
    assert found.shown[0].chunk.source == "cooking.md"
    assert retriever.threads == [threading.get_ident()]


def pipeline_options(settings):
    from routing.options import RoutingOptions

    return RoutingOptions.from_settings(settings)
